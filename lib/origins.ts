/*
 * Which browser origins may call the proxy (CORS_ORIGINS / `cors.origins`). Two forms only:
 *   - an exact origin: `https://app.example.com`, `http://127.0.0.1:5173`
 *   - a subdomain pattern: `https://*.example.com`, `*.example.com` (no scheme means https),
 *     `http://*.dev.example.com:8080`; `*` stands for one or more whole DNS labels, never for the
 *     registrable domain itself, so `https://evil-example.com` and `https://example.com.evil.net` never match.
 * Matching is on the raw `Origin` header, anchored at both ends. `Origin: null` (sandboxed frames, file://,
 * some redirects) never matches, and `*` alone is refused: list the origins you serve.
 */

export type OriginMatcher = (origin: string | undefined) => boolean

/** Printable ASCII, no spaces, bounded: the `Origin` header of a real browser is always this. */
const ORIGIN_CHARS = /^[\x21-\x7e]{1,256}$/
/** Configured entries may be written with Unicode host names (the URL parser turns them into punycode). */
const ENTRY_CHARS = /^[^\s\p{Cc}]{1,256}$/u
/** One DNS label as browsers serialise it (lowercase, punycode for IDNs). */
const LABEL = '[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?'
/** Stands in for `*` while the URL parser normalises the rest of a pattern; any valid label would do. */
const PLACEHOLDER = 'oai-proxy-wildcard'

const escape = (s: string): string => s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')

/** Parse one entry into a normalised origin (`scheme://host[:port]`), or explain why it is not one. */
function parseEntry (entry: string): { origin: string, wildcard: boolean } {
  const raw = entry.trim()
  if (raw === '*') throw new Error('"*" (any origin) is not supported; list the origins, or patterns like https://*.example.com')
  if (raw === 'null') throw new Error('"null" is not an origin a proxy should trust (sandboxed frames and file:// pages send it)')
  if (!ENTRY_CHARS.test(raw)) throw new Error(`"${raw.slice(0, 80)}" has spaces, control characters or is too long`)
  const withScheme = /^[a-z][a-z0-9+.-]*:\/\//i.test(raw) ? raw : `https://${raw}`
  const schemeEnd = withScheme.indexOf('://') + 3
  const rest = withScheme.slice(schemeEnd)
  const wildcard = rest.startsWith('*.')
  if (rest.slice(wildcard ? 1 : 0).includes('*')) {
    throw new Error(`"${raw}": "*" is only allowed as the whole first label, as in https://*.example.com`)
  }
  let url: URL
  try {
    url = new URL(withScheme.slice(0, schemeEnd) + (wildcard ? PLACEHOLDER + rest.slice(1) : rest))
  } catch {
    throw new Error(`"${raw}" is not a valid origin`)
  }
  if (url.protocol !== 'https:' && url.protocol !== 'http:') throw new Error(`"${raw}": only http and https origins exist for browsers`)
  if (url.username !== '' || url.password !== '' || url.search !== '' || url.hash !== '' || url.pathname !== '/' || /[?#]|\/./.test(rest)) {
    throw new Error(`"${raw}" has a path, query, fragment or credentials; an origin is scheme://host[:port]`)
  }
  if (wildcard) {
    const suffix = url.hostname.slice(PLACEHOLDER.length + 1)
    if (!url.hostname.startsWith(PLACEHOLDER + '.') || !/^[a-z0-9-]+(\.[a-z0-9-]+)+$/.test(suffix)) {
      throw new Error(`"${raw}": a pattern needs a domain with at least two labels after "*." (https://*.example.com, not https://*.com)`)
    }
  }
  return { origin: url.origin, wildcard }
}

/**
 * Validate `entries` and build the matcher. Throws on the first malformed entry with a message that
 * quotes the entry (origins are not secrets); callers prefix the option or variable name.
 */
export function compileOrigins (entries: readonly string[]): OriginMatcher {
  const exact = new Set<string>()
  const patterns: RegExp[] = []
  for (const entry of entries) {
    const { origin, wildcard } = parseEntry(entry)
    if (!wildcard) {
      exact.add(origin)
      continue
    }
    const [scheme, host] = origin.split('://') as [string, string]
    const tail = host.slice(PLACEHOLDER.length)
    patterns.push(new RegExp(`^${escape(scheme)}://(?:${LABEL}\\.)*${LABEL}${escape(tail)}$`))
  }
  return (origin) => {
    if (origin === undefined || origin === 'null' || !ORIGIN_CHARS.test(origin)) return false
    return exact.has(origin) || patterns.some((p) => p.test(origin))
  }
}
