import { randomBytes } from 'node:crypto'
import Fastify from 'fastify'
import oaiProxy from '../app.js'
import { serveIpc } from './ipc.js'

/*
 * The proxy under test in its own process: Fastify + the oaiProxy suite, logger at `warn`, a random fake
 * upstream key, one proxy key (sent by the load generator). It samples its RSS every 50 ms and reports the
 * peaks (overall, and since the last `mark`) and its CPU time over IPC.
 */

const upstreamUrl = process.env.BENCH_UPSTREAM_URL
const proxyKey = process.env.BENCH_PROXY_KEY
if (upstreamUrl === undefined || proxyKey === undefined) throw new Error('proxy-child: BENCH_UPSTREAM_URL and BENCH_PROXY_KEY are required')

const app = Fastify({ logger: { level: 'warn' } })
// BENCH_PROXY_OPTIONS: extra suite options as JSON (feature-cost scenarios turn limits on this way).
const extra = JSON.parse(process.env.BENCH_PROXY_OPTIONS ?? '{}') as Record<string, unknown>
await app.register(oaiProxy, { upstreamUrl, openaiKeys: [`sk-bench-${randomBytes(24).toString('hex')}`], proxyKeys: [proxyKey], ...extra })
// BENCH_PROXY_BACKLOG: the listen backlog (run.ts passes 4096, as server.ts uses).
const backlog = Number(process.env.BENCH_PROXY_BACKLOG)
const url = await app.listen({ host: '127.0.0.1', port: 0, ...(Number.isInteger(backlog) && backlog > 0 ? { backlog } : {}) })

let peak = process.memoryUsage().rss
let phasePeak = peak
const sample = (): number => {
  const rss = process.memoryUsage().rss
  if (rss > peak) peak = rss
  if (rss > phasePeak) phasePeak = rss
  return rss
}
setInterval(sample, 50).unref()

const report = () => ({ rss: sample(), peak, phasePeak, cpu: process.cpuUsage() })

process.once('SIGTERM', () => {
  process.stdout.write(`PROXY_RSS ${JSON.stringify(report())}\n`)
  process.exit(0)
})

serveIpc(url, {
  stats: report,
  /** Start a new phase: its peak starts from the current RSS. */
  mark: () => {
    phasePeak = 0
    return report()
  },
  stop: async () => {
    const last = report()
    setImmediate(() => { app.close().finally(() => process.exit(0)) })
    return last
  }
})
