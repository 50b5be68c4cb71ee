import { randomBytes } from 'node:crypto'
import { loadavg } from 'node:os'
import { performance } from 'node:perf_hooks'
import { setTimeout as pause } from 'node:timers/promises'
import { startChild, type Child } from './children.js'
import { ALL_FEATURES } from './features.js'
import { filterTable, runFilterScenario } from './filter-scenario.js'
import { limitsTable, runLimitsScenario } from './limits-scenario.js'
import { STREAM_BODY, chatBody, newPool, newTally, runCount, runFor, sseBurst, type Tally } from './load.js'
import { busiest, machine, showBusy } from './machine.js'
import { showTcp } from './netstat.js'
import type { ProbeStats } from './probe.js'
import { inRounds, type Rounds } from './rounds.js'
import { burstSummary, ssePhase, type Side } from './sse-phase.js'
import { fmt, markdown, mb, merge, round, sumErrors, summarize, table } from './stats.js'

/*
 * `npm run bench`: three proxies and the fake upstream directly, side by side in one run.
 * - direct:   the load generator straight to the fake upstream (the reference row);
 * - floor:    bare Fastify 5 + @fastify/http-proxy, no features (floor-child);
 * - defaults: this project with default options (proxy-child);
 * - all:      this project with every feature on (proxy-child with ALL_FEATURES).
 * Each proxy and the fake run in processes of their own; this process only generates load. Within a
 * scenario the targets take turns in rounds (the order rotating each round), so drift on a noisy machine
 * hits all of them alike. BENCH_ONLY=floor,all runs a subset (direct is always included); BENCH_EXTRA=1
 * adds the rate-limit and prompt-filter scenarios (limits-scenario, filter-scenario).
 */

const envInt = (name: string, fallback: number): number => {
  const v = Number(process.env[name])
  return Number.isInteger(v) && v > 0 ? v : fallback
}
// 25 ms between frames (40 tokens/s, a realistic generation speed): 1000 streams then offer 40k frames/s.
// At 10 ms (100k frames/s) this 2-core machine saturates even without the proxy (the fake's accept queue
// overflows and the streams of the burst no longer overlap), which measures the machine, not the proxy.
const CHUNK_DELAY_MS = envInt('BENCH_CHUNK_DELAY_MS', 25)
// The proxies' listen backlog: 4096, as server.ts listens, unless BENCH_PROXY_BACKLOG is set.
const PROXY_BACKLOG = envInt('BENCH_PROXY_BACKLOG', 4096)
const SMALL_BYTES = 1024
const LATENCY = { rounds: 4, perRound: 400 }
const RPS = { concurrency: 64, rounds: 3, ms: 2000 }
const BIG = { concurrency: 16, rounds: 3, ms: 2000, bytes: 256 * 1024 }
// Four bursts per target, in a balanced order (sse-phase.ts, burstOrder): one burst's TTFB tail is noisy
// on 2 cores and depends on which burst ran just before it.
const SSE = { streams: envInt('BENCH_SSE_STREAMS', 1000), rounds: envInt('BENCH_SSE_ROUNDS', 4), timeoutMs: 30_000 }
const SETTLE_MS = 2000
// V8's memory reducer gives back what start-up or a load left (the young generation grown to its cap,
// emptied pages) once a process has been quiet: its timer fires 8 s after the last full collection and
// collects if the allocation rate is low, else waits another 8 s (`all` alone dropped from 90-92 to 75-77
// MiB 8 s after start in one run, 16 s in another). An idle proxy in production has been quiet that long.
const REST_MS = envInt('BENCH_REST_MS', 20_000)
const EXTRA = process.env.BENCH_EXTRA === '1'

const PROXIES = ['floor', 'defaults', 'all'] as const
type ProxyName = typeof PROXIES[number]

/** BENCH_ONLY: a comma list of proxy targets; direct is always measured. */
function selected (): ProxyName[] {
  const raw = process.env.BENCH_ONLY ?? ''
  const names = raw.split(',').map((s) => s.trim()).filter((s) => s !== '' && s !== 'direct')
  if (names.length === 0) return raw.trim() === '' ? [...PROXIES] : []
  const unknown = names.filter((n) => !(PROXIES as readonly string[]).includes(n))
  if (unknown.length > 0) throw new Error(`BENCH_ONLY: unknown target ${unknown.join(', ')} (choose from ${PROXIES.join(', ')}; direct is always included)`)
  return PROXIES.filter((p) => names.includes(p))
}

const log = (msg: string): void => { process.stderr.write(`# ${msg}\n`) }

