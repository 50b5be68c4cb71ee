import fp from 'fastify-plugin'
import type { FastifyPluginAsync, FastifyRequest } from 'fastify'
import { proxyError } from '../../errors.js'
import { compileOrigins } from '../../lib/origins.js'
import { attachClientKey } from './records.js'
import type { OaiProxyClientKeys } from './store.js'
import { browserTokenVerifier, mintBrowserToken, MIN_SECRET_LENGTH, type BrowserTokenVerifier, type MintedToken, type MintTokenOptions } from './browser-tokens.js'

/*
 * Browser tokens inside the suite: the verifier auth calls, and `oaiProxyMintToken` for whoever mints
 * (the admin API, a host app's own route). The suite is encapsulated, so a host app cannot see decorators
 * made here; it registers `oaiProxyTokenMinter` on its own instance first, and the suite binds to it.
 */

export interface BrowserTokensOptions {
  /** `browserTokens.secrets` (`TOKEN_SECRETS`): the first signs, all verify. Each at least 32 characters. */
  secrets: readonly string[]
  /** The client key records a token names (its class). */
  keys: Pick<OaiProxyClientKeys, 'byId'>
  /** `cors.origins`: a token is minted only for an origin whose pages CORS lets read the answers. */
  corsOrigins: readonly string[]
}

export type MintToken = (opts: MintTokenOptions) => MintedToken

declare module 'fastify' {
  interface FastifyInstance {
    /**
     * Mint a short-lived browser token for a signed-in user: `{ sub, key, origin, ttlSeconds?, scopes? }` →
     * `{ token, expiresAt }`; throws `BrowserTokenError` (a 400 for the caller) when it cannot.
     */
    oaiProxyMintToken: MintToken
    /** The verifier of the suite's `browserTokens` (inside the suite only). */
    oaiProxyBrowserTokens: BrowserTokenVerifier
  }
}

const BIND = Symbol('oai-proxy-bind-minter')
type HostMinter = MintToken & { [BIND]?: (mint: MintToken) => void }

const browserTokens: FastifyPluginAsync<BrowserTokensOptions> = async (app, opts) => {
  const secrets = [...opts.secrets]
  if (secrets.length === 0) throw new Error('oai-proxy: invalid option /browserTokens/secrets: give at least one secret')
  secrets.forEach((s, i) => {
    // Never the value: only which entry and what is wrong with it.
    if (typeof s !== 'string' || s.length < MIN_SECRET_LENGTH) throw new Error(`oai-proxy: invalid option /browserTokens/secrets: entry ${i + 1} is shorter than ${MIN_SECRET_LENGTH} characters`)
  })
  const lookup = (id: string) => opts.keys.byId(id)
  // Without a CORS allowlist only same-origin pages (a host app serving its own pages) can read answers,
  // and the proxy cannot know its own public origin: the origin is then the minter's to choose, as in the CLI.
  const originAllowed = opts.corsOrigins.length === 0 ? undefined : compileOrigins(opts.corsOrigins)
  const mint: MintToken = (o) => mintBrowserToken(o, secrets, lookup, originAllowed === undefined ? {} : { originAllowed })
  app.decorate('oaiProxyBrowserTokens', browserTokenVerifier(secrets, lookup))
  const host = app.hasDecorator('oaiProxyMintToken') ? app.oaiProxyMintToken as HostMinter : undefined
  if (host?.[BIND] !== undefined) host[BIND](mint)
  else app.decorate('oaiProxyMintToken', mint)
}

export default fp(browserTokens, { name: 'oai-proxy-browser-tokens', fastify: '5.x' })

/**
 * For a host app that embeds the suite: register this on your instance BEFORE the suite, then call
 * `app.oaiProxyMintToken(...)` from your own routes once the app is ready. One suite per host binds to it.
 */
const tokenMinter: FastifyPluginAsync = async (app) => {
  let bound: MintToken | undefined
  const mint: HostMinter = (o) => {
    if (bound === undefined) throw new Error('oai-proxy: no suite with browserTokens is registered after oaiProxyTokenMinter on this instance')
    return bound(o)
  }
  mint[BIND] = (m) => {
    if (bound !== undefined) throw new Error('oai-proxy: a second suite with browserTokens on one host; give each its own scope')
    bound = m
  }
  app.decorate('oaiProxyMintToken', mint)
}

export const oaiProxyTokenMinter = fp(tokenMinter, { name: 'oai-proxy-token-minter', fastify: '5.x' })

/**
 * Auth's step for a presented `oarpt.` token: set the client (its own id per subject, the record's limits,
 * quotas charged to the record) and the narrowed record for the scope checks, or refuse with a 401.
 */
export function admitBrowserToken (request: FastifyRequest, token: string, tokens: BrowserTokenVerifier): void {
  const v = tokens.verify(token, request.headers.origin)
  if (!v.ok) {
    request.log.info({ rule: 'browser_token', reason: v.reason }, 'oai-proxy: browser token refused')
    throw proxyError(v.reason === 'origin' ? 'TOKEN_WRONG_ORIGIN' : 'INVALID_KEY')
  }
  request.oaiProxyClient = v.client
  attachClientKey(request, v.entry)
}
