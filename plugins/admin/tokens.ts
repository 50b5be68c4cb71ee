import type { FastifyPluginAsync } from 'fastify'
import { proxyError } from '../../errors.js'
import type { MintToken } from '../client-keys/browser-token-plugin.js'
import { BrowserTokenError, DEFAULT_TTL_SECONDS, tokenClientId } from '../client-keys/browser-tokens.js'
import type { OaiProxyClientKeys } from '../client-keys/store.js'
import { normaliseOrigin } from '../client-keys/token-scopes.js'
import { answer } from './routes.js'
import { MintedTokenSchema, MintTokenBodySchema, type MintTokenBody } from './schema.js'

export interface AdminTokensOptions {
  /** The suite's minter and the records it reads; undefined without TOKEN_SECRETS (the route answers 400). */
  browserTokens: { mint: MintToken, keys: Pick<OaiProxyClientKeys, 'byId' | 'list'> } | undefined
}

/**
 * `POST /admin/tokens` (docs/admin-api.md): a short-lived browser token minted by the suite's own minter,
 * so every rule of `app.oaiProxyMintToken` and `keys token` holds here too. The token is in the answer
 * only: the log line names the record, a hash of the subject (the client id the token's requests are
 * logged under), the origin and the lifetime.
 */
const adminTokens: FastifyPluginAsync<AdminTokensOptions> = async (app, opts) => {
  app.post<{ Body: MintTokenBody }>('/tokens', { schema: { body: MintTokenBodySchema, response: { 201: MintedTokenSchema } } }, async (request, reply) => {
    if (opts.browserTokens === undefined) throw proxyError('ADMIN_NO_BROWSER_TOKENS')
    const { mint, keys } = opts.browserTokens
    // `id`: the record's id (not secret), named so to tell it from a presented key.
    const { key: id, sub, origin, ttlSeconds, scopes } = request.body
    // byId is null for a disabled or expired record too: only a record that does not exist is a 404, as
    // on the key routes; the others are the minter's 400 with its reason.
    if (keys.byId(id) === null) {
      let records
      try {
        records = await keys.list()
      } catch (err) {
        throw answer(err)
      }
      if (!records.some((r) => r.id === id)) throw proxyError('ADMIN_KEY_NOT_FOUND', [id])
    }
    let minted
    try {
      minted = mint({ key: id, sub, origin, ...(ttlSeconds === undefined ? {} : { ttlSeconds }), ...(scopes === undefined ? {} : { scopes }) })
    } catch (err) {
      throw err instanceof BrowserTokenError ? proxyError('ADMIN_TOKEN_REFUSED', [err.message]) : err
    }
    const normalised = normaliseOrigin(origin)
    request.log.info({ actor: 'admin', action: 'token.mint', key: id, client: tokenClientId(id, sub), origin: normalised, ttlSeconds: ttlSeconds ?? DEFAULT_TTL_SECONDS, expiresAt: minted.expiresAt }, 'oai-proxy: admin token minted')
    return reply.code(201).send({ token: minted.token, expiresAt: minted.expiresAt, key: id, sub, origin: normalised })
  })
}

export default adminTokens
