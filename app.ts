import fp from 'fastify-plugin'
import { TypeCompiler } from '@sinclair/typebox/compiler'
import type { FastifyPluginAsync, FastifyRequest } from 'fastify'
import type { Redis } from 'ioredis'
import auth, { clientKeys, presentedKey } from './plugins/auth/index.js'
import cors from './plugins/cors/index.js'
import errorHandler from './plugins/error-handler/index.js'
import jsonBody from './plugins/json-body/index.js'
import formBody from './plugins/form-body/index.js'
import keyInjection from './plugins/upstream/key-injection.js'
import promptFilter, { DEFAULT_REJECT_MESSAGE } from './plugins/prompt-filter/index.js'
import requestPolicy from './plugins/request-policy/index.js'
import requestGuard from './plugins/request-guard/index.js'
import upstream from './plugins/upstream/index.js'
import limitStore from './plugins/limits/store-plugin.js'
import keyHealth from './plugins/upstream/key-health.js'
import abuseGuard, { clientBans } from './plugins/limits/abuse-guard.js'
import rateLimit from './plugins/limits/rate-limit.js'
import tokenBudget from './plugins/limits/token-budget.js'
import clientKeyFile from './plugins/client-keys/file-store.js'
import clientKeyScopes from './plugins/client-keys/scopes.js'
import usageFile from './plugins/client-keys/usage-file.js'
import health from './routes/health.js'
import statusRoute from './routes/status/index.js'
import usageRoute from './routes/usage.js'
import proxyRoutes, { allowedMethods } from './routes/proxy/index.js'
import { OaiProxyOptionsSchema, type OaiProxyOptions } from './plugins/config/options.js'
import { endpoints as allEndpoints } from './schemas/endpoints.js'
import { normaliseUpstreamUrl } from './plugins/upstream/upstream-url.js'
import { watchClose } from './lib/response-close.js'
import { firstError } from './lib/validator.js'
import { outputRules } from './plugins/prompt-filter/output-guard.js'
import { VERSION } from './lib/version.js'

const checkOptions = TypeCompiler.Compile(OaiProxyOptionsSchema)
const FASTIFY_REGISTER_OPTIONS = new Set(['prefix', 'logLevel', 'logSerializers'])
/** The WebRTC endpoint: served with the Realtime WebSocket route or not at all. */
const REALTIME_CALLS = 'realtime.calls'

