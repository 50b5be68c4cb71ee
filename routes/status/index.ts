import type { FastifyPluginAsync, FastifyRequest } from 'fastify'
import { proxyError } from '../../errors.js'
import { presentedKey, type OaiProxyClient } from '../../plugins/auth/index.js'
import type { ClientKeyLookup } from '../../plugins/client-keys/records.js'
import { TOKEN_PREFIX, type BrowserTokenVerifier } from '../../plugins/client-keys/browser-tokens.js'
import { SECRET_PREFIX } from '../../plugins/client-keys/schema.js'
import { STATUS_CSP, statusHtml } from './html.js'
import { statusView, type StatusFacts } from './view.js'

export interface StatusRouteOptions extends StatusFacts {
  /** The proxy keys' ids (plugins/auth/index.ts `clientKeys`). */
  proxyKeys: { size: number, idOf: (presented: string) => string | null }
  /** Client key records, when configured. */
  records?: ClientKeyLookup | undefined
  /** Browser tokens, when configured. */
  tokens?: BrowserTokenVerifier | undefined
}

/**
 * The caller, when it presents a key: as auth would see it, so the page can show its own usage. null: no
 * key presented, or a proxy open to anyone or identified by the host (no key means anything). A wrong key
 * is a 401, counted by the failed-request guard like any other.
 */
function callerOf (request: FastifyRequest, opts: StatusRouteOptions): OaiProxyClient | null {
  const presented = presentedKey(request)
  if (presented === undefined || (opts.proxyKeys.size === 0 && opts.records === undefined)) return null
  if (opts.tokens !== undefined && presented.startsWith(TOKEN_PREFIX)) {
    const v = opts.tokens.verify(presented, request.headers.origin)
    if (v.ok) return v.client
  } else if (opts.records !== undefined && presented.startsWith(SECRET_PREFIX)) {
    const entry = opts.records.lookup(presented)
    if (entry !== null) return { id: entry.id, kind: 'client-key', quota: entry.quota }
  } else {
    const id = opts.proxyKeys.idOf(presented)
    if (id !== null) return { id, kind: 'proxy-key' }
  }
  throw proxyError('INVALID_KEY')
}

/** JSON for `?format=json`, or for a client that asks for JSON and not HTML; HTML otherwise. */
function wantsJson (request: FastifyRequest): boolean {
  const format = (request.query as Record<string, unknown>).format
  if (format === 'json') return true
  if (format === 'html') return false
  const accept = request.headers.accept ?? ''
  return accept.includes('application/json') && !accept.includes('text/html')
}

/**
 * `GET /`: a page that tells a friend what they need to use this proxy (docs/status-page.md). Outside the
 * pipeline: no proxy key needed, never forwarded, no limit but the failed-request guard. It stays behind
 * that guard's address check (not `oaiProxyPublic`) because it reads keys: a banned address cannot test
 * keys here either. Its own answers are 200s, never failures; only a wrong key is (401).
 */
const statusRoute: FastifyPluginAsync<StatusRouteOptions> = async (app, opts) => {
  const startedAt = Date.now()
  app.get('/', { exposeHeadRoute: true }, async (request, reply) => {
    const view = await statusView(app, opts, startedAt, callerOf(request, opts))
    reply.header('cache-control', 'no-store').header('x-content-type-options', 'nosniff').header('referrer-policy', 'no-referrer')
    if (wantsJson(request)) return reply.type('application/json; charset=utf-8').send(view)
    return reply.header('content-security-policy', STATUS_CSP).header('x-frame-options', 'DENY').type('text/html; charset=utf-8').send(statusHtml(view))
  })
}

export default statusRoute
