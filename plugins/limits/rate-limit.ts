import fp from 'fastify-plugin'
import type { FastifyPluginAsync, FastifyRequest } from 'fastify'
import { proxyError } from '../../errors.js'
import { goDuration, retryHeaders } from '../../lib/durations.js'
import { clientId } from '../../lib/client-address.js'

export interface RateLimitOptions {
  /** Requests each client may make per window (`RATE_LIMIT_RPM`, or the original `MODEL_RATE_LIMIT`). 0 = no limit. */
  requestsPerWindow: number
  /** Window length in milliseconds. Default 60 000 (requests per minute). */
  windowMs: number
  /** Some clients may carry their own `requestsPerWindow` (client keys): stay on even when the suite's is 0. */
  perClient?: boolean
}

/** The requests per window that apply to this request's client: its own, else the suite's (0: none). */
const windowFor = (request: FastifyRequest, suite: number): number => request.oaiProxyClient?.limits?.requestsPerWindow ?? suite

/**
 * Requests per window per client (a client key's own limit, else the suite's), on @fastify/rate-limit's
 * stores. Runs in onRequest right after auth,
 * before the body is read, so a flood over the limit costs neither parsing nor upstream calls. Every
 * answer carries OpenAI's `x-ratelimit-*-requests` headers.
 */
const rateLimit: FastifyPluginAsync<RateLimitOptions> = async (app, opts) => {
  if (opts.requestsPerWindow <= 0 && opts.perClient !== true) return
  const suite = opts.requestsPerWindow
  // A plain number unless some clients carry their own window: the store then skips a call per request.
  const max = opts.perClient === true ? (r: FastifyRequest) => windowFor(r, suite) : suite
  const check = app.createRateLimit({ max, timeWindow: opts.windowMs, keyGenerator: (r) => `rpm:${clientId(r)}` })

  app.addHook('onRequest', async (request, reply) => {
    if (windowFor(request, suite) <= 0) return
    const r = await check(request)
    /* c8 ignore next -- isAllowed is only ever true for an allowList, and we configure none */
    if (r.isAllowed) return
    reply.headers({
      'x-ratelimit-limit-requests': String(r.max),
      'x-ratelimit-remaining-requests': String(r.remaining),
      'x-ratelimit-reset-requests': goDuration(r.ttl)
    })
    if (r.isExceeded) {
      const wait = Math.ceil(r.ttl / 1000)
      throw proxyError('REQUESTS_LIMITED', [`Rate limit reached on requests per ${goDuration(opts.windowMs)}: Limit ${r.max}. Please try again in ${wait}s.`], { headers: retryHeaders(r.ttl) })
    }
  })
}

export default fp(rateLimit, { name: 'oai-proxy-rate-limit', fastify: '5.x' })
