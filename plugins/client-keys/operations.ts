import { TypeCompiler, type ValueError } from '@sinclair/typebox/compiler'
import { ClientKeyRecordSchema, DISPLAY_PREFIX_LENGTH, type ClientKeyLimits, type ClientKeyRecord, type ClientKeyScopes } from './schema.js'
import { hashSecret, newKeyId, newSecret, SCOPE_ENDPOINT_IDS } from './records.js'

/*
 * What can be done to client key records, as pure functions on the records array: the `keys` CLI and the
 * admin API both call these inside the store's read-change-write, so a rule (a name's length, a known
 * endpoint id, an expiry in the future) lives in one place. Values are checked before anything is
 * written; a thrown error aborts the change with nothing written.
 */

/** The new records and what to hand back: the shape the store's `update(change)` takes (store.ts). */
export interface KeyRecordChange<T> {
  records: ClientKeyRecord[]
  result: T
}

/**
 * A value the caller gave is wrong: the CLI exits 2, the admin API answers 400. `field` names the record's
 * field (`name`, `scopes.models`, `limits.tokensPerDay`); `describe` words the message with the caller's
 * own name for it (`--models` on the command line).
 */
export class KeyInputError extends Error {
  override name = 'KeyInputError'
  readonly field: string
  readonly #reason: string
  readonly #joiner: string

  constructor (field: string, reason: string, joiner = ': ') {
    super(`${field}${joiner}${reason}`)
    this.field = field
    this.#reason = reason
    this.#joiner = joiner
  }

  describe (label: string): string {
    return `${label}${this.#joiner}${this.#reason}`
  }
}

/** No record has this id: the CLI exits 1, the admin API answers 404. */
export class KeyNotFoundError extends Error {
  override name = 'KeyNotFoundError'
  readonly id: string
  constructor (id: string) {
    super(`no key ${id}`)
    this.id = id
  }
}

/** What a new key is made of; the secret, hash, prefix, id and creation time are the operation's. */
export interface NewKeyParams {
  name: string
  models?: string[] | undefined
  endpoints?: string[] | undefined
  /** ISO 8601 (a date alone is midnight UTC); must be in the future. */
  expires?: string | undefined
  limits?: ClientKeyLimits | undefined
  metadata?: Record<string, string> | undefined
}

/** A change to an existing key. Each field given replaces that field whole; `expires: null` removes the expiry, `limits: {}` every limit. */
export interface KeyChanges {
  name?: string | undefined
  expires?: string | null | undefined
  scopes?: ClientKeyScopes | undefined
  limits?: ClientKeyLimits | undefined
  metadata?: Record<string, string> | undefined
}

/** A checked new key, not yet in the records (it gets its id there). The secret is handed out once. */
export interface KeyDraft {
  fields: Omit<ClientKeyRecord, 'id'>
  secret: string
}

const checkRecord = TypeCompiler.Compile(ClientKeyRecordSchema)
/** Any well-formed id: drafts are checked against the record schema before they have their own. */
const PLACEHOLDER_ID = 'key_aaaaaaaaaaaa'

/** `/limits/tokensPerDay` -> `limits.tokensPerDay`; `/scopes/models/3` -> `scopes.models`; `/metadata/team` -> `metadata`. */
function fieldOf (path: string): string {
  const parts = path.split('/').slice(1, 3)
  return parts[0] === 'limits' || parts[0] === 'scopes' ? parts.join('.') : parts[0] as string
}

function valid (record: ClientKeyRecord): ClientKeyRecord {
  if (!checkRecord.Check(record)) {
    const first = checkRecord.Errors(record).First() as ValueError
    // TypeBox messages name the expectation, never the value.
    throw new KeyInputError(fieldOf(first.path), first.message)
  }
  return record
}

function checkName (name: string): string {
  const trimmed = name.trim()
  if (trimmed.length === 0 || trimmed.length > 200) throw new KeyInputError('name', 'is required (1 to 200 characters)', ' ')
  return trimmed
}

function checkScopes (scopes: ClientKeyScopes): ClientKeyScopes {
  const { endpoints, models } = scopes
  if (models?.length === 0) throw new KeyInputError('scopes.models', 'give at least one model or glob')
  const unknown = endpoints?.find((id) => !SCOPE_ENDPOINT_IDS.has(id))
  if (unknown !== undefined || endpoints?.length === 0) throw new KeyInputError('scopes.endpoints', `unknown endpoint id ${JSON.stringify(unknown ?? '')}; known: ${[...SCOPE_ENDPOINT_IDS].join(', ')}`)
  return { ...(endpoints === undefined ? {} : { endpoints }), ...(models === undefined ? {} : { models }) }
}