/** Options with every default filled in; throws (naming the option, never a value) when they are invalid. */
export function resolveOptions (opts: OaiProxyOptions) {
  if (!checkOptions.Check(opts)) {
    const first = firstError(checkOptions, opts)
    throw new Error(`oai-proxy: invalid option ${first.path}: ${first.message}`)
  }
  let upstreamUrl: string
  try {
    upstreamUrl = normaliseUpstreamUrl(opts.upstreamUrl ?? 'https://api.openai.com')
  } catch (err) {
    throw new Error(`oai-proxy: invalid option /upstreamUrl: ${(err as Error).message}`)
  }
  if (opts.maxBodyBytesInFlight !== undefined && opts.maxBodyBytesInFlight > 0 && opts.maxBodyBytesInFlight < (opts.bodyLimit ?? 10 * 1024 * 1024)) {
    throw new Error('oai-proxy: invalid option /maxBodyBytesInFlight: smaller than bodyLimit, so the largest allowed body could never be accepted')
  }
  const wanted = opts.endpoints
  const unknown = wanted?.filter((id) => !allEndpoints.some((e) => e.id === id)) ?? []
  if (unknown.length > 0) throw new Error(`oai-proxy: invalid option /endpoints: unknown endpoint id ${unknown.join(', ')}`)
  if (opts.keysStore === 'redis' && opts.keysFile !== undefined) throw new Error('oai-proxy: invalid option /keysStore: give keysFile (KEYS_FILE) or keysStore redis (KEYS_STORE=redis), not both')
  if (opts.keysStore === 'redis' && opts.redis === undefined && opts.redisUrl === undefined) throw new Error('oai-proxy: invalid option /keysStore: redis needs redisUrl (REDIS_URL)')
  // Realtime voice, over WebSocket or WebRTC, is one opt-in: billed at a premium, unread by the output guardrail.
  const realtime = opts.realtime?.enabled ?? false
  // A token names a client key record (its class): without records there is nothing to verify it against.
  if (opts.browserTokens !== undefined && opts.keysFile === undefined && opts.keysStore === undefined) throw new Error('oai-proxy: invalid option /browserTokens: needs keysFile (KEYS_FILE) or keysStore (KEYS_STORE); a token names a client key record')
  if (!realtime && wanted?.includes(REALTIME_CALLS) === true) throw new Error(`oai-proxy: invalid option /endpoints: ${REALTIME_CALLS} needs realtime.enabled (REALTIME=true)`)
  const served = allEndpoints.filter((e) => (wanted === undefined || wanted.includes(e.id)) && (realtime || e.id !== REALTIME_CALLS))
  return {
    ...opts,
    upstreamUrl,
    bodyLimit: opts.bodyLimit ?? 10 * 1024 * 1024,
    maxJsonDepth: opts.maxJsonDepth ?? 64,
    maxBodyBytesInFlight: opts.maxBodyBytesInFlight ?? 256 * 1024 * 1024,
    upstreamConnectTimeoutMs: opts.upstreamConnectTimeoutMs ?? 10_000,
    upstreamHeadersTimeoutMs: opts.upstreamHeadersTimeoutMs ?? 600_000,
    upstreamIdleTimeoutMs: opts.upstreamIdleTimeoutMs ?? 300_000,
    streamStallTimeoutMs: opts.streamStallTimeoutMs ?? 60_000,
    streamMaxDurationMs: opts.streamMaxDurationMs ?? 3_600_000,
    endpoints: served,
    unprefixedRoutes: opts.unprefixedRoutes ?? true,
    demo: opts.demo ?? false,
    realtime: {
      enabled: realtime,
      maxFrameBytes: opts.realtime?.maxFrameBytes ?? 16 * 1024 * 1024,
      idleTimeoutMs: opts.realtime?.idleTimeoutMs ?? 600_000
    },
    rateLimit: {
      requestsPerWindow: opts.rateLimit?.requestsPerWindow ?? 0,
      windowMs: opts.rateLimit?.windowMs ?? 60_000,
      tokensPerMinute: opts.rateLimit?.tokensPerMinute ?? 0,
      maxConcurrent: opts.rateLimit?.maxConcurrent ?? 0,
      failuresPerMinute: opts.rateLimit?.failuresPerMinute ?? 120,
      defaultOutputTokens: opts.rateLimit?.defaultOutputTokens ?? 1024,
      onStoreError: opts.rateLimit?.onStoreError ?? 'open',
      storeTimeoutMs: opts.rateLimit?.storeTimeoutMs ?? 250,
      slotLeaseMs: opts.rateLimit?.slotLeaseMs ?? 3_600_000
    }
  }
}

/**
 * The suite. Registration order here IS the security pipeline (ARCHITECTURE §3): guard, auth, body
 * parsing and validation, then the allowlisted routes. The whole suite is encapsulated, so a host app's
 * handlers, parsers and hooks are untouched.
 */
