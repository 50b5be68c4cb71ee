import { Type, type Static } from '@sinclair/typebox'

const Millis = Type.Integer({ minimum: 1, maximum: 24 * 3600 * 1000 })
const Count = Type.Integer({ minimum: 0, maximum: 1e12 })

/** The limits' options: `rateLimit` in the suite's options (plugins/config/options.ts). Every limit is off at 0. */
export const RateLimitOptionsSchema = Type.Object({
  /** Requests per client per window. Default 0 (off). */
  requestsPerWindow: Type.Optional(Count),
  /** The request window in ms. Default 60 000. */
  windowMs: Type.Optional(Millis),
  /** Prompt + output tokens per client per minute. Default 0 (off). */
  tokensPerMinute: Type.Optional(Count),
  /** Simultaneous requests per client. Default 0 (off). */
  maxConcurrent: Type.Optional(Count),
  /** Failed requests (401/404/405) per address per minute before the address is refused. Default 120; 0 = off. */
  failuresPerMinute: Type.Optional(Count),
  /** Output tokens reserved when a request sets no cap. Default 1024. */
  defaultOutputTokens: Type.Optional(Type.Integer({ minimum: 1, maximum: 10_000_000 })),
  /** Redis unreachable: `open` (default) = per-replica memory limits, `closed` = 503. */
  onStoreError: Type.Optional(Type.Union([Type.Literal('open'), Type.Literal('closed')])),
  /** Longest wait for one Redis command. Default 250 ms. */
  storeTimeoutMs: Type.Optional(Type.Integer({ minimum: 10, maximum: 10_000 })),
  /** Lease of a concurrency slot in Redis (a crashed replica's slots expire after it). Default 1 h. */
  slotLeaseMs: Type.Optional(Millis)
}, { additionalProperties: false })
export type RateLimitConfig = Static<typeof RateLimitOptionsSchema>
