import fp from 'fastify-plugin'
import type { FastifyPluginAsync, FastifyReply, FastifyRequest } from 'fastify'
import { proxyError } from '../../errors.js'
import { goDuration, retryHeaders } from '../../lib/durations.js'
import { onResponseClose } from '../../lib/response-close.js'
import { estimatePrompt, outputCap } from '../../lib/token-estimate.js'
import { clientId } from '../../lib/client-address.js'
import { analysisOf, decorateAnalysis, type RequestAnalysis } from '../../lib/request-analysis.js'
import type { QuotaGrant, QuotaName, TokenGrant } from './limit-store.js'
import type { ClientQuota } from '../client-keys/schema.js'
import { setField } from '../../lib/request-body.js'

export interface TokenBudgetOptions {
  /** Tokens (prompt + output) each client may use per minute (`RATE_LIMIT_TPM`). 0 = no limit. */
  tokensPerMinute: number
  /** Simultaneous requests per client (`MAX_CONCURRENT_REQUESTS`). 0 = no limit. */
  maxConcurrent: number
  /** Output tokens reserved for a request that sets no cap of its own. */
  defaultOutputTokens: number
  /** How long a concurrency slot survives a replica that died holding it. */
  slotLeaseMs: number
  /** Some clients may carry their own `tokensPerMinute` / `maxConcurrent` and quotas (client keys): stay on even when the suite's are 0. */
  perClient?: boolean
}

/**
 * A request's token reservation, made at admission (below). The proxy route reports back on it through
 * `settle` (upstream's `usage`) or `refund` (upstream billed nothing); nothing else changes it. When the
 * response closes, every grant is settled with `totalTokens`, or the reservation stands when it is unknown.
 */
export class OaiProxyUsage {
  /** Tokens reserved at admission (what stands when `totalTokens` stays null); read by the metrics. */
  readonly reserved: number
  /** The proxy asked upstream for stream usage the client did not: hide the usage-only chunk. */
  readonly hideUsageChunk: boolean
  #total: number | null = null

  constructor (reserved: number, hideUsageChunk: boolean) {
    this.reserved = reserved
    this.hideUsageChunk = hideUsageChunk
  }

  /** Tokens upstream says the call used; 0 when upstream refused it; null when unknown (aborted, cut). */
  get totalTokens (): number | null {
    return this.#total
  }

  /** Upstream's `usage` for the call: what the grants are settled with. */
  settle (tokens: number): void {
    this.#total = tokens
  }

  /** Upstream refused the call or was never reached: nothing was billed, so nothing is charged. */
  refund (): void {
    this.#total = 0
  }
}

declare module 'fastify' {
  interface FastifyRequest {
    oaiProxyUsage: OaiProxyUsage | null
  }
}

const TPM_WINDOW_MS = 60_000
const QUOTA_LABELS: Record<QuotaName, string> = { requestsPerDay: 'requests per day', tokensPerDay: 'tokens per day', tokensPerMonth: 'tokens per month' }
const MiB = 1024 * 1024

/**
 * Tokens reserved for an upload (audio is billed by length): by the declared body size, or the endpoint's
 * cap when the client streams without declaring one. The form is still arriving, so this is all there is.
 */
function uploadAllowance (request: FastifyRequest): number {
  const endpoint = analysisOf(request)?.endpoint
  const perMiB = endpoint?.uploadTokensPerMiB
  if (perMiB === undefined || endpoint?.form === undefined) return 0
  const declared = Number(request.headers['content-length'])
  const bytes = Number.isFinite(declared) && declared > 0 ? declared : endpoint.form.caps.maxTotalFileBytes
  return Math.ceil(bytes / MiB) * perMiB
}

/**
 * Admission by tokens and by concurrency (ARCHITECTURE §3 step 7), after the filter and policy so refused
 * prompts never reserve anything. Tokens are reserved from a local count of the prompt plus the output
 * cap, then settled with upstream's `usage` when the response ends; a client that aborts is charged the
 * reservation. A concurrency slot is held until the response closes, whatever the outcome.
 */
