import { Type, type Static } from '@sinclair/typebox'
import type { Redis } from 'ioredis'
import { OutputFilterOptionsSchema, PromptFilterOptionsSchema } from '../prompt-filter/schema.js'
import { RequestPolicyOptionsSchema } from '../request-policy/schema.js'
import { MetricsOptionsSchema } from '../metrics/options.js'
import { RateLimitOptionsSchema } from '../limits/schema.js'
import type { ResolveClient } from '../auth/index.js'

/*
 * The options of the suite plugin (`oaiProxy`). Library users pass these directly; `server.ts` derives them
 * from the environment (`plugins/config/read-config.ts`). Defaults live in `resolveOptions`, not here, so the schema
 * stays a pure check.
 */

const Secret = Type.String({ minLength: 1, maxLength: 512, pattern: '^[\\x21-\\x7e]+$' })
const Millis = Type.Integer({ minimum: 1, maximum: 24 * 3600 * 1000 })

export const OaiProxyOptionsSchema = Type.Object({
  /** Upstream origin (optionally with a path prefix). A trailing `/v1` is tolerated. Default `https://api.openai.com`. */
  upstreamUrl: Type.Optional(Type.String({ minLength: 1 })),
  /** One or more upstream API keys; rotated least-recently-used. */
  openaiKeys: Type.Array(Secret, { minItems: 1 }),
  /** Sent upstream as `OpenAI-Organization`; the client's own value is never forwarded. */
  organization: Type.Optional(Secret),
  /** Sent upstream as `OpenAI-Project`; the client's own value is never forwarded. */
  project: Type.Optional(Secret),
  /** Keys clients must present. Empty or absent (and no `keysFile`): the proxy is open to anyone who can reach it. */
  proxyKeys: Type.Optional(Type.Array(Secret)),
  /** Client key records, JSON Lines (`KEYS_FILE`, docs/client-keys.md): must exist; re-read when it changes. */
  keysFile: Type.Optional(Type.String({ minLength: 1, maxLength: 4096 })),
  /** `redis` (`KEYS_STORE=redis`): client key records in Redis (`redisUrl` or `redis`), shared by every replica, instead of a file. */
  keysStore: Type.Optional(Type.Literal('redis')),
  /**
   * Short-lived signed browser tokens (`oarpt.…`, docs/browser.md); needs `keysFile`. `secrets`
   * (`TOKEN_SECRETS`): the first signs, every one verifies (rotation with an overlap); at least 32 characters each.
   */
  browserTokens: Type.Optional(Type.Object({
    secrets: Type.Array(Type.String({ minLength: 32, maxLength: 512, pattern: '^[\\x21-\\x7e]+$' }), { minItems: 1, maxItems: 16 })
  }, { additionalProperties: false })),
  /** The admin API (docs/admin-api.md): served only when set; `key` at least 32 characters and none of `proxyKeys`. */
  admin: Type.Optional(Type.Object({
    /** ADMIN_KEY, presented as `Authorization: Bearer` or `x-admin-key`. */
    key: Secret,
    /** Where its routes live (ADMIN_PREFIX). Default `/admin`. */
    prefix: Type.Optional(Type.String({ minLength: 2, maxLength: 300 }))
  }, { additionalProperties: false })),
  /** Extra CA certificate(s), PEM, trusted for the upstream TLS connection. Verification is never turned off. */
  upstreamCa: Type.Optional(Type.String({ minLength: 1 })),
  /** Largest JSON request body in bytes. Default 10 MiB. */
  bodyLimit: Type.Optional(Type.Integer({ minimum: 1024, maximum: 256 * 1024 * 1024 })),
  /** Request-body bytes held at once, over every request being read or served; past it a body is refused with 503 before it is read. Default 256 MiB; at least `bodyLimit`; 0 = no cap. */
  maxBodyBytesInFlight: Type.Optional(Type.Integer({ minimum: 0, maximum: 64 * 1024 * 1024 * 1024 })),
  /** Largest upload (audio, images), per file and per request, below each endpoint's own cap from OpenAI's limits (audio 25 MiB, images 50 MiB each). Absent: those caps. */
  maxUploadBytes: Type.Optional(Type.Integer({ minimum: 1024, maximum: 1024 * 1024 * 1024 })),
  /** Deepest JSON nesting accepted. Default 64. */
  maxJsonDepth: Type.Optional(Type.Integer({ minimum: 4, maximum: 1024 })),
  /** Time to connect to upstream. Default 10 s. */
  upstreamConnectTimeoutMs: Type.Optional(Millis),
  /** Upstream key health checks (`KEY_HEALTH_INTERVAL_MS`): every key at start-up and then this often; 0 turns them off. Default: off in the library, 5 minutes in the standalone server. */
  keyHealth: Type.Optional(Type.Object({ intervalMs: Type.Optional(Type.Integer({ minimum: 0, maximum: 24 * 3600 * 1000 })) }, { additionalProperties: false })),
  /** Time for upstream to send response headers (a non-streamed reasoning call can take minutes). Default 10 min. */
  upstreamHeadersTimeoutMs: Type.Optional(Millis),
  /** Longest silence between two body chunks from upstream. Default 5 min. */
  upstreamIdleTimeoutMs: Type.Optional(Millis),
  /** Cut a response the client has taken nothing of for this long while data waits (ms; 0 = never). Default 60 s. */
  streamStallTimeoutMs: Type.Optional(Type.Integer({ minimum: 0, maximum: 24 * 3600 * 1000 })),
  /** Longest a proxied call may last, from forwarding to its last byte (ms; 0 = no cap). Default 1 h. */
  streamMaxDurationMs: Type.Optional(Type.Integer({ minimum: 0, maximum: 7 * 24 * 3600 * 1000 })),
  /** Endpoint ids to expose (see `schemas/endpoints.ts`). Default: all. */
  endpoints: Type.Optional(Type.Array(Type.String({ minLength: 1 }))),
  /** Also serve every endpoint without the `/v1` prefix. Default true. */
  unprefixedRoutes: Type.Optional(Type.Boolean()),
  /** Demo mode: mark every response with `x-oai-proxy-demo: true`. */
  demo: Type.Optional(Type.Boolean()),
  /** Per-client limits (ARCHITECTURE §3 steps 3 and 7). Every limit is off at 0. */
  rateLimit: Type.Optional(RateLimitOptionsSchema),
  /** Keep limits in Redis at this URL (`REDIS_URL`), shared by every replica. Default: in memory. */
  redisUrl: Type.Optional(Type.String({ minLength: 1 })),
  /** Or a host's own ioredis client (never closed by the proxy). Wins over `redisUrl`. */
  redis: Type.Optional(Type.Unsafe<Redis>(Type.Any())),
  /** Prompt filter: phrase, regex and script rules, non-text inputs, the moderation check, how refusals look (`plugins/prompt-filter/schema.ts`). Absent: off. */
  filter: Type.Optional(PromptFilterOptionsSchema),
  /** Output guardrail: phrase and regex rules applied to generated text, streamed or whole (`plugins/prompt-filter/schema.ts`). Absent: off. */
  outputFilter: Type.Optional(OutputFilterOptionsSchema),
  /** Request policy: model allowlist, output-token and `n` caps, `store` forced off, stored-data and hosted-tool refusals (`plugins/request-policy/schema.ts`). Applies with its defaults when absent. */
  policy: Type.Optional(RequestPolicyOptionsSchema),
  /** The Realtime API over WebSocket, `GET /v1/realtime?model=…` (docs/realtime.md). Sessions last at most `streamMaxDurationMs`. */
  realtime: Type.Optional(Type.Object({
    /** Serve it. Default false: its audio is billed at a premium and the output guardrail cannot read it. */
    enabled: Type.Optional(Type.Boolean()),
    /** Largest WebSocket message either way, in bytes; a larger one closes the session with 1009. Default 16 MiB. */
    maxFrameBytes: Type.Optional(Type.Integer({ minimum: 1024, maximum: 256 * 1024 * 1024 })),
    /** Close a session whose client has sent nothing for this long (ms; 0 = never). Default 10 min. */
    idleTimeoutMs: Type.Optional(Type.Integer({ minimum: 0, maximum: 24 * 3600 * 1000 }))
  }, { additionalProperties: false })),
  /** Log an excerpt of refused prompts. Default false: refusals are logged with rule and parameter only. */
  logPrompts: Type.Optional(Type.Boolean()),
  /** Prometheus metrics at `/metrics` (docs/metrics.md): off unless `enabled`; needs `key` or `port`. */
  metrics: Type.Optional(MetricsOptionsSchema),
  /** The status page at `/` (docs/status-page.md). Default true; false: `/` is an unknown path. */
  statusPage: Type.Optional(Type.Boolean()),
  /**
   * Browser access (CORS). `origins`: exact origins and `https://*.example.com` patterns, anchored; `*` and
   * `null` are refused. Absent or empty: no CORS headers, browsers cannot read any answer.
   */
  cors: Type.Optional(Type.Object({
    /** Origins allowed to call the proxy from a browser. */
    origins: Type.Array(Type.String({ minLength: 1, maxLength: 256 }))
  }, { additionalProperties: false })),
  /**
   * The host app's identity check, replacing proxy keys: `(request) => { id } | null` (sync or async).
   * `null` is a 401; the id keys rate limits. Cannot be combined with `proxyKeys`.
   */
  resolveClient: Type.Optional(Type.Unsafe<ResolveClient>(Type.Function([Type.Any()], Type.Any())))
}, { additionalProperties: false })

