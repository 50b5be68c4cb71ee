import Fastify from 'fastify'
import httpProxy from '@fastify/http-proxy'
import { serveProbe } from './probe.js'

/*
 * The floor: bare Fastify 5 + @fastify/http-proxy, no features, in front of the same fake upstream. What
 * any Fastify proxy costs, so the gap between this and the project is the project's own work. Same IPC
 * protocol and probe as proxy-child. Kept fair rather than minimal:
 * - logger at `warn`, as proxy-child (no per-request log lines on either side);
 * - bodies forwarded as streams (http-proxy's default: its content-type parser hands the raw request
 *   stream to reply-from, so nothing is parsed or buffered);
 * - HTTP/1.1 to the upstream over undici with no cap on connections per origin, as the project's own
 *   Agent (reply-from's default of 128 would queue most of a 1000-stream burst, which would measure
 *   the cap, not the proxy), and the project's 30 s keep-alive;
 * - the same listen backlog (BENCH_PROXY_BACKLOG).
 * The client's headers (its authorization included) pass through unchanged.
 */

const upstreamUrl = process.env.BENCH_UPSTREAM_URL
if (upstreamUrl === undefined) throw new Error('floor-child: BENCH_UPSTREAM_URL is required')

const app = Fastify({ logger: { level: 'warn' } })
await app.register(httpProxy, {
  upstream: upstreamUrl,
  prefix: '/v1',
  rewritePrefix: '/v1',
  http2: false,
  undici: { connections: null, pipelining: 1, keepAliveTimeout: 30_000 }
})
const backlog = Number(process.env.BENCH_PROXY_BACKLOG)
const url = await app.listen({ host: '127.0.0.1', port: 0, ...(Number.isInteger(backlog) && backlog > 0 ? { backlog } : {}) })

serveProbe(url, () => app.close())
