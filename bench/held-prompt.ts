import { randomBytes } from 'node:crypto'
import { setTimeout as pause } from 'node:timers/promises'
import { startChild, type Child } from './children.js'
import { ALL_FEATURES, LONG_STREAM_MODEL } from './features.js'
import { chatBody, sseBurst } from './load.js'
import { busiest, machine, showBusy } from './machine.js'
import { fmt, markdown } from './stats.js'

/*
 * `npm run build && node dist/bench/held-prompt.js [streams=300] [promptKiB=96]`: what a proxy holds per
 * answer in flight when prompts are large. Each target (floor, defaults, every feature on; in children of
 * their own, as in run.ts) gets `streams` concurrent streamed requests with a prompt of `promptKiB`; the fake
 * upstream answers them with its long stream (a frame a second, 12 s). 6 s in, when every request has long
 * reached upstream, the proxy collects its garbage and reports its heap plus external memory (Buffers): that
 * less the same figure before the burst, per open stream. The floor streams the body through and keeps none
 * of it. The handles the proxy has open then (two sockets per stream) show the streams were in flight.
 */

interface Health { rss: number, heapUsed: number, external: number, handles: number }

const streams = Number(process.argv[2] ?? 300)
const promptBytes = Number(process.argv[3] ?? 96) * 1024
const MEASURE_AT_MS = 6000

async function held (child: Child, headers: Record<string, string>, body: Buffer) {
  const mem = async (): Promise<Health> => {
    await child.call('gc')
    return await child.call<Health>('health')
  }
  const before = await mem()
  const burst = sseBurst(child.url, headers, body, streams, 60_000)
  await pause(MEASURE_AT_MS)
  const during = await mem()
  const done = await burst
  const ok = done.results.filter((r) => r.done)
  const inTime = ok.filter((r) => (r.ttfbMs ?? Infinity) < MEASURE_AT_MS).length
  const js = (h: Health) => h.heapUsed + h.external
  return { perStream: (js(during) - js(before)) / streams, rssPerStream: (during.rss - before.rss) / streams, completed: ok.length, answeredBefore: inTime, handles: during.handles - before.handles }
}

async function main (): Promise<void> {
  const m = machine()
  const busy = await busiest()
  process.stdout.write(`held-prompt: ${streams} streams, ${promptBytes} byte prompts; node ${m.node}, ${m.cpus} x ${m.cpuModel}, load ${m.loadAvg.join(' / ')}; busiest: ${showBusy(busy)}\n`)
  const fake = await startChild('fake', './fake-child.js', { BENCH_CHUNK_DELAY_MS: '100' })
  const key = `pk-bench-${randomBytes(16).toString('hex')}`
  const body = chatBody(promptBytes, { model: LONG_STREAM_MODEL, stream: true, max_tokens: 12 })
  const rows: string[][] = [['target', 'heap + external per open stream', 'RSS per open stream', 'completed', 'answered before the measurement', 'handles open then']]
  try {
    for (const name of ['floor', 'defaults', 'all']) {
      const child = name === 'floor'
        ? await startChild(name, './floor-child.js', { BENCH_UPSTREAM_URL: fake.url }, 15_000, ['--expose-gc'])
        : await startChild(name, './proxy-child.js', { BENCH_UPSTREAM_URL: fake.url, BENCH_PROXY_KEY: key, BENCH_PROXY_OPTIONS: JSON.stringify(name === 'all' ? ALL_FEATURES : {}) }, 15_000, ['--expose-gc'])
      try {
        const headers = { 'content-type': 'application/json', authorization: `Bearer ${key}` }
        await sseBurst(child.url, headers, body, 20, 30_000) // warm-up (12 s)
        const r = await held(child, headers, body)
        rows.push([name, `${fmt(r.perStream / 1024)} KiB`, `${fmt(r.rssPerStream / 1024)} KiB`, `${r.completed}/${streams}`, `${r.answeredBefore}/${streams}`, String(r.handles)])
      } finally {
        await child.stop()
      }
    }
  } finally {
    await fake.stop()
  }
  process.stdout.write(markdown(rows) + '\n')
}

main().catch((err: unknown) => {
  process.stderr.write(`held-prompt failed: ${(err as Error).stack ?? String(err)}\n`)
  process.exitCode = 1
})