const oaiProxy: FastifyPluginAsync<OaiProxyOptions> = async (app, raw) => {
  // Fastify hands a plugin its own register options (`prefix: '/ai'` in a host app) next to ours.
  const opts = resolveOptions(Object.fromEntries(Object.entries(raw).filter(([k]) => !FASTIFY_REGISTER_OPTIONS.has(k))) as OaiProxyOptions)
  const unprefixed = opts.unprefixedRoutes

  // First hook of the suite: from here on no client departure can go unnoticed (lib/response-close.ts).
  app.addHook('onRequest', async (_request, reply) => { watchClose(reply.raw) })
  await app.register(errorHandler, { allowedMethods: allowedMethods(opts.endpoints, unprefixed) })
  // Before any route, so every route gets its endpoint label (docs/metrics.md). Off unless configured.
  // Optional features are loaded only when configured (here and below): prom-client alone is ~12 MiB of an
  // idle proxy's memory, and a proxy without metrics, an admin API or browser tokens should not pay for them.
  if (opts.metrics?.enabled === true) {
    const { enabled: _on, ...metricsOptions } = opts.metrics
    const { default: metrics } = await import('./plugins/metrics/index.js')
    const adminPrefix = opts.admin === undefined ? undefined : opts.admin.prefix ?? (await import('./plugins/admin/index.js')).DEFAULT_ADMIN_PREFIX
    await app.register(metrics, { ...metricsOptions, proxyKeys: opts.proxyKeys, adminPrefix })
  }
  // Before the pipeline: preflights carry no credentials, so CORS must answer them before auth and limits.
  const corsOrigins = opts.cors?.origins ?? []
  await app.register(cors, { origins: corsOrigins })
  await app.register(keyInjection, { openaiKeys: opts.openaiKeys, organization: opts.organization, project: opts.project })
  await app.register(upstream, {
    upstreamUrl: opts.upstreamUrl,
    ca: opts.upstreamCa,
    connectTimeoutMs: opts.upstreamConnectTimeoutMs,
    headersTimeoutMs: opts.upstreamHeadersTimeoutMs,
    idleTimeoutMs: opts.upstreamIdleTimeoutMs
  })

  app.addHook('onSend', async (request, reply) => {
    reply.header('x-proxy-request-id', request.id)
    if (opts.demo) reply.header('x-oai-proxy-demo', 'true')
  })

  const limits = opts.rateLimit
  await app.register(limitStore, { redis: opts.redis, redisUrl: opts.redisUrl, onStoreError: limits.onStoreError, storeTimeoutMs: limits.storeTimeoutMs })
  // Dead upstream keys leave rotation before a user's request fails on them (checks on when asked for: the
  // standalone server asks by default); with Redis, what one replica learns about a key every replica learns.
  await app.register(keyHealth, { intervalMs: opts.keyHealth?.intervalMs ?? 0, redis: app.oaiProxyLimits.redis, userAgent: `oai-reverse-proxy/${VERSION}` })
  // Suite-wide, before auth: 404s and 401s happen outside the proxy routes and must be counted too, a
  // client's against its key, so it needs to know who holds a valid one on paths auth never runs on.
  const keys = clientKeys(opts.proxyKeys ?? [])
  // Client key records (KEYS_FILE): loaded before the abuse guard, which must know their holders too.
  if (opts.keysFile !== undefined) {
    await app.register(clientKeyFile, { file: opts.keysFile })
    // Without Redis, quota counts live in this replica's memory: kept beside the keys file across restarts.
    if (app.oaiProxyLimits.redis === undefined) await app.register(usageFile, { file: `${opts.keysFile}.usage.json`, quotas: app.oaiProxyLimits.memory.quotas })
  } else if (opts.keysStore === 'redis') {
    const { default: clientKeyRedis } = await import('./plugins/client-keys/redis-store.js')
    await app.register(clientKeyRedis, { redis: app.oaiProxyLimits.redis as Redis })
  }
  const records = opts.keysFile === undefined && opts.keysStore === undefined ? undefined : app.oaiProxyClientKeys
  if (records !== undefined && opts.browserTokens !== undefined) {
    const { default: browserTokens } = await import('./plugins/client-keys/browser-token-plugin.js')
    await app.register(browserTokens, { secrets: opts.browserTokens.secrets, keys: records, corsOrigins })
  }
  const tokens = opts.browserTokens === undefined ? undefined : app.oaiProxyBrowserTokens
  const identify = keys.size === 0 && records === undefined
    ? undefined
    : (request: FastifyRequest) => {
        const key = presentedKey(request)
        return key === undefined ? null : (records?.lookup(key)?.id ?? tokens?.idOf(key, request.headers.origin) ?? keys.idOf(key))
      }
  await app.register(abuseGuard, { failuresPerMinute: limits.failuresPerMinute, identify })
  await app.register(health)
  if (opts.statusPage !== false) {
    await app.register(statusRoute, {
      version: VERSION,
      endpoints: opts.endpoints,
      models: opts.policy?.allowedModels ?? null,
      keyRequired: keys.size > 0 || records !== undefined || opts.resolveClient !== undefined,
      limits: { ...limits, bodyLimit: opts.bodyLimit, maxOutputTokens: opts.policy?.maxOutputTokens ?? null, maxN: opts.policy?.maxN ?? null },
      proxyKeys: keys,
      records,
      tokens
    })
  }
  // A sibling of the pipeline, not inside it: proxy keys, the proxy's limits and the upstream never see it.
  if (opts.admin !== undefined) {
    const { default: adminApi } = await import('./plugins/admin/index.js')
    await app.register(adminApi, { key: opts.admin.key, prefix: opts.admin.prefix, proxyKeys: opts.proxyKeys, keys: records })
  }
  await app.register(async (pipeline) => {
    await pipeline.register(requestGuard)
    await pipeline.register(auth, { proxyKeys: opts.proxyKeys, resolveClient: opts.resolveClient, keyRecords: records, browserTokens: tokens })
    await pipeline.register(clientBans)
    await pipeline.register(rateLimit, { requestsPerWindow: limits.requestsPerWindow, windowMs: limits.windowMs, perClient: records !== undefined })
    await pipeline.register(jsonBody, { bodyLimit: opts.bodyLimit, maxJsonDepth: opts.maxJsonDepth, maxBytesInFlight: opts.maxBodyBytesInFlight })
    // Uploads: the form's text fields become the body every later step reads; the files wait for the route.
    await pipeline.register(formBody, { bodyLimit: opts.bodyLimit, maxUploadBytes: opts.maxUploadBytes })
    // preHandlers, after auth and validation, before anything goes upstream: policy (may clamp the body),
    // then the filter (reads the body as it will be sent).
    await pipeline.register(requestPolicy, opts.policy ?? {})
    // A client key's scopes: its endpoints at onRequest (before the body is read), its models after the
    // policy (whose model-list filter it narrows further). Only requests made with a client key.
    await pipeline.register(clientKeyScopes)
    await pipeline.register(promptFilter, { ...opts.filter, logPrompts: opts.logPrompts ?? false, userAgent: `oai-reverse-proxy/${VERSION}` })
    await pipeline.register(tokenBudget, { tokensPerMinute: limits.tokensPerMinute, maxConcurrent: limits.maxConcurrent, defaultOutputTokens: limits.defaultOutputTokens, slotLeaseMs: limits.slotLeaseMs, perClient: records !== undefined })
    // A key holder's own quotas and usage: authenticated and rate limited like the proxy routes, never forwarded.
    await pipeline.register(usageRoute, { unprefixedRoutes: unprefixed })
    await pipeline.register(proxyRoutes, {
      endpoints: opts.endpoints,
      unprefixedRoutes: unprefixed,
      bodyLimit: opts.bodyLimit,
      userAgent: `oai-reverse-proxy/${VERSION}`,
      streamLimits: { stallMs: opts.streamStallTimeoutMs, maxMs: opts.streamMaxDurationMs },
      output: outputRules(opts.outputFilter)
    })
    if (opts.realtime.enabled) {
      if (opts.outputFilter !== undefined) app.log.warn('oai-proxy: the output guardrail does not read Realtime sessions (docs/realtime.md)')
      // Loaded only when served: `ws` and the session code are ~5% of an idle proxy's memory.
      const { default: realtimeRoute } = await import('./routes/realtime/index.js')
      await pipeline.register(realtimeRoute, {
        ...opts.realtime,
        unprefixedRoutes: unprefixed,
        maxDurationMs: opts.streamMaxDurationMs,
        handshakeTimeoutMs: opts.upstreamConnectTimeoutMs,
        ca: opts.upstreamCa,
        userAgent: `oai-reverse-proxy/${VERSION}`,
        maxJsonDepth: opts.maxJsonDepth,
        policy: opts.policy ?? {},
        filter: opts.filter === undefined ? null : { ...opts.filter, message: opts.filter.message ?? DEFAULT_REJECT_MESSAGE },
        tokensPerMinute: limits.tokensPerMinute,
        logPrompts: opts.logPrompts ?? false,
        origins: corsOrigins
      })
    }
  })
}

export default fp(oaiProxy, { name: 'oai-proxy', fastify: '5.x', encapsulate: true })
