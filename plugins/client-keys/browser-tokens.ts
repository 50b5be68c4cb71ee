import { createHash, createHmac, timingSafeEqual } from 'node:crypto'
import { Type, type Static } from '@sinclair/typebox'
import { TypeCompiler } from '@sinclair/typebox/compiler'
import type { OriginMatcher } from '../../lib/origins.js'
import { ClientKeyScopesSchema, KEY_ID_PATTERN, type ClientKeyScopes, type OaiProxyClient } from './schema.js'
import type { ClientKeyEntry } from './records.js'
import { narrowed, normaliseOrigin, widerThan } from './token-scopes.js'

/*
 * Short-lived browser tokens (docs/browser.md): `oarpt.<base64url(JSON payload)>.<base64url(HMAC-SHA256)>`,
 * signed with the first of `browserTokens.secrets` and checked against all of them (rotation with an
 * overlap). Self-contained: verifying reads no store for the token itself, only the client key record it
 * names (its scopes, limits and quotas are the token's class), so disabling that record or revoking the
 * subject in it ends every such token within the store's reload.
 */

export const TOKEN_PREFIX = 'oarpt.'
/** Longest token accepted or minted; a longer one is refused before any hashing. */
export const MAX_TOKEN_LENGTH = 4096
export const DEFAULT_TTL_SECONDS = 15 * 60
const MAX_TTL_SECONDS = 24 * 3600
/** How far in the future `iat` may be (the minter's clock ahead of ours). */
const CLOCK_SKEW_SECONDS = 30
export const MIN_SECRET_LENGTH = 32

const SUB_PATTERN = '^[\\x21-\\x7e]{1,128}$'
const Seconds = Type.Integer({ minimum: 0, maximum: 1e11 })

export const BrowserTokenPayloadSchema = Type.Object({
  v: Type.Literal(1),
  /** The signed-in user, as the minter names them: printable ASCII, no spaces, 1 to 128 characters. */
  sub: Type.String({ pattern: SUB_PATTERN }),
  /** The client key record that is this token's class. */
  key: Type.String({ pattern: KEY_ID_PATTERN }),
  iat: Seconds,
  exp: Seconds,
  /** The one origin whose pages may use the token. */
  origin: Type.String({ minLength: 1, maxLength: 256 }),
  scopes: Type.Optional(ClientKeyScopesSchema),
  /** Which secret signed it (a fingerprint, not the secret), to follow a rotation. */
  kid: Type.Optional(Type.String({ pattern: '^[A-Za-z0-9_-]{1,32}$' }))
}, { additionalProperties: false })
export type BrowserTokenPayload = Static<typeof BrowserTokenPayloadSchema>
const checkPayload = TypeCompiler.Compile(BrowserTokenPayloadSchema)

/** What a backend asks for (`app.oaiProxyMintToken`, `keys token`, `POST /admin/tokens`). */
export interface MintTokenOptions {
  sub: string
  /** A client key record id (`key_…`). */
  key: string
  origin: string
  /** Default 900 (15 minutes); at most 86 400 (24 hours). */
  ttlSeconds?: number
  /** Only narrower than the record's. */
  scopes?: ClientKeyScopes
}
export interface MintedToken { token: string, expiresAt: string }

/** A token that cannot be minted; the message says why (never a secret). A 400 when a route throws it. */
export class BrowserTokenError extends Error {
  override name = 'BrowserTokenError'
  statusCode = 400
}

/** The usable record by id: `app.oaiProxyClientKeys.byId`. */
export type RecordLookup = (id: string) => ClientKeyEntry | null

const sign = (secret: string, body: string): string => createHmac('sha256', secret).update(TOKEN_PREFIX + body).digest('base64url')
export const secretId = (secret: string): string => createHash('sha256').update(`oarpt-kid\0${secret}`).digest('base64url').slice(0, 8)
/** The client id of a token's requests: its record and a hash of the subject (stable, and no user name in logs). */
export const tokenClientId = (key: string, sub: string): string => `${key}:${createHash('sha256').update(sub).digest('hex').slice(0, 16)}`

