import { Type, type Static } from '@sinclair/typebox'

/*
 * A client key record: one line of the `KEYS_FILE` (docs/client-keys.md). The secret itself is never
 * stored: only its SHA-256 (`hash`) and a short display `prefix`. Fields added later (usage, rotation)
 * must be optional so older files keep loading.
 */

const Count = Type.Integer({ minimum: 0, maximum: 1e12 })

/** `key_` + 12 characters of lower-case base32: short, stable, not secret; the client id in limits and logs. */
export const KEY_ID_PATTERN = '^key_[a-z2-7]{12}$'
/** `oarp-` + 43 base64url characters: 32 random bytes, shown once at creation. */
export const SECRET_PATTERN = /^oarp-[A-Za-z0-9_-]{43}$/
export const SECRET_PREFIX = 'oarp-'
/** Characters of the secret kept for display: `oarp-` + 7, i.e. 42 of its 256 bits; the other 214 stay unknown. */
export const DISPLAY_PREFIX_LENGTH = 12
/** The id of the Realtime WebSocket route in `scopes.endpoints` (it has no row in the endpoint table). */
export const REALTIME_SCOPE = 'realtime'

export const ClientKeyScopesSchema = Type.Object({
  /** Endpoint ids (`schemas/endpoints.ts`, plus `realtime` for the WebSocket). Absent: every served endpoint. */
  endpoints: Type.Optional(Type.Array(Type.String({ minLength: 1, maxLength: 64 }), { maxItems: 64 })),
  /** Model globs, as `ALLOWED_MODELS` (`gpt-4.1*`). Absent: every model the proxy's policy allows. */
  models: Type.Optional(Type.Array(Type.String({ minLength: 1, maxLength: 256 }), { maxItems: 256 }))
}, { additionalProperties: false })
export type ClientKeyScopes = Static<typeof ClientKeyScopesSchema>

/** The record's limit fields that replace the suite-wide limits for one client (the rate limit and the token budget read them). */
export const CLIENT_LIMIT_FIELDS = ['requestsPerWindow', 'tokensPerMinute', 'maxConcurrent'] as const
export type ClientLimits = Pick<ClientKeyLimits, typeof CLIENT_LIMIT_FIELDS[number]>

/** The record's quota fields, over UTC calendar windows (a day from 00:00 UTC, a month from the 1st). */
export const CLIENT_QUOTA_FIELDS = ['tokensPerDay', 'tokensPerMonth', 'requestsPerDay'] as const
export type ClientQuotas = Pick<ClientKeyLimits, typeof CLIENT_QUOTA_FIELDS[number]>

/** The account a client's use is charged to, and that account's quotas. */
export interface ClientQuota {
  account: string
  quotas: ClientQuotas
}

/** Who is calling. `id` keys rate limits and logs; it never contains a secret. */
export interface OaiProxyClient {
  id: string
  /** `host`: identified by the host app's `resolveClient`; `client-key`: a record of the keys file (`id` is the record's id). */
  kind: 'proxy-key' | 'anonymous' | 'host' | 'client-key' | 'browser-token'
  /** This client's own limits, replacing the suite's where set (a client key's record; 0 turns one off for it). */
  limits?: ClientLimits
  /** The account its use is charged to and that account's quotas (a client key's record; several clients may share one). */
  quota?: ClientQuota
}

/** Per-key limits (replacing the suite's for that key) and quotas; 0 turns a limit off for the key, a quota of 0 allows nothing. */
export const ClientKeyLimitsSchema = Type.Object({
  requestsPerWindow: Type.Optional(Count),
  tokensPerMinute: Type.Optional(Count),
  maxConcurrent: Type.Optional(Count),
  tokensPerDay: Type.Optional(Count),
  tokensPerMonth: Type.Optional(Count),
  requestsPerDay: Type.Optional(Count)
}, { additionalProperties: false })
export type ClientKeyLimits = Static<typeof ClientKeyLimitsSchema>

export const ClientKeyRecordSchema = Type.Object({
  id: Type.String({ pattern: KEY_ID_PATTERN }),
  name: Type.String({ minLength: 1, maxLength: 200 }),
  /**
   * SHA-256 of the whole secret, lower-case hex. A fast hash is the right one here: the secret is 32 random
   * bytes, so there is no dictionary to grind and a slow KDF (bcrypt, scrypt) would only make every request
   * pay for a brute force that 2^256 already rules out. The hash is not a credential either: a client that
   * presents it gets it hashed again.
   */
  hash: Type.String({ pattern: '^[0-9a-f]{64}$' }),
  /** The secret's first characters, to recognise it in a list; never enough to use. */
  prefix: Type.String({ minLength: 1, maxLength: DISPLAY_PREFIX_LENGTH }),
  /** ISO 8601, UTC. */
  created: Type.String({ minLength: 10, maxLength: 40 }),
  /** ISO 8601, UTC; from this instant the key is refused like an unknown one. */
  expires: Type.Optional(Type.String({ minLength: 10, maxLength: 40 })),
  disabled: Type.Boolean(),
  scopes: ClientKeyScopesSchema,
  limits: Type.Optional(ClientKeyLimitsSchema),
  /** Browser tokens (docs/browser.md) for these subjects issued at or before the ISO 8601 instant are refused. */
  revokedSubjects: Type.Optional(Type.Record(Type.String({ minLength: 1, maxLength: 128 }), Type.String({ minLength: 10, maxLength: 40 }), { maxProperties: 100_000 })),
  metadata: Type.Record(Type.String({ maxLength: 200 }), Type.String({ maxLength: 2000 }))
}, { additionalProperties: false })
export type ClientKeyRecord = Static<typeof ClientKeyRecordSchema>
