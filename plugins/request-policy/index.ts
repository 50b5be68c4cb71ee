import fp from 'fastify-plugin'
import { firstError } from '../../lib/validator.js'
import { TypeCompiler } from '@sinclair/typebox/compiler'
import type { FastifyPluginAsync, FastifyRequest } from 'fastify'
import { proxyError, type ProxyErrorName } from '../../errors.js'
import { anyGlob } from './policy-rules.js'
import { analysisOf, decorateAnalysis, requestedModel, type RequestAnalysis } from '../../lib/request-analysis.js'
import { deleteField, setField } from '../../lib/request-body.js'
import { RequestPolicyOptionsSchema, type RequestPolicyConfig, type StoredStateFeature } from './schema.js'

export interface RequestPolicyOptions extends RequestPolicyConfig {}

declare module 'fastify' {
  interface FastifyRequest {
    /**
     * Set by the request policy for endpoints whose table row has `rewritableResponse`: the proxy route
     * buffers that small 2xx JSON answer and sends what this returns instead (the filtered model list).
     */
    oaiProxyRewriteResponse: ((body: unknown) => unknown) | null
  }
}

type Body = Record<string, unknown>

/** Tool types that run in the client's own code: never billed separately, never reach stored data. */
const CLIENT_TOOLS = new Set(['function', 'custom'])
const DEFAULT_SERVICE_TIERS = ['auto', 'default', 'flex']
const checkOptions = TypeCompiler.Compile(RequestPolicyOptionsSchema)

function refuse (request: FastifyRequest, name: ProxyErrorName, args: unknown[], param: string, rule: string): Error {
  request.log.info({ rule, param }, 'oai-proxy: request refused by policy')
  return proxyError(name, args, { param })
}

/**
 * The request policy (ARCHITECTURE §3, step 5): what a shared key may be used for. Model allowlist,
 * output-token and `n` caps (clamped in the body we forward), `store` forced off, and refusals for
 * parameters that read the key owner's stored data or call hosted tools that bill separately. Every
 * refusal names its rule and the parameter. The endpoint table says where each of these lives.
 */