/** Mint a token; throws `BrowserTokenError` when the request is not one the proxy would honour. */
export function mintBrowserToken (opts: MintTokenOptions, secrets: readonly string[], lookup: RecordLookup, extra: { now?: number, originAllowed?: OriginMatcher } = {}): MintedToken {
  const fail = (why: string): never => { throw new BrowserTokenError(`cannot mint a browser token: ${why}`) }
  const secret = secrets[0] ?? fail('no browserTokens.secrets (TOKEN_SECRETS) configured')
  if (typeof opts.sub !== 'string' || !new RegExp(SUB_PATTERN).test(opts.sub)) fail('sub must be 1 to 128 printable ASCII characters without spaces')
  const entry = (typeof opts.key === 'string' && new RegExp(KEY_ID_PATTERN).test(opts.key) ? lookup(opts.key) : null) ?? fail('key must name an enabled, unexpired client key record (key_…)')
  let origin = ''
  try {
    origin = normaliseOrigin(opts.origin)
  } catch (err) {
    fail((err as Error).message)
  }
  if (extra.originAllowed !== undefined && !extra.originAllowed(origin)) fail(`origin ${origin} is not in the CORS allowlist (CORS_ORIGINS), so its pages could not read any answer`)
  const ttl = opts.ttlSeconds ?? DEFAULT_TTL_SECONDS
  if (!Number.isInteger(ttl) || ttl < 1 || ttl > MAX_TTL_SECONDS) fail(`ttlSeconds must be a whole number from 1 to ${MAX_TTL_SECONDS} (24 hours)`)
  const iat = Math.floor((extra.now ?? Date.now()) / 1000)
  const exp = Math.min(iat + ttl, Math.floor(entry.expiresMs / 1000))
  const revoked = entry.revokedSubjects?.get(opts.sub)
  if (revoked !== undefined && iat * 1000 <= revoked) fail(`the subject's tokens are revoked up to ${new Date(revoked).toISOString()}; mint after that`)
  const payload: BrowserTokenPayload = { v: 1, sub: opts.sub, key: entry.id, iat, exp, origin, kid: secretId(secret) }
  if (opts.scopes !== undefined) {
    payload.scopes = opts.scopes
    if (!checkPayload.Check(payload)) fail('scopes must be { endpoints?: string[], models?: string[] }')
    const wider = widerThan(opts.scopes, entry)
    if (wider !== null) fail(`scopes may only narrow the record's, and its scopes do not allow ${wider}`)
  }
  const body = Buffer.from(JSON.stringify(payload)).toString('base64url')
  const token = `${TOKEN_PREFIX}${body}.${sign(secret, body)}`
  if (token.length > MAX_TOKEN_LENGTH) fail(`the token would be longer than ${MAX_TOKEN_LENGTH} characters; list fewer scopes`)
  return { token, expiresAt: new Date(exp * 1000).toISOString() }
}

/** Why a token was refused, for the server's log only: the client always gets the same 401 (but `origin`). */
export type Refusal = 'malformed' | 'signature' | 'payload' | 'expired' | 'future' | 'record' | 'revoked' | 'origin'
export type Verdict = { ok: true, client: OaiProxyClient, entry: ClientKeyEntry } | { ok: false, reason: Refusal }

const SHAPE = /^oarpt\.([A-Za-z0-9_-]+)\.([A-Za-z0-9_-]{43})$/

export interface BrowserTokenVerifier {
  /** Check a presented `oarpt.…` token against the request's `Origin` header. */
  verify: (token: string, origin: string | undefined) => Verdict
  /** The client id of a token that verifies, else null (the abuse guard's `identify`). */
  idOf: (token: string, origin: string | undefined) => string | null
}

/** The verifier auth uses. `now` is for tests. */
export function browserTokenVerifier (secrets: readonly string[], lookup: RecordLookup, now: () => number = Date.now): BrowserTokenVerifier {
  // A copy: a caller's array changed later must not change which secrets verify.
  const keys = [...secrets]
  function verify (token: string, origin: string | undefined): Verdict {
    const m = token.length <= MAX_TOKEN_LENGTH ? SHAPE.exec(token) : null
    if (m === null) return { ok: false, reason: 'malformed' }
    const [, body, given] = m as unknown as [string, string, string]
    // Compared as base64url text, not decoded bytes: the last of 43 characters carries 2 unused bits, so
    // decoding would accept four spellings of one signature. Every secret is tried, with no early exit.
    let good = false
    for (const secret of keys) good = timingSafeEqual(Buffer.from(sign(secret, body)), Buffer.from(given)) || good
    if (!good) return { ok: false, reason: 'signature' }
    let payload: unknown
    try {
      payload = JSON.parse(Buffer.from(body, 'base64url').toString('utf8'))
    } catch {
      return { ok: false, reason: 'payload' }
    }
    if (!checkPayload.Check(payload) || payload.exp - payload.iat > MAX_TTL_SECONDS) return { ok: false, reason: 'payload' }
    const t = now() / 1000
    if (t >= payload.exp) return { ok: false, reason: 'expired' }
    if (payload.iat > t + CLOCK_SKEW_SECONDS) return { ok: false, reason: 'future' }
    const entry = lookup(payload.key)
    if (entry === null) return { ok: false, reason: 'record' }
    const revoked = entry.revokedSubjects?.get(payload.sub)
    if (revoked !== undefined && payload.iat * 1000 <= revoked) return { ok: false, reason: 'revoked' }
    // Last, so "another origin" is said only of a token that is otherwise good (the origin is in its
    // readable payload anyway: saying so tells a holder nothing new).
    if (origin !== payload.origin) return { ok: false, reason: 'origin' }
    const client: OaiProxyClient = {
      id: tokenClientId(entry.id, payload.sub),
      kind: 'browser-token',
      limits: entry.limits,
      quota: entry.quota
    }
    return { ok: true, client, entry: narrowed(entry, payload.scopes) }
  }
  return {
    verify,
    idOf: (token, origin) => {
      const v = verify(token, origin)
      return v.ok ? v.client.id : null
    }
  }
}
