import fp from 'fastify-plugin'
import { hash, timingSafeEqual } from 'node:crypto'
import type { FastifyPluginAsync, FastifyRequest } from 'fastify'
import { proxyError } from '../../errors.js'
import { fingerprint } from '../upstream/key-pool.js'
import { subprotocolKey } from '../../lib/realtime-upgrade.js'
import { SECRET_PREFIX, type OaiProxyClient } from '../client-keys/schema.js'
import { attachClientKey, type ClientKeyLookup } from '../client-keys/records.js'
import { TOKEN_PREFIX, type BrowserTokenVerifier } from '../client-keys/browser-tokens.js'
import { admitBrowserToken } from '../client-keys/browser-token-plugin.js'
import { anonymousId } from '../../lib/client-address.js'

/**
 * A host app's own identity check (session, JWT, API token). Resolve to `{ id }` for a known caller (the id
 * keys rate limits and logs, so make it stable and never a secret: a user id, not a token) or `null` to
 * refuse with 401. A thrown error with status 401/403 is also a 401; any other error is a 500.
 */
export type ResolveClient = (request: FastifyRequest) => Promise<{ id: string } | null> | { id: string } | null

export interface AuthOptions {
  /** Keys clients must present. Empty: the proxy is open (a loud warning is logged at start-up). */
  proxyKeys?: readonly string[] | undefined
  /**
   * Replaces proxy-key auth: the host app decides who the caller is. Cannot be combined with `proxyKeys`.
   * It runs in an onRequest hook, after the host's own onRequest hooks (so `request.user` and the like are
   * already set) and before the body is read.
   */
  resolveClient?: ResolveClient | undefined
  /**
   * Client key records (`keysFile`, plugins/client-keys/): a presented `oarp-…` key is looked up there,
   * any other in `proxyKeys`. Cannot be combined with `resolveClient`.
   */
  keyRecords?: ClientKeyLookup | undefined
  /** Short-lived browser tokens (`oarpt.…`, docs/browser.md), checked against the request's Origin. */
  browserTokens?: BrowserTokenVerifier | undefined
}

// Who is calling: a data type shared by every step that reads the caller (plugins/client-keys/schema.ts).
export type { OaiProxyClient } from '../client-keys/schema.js'

declare module 'fastify' {
  interface FastifyRequest {
    oaiProxyClient: OaiProxyClient | null
  }
}

// One-shot hashing: about half the cost of a createHash() object per request.
const digest = (s: string): Buffer => hash('sha256', s, 'buffer')

/** Compare `candidate` to every configured key in constant time: both sides are hashed to 32 bytes first. */
export function matchKey (candidate: string, keyDigests: readonly Buffer[]): number {
  const d = digest(candidate)
  let found = -1
  for (let i = 0; i < keyDigests.length; i++) {
    // No early exit: the time taken does not depend on which key (if any) matched.
    if (timingSafeEqual(d, keyDigests[i] as Buffer) && found === -1) found = i
  }
  return found
}

/**
 * The configured client keys: `idOf` gives the client id of a presented key (compared in constant time),
 * or null. Shared by auth and the abuse guard, which needs to know who failed on paths auth never sees.
 */
export function clientKeys (proxyKeys: readonly string[]): { size: number, idOf: (candidate: string) => string | null } {
  const keys = [...new Set(proxyKeys)]
  const digests = keys.map(digest)
  const ids = keys.map((k) => fingerprint(k, 'client'))
  return {
    size: keys.length,
    idOf: (candidate) => {
      const index = candidate.length > 0 && candidate.length <= 1024 ? matchKey(candidate, digests) : -1
      return index === -1 ? null : ids[index] as string
    }
  }
}

/**
 * The presented key: `Authorization: Bearer`, else `x-api-key`, else `api-key`, else (a Realtime handshake
 * only: browsers cannot set headers on a WebSocket) the `openai-insecure-api-key.<key>` subprotocol, which
 * lib/realtime-upgrade.ts holds only for handshakes on the realtime paths. Never the query string or a cookie.
 */
