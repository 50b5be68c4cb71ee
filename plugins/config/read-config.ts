import { isIP } from 'node:net'
import { readFileSync } from 'node:fs'
import envSchema from 'env-schema'
import { EnvSchema, type Env, type OaiProxyOptions } from './options.js'
import type { RateLimitConfig } from '../limits/schema.js'
import { normaliseUpstreamUrl } from '../upstream/upstream-url.js'
import { compileOrigins } from '../../lib/origins.js'
import { filterAndPolicyFromEnv } from './filter-env.js'
import { metricsFromEnv } from './metrics-env.js'

/*
 * The environment -> options step, used only by `server.ts`. It runs @fastify/env's engine (env-schema)
 * directly rather than the plugin, because the logger, body limit, trustProxy and timeouts are Fastify
 * constructor options and must be known before any plugin is registered. Every error names the variable
 * and never prints its value.
 */

export interface ServerConfig {
  host: string
  port: number
  logLevel: string
  trustProxy: false | number | string[]
  requestTimeoutMs: number
  /** Time a client has to send its request headers (capped by requestTimeoutMs). */
  headersTimeoutMs: number
  /** How long an idle keep-alive connection stays open. */
  keepAliveTimeoutMs: number
  /** Requests served on one connection before it is closed (0: no limit). */
  maxRequestsPerSocket: number
  /** Open connections in total; more are closed on accept (0: no limit). */
  maxConnections: number
  /** Open connections per client address (IPv6 by /64); more are closed on accept (0: no limit). */
  maxConnectionsPerAddress: number
  shutdownGraceMs: number
  production: boolean
}

export interface LoadedConfig {
  server: ServerConfig
  /** `openaiKeys` is empty in demo mode: the server fills it in with the built-in fake upstream. */
  proxy: OaiProxyOptions
  /** No OPENAI_KEY outside production: front the built-in fake upstream. */
  demo: boolean
}

export class ConfigError extends Error {
  override name = 'ConfigError'
}

const list = (value: string | undefined): string[] => (value ?? '').split(/[,\n]/).map((s) => s.trim()).filter((s) => s.length > 0)

function secrets (name: string, value: string | undefined): string[] {
  const items = list(value)
  items.forEach((item, i) => {
    if (!/^[\x21-\x7e]{1,512}$/.test(item)) throw new ConfigError(`${name}: entry ${i + 1} has invalid characters or length`)
  })
  return items
}

/** TRUST_PROXY: unset/false, a hop count, or a list of proxy IPs/CIDRs. `true` (trust anyone) is refused. */
export function parseTrustProxy (value: string | undefined): false | number | string[] {
  const v = (value ?? '').trim()
  if (v === '' || v === 'false' || v === '0') return false
  if (/^\d+$/.test(v)) return Number(v)
  if (v === 'true') throw new ConfigError('TRUST_PROXY: "true" would let any client choose its IP; give a hop count or the proxy addresses (IP or CIDR)')
  const entries = list(v)
  for (const e of entries) {
    // split() always yields a first element.
    const [addr, bits, extra] = e.split('/') as [string, string?, string?]
    const family = isIP(addr)
    const maxBits = family === 4 ? 32 : 128
    const badBits = bits !== undefined && (!/^\d+$/.test(bits) || Number(bits) > maxBits)
    if (family === 0 || badBits || extra !== undefined || addr.toLowerCase().startsWith('::ffff:')) {
      throw new ConfigError(`TRUST_PROXY: "${e}" is not an IPv4/IPv6 address or CIDR (write IPv4 ranges in IPv4 form)`)
    }
  }
  return entries
}

/** RATE_LIMIT_RPM wins over the original project's MODEL_RATE_LIMIT (also requests per minute). */
function rateLimitFromEnv (env: Env): RateLimitConfig {
  const entries: Array<[keyof RateLimitConfig, unknown]> = [
    ['requestsPerWindow', env.RATE_LIMIT_RPM ?? env.MODEL_RATE_LIMIT],
    ['windowMs', env.RATE_LIMIT_WINDOW_MS],
    ['tokensPerMinute', env.RATE_LIMIT_TPM],
    ['maxConcurrent', env.MAX_CONCURRENT_REQUESTS],
    ['failuresPerMinute', env.RATE_LIMIT_FAILURES_PER_MINUTE],
    ['defaultOutputTokens', env.RATE_LIMIT_DEFAULT_OUTPUT_TOKENS],
    ['onStoreError', env.RATE_LIMIT_ON_STORE_ERROR]
  ]
  return Object.fromEntries(entries.filter(([, v]) => v !== undefined)) as RateLimitConfig
}

