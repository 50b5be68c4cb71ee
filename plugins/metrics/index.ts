import fp from 'fastify-plugin'
import { Registry, collectDefaultMetrics } from 'prom-client'
import type { FastifyContextConfig, FastifyError, FastifyInstance, FastifyPluginAsync, FastifyReply, FastifyRequest, RouteOptions } from 'fastify'
import { proxyError } from '../../errors.js'
import { keyCheck, listen, metricsServer } from './exposition.js'
import type { MetricsOptions } from './options.js'
import { LIMIT_KINDS, ProxyMetrics, rowOf } from './recorder.js'
import { Sampled, type Value } from './series.js'

export type { MetricsOptions } from './options.js'
export { ProxyMetrics } from './recorder.js'

export interface MetricsPluginOptions extends Omit<MetricsOptions, 'enabled'> {
  /** The proxy keys (PROXY_KEY), so a metrics key equal to one is refused. */
  proxyKeys?: readonly string[] | undefined
  /** Where the admin API lives, to label its routes `admin`. */
  adminPrefix?: string | undefined
}

export interface OaiProxyMetrics {
  recorder: ProxyMetrics
  registry: Registry
}

declare module 'fastify' {
  interface FastifyInstance {
    /** Present only when metrics are on: the proxy route reports its upstream times here. */
    oaiProxyMetrics?: OaiProxyMetrics
  }
}

/** Rule ids come from the config, but a moderation category or script name is one too: a cap keeps them bounded. */
const MAX_RULE_LABELS = 200
const LIMIT_INDEX: Record<string, number> = { OAI_PROXY_TOKENS_LIMITED: 1, OAI_PROXY_QUOTA_EXCEEDED: 3 }

/**
 * The kind of limit an error is, or -1. Requests, concurrency and the failed-request guard all answer
 * REQUESTS_LIMITED (OpenAI's one 429 type for them); their messages tell them apart (test/plugins/metrics/metrics.test.ts pins each).
 */
function limitKind (err: FastifyError): number {
  if (err.code === 'OAI_PROXY_REQUESTS_LIMITED') {
    if (err.message.startsWith('Too many concurrent')) return LIMIT_KINDS.values.indexOf('concurrency')
    return err.message.startsWith('Too many failed') ? LIMIT_KINDS.values.indexOf('ban') : 0
  }
  return LIMIT_INDEX[err.code] ?? -1
}

function labelFor (route: RouteOptions, suitePrefix: string, adminPrefix: string | undefined): string {
  const config: FastifyContextConfig = route.config ?? {}
  if (config.oaiProxyEndpoint !== undefined) return config.oaiProxyEndpoint.id
  const path = route.url.slice(suitePrefix.length)
  if (path === '' || path === '/') return 'status'
  if (path === '/health' || path === '/metrics') return path.slice(1)
  // The proxy's own routes inside the pipeline (routes/usage.ts).
  if (config.oaiProxyLocal === true) return 'proxy.usage'
  if (path.endsWith('/realtime')) return 'realtime'
  // Every route the suite registers today is labelled by now; one added later without a label would be `other`.
  /* c8 ignore next */
  return adminPrefix !== undefined && path.startsWith(adminPrefix + '/') ? 'admin' : 'other'
}

function checkOptions (opts: MetricsPluginOptions): void {
  const fail = (why: string): Error => new Error(`oai-proxy: invalid option /metrics: ${why}`)
  if (opts.key === undefined && opts.port === undefined) throw fail('give key (METRICS_KEY) or port (METRICS_PORT): /metrics is never served open on the proxy port')
  // A metrics key is a reader's credential, a proxy key spends money: never the same secret.
  if (opts.key !== undefined && (opts.proxyKeys ?? []).includes(opts.key)) throw fail('key (METRICS_KEY) is one of the proxy keys (PROXY_KEY); give metrics a key of its own')
}

