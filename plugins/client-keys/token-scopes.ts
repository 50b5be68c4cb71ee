import { globMatch } from '../request-policy/policy-rules.js'
import type { ClientKeyScopes } from './schema.js'
import { SCOPE_ENDPOINT_IDS, type ClientKeyEntry } from './records.js'

/*
 * What a browser token may narrow, and the one origin it is bound to. Kept apart from the token format so
 * each can be read on its own.
 */

/**
 * True when every model `pattern` can name is also matched by `outer`. The globs have `*` only, and a `*`
 * of `outer` is the only thing that can match a literal `*` in `pattern` (a plain character matches only
 * itself), so when `outer` matches `pattern` read as a plain string, each `*` of `pattern` sits inside a
 * `*` of `outer`, which then matches whatever that `*` expands to.
 */
export const globWithin = (pattern: string, outer: string): boolean => globMatch(outer, pattern)

const withinAny = (pattern: string, outer: readonly string[] | null): boolean => outer === null || outer.some((o) => globWithin(pattern, o))

/** The first of `scopes` a token may not have under this record, or null when it only narrows it. */
export function widerThan (scopes: ClientKeyScopes, entry: ClientKeyEntry): string | null {
  const endpoint = scopes.endpoints?.find((id) => !SCOPE_ENDPOINT_IDS.has(id) || (entry.endpoints !== null && !entry.endpoints.has(id)))
  if (endpoint !== undefined) return `endpoint ${JSON.stringify(endpoint.slice(0, 64))}`
  const model = scopes.models?.find((m) => !withinAny(m, entry.models))
  return model === undefined ? null : `model ${JSON.stringify(model.slice(0, 256))}`
}

/**
 * The entry a token's request is checked against: the record's scopes cut down to the token's. Computed
 * against the record as it is now, so a record narrowed after minting narrows its tokens too; a token
 * model glob the record no longer covers is dropped (fail closed) rather than widening anything.
 */
export function narrowed (entry: ClientKeyEntry, scopes: ClientKeyScopes | undefined): ClientKeyEntry {
  if (scopes === undefined) return entry
  const endpoints = scopes.endpoints === undefined
    ? entry.endpoints
    : new Set(scopes.endpoints.filter((id) => entry.endpoints === null || entry.endpoints.has(id)))
  const models = scopes.models === undefined ? entry.models : scopes.models.filter((m) => withinAny(m, entry.models))
  return { ...entry, endpoints, models }
}

/**
 * One exact browser origin, normalised as browsers send it (`scheme://host[:port]`, lowercase host,
 * default port dropped, IDN as punycode). Throws on anything else: paths, wildcards, `null`, credentials.
 */
export function normaliseOrigin (raw: string): string {
  const bad = (): Error => new Error('origin must be one exact origin such as https://app.example (scheme, host and port; no path, no wildcard)')
  if (typeof raw !== 'string' || raw.length > 256 || raw.includes('*') || !/^https?:\/\/[^/?#\s]+\/?$/i.test(raw)) throw bad()
  let url: URL
  try {
    url = new URL(raw)
  } catch {
    throw bad()
  }
  if (url.username !== '' || url.password !== '') throw bad()
  return url.origin
}