function checkExpires (expires: string, now: number): string {
  const ms = /^\d{4}-\d{2}-\d{2}/.test(expires) ? Date.parse(expires) : Number.NaN
  if (Number.isNaN(ms)) throw new KeyInputError('expires', 'give an ISO 8601 date, e.g. 2027-01-01 (UTC midnight)')
  if (ms <= now) throw new KeyInputError('expires', 'that date has passed')
  return new Date(ms).toISOString()
}

const find = (records: readonly ClientKeyRecord[], id: string): ClientKeyRecord => {
  const found = records.find((r) => r.id === id)
  if (found === undefined) throw new KeyNotFoundError(id)
  return found
}

const replace = (records: readonly ClientKeyRecord[], old: ClientKeyRecord, next: ClientKeyRecord): ClientKeyRecord[] => records.map((r) => (r === old ? next : r))

const material = (secret: string) => ({ hash: hashSecret(secret), prefix: secret.slice(0, DISPLAY_PREFIX_LENGTH) })

/** Check a new key and make its secret. Throws `KeyInputError`. Call it before taking the store's lock. */
export function draftKey (params: NewKeyParams, now = Date.now()): KeyDraft {
  const name = checkName(params.name)
  const scopes = checkScopes({ endpoints: params.endpoints, models: params.models })
  const expires = params.expires === undefined ? undefined : checkExpires(params.expires, now)
  const limits = params.limits ?? {}
  const secret = newSecret()
  const fields: Omit<ClientKeyRecord, 'id'> = {
    name,
    ...material(secret),
    created: new Date(now).toISOString(),
    ...(expires === undefined ? {} : { expires }),
    disabled: false,
    scopes,
    ...(Object.keys(limits).length === 0 ? {} : { limits }),
    metadata: params.metadata ?? {}
  }
  valid({ id: PLACEHOLDER_ID, ...fields })
  return { fields, secret }
}

/** Add a drafted key under a fresh id (checked against the ids in use). */
export function addKey (records: readonly ClientKeyRecord[], draft: KeyDraft): KeyRecordChange<{ record: ClientKeyRecord, secret: string }> {
  let id: string
  do id = newKeyId(); while (records.some((r) => r.id === id))
  const record: ClientKeyRecord = { id, ...draft.fields }
  return { records: [...records, record], result: { record, secret: draft.secret } }
}

/** Change a key's name, expiry, scopes, limits or metadata; `changed` names the fields given. */
export function updateKey (records: readonly ClientKeyRecord[], id: string, changes: KeyChanges, now = Date.now()): KeyRecordChange<{ record: ClientKeyRecord, changed: string[] }> {
  const found = find(records, id)
  const next: ClientKeyRecord = { ...found }
  if (changes.name !== undefined) next.name = checkName(changes.name)
  if (changes.expires === null) delete next.expires
  else if (changes.expires !== undefined) next.expires = checkExpires(changes.expires, now)
  if (changes.scopes !== undefined) next.scopes = checkScopes(changes.scopes)
  if (changes.limits !== undefined) {
    if (Object.keys(changes.limits).length === 0) delete next.limits
    else next.limits = changes.limits
  }
  if (changes.metadata !== undefined) next.metadata = changes.metadata
  valid(next)
  const changed = Object.keys(changes).filter((k) => (changes as Record<string, unknown>)[k] !== undefined)
  return { records: replace(records, found, next), result: { record: next, changed } }
}

/** Disable (revoke) or enable a key. */
export function setDisabled (records: readonly ClientKeyRecord[], id: string, disabled: boolean): KeyRecordChange<{ record: ClientKeyRecord }> {
  const found = find(records, id)
  const record = { ...found, disabled }
  return { records: replace(records, found, record), result: { record } }
}

/** A new secret for the same id, scopes and limits: the old secret stops working as soon as the store is reloaded. */
export function rotateKey (records: readonly ClientKeyRecord[], id: string): KeyRecordChange<{ record: ClientKeyRecord, secret: string }> {
  const found = find(records, id)
  const secret = newSecret()
  const record = { ...found, ...material(secret) }
  return { records: replace(records, found, record), result: { record, secret } }
}

export function removeKey (records: readonly ClientKeyRecord[], id: string): KeyRecordChange<{ record: ClientKeyRecord }> {
  const found = find(records, id)
  return { records: records.filter((r) => r !== found), result: { record: found } }
}

/** What a caller may see of a record: every field named here, never the hash (and the secret is never stored). */
export const keyView = (r: ClientKeyRecord) => ({
  id: r.id,
  name: r.name,
  prefix: r.prefix,
  created: r.created,
  expires: r.expires ?? null,
  disabled: r.disabled,
  scopes: r.scopes,
  limits: r.limits ?? {},
  metadata: r.metadata
})