/** Series read when scraped: streams open, upstream key states, the limit store. */
function sampled (app: FastifyInstance, recorder: ProxyMetrics): Sampled[] {
  const keyStates = (): Array<{ id: string, state: string }> => app.oaiProxyKeys.pool.describe()
  return [
    new Sampled('oai_proxy_streams_open', 'Streamed answers being sent now.', () => [{ value: recorder.streamsOpen, labels: {} }]),
    new Sampled('oai_proxy_upstream_keys', 'Upstream keys by state.', () => {
      const counts = new Map<string, number>([['active', 0]])
      for (const k of keyStates()) counts.set(k.state, (counts.get(k.state) ?? 0) + 1)
      return [...counts].map(([state, value]): Value => ({ value, labels: { state } }))
    }),
    new Sampled('oai_proxy_upstream_key_state', "Each upstream key's state (1), by the pool's hashed key id; never key bytes.", () =>
      keyStates().map((k): Value => ({ value: 1, labels: { key_id: k.id, state: k.state } }))),
    new Sampled('oai_proxy_rate_limit_store', 'Where limits live now (1): memory, redis or redis-unavailable.', () => [{ value: 1, labels: { state: app.oaiProxyLimits.guard.state } }]),
    new Sampled('oai_proxy_redis_errors_total', 'Limit-store commands that could not use Redis (failed, timed out, or Redis not connected).', () => [{ value: app.oaiProxyLimits.guard.errors, labels: {} }], 'counter')
  ]
}

/**
 * Prometheus metrics (docs/metrics.md), off unless configured. Recording costs a few array increments
 * per request in one onResponse hook; everything else is computed when scraped.
 */
const metrics: FastifyPluginAsync<MetricsPluginOptions> = async (app, opts) => {
  checkOptions(opts)
  const registry = new Registry()
  // Process CPU and memory, GC and the event-loop delay (perf_hooks.monitorEventLoopDelay), under their usual names.
  collectDefaultMetrics({ register: registry })
  const recorder = new ProxyMetrics({ maxRuleLabels: MAX_RULE_LABELS, perClientLabels: opts.perClientLabels ?? 0 })
  const series = [recorder.requests, recorder.bytesIn, recorder.bytesOut, recorder.overhead, recorder.upstream, recorder.firstByte, recorder.limits,
    recorder.filtered, recorder.tokensReserved, recorder.tokensSettled, recorder.clientRequests, recorder.clientTokens, ...sampled(app, recorder)]
  for (const s of series) if (s !== null) registry.registerMetric(s.asMetric())

  const authorised = keyCheck(opts.key)
  const server = opts.port === undefined ? null : metricsServer(registry, authorised)
  app.decorate('oaiProxyMetrics', { recorder, registry })
  app.decorateRequest('oaiProxySentAt', -1)
  app.decorateRequest('oaiProxyAnsweredAt', -1)
  app.decorateRequest('oaiProxyUpstreamDoneAt', -1)
  app.decorateRequest('oaiProxyMetricsFlags', 0)

  // Each route's endpoint label, once, when it is added: a request reads one number from its route config.
  const suitePrefix = app.prefix
  app.addHook('onRoute', (route) => {
    route.config = { ...route.config, oaiProxyMetricsRow: rowOf(labelFor(route, suitePrefix, opts.adminPrefix)) }
  })
  app.addHook('onResponse', (request: FastifyRequest, reply: FastifyReply, done: () => void) => {
    recorder.record(request, reply)
    done()
  })
  // Only errors pay for this: a limit's refusal, counted by kind.
  app.addHook('onError', (_request: FastifyRequest, _reply: FastifyReply, error: FastifyError, done: () => void) => {
    const kind = limitKind(error)
    if (kind >= 0) recorder.limits.add(kind)
    done()
  })

  if (server === null) {
    // Exempt from the failed-request guard's address check, so a ban on an address the scraper shares (a
    // cluster's egress) cannot blind monitoring; a wrong key is still a 401 the guard counts.
    app.get('/metrics', { config: { oaiProxyPublic: true } }, async (request, reply) => {
      if (!authorised(request.headers.authorization)) throw proxyError('METRICS_UNAUTHORIZED', [], { headers: { 'www-authenticate': 'Bearer' } })
      return reply.header('cache-control', 'no-store').type(registry.contentType).send(await registry.metrics())
    })
    return
  }
  app.addHook('onReady', async () => {
    const address = await listen(server, opts.port as number, opts.host ?? '127.0.0.1')
    app.log.info({ address: address.address, port: address.port }, 'oai-proxy: metrics listening')
  })
  app.addHook('onClose', async () => {
    server.closeAllConnections()
    await new Promise((resolve) => server.close(resolve))
  })
}

export default fp(metrics, { name: 'oai-proxy-metrics', fastify: '5.x' })
