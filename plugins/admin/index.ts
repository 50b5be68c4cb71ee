import fp from 'fastify-plugin'
import type { FastifyError, FastifyPluginAsync } from 'fastify'
import { proxyError } from '../../errors.js'
import { typeboxValidator } from '../../lib/validator.js'
import { endpoints } from '../../schemas/endpoints.js'
import type { OaiProxyClientKeys } from '../client-keys/store.js'
import { adminAuth } from './auth.js'
import adminRoutes from './routes.js'
import adminTokens from './tokens.js'

export interface AdminOptions {
  /** ADMIN_KEY: at least 32 characters, and none of the proxy keys. */
  key: string
  /** Where the routes live. Default `/admin`. */
  prefix?: string | undefined
  /** The proxy keys (PROXY_KEY), so the admin key can be refused when it is one of them. */
  proxyKeys?: readonly string[] | undefined
  /** The client key records; absent without a keys file (the key routes then answer 400). */
  keys?: OaiProxyClientKeys | undefined
}

export const DEFAULT_ADMIN_PREFIX = '/admin'
const MIN_KEY_LENGTH = 32
/** Admin bodies are small: a key's scopes, limits and metadata. */
const BODY_LIMIT = 1024 * 1024

/**
 * First path segments the proxy serves or may serve (`/v1`, `/health`, and every endpoint without `/v1`):
 * an admin prefix there would shadow a proxy route (`/models/keys` would no longer reach the model lookup).
 */
const RESERVED = new Set(['v1', 'health', ...endpoints.map((e) => e.path.split('/')[1] as string)])

function checkOptions (opts: AdminOptions): string {
  const fail = (option: 'key' | 'prefix', why: string): Error => new Error(`oai-proxy: invalid option /admin/${option} (ADMIN_${option.toUpperCase()}): ${why}`)
  // Never the value in a message: only what is wrong with it.
  if (typeof opts.key !== 'string' || opts.key.length < MIN_KEY_LENGTH) throw fail('key', `shorter than ${MIN_KEY_LENGTH} characters`)
  if ((opts.proxyKeys ?? []).includes(opts.key)) throw fail('key', 'is one of the proxy keys (PROXY_KEY); give the admin API a key of its own')
  const prefix = opts.prefix ?? DEFAULT_ADMIN_PREFIX
  if (!/^(?:\/[a-z0-9][a-z0-9._-]{0,63}){1,4}$/i.test(prefix)) throw fail('prefix', 'give a path like /admin (1 to 4 segments of letters, digits, ".", "_" and "-")')
  if (RESERVED.has((prefix.split('/')[1] as string).toLowerCase())) throw fail('prefix', 'its first segment is a path the proxy serves')
  return prefix
}

/**
 * The admin API: manage client key records, and mint browser tokens, over HTTP (docs/admin-api.md). Registered by the suite only
 * when an admin key is configured, beside the proxy pipeline (not inside it): proxy keys, client keys, the
 * proxy's rate limits and the upstream never see these routes. Options are checked at registration.
 */
const admin: FastifyPluginAsync<AdminOptions> = async (app, opts) => {
  const prefix = checkOptions(opts)
  // Browser tokens are configured when the suite registered their plugin before this one (app.ts). Its
  // verifier is the sign, not oaiProxyMintToken: a host app's oaiProxyTokenMinter makes that one alone.
  const browserTokens = app.hasDecorator('oaiProxyBrowserTokens') && opts.keys !== undefined ? { mint: app.oaiProxyMintToken, keys: opts.keys } : undefined
  await app.register(async (scope) => {
    scope.setValidatorCompiler(typeboxValidator)
    // The suite's scope reads no bodies; this one reads small JSON ones (no __proto__ or constructor keys).
    const parseJson = scope.getDefaultJsonParser('error', 'error')
    scope.removeAllContentTypeParsers()
    scope.addContentTypeParser('application/json', { parseAs: 'string', bodyLimit: BODY_LIMIT }, (request, body, done) => {
      parseJson(request, body as string, (err: Error | null, value?: unknown) => {
        if (err === null) done(null, value)
        else done(proxyError((err as FastifyError).code === 'FST_ERR_CTP_EMPTY_JSON_BODY' ? 'EMPTY_BODY' : 'INVALID_JSON'))
      })
    })
    scope.addHook('onRequest', adminAuth(scope, opts.key))
    await scope.register(adminRoutes, { keys: opts.keys })
    await scope.register(adminTokens, { browserTokens })
  }, { prefix })
}

export default fp(admin, { name: 'oai-proxy-admin', fastify: '5.x' })