const tokenBudget: FastifyPluginAsync<TokenBudgetOptions> = async (app, opts) => {
  if (opts.tokensPerMinute <= 0 && opts.maxConcurrent <= 0 && opts.perClient !== true) return
  const { store } = app.oaiProxyLimits
  app.decorateRequest('oaiProxyUsage', null)
  decorateAnalysis(app)

  const onClose = (reply: FastifyReply, fn: () => Promise<void>) => {
    onResponseClose(reply.raw, () => { fn().catch((err: unknown) => reply.log.warn({ err }, 'oai-proxy: limit release failed')) })
  }

  async function admitConcurrency (request: FastifyRequest, reply: FastifyReply, client: string, max: number): Promise<void> {
    const slot = await store.acquireSlot(client, `${process.pid}:${request.id}:${Date.now()}`, max, opts.slotLeaseMs)
    if (!slot.admitted) {
      throw proxyError('REQUESTS_LIMITED', [`Too many concurrent requests: Limit ${max}. Please try again when one finishes.`], { headers: retryHeaders(1000) })
    }
    onClose(reply, slot.release)
  }

  /** The request's token reservation: null for an endpoint that is not metered. */
  function requestedTokens (request: FastifyRequest): number | null {
    const analysis = analysisOf(request)
    const endpoint = analysis?.endpoint
    if (analysis === null || endpoint?.usage === undefined) return null
    const body = analysis.body as Record<string, unknown>
    return estimatePrompt(analysis) + outputCap(body, endpoint.outputCapFields, endpoint.outputAllowance ?? opts.defaultOutputTokens) + uploadAllowance(request)
  }

  async function admitTokens (reply: FastifyReply, client: string, limit: number, requested: number): Promise<TokenGrant> {
    if (requested > limit) {
      throw proxyError('TOKENS_LIMITED', [`Request too large on tokens per min (TPM): Limit ${limit}, Requested ${requested}. Reduce the prompt or the output cap.`], { headers: retryHeaders(TPM_WINDOW_MS, false) })
    }
    const grant = await store.reserveTokens(client, requested, limit, TPM_WINDOW_MS)
    reply.headers({
      'x-ratelimit-limit-tokens': String(limit),
      'x-ratelimit-remaining-tokens': String(Math.max(0, limit - grant.used)),
      'x-ratelimit-reset-tokens': goDuration(grant.resetMs)
    })
    if (!grant.admitted) {
      const wait = Math.ceil(grant.resetMs / 1000)
      throw proxyError('TOKENS_LIMITED', [`Rate limit reached on tokens per min (TPM): Limit ${limit}, Used ${grant.used}, Requested ${requested}. Please try again in ${wait}s.`], { headers: retryHeaders(grant.resetMs) })
    }
    return grant
  }

  /** Quotas over calendar windows: all or nothing, and a used-up quota is not worth retrying before it resets. */
  async function admitQuota (request: FastifyRequest, quota: ClientQuota, requested: number): Promise<QuotaGrant> {
    const now = Date.now()
    const grant = await store.reserveQuota(quota.account, requested, quota.quotas, now)
    const refused = grant.refused
    if (refused !== undefined) {
      request.log.info({ client: quota.account, quota: refused.quota }, 'oai-proxy: quota used up')
      const reset = new Date(refused.resetAt).toISOString()
      throw proxyError('QUOTA_EXCEEDED', [QUOTA_LABELS[refused.quota], refused.limit, refused.used, reset], { headers: { ...retryHeaders(refused.resetAt - now, false), 'x-oai-proxy-quota-reset': reset } })
    }
    return grant
  }

  /** Settle every reservation with upstream's usage when the response closes (unknown usage: the reservations stand). */
  function meter (request: FastifyRequest, reply: FastifyReply, reserved: number, settles: Array<(tokens: number) => Promise<void>>): void {
    const analysis = analysisOf(request) as RequestAnalysis
    const body = analysis.body as Record<string, unknown>
    const streamOptions = body.stream_options as Record<string, unknown> | undefined
    // We need the final usage chunk to settle; when the client did not ask for it, it will not see it.
    const hideUsageChunk = body.stream === true && analysis.endpoint.usage === 'stream-option' && streamOptions?.include_usage !== true
    if (hideUsageChunk) setField(analysis, 'stream_options', { ...streamOptions, include_usage: true })
    const usage = new OaiProxyUsage(reserved, hideUsageChunk)
    request.oaiProxyUsage = usage
    onClose(reply, async () => {
      const total = usage.totalTokens
      if (total !== null) await Promise.all(settles.map((settle) => settle(total)))
    })
  }

  app.addHook('preHandler', async (request, reply) => {
    if (request.routeOptions.config.oaiProxyLocal === true) return
    const client = clientId(request)
    // A client's own limits (a client key's record) replace the suite's; its quotas come on top.
    const own = request.oaiProxyClient?.limits
    const quota = request.oaiProxyClient?.quota
    const concurrent = own?.maxConcurrent ?? opts.maxConcurrent
    const tokens = own?.tokensPerMinute ?? opts.tokensPerMinute
    // Usage is counted for every client key (its holder and the admin read it), quotas or not.
    const quotaOn = quota !== undefined
    if (concurrent > 0) await admitConcurrency(request, reply, client, concurrent)
    if (tokens <= 0 && !quotaOn) return
    const requested = requestedTokens(request)
    // The quota first (a realtime session or an unmetered endpoint counts as a request of 0 tokens): when both refuse, "used up until tomorrow" is the answer that matters.
    const quotaGrant = quotaOn ? await admitQuota(request, quota, requested ?? 0) : undefined
    if (requested === null) return
    const settles: Array<(tokens: number) => Promise<void>> = []
    if (quotaGrant !== undefined) settles.push(quotaGrant.settle)
    if (tokens > 0) {
      try {
        settles.push((await admitTokens(reply, client, tokens, requested)).settle)
      } catch (err) {
        // Refused after all: the quota gets its request and tokens back.
        await quotaGrant?.refund()
        throw err
      }
    }
    meter(request, reply, requested, settles)
  })
}

export default fp(tokenBudget, { name: 'oai-proxy-token-budget', fastify: '5.x', dependencies: ['oai-proxy-limit-store'] })
