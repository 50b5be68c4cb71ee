import fp from 'fastify-plugin'
import { normalizeIP } from '@fastify/rate-limit'
import type { FastifyPluginAsync } from 'fastify'
import { proxyError } from '../errors.js'
import { retryHeaders } from '../lib/durations.js'

export interface AbuseGuardOptions {
  /** Failed requests (401, 404, 405) an address may make per minute before all its requests get 429. 0 = off. */
  failuresPerMinute: number
}

const FAILURES = new Set([401, 404, 405])
const WINDOW_MS = 60_000

declare module 'fastify' {
  interface FastifyContextConfig {
    /** Exempt from the abuse guard (health checks). */
    oaiProxyPublic?: boolean
  }
}

/**
 * A stricter bucket for failures, per address: key guessing (401) and endpoint enumeration (404/405)
 * are counted even though no proxy route runs. Once an address is over the limit every request from it
 * is refused before auth, so a correct guess inside the ban window still learns nothing.
 */
const abuseGuard: FastifyPluginAsync<AbuseGuardOptions> = async (app, opts) => {
  if (opts.failuresPerMinute <= 0) return
  const failures = app.createRateLimit({ max: opts.failuresPerMinute, timeWindow: WINDOW_MS, keyGenerator: (r) => `fail:${normalizeIP(r.ip, 64)}` })

  app.addHook('onRequest', async (request) => {
    if (request.routeOptions.config.oaiProxyPublic === true) return
    const r = await failures(request, { increment: false })
    if (!r.isAllowed && r.remaining <= 0) {
      throw proxyError('REQUESTS_LIMITED', [`Too many failed requests from your address. Please try again in ${r.ttlInSeconds}s.`], { headers: retryHeaders(r.ttl) })
    }
  })

  app.addHook('onResponse', async (request, reply) => {
    if (!FAILURES.has(reply.statusCode)) return
    try {
      await failures(request)
    } catch (err) {
      request.log.warn({ err }, 'oai-proxy: could not count a failed request')
    }
  })
}

export default fp(abuseGuard, { name: 'oai-proxy-abuse-guard', fastify: '5.x' })
