import { randomBytes } from 'node:crypto'
import { monitorEventLoopDelay } from 'node:perf_hooks'
import { pathToFileURL } from 'node:url'
import Fastify from 'fastify'
import { startChild, type Child } from './children.js'
import { serveIpc } from './ipc.js'
import { newPool, newTally, runFor, type Target, type Tally } from './load.js'
import { fmt, round, summarize, table } from './stats.js'

/*
 * The prompt filter's cost: 256 KB prompts through a proxy with the filter off, then on with 50 rules (40
 * phrases, 10 RE2 patterns), alternating in rounds against the same fake upstream. Each proxy runs in its
 * own process (this file, forked with BENCH_FILTER_CHILD set) and reports its own event-loop delay, so the
 * load generator's work never shows up as the proxy's. Two texts: plain ASCII, and mixed scripts (Latin,
 * Cyrillic, CJK), which is the expensive case for normalisation and for the automaton.
 *
 * `runFilterScenario(upstreamUrl)` is what `run.ts` can call with its fake upstream; `node
 * dist/bench/filter-scenario.js` runs it on its own (starting a fake upstream child).
 */

export const FILTER_RULES = {
  phrases: Array.from({ length: 40 }, (_, i) => `forbidden topic number ${i} please`),
  patterns: Array.from({ length: 10 }, (_, i) => `(?:do|say)\\s+anything\\s+now\\s*${i}|jail\\s*break${i}`)
}

const SETTINGS = { bytes: 256 * 1024, concurrency: 8, rounds: 3, ms: 2000 }
const TEXTS = {
  ascii: 'lorem ipsum ',
  mixed: 'Пожалуйста the quick brown fox 東京の天気 jumps over 42 lazy dogs '
}

interface LoopDelay { p50: number, p99: number, max: number }

async function child (): Promise<void> {
  const upstreamUrl = process.env.BENCH_UPSTREAM_URL as string
  const filterOn = process.env.BENCH_FILTER_CHILD === 'on'
  const app = Fastify({ logger: { level: 'warn' }, bodyLimit: 1024 * 1024 })
  const oaiProxy = (await import('../app.js')).default
  await app.register(oaiProxy, {
    upstreamUrl,
    openaiKeys: [`sk-bench-${randomBytes(24).toString('hex')}`],
    proxyKeys: [process.env.BENCH_PROXY_KEY as string],
    ...(filterOn ? { filter: FILTER_RULES } : {})
  })
  const url = await app.listen({ host: '127.0.0.1', port: 0 })
  const delay = monitorEventLoopDelay({ resolution: 1 })
  delay.enable()
  const ms = (ns: number): number => round(ns / 1e6)
  serveIpc(url, {
    /** Event-loop delay since the last call (then reset). */
    delay: (): LoopDelay => {
      const out = { p50: ms(delay.percentile(50)), p99: ms(delay.percentile(99)), max: ms(delay.max) }
      delay.reset()
      return out
    },
    stop: () => {
      setImmediate(() => { app.close().finally(() => process.exit(0)) })
      return { stopping: true }
    }
  })
}

export interface FilterSide { rps: number, p50: number, p99: number, loopDelayP99: number, loopDelayMax: number, errors: Record<string, number> }
export interface FilterRow { text: keyof typeof TEXTS, bytes: number, concurrency: number, off: FilterSide, on: FilterSide, ratio: number }

const bodyOf = (unit: string): Buffer => {
  const base = JSON.stringify({ model: 'gpt-4o-mini', messages: [{ role: 'user', content: '' }] }).length
  // Count bytes, not characters: Cyrillic and CJK take 2-3 bytes each in UTF-8.
  let content = unit.repeat(Math.ceil(SETTINGS.bytes / unit.length))
  while (Buffer.byteLength(content) > SETTINGS.bytes - base) content = content.slice(0, content.length - 64)
  return Buffer.from(JSON.stringify({ model: 'gpt-4o-mini', messages: [{ role: 'user', content }] }))
}