export type OaiProxyOptions = Static<typeof OaiProxyOptionsSchema>

/**
 * The environment `server.ts` reads. Names follow ARCHITECTURE §5; the original oai-reverse-proxy's names
 * are accepted where it had one. Everything is a string here; `plugins/config/read-config.ts` turns them into options.
 */
const Int = (min: number, max: number) => Type.Optional(Type.Integer({ minimum: min, maximum: max }))

export const EnvSchema = Type.Object({
  NODE_ENV: Type.Optional(Type.String()),
  OPENAI_KEY: Type.Optional(Type.String()),
  UPSTREAM_URL: Type.Optional(Type.String()),
  OPENAI_ORGANIZATION: Type.Optional(Type.String()),
  OPENAI_PROJECT: Type.Optional(Type.String()),
  PROXY_KEY: Type.Optional(Type.String()),
  KEYS_FILE: Type.Optional(Type.String({ minLength: 1 })),
  KEYS_STORE: Type.Optional(Type.Literal('redis')),
  ADMIN_KEY: Type.Optional(Type.String()),
  ADMIN_PREFIX: Type.Optional(Type.String({ minLength: 1 })),
  /** Comma-separated browser-token secrets (docs/browser.md): the first signs, all verify. */
  TOKEN_SECRETS: Type.Optional(Type.String()),
  UPSTREAM_CA_FILE: Type.Optional(Type.String()),
  TRUST_PROXY: Type.Optional(Type.String()),
  BODY_LIMIT: Int(1024, 256 * 1024 * 1024),
  MAX_BODY_BYTES_IN_FLIGHT: Int(0, 64 * 1024 * 1024 * 1024),
  MAX_JSON_DEPTH: Int(4, 1024),
  MAX_UPLOAD_BYTES: Int(1024, 1024 * 1024 * 1024),
  HOST: Type.Optional(Type.String({ minLength: 1 })),
  PORT: Int(0, 65535),
  // A plain enum (not a union of literals) so a bad value gets one error line, not seven.
  LOG_LEVEL: Type.Optional(Type.Unsafe<'fatal' | 'error' | 'warn' | 'info' | 'debug' | 'trace' | 'silent'>({ type: 'string', enum: ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'] })),
  REQUEST_TIMEOUT_MS: Int(1000, 3600 * 1000),
  HEADERS_TIMEOUT_MS: Int(1000, 3600 * 1000),
  KEEP_ALIVE_TIMEOUT_MS: Int(1000, 3600 * 1000),
  MAX_REQUESTS_PER_SOCKET: Int(0, 1e9),
  MAX_CONNECTIONS: Int(0, 1e6),
  MAX_CONNECTIONS_PER_ADDRESS: Int(0, 1e6),
  UPSTREAM_CONNECT_TIMEOUT_MS: Int(1, 3600 * 1000),
  KEY_HEALTH_INTERVAL_MS: Int(0, 24 * 3600 * 1000),
  UPSTREAM_HEADERS_TIMEOUT_MS: Int(1, 24 * 3600 * 1000),
  UPSTREAM_IDLE_TIMEOUT_MS: Int(1, 24 * 3600 * 1000),
  STREAM_STALL_TIMEOUT_MS: Int(0, 24 * 3600 * 1000),
  STREAM_MAX_DURATION_MS: Int(0, 7 * 24 * 3600 * 1000),
  SHUTDOWN_GRACE_MS: Int(0, 3600 * 1000),
  ENDPOINTS: Type.Optional(Type.String()),
  REALTIME: Type.Optional(Type.Boolean()),
  REALTIME_MAX_FRAME_BYTES: Int(1024, 256 * 1024 * 1024),
  REALTIME_IDLE_TIMEOUT_MS: Int(0, 24 * 3600 * 1000),
  REDIS_URL: Type.Optional(Type.String({ minLength: 1 })),
  RATE_LIMIT_RPM: Int(0, 1e9),
  MODEL_RATE_LIMIT: Int(0, 1e9),
  RATE_LIMIT_WINDOW_MS: Int(1, 24 * 3600 * 1000),
  RATE_LIMIT_TPM: Int(0, 1e12),
  MAX_CONCURRENT_REQUESTS: Int(0, 1e6),
  RATE_LIMIT_FAILURES_PER_MINUTE: Int(0, 1e9),
  RATE_LIMIT_DEFAULT_OUTPUT_TOKENS: Int(1, 10_000_000),
  RATE_LIMIT_ON_STORE_ERROR: Type.Optional(Type.Unsafe<'open' | 'closed'>({ type: 'string', enum: ['open', 'closed'] })),
  NODE_TLS_REJECT_UNAUTHORIZED: Type.Optional(Type.String()),
  METRICS: Type.Optional(Type.Boolean()),
  METRICS_KEY: Type.Optional(Type.String()),
  METRICS_PORT: Int(1, 65535),
  METRICS_CLIENT_LABELS: Int(0, 10_000),
  STATUS_PAGE: Type.Optional(Type.Boolean()),
  // Prompt filter and request policy (docs/prompt-filter.md); parsed in plugins/config/filter-env.ts.
  REJECT_PHRASES: Type.Optional(Type.String()),
  OUTPUT_REJECT_PHRASES: Type.Optional(Type.String()),
  OUTPUT_FILTER_WINDOW_CHARS: Int(16, 65_536),
  REJECT_DISALLOWED: Type.Optional(Type.String()),
  REJECT_SCRIPT_MIN_CHARS: Int(1, 1_000_000),
  REJECT_SAMPLE_RATE: Type.Optional(Type.Number({ minimum: 0, maximum: 1 })),
  REJECT_MESSAGE: Type.Optional(Type.String({ minLength: 1, maxLength: 2000 })),
  REJECT_MODE: Type.Optional(Type.Unsafe<'error' | 'completion'>({ type: 'string', enum: ['error', 'completion'] })),
  REJECT_NON_TEXT: Type.Optional(Type.Boolean()),
  FILTER_MODERATIONS_INPUT: Type.Optional(Type.Boolean()),
  MODERATION_CHECK: Type.Optional(Type.Boolean()),
  MODERATION_FAIL_MODE: Type.Optional(Type.Unsafe<'open' | 'closed'>({ type: 'string', enum: ['open', 'closed'] })),
  MODERATION_MODEL: Type.Optional(Type.String({ minLength: 1, maxLength: 256 })),
  LOG_PROMPTS: Type.Optional(Type.Boolean()),
  ALLOWED_MODELS: Type.Optional(Type.String()),
  MAX_OUTPUT_TOKENS: Int(1, 100_000_000),
  MAX_N: Int(1, 128),
  ALLOWED_TOOLS: Type.Optional(Type.String()),
  ALLOWED_SERVICE_TIERS: Type.Optional(Type.String()),
  ALLOW_STORED_STATE: Type.Optional(Type.String()),
  /** Comma-separated browser origins allowed by CORS (exact, or `https://*.example.com`). */
  CORS_ORIGINS: Type.Optional(Type.String())
})
export type Env = Static<typeof EnvSchema>
