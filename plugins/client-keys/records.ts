import { hash, randomBytes } from 'node:crypto'
import { TypeCompiler, type ValueError } from '@sinclair/typebox/compiler'
import type { FastifyRequest } from 'fastify'
import { endpoints } from '../../schemas/endpoints.js'
import { CLIENT_LIMIT_FIELDS, CLIENT_QUOTA_FIELDS, ClientKeyRecordSchema, REALTIME_SCOPE, SECRET_PATTERN, type ClientKeyRecord, type ClientLimits, type ClientQuota } from './schema.js'

/*
 * Client key records: the file format (JSON Lines), the in-memory index auth reads, and the secrets.
 * Shared by the server's file store and the CLI, so both read a file the same way.
 */

const checkRecord = TypeCompiler.Compile(ClientKeyRecordSchema)

/** Endpoint ids a key may be scoped to: the endpoint table's, and the Realtime WebSocket's. */
export const SCOPE_ENDPOINT_IDS: ReadonlySet<string> = new Set([...endpoints.map((e) => e.id), REALTIME_SCOPE])

/** A file that cannot be used. The message names the line and the field, never a value (no hash, no secret). */
export class KeysFileError extends Error {
  override name = 'KeysFileError'
}

export const hashSecret = (secret: string): string => hash('sha256', secret, 'hex')

const BASE32 = 'abcdefghijklmnopqrstuvwxyz234567'

/** `oarp-` + 32 random bytes as base64url (43 characters). */
export const newSecret = (): string => `oarp-${randomBytes(32).toString('base64url')}`

/** `key_` + 12 base32 characters (60 random bits: collisions are checked anyway). */
export function newKeyId (): string {
  const bytes = randomBytes(12)
  return `key_${[...bytes].map((b) => BASE32[b & 31]).join('')}`
}

const instant = (s: string): number => (/^\d{4}-\d{2}-\d{2}/.test(s) ? Date.parse(s) : Number.NaN)

/** Check one parsed line; returns the reason it is unusable, or null. */
function problem (value: unknown): string | null {
  if (!checkRecord.Check(value)) {
    const first = checkRecord.Errors(value).First() as ValueError
    // TypeBox messages name the expectation (`Expected string`), never the value it got.
    return `${first.path === '' ? 'record' : first.path}: ${first.message}`
  }
  if (Number.isNaN(instant(value.created))) return '/created: not an ISO 8601 date'
  if (value.expires !== undefined && Number.isNaN(instant(value.expires))) return '/expires: not an ISO 8601 date'
  if (Object.values(value.revokedSubjects ?? {}).some((at) => Number.isNaN(instant(at)))) return '/revokedSubjects: not an ISO 8601 date'
  const unknown = value.scopes.endpoints?.find((id) => !SCOPE_ENDPOINT_IDS.has(id))
  if (unknown !== undefined) return `/scopes/endpoints: unknown endpoint id ${JSON.stringify(unknown.slice(0, 64))}`
  return null
}

/**
 * Parse a keys file: one JSON record per line, blank lines ignored. JSON Lines rather than one document
 * because a broken record can then be named by its line, and one edit touches one line.
 * Throws `KeysFileError` naming the first bad line.
 */
export function parseKeysFile (text: string): ClientKeyRecord[] {
  const records: ClientKeyRecord[] = []
  const ids = new Map<string, number>()
  const hashes = new Map<string, number>()
  const lines = text.split('\n')
  for (let i = 0; i < lines.length; i++) {
    const line = (lines[i] as string).trim()
    if (line === '') continue
    const n = i + 1
    let value: unknown
    try {
      value = JSON.parse(line)
    } catch {
      // Never V8's message: it quotes the line, which holds a hash.
      throw new KeysFileError(`line ${n}: not valid JSON`)
    }
    const why = problem(value)
    if (why !== null) throw new KeysFileError(`line ${n}: ${why}`)
    const record = value as ClientKeyRecord
    if (ids.has(record.id)) throw new KeysFileError(`line ${n}: duplicate id ${record.id} (also on line ${ids.get(record.id) as number})`)
    if (hashes.has(record.hash)) throw new KeysFileError(`line ${n}: the same secret as line ${hashes.get(record.hash) as number}`)
    ids.set(record.id, n)
    hashes.set(record.hash, n)
    records.push(record)
  }
  return records
}

