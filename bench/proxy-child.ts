import { randomBytes } from 'node:crypto'
import Fastify from 'fastify'
import oaiProxy from '../app.js'
import { serveProbe } from './probe.js'

/*
 * The proxy under test in its own process: Fastify + the oaiProxy suite, logger at `warn`, a random fake
 * upstream key, one proxy key (sent by the load generator). It reports its RSS, CPU time and event-loop
 * delay over IPC (probe.ts).
 */

const upstreamUrl = process.env.BENCH_UPSTREAM_URL
const proxyKey = process.env.BENCH_PROXY_KEY
if (upstreamUrl === undefined || proxyKey === undefined) throw new Error('proxy-child: BENCH_UPSTREAM_URL and BENCH_PROXY_KEY are required')

const app = Fastify({ logger: { level: 'warn' } })
// BENCH_PROXY_OPTIONS: extra suite options as JSON (the every-feature-on target and the feature-cost
// scenarios turn features on this way).
const extra = JSON.parse(process.env.BENCH_PROXY_OPTIONS ?? '{}') as Record<string, unknown>
await app.register(oaiProxy, { upstreamUrl, openaiKeys: [`sk-bench-${randomBytes(24).toString('hex')}`], proxyKeys: [proxyKey], ...extra })
// BENCH_PROXY_BACKLOG: the listen backlog (run.ts passes 4096, as server.ts uses).
const backlog = Number(process.env.BENCH_PROXY_BACKLOG)
const url = await app.listen({ host: '127.0.0.1', port: 0, ...(Number.isInteger(backlog) && backlog > 0 ? { backlog } : {}) })

serveProbe(url, () => app.close())
