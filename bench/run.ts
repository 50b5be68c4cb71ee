import { randomBytes } from 'node:crypto'
import { cpus, loadavg, platform } from 'node:os'
import { limitsTable, runLimitsScenario } from './limits-scenario.js'
import { filterTable, runFilterScenario } from './filter-scenario.js'
import { startChild, type Child } from './children.js'
import { newPool, newTally, runCount, runFor, sseBurst, type Burst, type Tally, type Target } from './load.js'
import { showTcp, tcpCounters, tcpDelta } from './netstat.js'
import { fmt, mb, round, signed, summarize, table } from './stats.js'

/*
 * `npm run bench`: the proxy vs the fake upstream directly, side by side in one run. Three processes: the
 * fake upstream (fake-child), the proxy (proxy-child, whose RSS we sample) and this load generator. Proxy
 * and direct runs alternate in rounds, so drift on a noisy machine hits both sides alike.
 */

const envInt = (name: string, fallback: number): number => {
  const v = Number(process.env[name])
  return Number.isInteger(v) && v > 0 ? v : fallback
}
// 25 ms between frames (40 tokens/s, a realistic generation speed): 1000 streams then offer 40k frames/s.
// At 10 ms (100k frames/s) this 2-core machine saturates even without the proxy (the fake's accept queue
// overflows and the streams of the burst no longer overlap), which measures the machine, not the proxy.
const CHUNK_DELAY_MS = envInt('BENCH_CHUNK_DELAY_MS', 25)
// The proxy's listen backlog: 4096, as server.ts listens, unless BENCH_PROXY_BACKLOG is set.
const PROXY_BACKLOG = envInt('BENCH_PROXY_BACKLOG', 4096)
const LATENCY = { rounds: 6, perRound: 500 }
const RPS = { concurrency: 64, rounds: 3, ms: 2000 }
const BIG = { concurrency: 16, rounds: 3, ms: 2000, bytes: 256 * 1024 }
const SSE = { streams: envInt('BENCH_SSE_STREAMS', 1000), timeoutMs: 30_000 }

const log = (msg: string): void => { process.stderr.write(`# ${msg}\n`) }
const pause = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms))
const json = (value: unknown): Buffer => Buffer.from(JSON.stringify(value))

const smallBody = json({ model: 'gpt-4o-mini', messages: [{ role: 'user', content: 'Say hello to the benchmark.' }] })
const bigBody = (() => {
  const base = JSON.stringify({ model: 'gpt-4o-mini', messages: [{ role: 'user', content: '' }] }).length
  return json({ model: 'gpt-4o-mini', messages: [{ role: 'user', content: 'lorem ipsum '.repeat(Math.ceil(BIG.bytes / 12)).slice(0, BIG.bytes - base) }] })
})()
// The fake echoes up to 200 characters, one frame per word: 100 one-letter words give 110 frames, so a
// stream lasts at least 110 x CHUNK_DELAY_MS and the streams of the burst overlap.
const streamBody = json({ model: 'gpt-4o-mini', stream: true, messages: [{ role: 'user', content: 'a '.repeat(100).trim() }] })

interface ProxyStats { rss: number, peak: number, phasePeak: number, cpu: NodeJS.CpuUsage }
const cpuMicros = (a: NodeJS.CpuUsage, b: NodeJS.CpuUsage): number => (b.user - a.user) + (b.system - a.system)

/** Alternate proxy/direct for `rounds`, swapping who goes first each round; count the proxy's CPU time. */
async function alternate (proxy: Child, targets: readonly Target[], rounds: number, run: (t: Target, tally: Tally) => Promise<void>) {
  const tallies = { proxy: newTally(), direct: newTally() }
  let proxyCpu = 0
  for (let r = 0; r < rounds; r++) {
    for (const t of r % 2 === 0 ? targets : [...targets].reverse()) {
      const before = t.name === 'proxy' ? await proxy.call<ProxyStats>('stats') : undefined
      await run(t, tallies[t.name])
      if (before !== undefined) proxyCpu += cpuMicros(before.cpu, (await proxy.call<ProxyStats>('stats')).cpu)
      await pause(100)
    }
  }
  return { ...tallies, proxyCpuPerReq: proxyCpu / Math.max(1, tallies.proxy.ok) }
}

const rps = (t: Tally): number => t.ok / (t.elapsedMs / 1000)