export function presentedKey (request: FastifyRequest): string | undefined {
  const auth = request.headers.authorization
  if (typeof auth === 'string' && auth.length > 0) {
    const m = /^Bearer[ \t]+([\x21-\x7e]+)[ \t]*$/i.exec(auth)
    return m?.[1] ?? ''
  }
  for (const name of ['x-api-key', 'api-key']) {
    const v = request.headers[name]
    // The Bearer rule: printable ASCII, only spaces and tabs around it (String#trim would also strip
    // U+00A0 and other Unicode spaces, accepting a key the Authorization header refuses).
    if (typeof v === 'string' && v.length > 0) return /^[ \t]*([\x21-\x7e]+)[ \t]*$/.exec(v)?.[1] ?? ''
  }
  const offered = subprotocolKey(request.raw)
  // '' (two key subprotocols) and anything outside the Bearer alphabet are presented but invalid.
  return offered === undefined ? undefined : /^[\x21-\x7e]+$/.test(offered) ? offered : ''
}

/** Run the host's resolver; map its verdict onto the catalogue. */
async function resolveHostClient (resolve: ResolveClient, request: FastifyRequest): Promise<OaiProxyClient> {
  let found: { id: string } | null
  try {
    found = await resolve(request)
  } catch (err) {
    const status = (err as { statusCode?: unknown }).statusCode
    if (status === 401 || status === 403) throw proxyError('NOT_AUTHENTICATED')
    throw err
  }
  if (found === null || found === undefined) throw proxyError('NOT_AUTHENTICATED')
  const id = (found as { id?: unknown }).id
  // A host bug, not the caller's fault: fail closed and loudly rather than lump users under one id.
  if (typeof id !== 'string' || id.length === 0 || id.length > 256) throw new Error('oai-proxy: resolveClient returned an object without a usable string id')
  return { id, kind: 'host' }
}

const auth: FastifyPluginAsync<AuthOptions> = async (app, opts) => {
  const keys = clientKeys(opts.proxyKeys ?? [])
  const resolve = opts.resolveClient
  if (resolve !== undefined && typeof resolve !== 'function') throw new Error('oai-proxy: invalid option /resolveClient: must be a function')
  if (resolve !== undefined && keys.size > 0) throw new Error('oai-proxy: give proxyKeys or resolveClient, not both (resolveClient replaces proxy-key auth)')
  const records = opts.keyRecords
  if (resolve !== undefined && records !== undefined) throw new Error('oai-proxy: give keysFile or resolveClient, not both (resolveClient replaces proxy-key auth)')
  // A keys file with no usable record yet still closes the proxy: open only when no key source is configured at all.
  if (keys.size === 0 && resolve === undefined && records === undefined) {
    app.log.warn('oai-proxy: no proxy keys configured (PROXY_KEY); anyone who can reach this proxy can spend the upstream key')
  }
  app.decorateRequest('oaiProxyClient', null)

  // onRequest runs before the body is read: an unauthenticated client cannot make us buffer anything.
  app.addHook('onRequest', async (request) => {
    if (resolve !== undefined) {
      request.oaiProxyClient = await resolveHostClient(resolve, request)
      return
    }
    if (keys.size === 0 && records === undefined) {
      request.oaiProxyClient = { id: anonymousId(request.ip), kind: 'anonymous' }
      return
    }
    const candidate = presentedKey(request)
    if (candidate === undefined) throw proxyError('MISSING_KEY')
    if (opts.browserTokens !== undefined && candidate.startsWith(TOKEN_PREFIX)) return admitBrowserToken(request, candidate, opts.browserTokens)
    // Unknown, disabled and expired client keys all fall through to the same 401 as a wrong proxy key.
    const entry = records !== undefined && candidate.startsWith(SECRET_PREFIX) ? records.lookup(candidate) : null
    if (entry !== null) {
      request.oaiProxyClient = { id: entry.id, kind: 'client-key', limits: entry.limits, quota: entry.quota }
      attachClientKey(request, entry)
      return
    }
    const id = keys.idOf(candidate)
    if (id === null) throw proxyError('INVALID_KEY')
    request.oaiProxyClient = { id, kind: 'proxy-key' }
  })
}

export default fp(auth, { name: 'oai-proxy-auth', fastify: '5.x' })