export function readConfig (source: Record<string, string | undefined>): LoadedConfig {
  let env: Env
  try {
    env = envSchema<Env>({ schema: structuredClone(EnvSchema), data: source, env: false, dotenv: false })
  } catch (err) {
    throw new ConfigError(`invalid environment: ${(err as Error).message}`)
  }
  if (env.NODE_TLS_REJECT_UNAUTHORIZED === '0') {
    throw new ConfigError('NODE_TLS_REJECT_UNAUTHORIZED=0 turns off TLS verification for the upstream; unset it (use UPSTREAM_CA_FILE for a private CA)')
  }
  const production = env.NODE_ENV === 'production'
  const openaiKeys = secrets('OPENAI_KEY', env.OPENAI_KEY)
  if (openaiKeys.length === 0 && production) throw new ConfigError('OPENAI_KEY is required when NODE_ENV=production')

  let upstreamCa: string | undefined
  if (env.UPSTREAM_CA_FILE !== undefined) {
    try {
      upstreamCa = readFileSync(env.UPSTREAM_CA_FILE, 'utf8')
    } catch {
      throw new ConfigError('UPSTREAM_CA_FILE: cannot read the file')
    }
  }
  if (env.UPSTREAM_URL !== undefined) {
    try {
      normaliseUpstreamUrl(env.UPSTREAM_URL)
    } catch (err) {
      throw new ConfigError(`UPSTREAM_URL ${(err as Error).message}`)
    }
  }
  const organization = secrets('OPENAI_ORGANIZATION', env.OPENAI_ORGANIZATION)[0]
  // One key, commas and all: not a list like the other secrets. Its length and uniqueness are the admin plugin's checks.
  const adminKey = env.ADMIN_KEY === undefined || env.ADMIN_KEY === '' ? undefined : env.ADMIN_KEY
  if (adminKey !== undefined && !/^[\x21-\x7e]{1,512}$/.test(adminKey)) throw new ConfigError('ADMIN_KEY: has invalid characters or length')
  const project = secrets('OPENAI_PROJECT', env.OPENAI_PROJECT)[0]
  const tokenSecrets = secrets('TOKEN_SECRETS', env.TOKEN_SECRETS)
  tokenSecrets.forEach((s, i) => {
    if (s.length < 32) throw new ConfigError(`TOKEN_SECRETS: entry ${i + 1} is shorter than 32 characters`)
  })
  const endpoints = list(env.ENDPOINTS)
  const corsOrigins = list(env.CORS_ORIGINS)
  try {
    compileOrigins(corsOrigins)
  } catch (err) {
    throw new ConfigError(`CORS_ORIGINS: ${(err as Error).message}`)
  }
  let filterAndPolicy: ReturnType<typeof filterAndPolicyFromEnv>
  let observability: ReturnType<typeof metricsFromEnv>
  try {
    filterAndPolicy = filterAndPolicyFromEnv(env)
    observability = metricsFromEnv(env)
  } catch (err) {
    throw new ConfigError((err as Error).message)
  }

  const proxy: OaiProxyOptions = {
    openaiKeys,
    proxyKeys: secrets('PROXY_KEY', env.PROXY_KEY),
    ...(env.KEYS_FILE === undefined ? {} : { keysFile: env.KEYS_FILE }),
    ...(env.KEYS_STORE === undefined ? {} : { keysStore: env.KEYS_STORE }),
    ...(adminKey === undefined ? {} : { admin: { key: adminKey, ...(env.ADMIN_PREFIX === undefined ? {} : { prefix: env.ADMIN_PREFIX }) } }),
    ...(tokenSecrets.length === 0 ? {} : { browserTokens: { secrets: tokenSecrets } }),
    ...(env.UPSTREAM_URL === undefined ? {} : { upstreamUrl: env.UPSTREAM_URL }),
    ...(organization === undefined ? {} : { organization }),
    ...(project === undefined ? {} : { project }),
    ...(upstreamCa === undefined ? {} : { upstreamCa }),
    ...(env.BODY_LIMIT === undefined ? {} : { bodyLimit: env.BODY_LIMIT }),
    ...(env.MAX_BODY_BYTES_IN_FLIGHT === undefined ? {} : { maxBodyBytesInFlight: env.MAX_BODY_BYTES_IN_FLIGHT }),
    ...(env.MAX_JSON_DEPTH === undefined ? {} : { maxJsonDepth: env.MAX_JSON_DEPTH }),
    ...(env.MAX_UPLOAD_BYTES === undefined ? {} : { maxUploadBytes: env.MAX_UPLOAD_BYTES }),
    ...(env.UPSTREAM_CONNECT_TIMEOUT_MS === undefined ? {} : { upstreamConnectTimeoutMs: env.UPSTREAM_CONNECT_TIMEOUT_MS }),
    // The standalone server checks its upstream keys by default; a host app registering the suite opts in.
    keyHealth: { intervalMs: env.KEY_HEALTH_INTERVAL_MS ?? 300_000 },
    ...(env.UPSTREAM_HEADERS_TIMEOUT_MS === undefined ? {} : { upstreamHeadersTimeoutMs: env.UPSTREAM_HEADERS_TIMEOUT_MS }),
    ...(env.UPSTREAM_IDLE_TIMEOUT_MS === undefined ? {} : { upstreamIdleTimeoutMs: env.UPSTREAM_IDLE_TIMEOUT_MS }),
    ...(env.STREAM_STALL_TIMEOUT_MS === undefined ? {} : { streamStallTimeoutMs: env.STREAM_STALL_TIMEOUT_MS }),
    ...(env.STREAM_MAX_DURATION_MS === undefined ? {} : { streamMaxDurationMs: env.STREAM_MAX_DURATION_MS }),
    ...(endpoints.length === 0 ? {} : { endpoints }),
    ...(env.REALTIME === true ? { realtime: { enabled: true, ...(env.REALTIME_MAX_FRAME_BYTES === undefined ? {} : { maxFrameBytes: env.REALTIME_MAX_FRAME_BYTES }), ...(env.REALTIME_IDLE_TIMEOUT_MS === undefined ? {} : { idleTimeoutMs: env.REALTIME_IDLE_TIMEOUT_MS }) } } : {}),
    ...filterAndPolicy,
    ...observability,
    ...(env.REDIS_URL === undefined ? {} : { redisUrl: env.REDIS_URL }),
    rateLimit: rateLimitFromEnv(env),
    ...(corsOrigins.length === 0 ? {} : { cors: { origins: corsOrigins } })
  }

  return {
    server: {
      host: env.HOST ?? '127.0.0.1',
      port: env.PORT ?? 8080,
      logLevel: env.LOG_LEVEL ?? 'info',
      trustProxy: parseTrustProxy(env.TRUST_PROXY),
      requestTimeoutMs: env.REQUEST_TIMEOUT_MS ?? 60_000,
      headersTimeoutMs: env.HEADERS_TIMEOUT_MS ?? 10_000,
      keepAliveTimeoutMs: env.KEEP_ALIVE_TIMEOUT_MS ?? 72_000,
      maxRequestsPerSocket: env.MAX_REQUESTS_PER_SOCKET ?? 1000,
      maxConnections: env.MAX_CONNECTIONS ?? 10_000,
      // Behind trusted proxies every connection comes from them: a per-address cap would cap the proxies.
      maxConnectionsPerAddress: env.MAX_CONNECTIONS_PER_ADDRESS ?? (env.TRUST_PROXY === undefined ? 1000 : 0),
      shutdownGraceMs: env.SHUTDOWN_GRACE_MS ?? 10_000,
      production
    },
    proxy,
    demo: openaiKeys.length === 0
  }
}