function burstSummary (b: Burst) {
  const ok = b.results.filter((r) => r.status === 200)
  const errors: Record<string, number> = {}
  for (const r of b.results) {
    const key = r.error ?? (r.status !== 200 ? `HTTP ${String(r.status)}` : r.done ? undefined : 'no [DONE]')
    if (key !== undefined) errors[key] = (errors[key] ?? 0) + 1
  }
  const ttfb = summarize(ok.flatMap((r) => (r.ttfbMs === undefined ? [] : [r.ttfbMs])))
  const total = summarize(ok.flatMap((r) => (r.totalMs === undefined ? [] : [r.totalMs])))
  const frames = ok.map((r) => r.frames)
  return {
    started: b.results.length,
    responded: b.results.filter((r) => r.status !== undefined).length,
    completed: b.results.filter((r) => r.done).length,
    peakOpen: b.peakOpen,
    wallMs: round(b.wallMs),
    ttfbP50: round(ttfb.p50),
    ttfbP99: round(ttfb.p99),
    durationP50: round(total.p50),
    durationP99: round(total.p99),
    framesMin: frames.length > 0 ? Math.min(...frames) : 0,
    framesMax: frames.length > 0 ? Math.max(...frames) : 0,
    errors
  }
}

async function main (): Promise<void> {
  // Other work on a small machine skews everything; print how busy it was.
  const loadAtStart = loadavg()[0] ?? 0
  const proxyKey = `pk-bench-${randomBytes(16).toString('hex')}`
  log(`starting the fake upstream (chunk delay ${CHUNK_DELAY_MS} ms) and the proxy in child processes`)
  const fake = await startChild('fake', './fake-child.js', { BENCH_CHUNK_DELAY_MS: String(CHUNK_DELAY_MS) })
  let proxy: Child | undefined
  const pools = { proxy: undefined as ReturnType<typeof newPool> | undefined, direct: undefined as ReturnType<typeof newPool> | undefined }
  try {
    proxy = await startChild('proxy', './proxy-child.js', { BENCH_UPSTREAM_URL: fake.url, BENCH_PROXY_KEY: proxyKey, BENCH_PROXY_BACKLOG: String(PROXY_BACKLOG) })
    const p = proxy
    const headers = { 'content-type': 'application/json' }
    pools.proxy = newPool(p.url, RPS.concurrency)
    pools.direct = newPool(fake.url, RPS.concurrency)
    const proxyT: Target = { name: 'proxy', origin: p.url, headers: { ...headers, authorization: `Bearer ${proxyKey}` }, pool: pools.proxy }
    const directT: Target = { name: 'direct', origin: fake.url, headers: { ...headers, authorization: `Bearer sk-bench-direct-${randomBytes(16).toString('hex')}` }, pool: pools.direct }
    const targets = [proxyT, directT] as const
    const idle = await p.call<ProxyStats>('stats')

    log('warming up both paths')
    const warm = newTally()
    for (const t of targets) {
      await runFor(t, smallBody, 16, 1500, warm)
      await runFor(t, bigBody, 4, 500, warm)
      await sseBurst(t.origin, t.headers, streamBody, 50, SSE.timeoutMs)
    }
    if (warm.ok === 0) throw new Error(`warm-up: no request succeeded (${JSON.stringify(warm.errors)})`)
    const warmed = await p.call<ProxyStats>('stats')

    log(`1/6 latency at concurrency 1: ${LATENCY.rounds} x ${LATENCY.perRound} requests per path`)
    const lat = await alternate(p, targets, LATENCY.rounds, (t, tally) => runCount(t, smallBody, LATENCY.perRound, tally))
    log(`2/6 throughput at concurrency ${RPS.concurrency}: ${RPS.rounds} x ${RPS.ms} ms per path`)
    const thr = await alternate(p, targets, RPS.rounds, (t, tally) => runFor(t, smallBody, RPS.concurrency, RPS.ms, tally))
    log(`3/6 ${bigBody.length} byte bodies at concurrency ${BIG.concurrency}: ${BIG.rounds} x ${BIG.ms} ms per path`)
    const big = await alternate(p, targets, BIG.rounds, (t, tally) => runFor(t, bigBody, BIG.concurrency, BIG.ms, tally))

    log(`4/6 ${SSE.streams} concurrent SSE streams, direct then proxy`)
    let tcp = tcpCounters()
    const sseDirect = { ...burstSummary(await sseBurst(directT.origin, directT.headers, streamBody, SSE.streams, SSE.timeoutMs)), tcp: tcpDelta(tcp, tcpCounters()) }
    await pause(500)
    const sseStart = await p.call<ProxyStats>('mark')
    tcp = tcpCounters()
    const sseProxy = { ...burstSummary(await sseBurst(proxyT.origin, proxyT.headers, streamBody, SSE.streams, SSE.timeoutMs)), tcp: tcpDelta(tcp, tcpCounters()) }
    await pause(200)
    const afterSse = await p.call<ProxyStats>('stats')

    const sseCpuPerStream = cpuMicros(sseStart.cpu, afterSse.cpu) / SSE.streams
    const L = { proxy: summarize(lat.proxy.latencies), direct: summarize(lat.direct.latencies) }
    const T = { proxy: summarize(thr.proxy.latencies), direct: summarize(thr.direct.latencies) }
    const B = { proxy: summarize(big.proxy.latencies), direct: summarize(big.direct.latencies) }
    const errors = {
      proxy: { latency: lat.proxy.errors, rps: thr.proxy.errors, body256k: big.proxy.errors, sse: sseProxy.errors },
      direct: { latency: lat.direct.errors, rps: thr.direct.errors, body256k: big.direct.errors, sse: sseDirect.errors }
    }
    const errorCount = (e: Record<string, Record<string, number>>): number => Object.values(e).reduce((n, m) => n + Object.values(m).reduce((a, b) => a + b, 0), 0)

    const rows = [
      ['', 'proxy', 'direct', 'proxy vs direct'],
      ['1. latency c=1, p50 ms', fmt(L.proxy.p50), fmt(L.direct.p50), `${signed(L.proxy.p50 - L.direct.p50)} ms`],
      ['   latency c=1, p99 ms', fmt(L.proxy.p99), fmt(L.direct.p99), `${signed(L.proxy.p99 - L.direct.p99)} ms`],
      [`2. req/s c=${RPS.concurrency}`, fmt(rps(thr.proxy)), fmt(rps(thr.direct)), `${fmt(rps(thr.proxy) / rps(thr.direct))}x`],
      [`   c=${RPS.concurrency} p50 / p99 ms`, `${fmt(T.proxy.p50)} / ${fmt(T.proxy.p99)}`, `${fmt(T.direct.p50)} / ${fmt(T.direct.p99)}`, ''],
      [`3. 256 KB body req/s c=${BIG.concurrency}`, fmt(rps(big.proxy)), fmt(rps(big.direct)), `${fmt(rps(big.proxy) / rps(big.direct))}x`],
      ['   256 KB body p99 ms', fmt(B.proxy.p99), fmt(B.direct.p99), `${signed(B.proxy.p99 - B.direct.p99)} ms`],
      [`4. ${SSE.streams} SSE: completed/started`, `${sseProxy.completed}/${sseProxy.started}`, `${sseDirect.completed}/${sseDirect.started}`, ''],
      ['   ended with data: [DONE]', String(sseProxy.completed), String(sseDirect.completed), ''],
      ['   frames per stream min-max', `${sseProxy.framesMin}-${sseProxy.framesMax}`, `${sseDirect.framesMin}-${sseDirect.framesMax}`, ''],
      ['   peak open at once', String(sseProxy.peakOpen), String(sseDirect.peakOpen), ''],
      ['   TTFB p50 ms', fmt(sseProxy.ttfbP50), fmt(sseDirect.ttfbP50), `${signed(sseProxy.ttfbP50 - sseDirect.ttfbP50)} ms`],
      ['   TTFB p99 ms', fmt(sseProxy.ttfbP99), fmt(sseDirect.ttfbP99), `${signed(sseProxy.ttfbP99 - sseDirect.ttfbP99)} ms`],
      ['   stream duration p50 / p99 ms', `${fmt(sseProxy.durationP50)} / ${fmt(sseProxy.durationP99)}`, `${fmt(sseDirect.durationP50)} / ${fmt(sseDirect.durationP99)}`, ''],
      ['   burst wall time ms', fmt(sseProxy.wallMs), fmt(sseDirect.wallMs), ''],
      ['   TCP listen overflows / SYN retries', showTcp(sseProxy.tcp), showTcp(sseDirect.tcp), '']
    ]
    const cpu = cpus()
    process.stdout.write(`\noai-reverse-proxy bench: node ${process.version}, ${platform()}, ${cpu.length} x ${cpu[0]?.model ?? '?'}; ` +
      `3 processes (load generator, proxy, fake upstream) on 127.0.0.1; SSE chunk delay ${CHUNK_DELAY_MS} ms; proxy listen backlog ${PROXY_BACKLOG}; load average at start ${loadAtStart.toFixed(2)}\n\n`)
    process.stdout.write(table(rows) + '\n\n')
    process.stdout.write(`proxy RSS MB: idle ${mb(idle.rss)}, after warm-up ${mb(warmed.rss)}, peak during ${SSE.streams} streams ${mb(afterSse.phasePeak)}, peak overall ${mb(afterSse.peak)}\n`)
    process.stdout.write(`proxy CPU per request: c=1 ${fmt(lat.proxyCpuPerReq)} us, c=${RPS.concurrency} ${fmt(thr.proxyCpuPerReq)} us, 256 KB ${fmt(big.proxyCpuPerReq)} us, ` +
      `SSE ${fmt(sseCpuPerStream)} us per stream of ${sseProxy.framesMax} frames\n`)
    process.stdout.write(`errors: proxy ${errorCount(errors.proxy)} ${errorCount(errors.proxy) > 0 ? JSON.stringify(errors.proxy) : ''}, direct ${errorCount(errors.direct)} ${errorCount(errors.direct) > 0 ? JSON.stringify(errors.direct) : ''}\n`)
    process.stdout.write(`proxy log lines at warn or above: ${p.logs.warnings}${p.logs.samples.length > 0 ? '\n  ' + p.logs.samples.join('\n  ') : ''}\n`)
    for (const c of [p, fake]) if (c.crashed() !== undefined) process.stdout.write(`CRASHED: ${c.crashed() as string}\n`)

    const side = (s: ReturnType<typeof summarize>, t: Tally) => ({ rps: round(rps(t)), p50: round(s.p50), p99: round(s.p99), n: s.n })
    const summary = {
      node: process.version,
      cpus: cpu.length,
      loadAvg: round(loadAtStart),
      proxyBacklog: PROXY_BACKLOG,
      latencyC1: { proxy: side(L.proxy, lat.proxy), direct: side(L.direct, lat.direct), addedP50Ms: round(L.proxy.p50 - L.direct.p50), addedP99Ms: round(L.proxy.p99 - L.direct.p99) },
      rps: { concurrency: RPS.concurrency, proxy: side(T.proxy, thr.proxy), direct: side(T.direct, thr.direct), ratio: round(rps(thr.proxy) / rps(thr.direct)) },
      body256k: { bytes: bigBody.length, concurrency: BIG.concurrency, proxy: side(B.proxy, big.proxy), direct: side(B.direct, big.direct), ratio: round(rps(big.proxy) / rps(big.direct)) },
      sse: { streams: SSE.streams, chunkDelayMs: CHUNK_DELAY_MS, proxy: sseProxy, direct: sseDirect, proxyPeakRssMB: mb(afterSse.phasePeak) },
      proxyRssMB: { idle: mb(idle.rss), peak: mb(afterSse.peak) },
      proxyCpuUsPerReq: { c1: round(lat.proxyCpuPerReq), rps: round(thr.proxyCpuPerReq), body256k: round(big.proxyCpuPerReq), sseStream: round(sseCpuPerStream) },
      errors: { proxy: errorCount(errors.proxy), direct: errorCount(errors.direct) },
      proxyWarnLogs: p.logs.warnings
    }
    // Feature costs, each against proxies of their own (same fake upstream).
    log('5/6 rate limiting off vs on (memory, Redis)')
    const limits = await runLimitsScenario(fake.url, log)
    process.stdout.write('\n' + limitsTable(limits) + '\n')
    log('6/6 prompt filter off vs on (50 rules, 256 KB prompts)')
    const filter = await runFilterScenario(fake.url, log)
    process.stdout.write('\n' + filterTable(filter) + '\n')
    process.stdout.write(`\nBENCH_JSON ${JSON.stringify({ ...summary, limits, filter })}\n`)
    if (sseProxy.completed < sseProxy.started || errorCount(errors.proxy) > 0 || p.crashed() !== undefined) process.exitCode = 1
  } finally {
    await Promise.all([pools.proxy?.destroy(), pools.direct?.destroy()])
    await Promise.all([proxy?.stop(), fake.stop()])
  }
}

main().catch((err: unknown) => {
  process.stderr.write(`bench failed: ${(err as Error).stack ?? String(err)}\n`)
  process.exitCode = 1
})
