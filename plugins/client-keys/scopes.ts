import fp from 'fastify-plugin'
import type { FastifyPluginAsync, FastifyRequest } from 'fastify'
import { proxyError } from '../../errors.js'
import { anyGlob } from '../request-policy/policy-rules.js'
import { analysisOf, decorateAnalysis, requestedModel, type RequestAnalysis } from '../../lib/request-analysis.js'
import { REALTIME_SCOPE } from './schema.js'
import { clientKeyOf, type ClientKeyEntry } from './records.js'

/*
 * What a client key may do (`scopes` in its record), after auth: the endpoint before the body is read,
 * the model once the body is validated. Requests authenticated otherwise (PROXY_KEY, a host's resolver)
 * are untouched. The proxy-wide request policy still applies on top.
 */

type Body = Record<string, unknown>

/**
 * The endpoint id of the request's route: the endpoint table's. The one pipeline route without a row is the
 * Realtime WebSocket; a route added later without one is scoped as `realtime` too, which fails closed.
 */
const endpointIdOf = (request: FastifyRequest): string => request.routeOptions.config.oaiProxyEndpoint?.id ?? REALTIME_SCOPE

function refuseModel (request: FastifyRequest, entry: ClientKeyEntry, model: unknown): Error {
  const shown = typeof model === 'string' ? model.slice(0, 200) : '(none)'
  request.log.info({ client: entry.id, rule: 'key_scope_models', param: 'model' }, 'oai-proxy: request refused by key scope')
  return proxyError('MODEL_NOT_IN_SCOPE', [shown], { param: 'model' })
}

const clientKeyScopes: FastifyPluginAsync = async (app) => {
  decorateAnalysis(app)

  app.addHook('onRequest', async (request) => {
    const entry = clientKeyOf(request)
    // The proxy's own routes (a key's usage) are every key's, whatever its scopes.
    if (entry === undefined || request.routeOptions.config.oaiProxyLocal === true) return
    const id = endpointIdOf(request)
    // A Realtime session can switch models mid-session, which this check cannot see: a key limited to some
    // models does not open one (docs/client-keys.md).
    if ((entry.endpoints !== null && !entry.endpoints.has(id)) || (id === REALTIME_SCOPE && entry.models !== null)) {
      request.log.info({ client: entry.id, rule: 'key_scope_endpoints', endpoint: id }, 'oai-proxy: request refused by key scope')
      throw proxyError('ENDPOINT_NOT_IN_SCOPE', [id])
    }
  })

  app.addHook('preHandler', async (request) => {
    const models = clientKeyOf(request)?.models
    if (models === undefined || models === null || request.routeOptions.config.oaiProxyLocal === true) return
    const entry = clientKeyOf(request) as ClientKeyEntry
    // Never null here: a route without an endpoint row (Realtime) was refused to model-scoped keys at onRequest.
    const analysis = analysisOf(request) as RequestAnalysis
    const endpoint = analysis.endpoint
    if (endpoint.model === undefined) {
      // The model list: show only the models this key may use (after the policy's own filter, if any).
      if (endpoint.rewritableResponse === 'model-list') {
        const before = request.oaiProxyRewriteResponse
        request.oaiProxyRewriteResponse = (body: unknown) => {
          const listed = (before === null ? body : before(body)) as { data?: unknown } | null
          const data = Array.isArray(listed?.data) ? listed.data as Array<{ id?: unknown } | null> : []
          return { ...(listed as Body), data: data.filter((m) => typeof m?.id === 'string' && anyGlob(models, m.id)) }
        }
      }
      return
    }
    const model = requestedModel(analysis, request.params)
    // As the request policy: an optional model left out means the endpoint's free default (moderations, token counts).
    if (model === undefined && !endpoint.model.required) return
    if (typeof model !== 'string' || !anyGlob(models, model)) throw refuseModel(request, entry, model)
  })
}

export default fp(clientKeyScopes, { name: 'oai-proxy-client-key-scopes', fastify: '5.x' })