function side (tally: Tally, delays: LoopDelay[]): FilterSide {
  const s = summarize(tally.latencies)
  return {
    rps: round(tally.ok / (tally.elapsedMs / 1000)),
    p50: round(s.p50),
    p99: round(s.p99),
    loopDelayP99: Math.max(...delays.map((d) => d.p99)),
    loopDelayMax: Math.max(...delays.map((d) => d.max)),
    errors: tally.errors
  }
}

/** Run both texts against proxies with the filter off and on; the upstream is any fake OpenAI. */
export async function runFilterScenario (upstreamUrl: string, log: (msg: string) => void = () => {}): Promise<FilterRow[]> {
  const proxyKey = `sk-oaip-${randomBytes(24).toString('hex')}`
  const env = { BENCH_UPSTREAM_URL: upstreamUrl, BENCH_PROXY_KEY: proxyKey }
  const children: Child[] = []
  try {
    const off = await startChild('filter-off', './filter-scenario.js', { ...env, BENCH_FILTER_CHILD: 'off' })
    children.push(off)
    const on = await startChild('filter-on', './filter-scenario.js', { ...env, BENCH_FILTER_CHILD: 'on' })
    children.push(on)
    const headers = { authorization: `Bearer ${proxyKey}`, 'content-type': 'application/json' }
    const target = (c: Child): Target => ({ name: 'proxy', origin: c.url, headers, pool: newPool(c.url, SETTINGS.concurrency) })
    const targets = { off: target(off), on: target(on) }
    const rows: FilterRow[] = []
    for (const text of Object.keys(TEXTS) as Array<keyof typeof TEXTS>) {
      const body = bodyOf(TEXTS[text])
      log(`filter: ${body.length} byte ${text} prompts, c=${SETTINGS.concurrency}, ${SETTINGS.rounds} x ${SETTINGS.ms} ms per side`)
      const tallies = { off: newTally(), on: newTally() }
      const delays: Record<'off' | 'on', LoopDelay[]> = { off: [], on: [] }
      for (const name of ['off', 'on'] as const) await runFor(targets[name], body, 2, 300, newTally()) // warm-up
      for (let r = 0; r < SETTINGS.rounds; r++) {
        for (const name of (r % 2 === 0 ? ['off', 'on'] : ['on', 'off']) as Array<'off' | 'on'>) {
          const proxy = name === 'off' ? off : on
          await proxy.call('delay')
          await runFor(targets[name], body, SETTINGS.concurrency, SETTINGS.ms, tallies[name])
          delays[name].push(await proxy.call<LoopDelay>('delay'))
        }
      }
      const row = { text, bytes: body.length, concurrency: SETTINGS.concurrency, off: side(tallies.off, delays.off), on: side(tallies.on, delays.on), ratio: 0 }
      row.ratio = round(row.on.rps / row.off.rps)
      rows.push(row)
    }
    await Promise.all(Object.values(targets).map((t) => t.pool.close()))
    return rows
  } finally {
    await Promise.all(children.map((c) => c.stop()))
  }
}

/** Rows for the benchmark's table. */
export function filterTable (rows: readonly FilterRow[]): string {
  return table([
    ['prompt filter, 50 rules', 'off req/s', 'on req/s', 'on/off', 'p99 ms off', 'p99 ms on', 'loop p99 off', 'loop p99 on', 'loop max on'],
    ...rows.map((r) => [`${Math.round(r.bytes / 1024)} KB ${r.text} c=${r.concurrency}`, fmt(r.off.rps), fmt(r.on.rps), `${fmt(r.ratio)}x`, fmt(r.off.p99), fmt(r.on.p99), fmt(r.off.loopDelayP99), fmt(r.on.loopDelayP99), fmt(r.on.loopDelayMax)])
  ])
}

if (process.env.BENCH_FILTER_CHILD !== undefined) {
  await child()
} else if (process.argv[1] !== undefined && import.meta.url === pathToFileURL(process.argv[1]).href) {
  const fake = await startChild('fake', './fake-child.js', { BENCH_CHUNK_DELAY_MS: '0' })
  try {
    const rows = await runFilterScenario(fake.url, (m) => process.stderr.write(`# ${m}\n`))
    process.stdout.write(filterTable(rows) + '\n')
    process.stdout.write(JSON.stringify(rows, null, 2) + '\n')
  } finally {
    await fake.stop()
  }
}
