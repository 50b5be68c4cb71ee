import { randomBytes } from 'node:crypto'
import { loadavg } from 'node:os'
import { setTimeout as pause } from 'node:timers/promises'
import { request } from 'undici'
import { startChild, type Child } from './children.js'
import { ALL_FEATURES } from './features.js'
import { chatBody, newPool, newTally, runFor, type Target } from './load.js'
import { busiest, machine, showBusy } from './machine.js'
import type { ProbeStats } from './probe.js'
import { cpuMicros } from './sse-phase.js'
import { fmt, median, signed, table } from './stats.js'

/*
 * `npm run build && node dist/bench/metrics-ab.js [rounds]`: what Prometheus metrics cost per request. Two
 * proxies with every feature on (ALL_FEATURES), one with METRICS on, take turns in rounds (the order
 * swapping each round) at c=64 with 1 KB chat completions against the fake upstream; the medians of req/s
 * and of the proxy's CPU time per request are compared. A scrape of the `on` proxy after the last round
 * checks that it counted what it served. BENCH_AA=1 runs both sides without metrics (an A/A calibration).
 * Not a test: it measures a noisy machine, and says how noisy.
 */

const ROUNDS = Number(process.argv[2] ?? '10')
const MS = 2000
const CONCURRENCY = 64
const METRICS_KEY = `mk-${randomBytes(16).toString('hex')}`

const log = (msg: string): void => { process.stderr.write(`# ${msg}\n`) }

interface Side { name: 'off' | 'on', child: Child, target: Target, rps: number[], cpuPerReq: number[], ok: number, errors: number }

async function main (): Promise<void> {
  const m = machine()
  process.stdout.write(`metrics A/B, ${new Date().toISOString()}: node ${m.node}, ${m.cpus} x ${m.cpuModel}; load average ${m.loadAvg.join(' / ')} at start\n` +
    `busiest other processes at start: ${showBusy(await busiest())}\n`)
  const proxyKey = `pk-bench-${randomBytes(16).toString('hex')}`
  const headers = { 'content-type': 'application/json', authorization: `Bearer ${proxyKey}` }
  const body = chatBody(1024)
  const fake = await startChild('fake', './fake-child.js', { BENCH_CHUNK_DELAY_MS: '25' })
  const sides: Side[] = []
  try {
    // BENCH_ON_FIRST=1 starts the metrics side first: on a loaded machine the second child started can run slower (see BENCH_AA).
    for (const name of process.env.BENCH_ON_FIRST === '1' ? ['on', 'off'] as const : ['off', 'on'] as const) {
      // BENCH_AA=1: both sides without metrics, to see how far two identical proxies differ on this machine.
      const options = name === 'on' && process.env.BENCH_AA !== '1' ? { ...ALL_FEATURES, metrics: { enabled: true, key: METRICS_KEY } } : ALL_FEATURES
      const child = await startChild(name, './proxy-child.js', { BENCH_UPSTREAM_URL: fake.url, BENCH_PROXY_KEY: proxyKey, BENCH_PROXY_OPTIONS: JSON.stringify(options), BENCH_PROXY_BACKLOG: '4096' })
      sides.push({ name, child, target: { name, origin: child.url, headers, pool: newPool(child.url, CONCURRENCY) }, rps: [], cpuPerReq: [], ok: 0, errors: 0 })
    }
    sides.sort((a, b) => a.name.localeCompare(b.name))
    log('warming up')
    for (const s of sides) await runFor(s.target, body, 16, 2000, newTally())
    log(`${ROUNDS} rounds x ${MS} ms per side at c=${CONCURRENCY}, ${body.length} byte bodies`)
    for (let r = 0; r < ROUNDS; r++) {
      for (const s of r % 2 === 0 ? sides : [...sides].reverse()) {
        const before = await s.child.call<ProbeStats>('stats')
        const tally = newTally()
        await runFor(s.target, body, CONCURRENCY, MS, tally)
        const after = await s.child.call<ProbeStats>('stats')
        s.rps.push(tally.ok / (tally.elapsedMs / 1000))
        s.cpuPerReq.push(cpuMicros(before.cpu, after.cpu) / Math.max(1, tally.ok))
        s.ok += tally.ok
        s.errors += Object.values(tally.errors).reduce((a, b) => a + b, 0)
        await pause(100)
      }
    }
    const on = sides[1] as Side
    const scrape = await request(`${on.child.url}/metrics`, { headers: { authorization: `Bearer ${METRICS_KEY}` } })
    const text = await scrape.body.text()
    if (process.env.BENCH_AA === '1') process.stdout.write('A/A run (BENCH_AA=1): "on" has no metrics either\n')
    const counted = text.split('\n').filter((l) => l.startsWith('oai_proxy_requests_total{endpoint="chat.completions",status_class="2xx"')).reduce((n, l) => n + Number(l.slice(l.lastIndexOf(' ') + 1)), 0)
    const [off, onMed] = [median((sides[0] as Side).cpuPerReq), median(on.cpuPerReq)]
    const [offRps, onRps] = [median((sides[0] as Side).rps), median(on.rps)]
    process.stdout.write(table([
      ['metrics', 'req/s (median)', 'CPU µs/req (median)', 'CPU µs/req per round', 'ok', 'errors'],
      ...sides.map((s) => [s.name, fmt(median(s.rps)), fmt(median(s.cpuPerReq)), s.cpuPerReq.map((x) => fmt(x)).join(' '), String(s.ok), String(s.errors)])
    ]) + '\n' +
      `on/off: CPU per request ${fmt(onMed / off)}x (${fmt(onMed - off)} µs), req/s ${fmt(onRps / offRps)}x; ` +
      `paired by round (drift cancels): CPU ${signed(median(on.cpuPerReq.map((x, i) => x - ((sides[0] as Side).cpuPerReq[i] as number))))} µs per request\n` +
      `the on proxy counted ${counted} answered chat completions (it served ${on.ok} in the rounds plus the warm-up)\n` +
      `load average ${loadavg().map((x) => Math.round(x * 100) / 100).join(' / ')} at the end; busiest other processes: ${showBusy(await busiest())}\n`)
  } finally {
    for (const s of sides) {
      await s.target.pool.close()
      await s.child.stop()
    }
    await fake.stop()
  }
}

await main()