const smallBody = chatBody(SMALL_BYTES)
const bigBody = chatBody(BIG.bytes)

/** Completed requests per second of a tally. */
const rps = (t: Tally): number => t.ok / (t.elapsedMs / 1000)

async function main (): Promise<void> {
  const t0 = performance.now()
  const proxies = selected()
  const m = machine()
  const busyStart = await busiest()
  const started = new Date().toISOString()
  const steps = EXTRA ? 6 : 4
  process.stdout.write(`oai-reverse-proxy bench, ${started}\n` +
    `machine: node ${m.node}, ${m.platform}, ${m.cpus} x ${m.cpuModel}; load average ${m.loadAvg.join(' / ')} (1 / 5 / 15 min) at start\n` +
    `busiest other processes at start: ${showBusy(busyStart)}\n` +
    `targets: direct${proxies.map((p) => `, ${p}`).join('')}; ${proxies.length + 2} processes on 127.0.0.1 (load generator, fake upstream, one per proxy); ` +
    `SSE chunk delay ${CHUNK_DELAY_MS} ms; proxy listen backlog ${PROXY_BACKLOG}\n`)

  const proxyKey = `pk-bench-${randomBytes(16).toString('hex')}`
  const json = { 'content-type': 'application/json' }
  const directAuth = { ...json, authorization: `Bearer sk-bench-direct-${randomBytes(16).toString('hex')}` }
  const projectAuth = { ...json, authorization: `Bearer ${proxyKey}` }

  log(`starting the fake upstream (chunk delay ${CHUNK_DELAY_MS} ms) and ${proxies.join(', ') || 'no proxy'} in child processes`)
  const fake = await startChild('fake', './fake-child.js', { BENCH_CHUNK_DELAY_MS: String(CHUNK_DELAY_MS) })
  const sides: Side[] = [{ name: 'direct', target: { name: 'direct', origin: fake.url, headers: directAuth, pool: newPool(fake.url, RPS.concurrency) } }]
  try {
    const common = { BENCH_UPSTREAM_URL: fake.url, BENCH_PROXY_BACKLOG: String(PROXY_BACKLOG) }
    for (const name of proxies) {
      // --expose-gc: a full collection before each SSE burst (see below); nothing else calls gc().
      const child = name === 'floor'
        ? await startChild(name, './floor-child.js', common, 15_000, ['--expose-gc'])
        : await startChild(name, './proxy-child.js', { ...common, BENCH_PROXY_KEY: proxyKey, BENCH_PROXY_OPTIONS: JSON.stringify(name === 'all' ? ALL_FEATURES : {}) }, 15_000, ['--expose-gc'])
      sides.push({ name, child, target: { name, origin: child.url, headers: name === 'floor' ? directAuth : projectAuth, pool: newPool(child.url, RPS.concurrency) } })
    }
    const direct = sides[0] as Side
    const proxySides = sides.filter((s) => s.child !== undefined)
    const statsOf = async (cmd: 'stats' | 'mark') => new Map(await Promise.all(proxySides.map(async (s) => [s.name, await (s.child as Child).call<ProbeStats>(cmd)] as const)))
    const idleStart = await statsOf('stats')
    const get = <V>(map: Map<string, V>, name: string): V => map.get(name) as V
    log(`idle RSS right after start, then after ${REST_MS} ms without traffic`)
    await pause(REST_MS)
    const rested = await statsOf('stats')

    log('warming up every target')
    for (const s of sides) {
      const warm = newTally()
      await runFor(s.target, smallBody, 16, 1500, warm)
      await runFor(s.target, bigBody, 4, 500, warm)
      const sse = await sseBurst(s.target.origin, s.target.headers, STREAM_BODY, 50, SSE.timeoutMs)
      if (warm.ok === 0 || sse.results.every((r) => !r.done)) throw new Error(`warm-up of ${s.name}: nothing succeeded (${JSON.stringify(merge(warm.errors, burstSummary(sse).errors))}); ${s.child?.logs.samples.join(' | ') ?? ''}`)
    }
    const warmed = await statsOf('stats')

    log(`1/${steps} ${smallBody.length} byte requests: latency at c=1 (${LATENCY.rounds} x ${LATENCY.perRound} per target), then c=${RPS.concurrency} (${RPS.rounds} x ${RPS.ms} ms per target)`)
    const lat = await inRounds(sides, LATENCY.rounds, (s, tally) => runCount(s.target, smallBody, LATENCY.perRound, tally))
    const thr = await inRounds(sides, RPS.rounds, (s, tally) => runFor(s.target, smallBody, RPS.concurrency, RPS.ms, tally))

    log(`2/${steps} ${bigBody.length} byte bodies at c=${BIG.concurrency}: ${BIG.rounds} x ${BIG.ms} ms per target`)
    const bigMark = await statsOf('mark')
    await Promise.all(proxySides.map((s) => s.child?.call('loopOn')))
    const big = await inRounds(sides, BIG.rounds, (s, tally) => runFor(s.target, bigBody, BIG.concurrency, BIG.ms, tally), true)
    await Promise.all(proxySides.map((s) => s.child?.call('loopOff')))
    const bigEnd = await statsOf('stats')

    log(`3/${steps} ${SSE.streams} concurrent SSE streams, one target at a time, ${SSE.rounds} bursts per target`)
    const sse = await ssePhase(sides, STREAM_BODY, SSE)

    log(`4/${steps} idle RSS ${SETTLE_MS} ms and ${REST_MS} ms after the last phase`)
    await pause(SETTLE_MS)
    const settled = await statsOf('stats')
    await pause(REST_MS - SETTLE_MS)
    const restedAfter = await statsOf('stats')

    // Per-target figures.
    const L = new Map(sides.map((s) => [s.name, summarize((lat.get(s.name) as Rounds).tally.latencies)]))
    const T = new Map(sides.map((s) => [s.name, summarize((thr.get(s.name) as Rounds).tally.latencies)]))
    const B = new Map(sides.map((s) => [s.name, summarize((big.get(s.name) as Rounds).tally.latencies)]))
    const rpsOf = (map: Map<string, Rounds>, name: string) => rps(get(map, name).tally)
    const cpuPerReq = (map: Map<string, Rounds>, name: string) => get(map, name).cpuUs / Math.max(1, get(map, name).tally.ok)
    const loopP99 = (name: string) => Math.max(...get(big, name).delays.map((d) => d.p99))
    const loopMax = (name: string) => Math.max(...get(big, name).delays.map((d) => d.max))
    const ratio = (x: number, ref: number) => `${fmt(x / ref)}x`
    const errorsOf = (name: string) => merge(get(lat, name).tally.errors, get(thr, name).tally.errors, get(big, name).tally.errors, get(sse, name).errors)
    const directSse = get(sse, direct.name)

    const headline = [
      ['target', `CPU µs/req c${RPS.concurrency} 1 KB`, '256 KB req/s vs direct', 'loop delay p99 ms @256 KB (max)', `${SSE.streams} SSE TTFB p99 vs direct`, 'peak RSS MiB (streams / 256 KB)', `idle RSS MiB (start / rested ${REST_MS / 1000} s)`, `after load MiB (${SETTLE_MS / 1000} s / ${REST_MS / 1000} s)`, 'bytes per open stream'],
      ['direct (reference)', '-', `${fmt(rpsOf(big, 'direct'))} (1x)`, '-', `${fmt(directSse.ttfbP99)} ms (1x)`, '-', '-', '-', '-'],
      ...proxySides.map((s) => {
        const st = get(sse, s.name)
        return [
          s.name,
          fmt(cpuPerReq(thr, s.name)),
          `${fmt(rpsOf(big, s.name))} (${ratio(rpsOf(big, s.name), rpsOf(big, 'direct'))})`,
          `${fmt(loopP99(s.name))} (${fmt(loopMax(s.name))})`,
          `${fmt(st.ttfbP99)} ms (${ratio(st.ttfbP99, directSse.ttfbP99)})`,
          `${fmt(mb(st.peakRss ?? Number.NaN))} / ${fmt(mb(get(bigEnd, s.name).phasePeak))}`,
          `${fmt(mb(get(idleStart, s.name).rss))} / ${fmt(mb(get(rested, s.name).rss))}`,
          `${fmt(mb(get(settled, s.name).rss))} / ${fmt(mb(get(restedAfter, s.name).rss))}`,
          fmt(Math.round(st.bytesPerStream ?? Number.NaN))
        ]
      })
    ]

    const col = (f: (s: Side) => string) => sides.map(f)
    const proxyCol = (f: (name: string) => string) => sides.map((s) => (s.child === undefined ? '' : f(s.name)))
    const pair = (a: number, b: number) => `${fmt(a)} / ${fmt(b)}`
    const vsDirect = (map: Map<string, Rounds>) => (s: Side) => s.name === 'direct' ? fmt(rpsOf(map, s.name)) : `${fmt(rpsOf(map, s.name))} (${ratio(rpsOf(map, s.name), rpsOf(map, 'direct'))})`
    const detail = [
      ['', ...sides.map((s) => s.name)],
      [`1. ${smallBody.length} B, c=1 latency p50 / p99 ms`, ...col((s) => pair(get(L, s.name).p50, get(L, s.name).p99))],
      ['   proxy CPU µs/req at c=1', ...proxyCol((n) => fmt(cpuPerReq(lat, n)))],
      [`   req/s c=${RPS.concurrency} (vs direct)`, ...col(vsDirect(thr))],
      [`   c=${RPS.concurrency} p50 / p99 ms`, ...col((s) => pair(get(T, s.name).p50, get(T, s.name).p99))],
      [`   proxy CPU µs/req at c=${RPS.concurrency}`, ...proxyCol((n) => fmt(cpuPerReq(thr, n)))],
      [`2. 256 KB req/s c=${BIG.concurrency} (vs direct)`, ...col(vsDirect(big))],
      ['   256 KB p50 / p99 ms', ...col((s) => pair(get(B, s.name).p50, get(B, s.name).p99))],
      ['   proxy CPU µs/req 256 KB', ...proxyCol((n) => fmt(cpuPerReq(big, n)))],
      ['   loop delay p99 / max ms (worst round)', ...proxyCol((n) => pair(loopP99(n), loopMax(n)))],
      ['   peak RSS MiB during the phase', ...proxyCol((n) => fmt(mb(get(bigEnd, n).phasePeak)))],
      [`3. ${SSE.rounds} x ${SSE.streams} SSE: completed/started`, ...col((s) => `${get(sse, s.name).completed}/${get(sse, s.name).started}`)],
      ['   frames per stream min-max', ...col((s) => `${get(sse, s.name).framesMin}-${get(sse, s.name).framesMax}`)],
      ['   peak open at once, per burst', ...col((s) => get(sse, s.name).peakOpenPerBurst.join(' / '))],
      ['   TTFB p50 / p99 ms', ...col((s) => pair(get(sse, s.name).ttfbP50, get(sse, s.name).ttfbP99))],
      ['   TTFB p99 vs direct', ...col((s) => ratio(get(sse, s.name).ttfbP99, directSse.ttfbP99))],
      ['   TTFB p99 ms, per burst', ...col((s) => get(sse, s.name).ttfbP99PerBurst.map(fmt).join(' / '))],
      ['   stream duration p50 / p99 ms', ...col((s) => pair(get(sse, s.name).durationP50, get(sse, s.name).durationP99))],
      ['   burst wall time ms, per burst', ...col((s) => get(sse, s.name).wallMsPerBurst.map(fmt).join(' / '))],
      ['   TCP listen overflows / SYN retries', ...col((s) => showTcp(get(sse, s.name).tcp))],
      ['   RSS MiB before / peak during bursts', ...proxyCol((n) => pair(mb(get(sse, n).rssBefore ?? Number.NaN), mb(get(sse, n).peakRss ?? Number.NaN)))],
      ['   bytes per open stream, per burst', ...proxyCol((n) => (get(sse, n).bytesPerStreamPerBurst ?? []).map(fmt).join(' / '))],
      ['   proxy CPU µs per stream', ...proxyCol((n) => fmt(get(sse, n).cpuUsPerStream ?? Number.NaN))],
      ['4. RSS MiB start / rested / warmed', ...proxyCol((n) => `${fmt(mb(get(idleStart, n).rss))} / ${fmt(mb(get(rested, n).rss))} / ${fmt(mb(get(warmed, n).rss))}`)],
      ['   RSS MiB after load: settled / rested', ...proxyCol((n) => pair(mb(get(settled, n).rss), mb(get(restedAfter, n).rss)))],
      ['   peak RSS MiB overall', ...proxyCol((n) => fmt(mb(get(settled, n).peak)))],
      ['errors (all phases)', ...col((s) => String(sumErrors(errorsOf(s.name))))],
      ['log lines at warn or above', ...proxyCol((n) => String((sides.find((s) => s.name === n)?.child as Child).logs.warnings))]
    ]

    const loadEnd = loadavg().map((x) => round(x))
    process.stdout.write('\n' + markdown(headline) + '\n\n' + table(detail) + '\n\n')
    for (const s of sides) {
      const e = errorsOf(s.name)
      if (sumErrors(e) > 0) process.stdout.write(`errors ${s.name}: ${JSON.stringify(e)}\n`)
      if (s.child !== undefined && s.child.logs.samples.length > 0) process.stdout.write(`${s.name} log samples:\n  ${s.child.logs.samples.join('\n  ')}\n`)
    }
    const crashed = [fake, ...proxySides.map((s) => s.child as Child)].flatMap((c) => c.crashed() ?? [])
    for (const c of crashed) process.stdout.write(`CRASHED: ${c}\n`)

    const targets = Object.fromEntries(sides.map((s) => {
      const side = (map: Map<string, Rounds>, sum: Map<string, ReturnType<typeof summarize>>) => ({ rps: round(rpsOf(map, s.name)), p50: round(get(sum, s.name).p50), p99: round(get(sum, s.name).p99), n: get(sum, s.name).n, ...(s.child === undefined ? {} : { cpuUsPerReq: round(cpuPerReq(map, s.name)) }) })
      const st = get(sse, s.name)
      return [s.name, {
        latencyC1: side(lat, L),
        rps: side(thr, T),
        body256k: { ...side(big, B), ratio: round(rpsOf(big, s.name) / rpsOf(big, 'direct')), ...(s.child === undefined ? {} : { loopDelayP99Ms: loopP99(s.name), loopDelayMaxMs: loopMax(s.name), loopDelayRounds: get(big, s.name).delays, peakRssMiB: mb(get(bigEnd, s.name).phasePeak) }) },
        sse: {
          ...st,
          ttfbP99Ratio: round(st.ttfbP99 / directSse.ttfbP99),
          ...(s.child === undefined ? {} : { rssBeforeMiB: mb(st.rssBefore ?? 0), peakRssMiB: mb(st.peakRss ?? 0), bytesPerStream: Math.round(st.bytesPerStream ?? 0), cpuUsPerStream: round(st.cpuUsPerStream ?? 0) })
        },
        ...(s.child === undefined
          ? {}
          : {
              rssMiB: { idle: mb(get(idleStart, s.name).rss), rested: mb(get(rested, s.name).rss), warmed: mb(get(warmed, s.name).rss), settled: mb(get(settled, s.name).rss), restedAfterLoad: mb(get(restedAfter, s.name).rss), peak: mb(get(settled, s.name).peak), bigPhaseStart: mb(get(bigMark, s.name).rss) },
              warnLogs: s.child.logs.warnings
            }),
        errors: sumErrors(errorsOf(s.name))
      }]
    }))
    const failed = sides.some((s) => sumErrors(errorsOf(s.name)) > 0 || get(sse, s.name).completed < get(sse, s.name).started) || crashed.length > 0

    let extra = {}
    if (EXTRA) {
      log(`5/${steps} rate limiting off vs on (memory, Redis)`)
      const limits = await runLimitsScenario(fake.url, log)
      process.stdout.write('\n' + limitsTable(limits) + '\n')
      log(`6/${steps} prompt filter off vs on (50 rules, 256 KB prompts)`)
      const filter = await runFilterScenario(fake.url, log)
      process.stdout.write('\n' + filterTable(filter) + '\n')
      extra = { limits, filter }
    }

    const busyEnd = await busiest(3, 1000, [fake.pid, ...proxySides.map((s) => (s.child as Child).pid)])
    const wallS = Math.round((performance.now() - t0) / 100) / 10
    process.stdout.write(`\nload average at end ${loadEnd.join(' / ')}; busiest other processes at end: ${showBusy(busyEnd)}\nwall time ${wallS} s${failed ? '; FAILED: errors, incomplete streams or a crashed child (see above)' : ''}\n`)
    process.stdout.write(`\nBENCH_JSON ${JSON.stringify({
      started,
      machine: m,
      loadAvgEnd: loadEnd,
      busyStart: busyStart.top,
      busyEnd: busyEnd.top,
      settings: { smallBytes: smallBody.length, bigBytes: bigBody.length, rps: RPS, big: BIG, latency: LATENCY, sseStreams: SSE.streams, sseRounds: SSE.rounds, chunkDelayMs: CHUNK_DELAY_MS, proxyBacklog: PROXY_BACKLOG },
      targets,
      ...extra,
      wallS,
      failed
    })}\n`)
    if (failed) process.exitCode = 1
  } finally {
    await Promise.all(sides.map((s) => s.target.pool.destroy()))
    await Promise.all([...sides.flatMap((s) => (s.child === undefined ? [] : [s.child.stop()])), fake.stop()])
  }
}

main().catch((err: unknown) => {
  process.stderr.write(`bench failed: ${(err as Error).stack ?? String(err)}\n`)
  process.exitCode = 1
})