const requestPolicy: FastifyPluginAsync<RequestPolicyOptions> = async (app, opts) => {
  if (!checkOptions.Check(opts)) {
    const first = firstError(checkOptions, opts)
    throw new Error(`oai-proxy: invalid option /policy${first.path}: ${first.message}`)
  }
  const models = opts.allowedModels
  const maxOutput = opts.maxOutputTokens
  const maxN = opts.maxN ?? 1
  const tools = opts.allowedTools ?? []
  const tiers = opts.allowedServiceTiers ?? DEFAULT_SERVICE_TIERS
  const allowed = new Set<StoredStateFeature>(opts.allowStoredState ?? [])
  const modelAllowed = (id: unknown): boolean => models === undefined || (typeof id === 'string' && anyGlob(models, id))
  const listAllowed = (body: unknown): unknown => {
    const data = (body as { data?: unknown } | null)?.data
    return { ...(body as Body), object: 'list', data: Array.isArray(data) ? data.filter((m: { id?: unknown } | null) => modelAllowed(m?.id)) : [] }
  }

  function storedState (request: FastifyRequest, body: Body, analysis: RequestAnalysis): void {
    const stateful: Array<[StoredStateFeature, string, boolean]> = [
      ['previous_response_id', 'previous_response_id', body.previous_response_id !== undefined && body.previous_response_id !== null],
      ['conversation', 'conversation', body.conversation !== undefined && body.conversation !== null],
      ['background', 'background', body.background === true],
      ['prompt', 'prompt.id', typeof body.prompt === 'object' && body.prompt !== null && (body.prompt as Body).id !== undefined]
    ]
    for (const [feature, param, used] of stateful) {
      if (used && !allowed.has(feature)) throw refuse(request, 'PARAM_NOT_ALLOWED', [param, `stored_state:${feature}`], param, `stored_state:${feature}`)
    }
    const ref = analysis.storedRefs.find((r) => !allowed.has(r.feature))
    if (ref !== undefined) throw refuse(request, 'PARAM_NOT_ALLOWED', [ref.param, `stored_state:${ref.feature}`], ref.param, `stored_state:${ref.feature}`)
  }

  function hostedTools (request: FastifyRequest, body: Body): void {
    const list = Array.isArray(body.tools) ? body.tools as unknown[] : []
    list.forEach((tool, i) => {
      const type = (tool as Body | null)?.type
      if (typeof type === 'string' && (CLIENT_TOOLS.has(type) || anyGlob(tools, type))) return
      throw refuse(request, 'PARAM_NOT_ALLOWED', [`tools[${i}].type`, 'allowed_tools'], `tools[${i}].type`, 'allowed_tools')
    })
    // Chat's search models search the web through this parameter instead of a tool.
    if (body.web_search_options !== undefined && !anyGlob(tools, 'web_search')) {
      throw refuse(request, 'PARAM_NOT_ALLOWED', ['web_search_options', 'allowed_tools'], 'web_search_options', 'allowed_tools')
    }
    const tier = body.service_tier
    if (tier !== undefined && tier !== null && !(typeof tier === 'string' && tiers.includes(tier))) {
      throw refuse(request, 'PARAM_NOT_ALLOWED', ['service_tier', 'allowed_service_tiers'], 'service_tier', 'allowed_service_tiers')
    }
  }

  function clamp (request: FastifyRequest, body: Body, analysis: RequestAnalysis): void {
    const endpoint = analysis.endpoint
    if (maxOutput !== undefined && endpoint.outputCapFields.length > 0) {
      let sent = false
      for (const field of endpoint.outputCapFields) {
        const v = body[field]
        if (v === undefined || v === null) continue
        if (typeof v !== 'number' || !Number.isInteger(v) || v < 0) throw refuse(request, 'INVALID_POLICY_VALUE', [field, 'a non-negative integer', 'max_output_tokens'], field, 'max_output_tokens')
        sent = true
        if (v > maxOutput) setField(analysis, field, maxOutput)
      }
      if (!sent) {
        // `null` means "the model's maximum" upstream: replace it, never send it beside the cap.
        for (const field of endpoint.outputCapFields) if (Object.hasOwn(body, field)) deleteField(analysis, field)
        setField(analysis, endpoint.outputCapFields[0] as string, maxOutput)
      }
    }
    for (const field of endpoint.choiceFields ?? []) {
      const v = body[field]
      if (v === undefined || v === null) continue
      if (typeof v !== 'number' || !Number.isInteger(v) || v < 1) throw refuse(request, 'INVALID_POLICY_VALUE', [field, 'a positive integer', 'max_n'], field, 'max_n')
      if (v > maxN) setField(analysis, field, maxN)
    }
    if (!allowed.has('store') && (endpoint.storeDefault === 'on' || (endpoint.storeDefault === 'off' && body.store !== undefined)) && body.store !== false) setField(analysis, 'store', false)
  }

  decorateAnalysis(app)
  app.decorateRequest('oaiProxyRewriteResponse', null)
  app.addHook('preHandler', async (request) => {
    const analysis = analysisOf(request)
    if (analysis === null) return
    const endpoint = analysis.endpoint
    if (endpoint.model !== undefined && models !== undefined) {
      const id = requestedModel(analysis, request.params)
      if (!(id === undefined && !endpoint.model.required) && !modelAllowed(id)) throw refuse(request, 'MODEL_NOT_ALLOWED', [], 'model', 'allowed_models')
    }
    if (endpoint.rewritableResponse === 'model-list' && models !== undefined) request.oaiProxyRewriteResponse = listAllowed
    const body = analysis.body
    if (endpoint.method !== 'POST' || body === null) return
    storedState(request, body, analysis)
    hostedTools(request, body)
    clamp(request, body, analysis)
  })
}

export default fp(requestPolicy, { name: 'oai-proxy-request-policy', fastify: '5.x' })