export const serializeKeys = (records: readonly ClientKeyRecord[]): string => records.map((r) => `${JSON.stringify(r)}\n`).join('')

/** What a request learns about the key it presented: nothing secret (no hash), only what later steps check. */
export interface ClientKeyEntry {
  id: string
  name: string
  /** Null: every endpoint. */
  endpoints: ReadonlySet<string> | null
  /** Null: every model. */
  models: readonly string[] | null
  /** Infinity when the key never expires. */
  expiresMs: number
  /** The key's own requests per window, tokens per minute and concurrency (replacing the suite's). */
  limits: ClientLimits
  /** The account this key's use is charged to (itself) and its quotas over UTC calendar windows (empty when none). */
  quota: ClientQuota
  /** Browser-token subjects revoked, with the instant (ms) up to which their tokens are refused; absent when none. */
  revokedSubjects?: ReadonlyMap<string, number>
}

export interface ClientKeyLookup {
  /** The entry of a usable key; null for an unknown, disabled or expired one (the caller cannot tell which). */
  lookup: (presented: string) => ClientKeyEntry | null
}

export interface ClientKeyIndex extends ClientKeyLookup {
  /** Usable (enabled) keys, expired ones included. */
  size: number
  /** A usable key by record id; null when unknown, disabled or expired. */
  byId: (id: string) => ClientKeyEntry | null
}

/** The named fields the record sets, and only those. */
function pick<K extends string> (limits: ClientKeyRecord['limits'], names: readonly K[]): Partial<Record<K, number>> {
  const out: Partial<Record<K, number>> = {}
  for (const name of names) {
    const v = (limits as Partial<Record<K, number>> | undefined)?.[name]
    if (v !== undefined) out[name] = v
  }
  return out
}

/**
 * The lookup index: a Map from SHA-256 hex to entry, built once per load and then only read, so a reload
 * swaps one reference and a request never sees half an index.
 *
 * Why a plain Map lookup is not a timing oracle: the map is keyed by SHA-256(presented), not by the
 * presented string. Whatever timing a hash-table probe leaks (bucket, how many leading characters of two
 * hex strings agree) is about the digest of the attacker's guess; learning that SHA-256(guess) shares a few
 * leading characters with a stored digest gives no way to build a guess whose digest matches (that would be
 * a preimage attack), and the secret behind it has 256 random bits. Disabled keys are left out of the map,
 * so they take the same path as unknown ones.
 */
export function buildIndex (records: readonly ClientKeyRecord[], now: () => number = Date.now): ClientKeyIndex {
  const byHash = new Map<string, ClientKeyEntry>()
  const byId = new Map<string, ClientKeyEntry>()
  for (const r of records) {
    if (r.disabled) continue
    const entry: ClientKeyEntry = {
      id: r.id,
      name: r.name,
      endpoints: r.scopes.endpoints === undefined ? null : new Set(r.scopes.endpoints),
      models: r.scopes.models ?? null,
      expiresMs: r.expires === undefined ? Number.POSITIVE_INFINITY : instant(r.expires),
      limits: pick(r.limits, CLIENT_LIMIT_FIELDS),
      // Built once here: auth hands this object to every request of the key.
      quota: { account: r.id, quotas: pick(r.limits, CLIENT_QUOTA_FIELDS) },
      ...(r.revokedSubjects === undefined ? {} : { revokedSubjects: new Map(Object.entries(r.revokedSubjects).map(([sub, at]) => [sub, instant(at)])) })
    }
    byHash.set(r.hash, entry)
    byId.set(r.id, entry)
  }
  const usable = (entry: ClientKeyEntry | undefined): ClientKeyEntry | null => (entry === undefined || now() >= entry.expiresMs ? null : entry)
  return {
    size: byHash.size,
    lookup: (presented) => (SECRET_PATTERN.test(presented) ? usable(byHash.get(hashSecret(presented))) : null),
    byId: (id) => usable(byId.get(id))
  }
}

/** The key record behind each authenticated request (never the hash), for the scope checks after auth. */
const entryOf = new WeakMap<FastifyRequest, ClientKeyEntry>()
export const attachClientKey = (request: FastifyRequest, entry: ClientKeyEntry): void => { entryOf.set(request, entry) }
export const clientKeyOf = (request: FastifyRequest): ClientKeyEntry | undefined => entryOf.get(request)
