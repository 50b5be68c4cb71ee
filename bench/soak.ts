import { randomBytes } from 'node:crypto'
import { startChild, type Child } from './children.js'
import { ALL_FEATURES, LONG_STREAM_MODEL } from './features.js'
import { STREAM_BODY, newPool, PATH } from './load.js'
import type { LoopDelay } from './probe.js'

/*
 * `npm run bench:soak [minutes]` (default 60): mixed traffic at a modest rate against the proxy with every
 * feature on, printing one line a minute (RSS, heap, external memory, active handles, event-loop delay,
 * requests by outcome) so a leak shows as a slope. Not part of CI. Per second: 10 small chat requests, one
 * SSE stream read to the end (110 frames, 25 ms apart), two unknown-path 404s with a valid key; every fifth
 * second also a 256 KB prompt, a stream the client abandons after 500 ms, and a wrong key (401). Work that
 * is still in flight from earlier seconds is capped, so a slow proxy shows as errors, not as a pile-up.
 * And one long stream for the whole run (a frame a second, threat S09), which must end with [DONE].
 */

const MINUTES = Math.max(1, Number(process.argv[2] ?? 60))
const MAX_IN_FLIGHT = 200
const mib = (n: number): string => (n / 1048576).toFixed(1)

interface Health { rss: number, heapUsed: number, external: number, handles: number }

async function main (): Promise<void> {
  const fake = await startChild('fake', './fake-child.js', { BENCH_CHUNK_DELAY_MS: '25' })
  const key = `pk-bench-${randomBytes(16).toString('hex')}`
  let proxy: Child | undefined
  try {
    proxy = await startChild('proxy', './proxy-child.js', { BENCH_UPSTREAM_URL: fake.url, BENCH_PROXY_KEY: key, BENCH_PROXY_OPTIONS: JSON.stringify(ALL_FEATURES) })
    await soak(proxy, key)
  } finally {
    await proxy?.stop()
    await fake.stop()
  }
}

async function soak (proxy: Child, key: string): Promise<void> {
  const pool = newPool(proxy.url, MAX_IN_FLIGHT, 30_000)
  const json = { 'content-type': 'application/json', authorization: `Bearer ${key}` }
  const small = Buffer.from(JSON.stringify({ model: 'gpt-4o-mini', messages: [{ role: 'user', content: 'Hello there, how are you today?' }] }))
  // As the bench's streams: ~2.75 s at 25 ms a frame.
  const stream = STREAM_BODY
  const big = Buffer.from(JSON.stringify({ model: 'gpt-4o-mini', messages: [{ role: 'user', content: 'lorem ipsum '.repeat(21_800) }] }))
  const outcomes = new Map<string, number>()
  const note = (what: string): void => { outcomes.set(what, (outcomes.get(what) ?? 0) + 1) }
  let inFlight = 0
  const launch = (what: string, run: () => Promise<string>): void => {
    if (inFlight >= MAX_IN_FLIGHT) { note('skipped (in flight at cap)'); return }
    inFlight++
    run().then((outcome) => note(`${what} ${outcome}`), (err: unknown) => note(`${what} ${(err as { code?: string }).code ?? (err as Error).name}`)).finally(() => { inFlight-- })
  }
  const send = async (path: string, body: Buffer | undefined, headers: Record<string, string>, abortAfterMs?: number): Promise<string> => {
    const signal = abortAfterMs === undefined ? undefined : AbortSignal.timeout(abortAfterMs)
    try {
      const res = await pool.request({ path, method: body === undefined ? 'GET' : 'POST', headers, body, signal })
      await res.body.text()
      return String(res.statusCode)
    } catch (err) {
      if (abortAfterMs !== undefined && (err as Error).name === 'TimeoutError') return 'abandoned'
      throw err
    }
  }

  // The long stream: its frames are counted as they arrive; it must outlive every other timeout.
  const long = { frames: 0, done: false, endedAt: 0, error: '' }
  const longPool = newPool(proxy.url, 1, 30_000)
  const longBody = Buffer.from(JSON.stringify({ model: LONG_STREAM_MODEL, stream: true, max_tokens: MINUTES * 60 - 30, messages: [{ role: 'user', content: 'a long one' }] }))
  longPool.request({ path: PATH, method: 'POST', headers: json, body: longBody }).then(async (res) => {
    let tail = ''
    for await (const chunk of res.body) {
      const text = (chunk as Buffer).toString()
      long.frames += text.split('data: {').length - 1
      tail = (tail + text).slice(-64)
    }
    long.done = tail.endsWith('data: [DONE]\n\n')
  }).catch((err: unknown) => { long.error = (err as { code?: string }).code ?? (err as Error).name }).finally(() => { long.endedAt = Date.now() })

  await proxy.call('loopOn')
  process.stdout.write(`soak: every feature on, ${MINUTES} min; per minute: RSS / heap used / external MiB, active handles, event-loop delay p99 / max ms, outcomes\n`)
  const lines: Health[] = []
  const started = Date.now()
  for (let second = 1; second <= MINUTES * 60; second++) {
    for (let i = 0; i < 10; i++) launch('small', () => send(PATH, small, json))
    launch('stream', () => send(PATH, stream, json))
    for (let i = 0; i < 2; i++) launch('unknown path', () => send('/v1/files', undefined, { authorization: json.authorization }))
    if (second % 5 === 0) {
      launch('256 KB', () => send(PATH, big, json))
      launch('abandoned stream', () => send(PATH, stream, json, 500))
      launch('wrong key', () => send(PATH, small, { ...json, authorization: 'Bearer wrong' }))
    }
    await new Promise((resolve) => setTimeout(resolve, Math.max(0, started + second * 1000 - Date.now())))
    if (second % 60 === 0) {
      const h = await proxy.call<Health>('health')
      const d = await proxy.call<LoopDelay>('delay')
      lines.push(h)
      const counts = [...outcomes].sort().map(([k, v]) => `${k}: ${v}`).join(', ')
      outcomes.clear()
      process.stdout.write(`min ${String(second / 60).padStart(3)}  ${mib(h.rss)} / ${mib(h.heapUsed)} / ${mib(h.external)} MiB  handles ${h.handles}  loop ${d.p99} / ${d.max} ms  in flight ${inFlight}  long stream ${long.frames} frames${long.endedAt > 0 ? ' (ended)' : ''}  ${counts}\n`)
    }
  }
  const first = lines[0] as Health
  const last = lines.at(-1) as Health
  const min = (f: (h: Health) => number): number => Math.min(...lines.map(f))
  const max = (f: (h: Health) => number): number => Math.max(...lines.map(f))
  process.stdout.write(`summary: RSS ${mib(first.rss)} -> ${mib(last.rss)} MiB (range ${mib(min((h) => h.rss))}-${mib(max((h) => h.rss))}), heap used ${mib(first.heapUsed)} -> ${mib(last.heapUsed)} MiB, handles ${first.handles} -> ${last.handles} (range ${min((h) => h.handles)}-${max((h) => h.handles)})\n`)
  const lasted = ((long.endedAt === 0 ? Date.now() : long.endedAt) - started) / 60_000
  process.stdout.write(`long stream: ${long.frames} frames over ${lasted.toFixed(1)} min, ${long.done ? 'ended with [DONE]' : long.endedAt === 0 ? 'still open' : `cut (${long.error || 'no [DONE]'})`}\n`)
  await pool.destroy()
  await longPool.destroy()
}

main().catch((err: unknown) => {
  process.stderr.write(`soak failed: ${(err as Error).stack ?? String(err)}\n`)
  process.exitCode = 1
})
