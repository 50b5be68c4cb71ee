import { Type, type Static } from '@sinclair/typebox'
import { ClientKeyLimitsSchema, ClientKeyScopesSchema, KEY_ID_PATTERN } from '../client-keys/schema.js'

/*
 * The admin API's bodies (docs/admin-api.md). Requests are checked here for shape only; the rules on
 * values (a known endpoint id, an expiry in the future) are plugins/client-keys/operations.ts', shared
 * with the `keys` CLI. Responses are serialised through these schemas, so a field not named here (the
 * record's hash) cannot reach a client even by mistake.
 */

const Name = Type.String({ minLength: 1, maxLength: 200 })
/** ISO 8601; a date alone is midnight UTC. */
const Instant = Type.String({ minLength: 10, maxLength: 40 })
const Metadata = Type.Record(Type.String({ maxLength: 200 }), Type.String({ maxLength: 2000 }), { maxProperties: 100 })

export const KeyIdParamsSchema = Type.Object({ id: Type.String({ pattern: KEY_ID_PATTERN }) })
export type KeyIdParams = Static<typeof KeyIdParamsSchema>

export const CreateKeyBodySchema = Type.Object({
  name: Name,
  /** Absent: every endpoint and every model the proxy's own policy allows. */
  scopes: Type.Optional(ClientKeyScopesSchema),
  expires: Type.Optional(Instant),
  limits: Type.Optional(ClientKeyLimitsSchema),
  metadata: Type.Optional(Metadata)
}, { additionalProperties: false })
export type CreateKeyBody = Static<typeof CreateKeyBodySchema>

/** Each field given replaces that field whole; `expires: null` removes the expiry, `limits: {}` every limit. */
export const UpdateKeyBodySchema = Type.Object({
  name: Type.Optional(Name),
  expires: Type.Optional(Type.Union([Instant, Type.Null()])),
  scopes: Type.Optional(ClientKeyScopesSchema),
  limits: Type.Optional(ClientKeyLimitsSchema),
  metadata: Type.Optional(Metadata)
}, { additionalProperties: false, minProperties: 1 })
export type UpdateKeyBody = Static<typeof UpdateKeyBodySchema>

const Count = Type.Integer({ minimum: 0 })

/** A key as the API shows it: never the hash, never the secret (`prefix` is for recognising it, not for calling). */
export const KeyViewSchema = Type.Object({
  id: Type.String(),
  name: Type.String(),
  prefix: Type.String(),
  created: Type.String(),
  expires: Type.Union([Type.String(), Type.Null()]),
  disabled: Type.Boolean(),
  scopes: Type.Object({ endpoints: Type.Optional(Type.Array(Type.String())), models: Type.Optional(Type.Array(Type.String())) }),
  limits: Type.Object({
    requestsPerWindow: Type.Optional(Count),
    tokensPerMinute: Type.Optional(Count),
    maxConcurrent: Type.Optional(Count),
    tokensPerDay: Type.Optional(Count),
    tokensPerMonth: Type.Optional(Count),
    requestsPerDay: Type.Optional(Count)
  }),
  metadata: Type.Record(Type.String(), Type.String())
})
export type KeyViewBody = Static<typeof KeyViewSchema>

/** Create and rotate: the view and the secret, which is shown this once and never stored. */
export const KeyWithSecretSchema = Type.Composite([KeyViewSchema, Type.Object({ secret: Type.String() })])

export const KeyListSchema = Type.Object({ object: Type.Literal('list'), data: Type.Array(KeyViewSchema) })

export const DeletedKeySchema = Type.Object({ id: Type.String(), deleted: Type.Literal(true) })

/** A key's quotas and what it has used of them in the current UTC day and month (plugins/limits/limit-store.ts `QuotaUsage`). */
export const KeyUsageSchema = Type.Object({
  id: Type.String(),
  quotas: Type.Object({ tokensPerDay: Type.Optional(Count), tokensPerMonth: Type.Optional(Count), requestsPerDay: Type.Optional(Count) }),
  usage: Type.Object({
    day: Type.Object({ start: Type.String(), resetAt: Type.String(), tokens: Count, requests: Count }),
    month: Type.Object({ start: Type.String(), resetAt: Type.String(), tokens: Count })
  })
})

/**
 * `POST /admin/tokens`: the fields of `app.oaiProxyMintToken` and of `keys token --json`, camelCase like
 * the rest of this API (`limits.tokensPerDay`, `usage.day.resetAt`). Shape only: the rules (sub's
 * characters, the origin's form and CORS, the lifetime, narrower scopes) are the minter's.
 */
export const MintTokenBodySchema = Type.Object({
  key: Type.String({ pattern: KEY_ID_PATTERN }),
  sub: Type.String({ minLength: 1, maxLength: 128 }),
  origin: Type.String({ minLength: 1, maxLength: 256 }),
  /** Default 900; at most 86 400. */
  ttlSeconds: Type.Optional(Type.Integer()),
  scopes: Type.Optional(ClientKeyScopesSchema)
}, { additionalProperties: false })
export type MintTokenBody = Static<typeof MintTokenBodySchema>

/** The token (shown this once, never stored or logged), when it expires, and what it was minted for (the origin normalised). */
export const MintedTokenSchema = Type.Object({ token: Type.String(), expiresAt: Type.String(), key: Type.String(), sub: Type.String(), origin: Type.String() })
