import fp from 'fastify-plugin'
import type { FastifyPluginAsync, FastifyRequest } from 'fastify'
import { proxyError } from '../../errors.js'
import { retryHeaders } from '../../lib/durations.js'
import { addressKey } from '../../lib/client-address.js'

export interface AbuseGuardOptions {
  /** Failed requests (401, 404, 405) a caller may make per minute before its requests get 429. 0 = off. */
  failuresPerMinute: number
  /**
   * The client id of a valid key the request presents, or null: who failed on a path auth never runs on
   * (unknown paths, wrong methods). Without it such failures count against the address.
   */
  identify?: ((request: FastifyRequest) => string | null) | undefined
}

const FAILURES = new Set([401, 404, 405])
const WINDOW_MS = 60_000

type Limiter = (request: FastifyRequest, opts?: { increment?: boolean }) => Promise<{ isAllowed: boolean, remaining: number, ttl: number, ttlInSeconds: number }>

declare module 'fastify' {
  interface FastifyContextConfig {
    /** Exempt from the abuse guard (health checks). */
    oaiProxyPublic?: boolean
  }
  interface FastifyInstance {
    /** The failure bucket of identified clients, for `clientBans` (absent when the guard is off). */
    oaiProxyClientFailures?: Limiter
  }
}

/** The id of an authenticated (or key-presenting) caller, looked up once per request. */
const clientOf = new WeakMap<FastifyRequest, string | null>()

/**
 * Stricter buckets for failures: key guessing (401) and endpoint enumeration (404/405) are counted even
 * though no proxy route runs. Failures by a caller with a valid key count against that key (its client
 * id), so one client probing unknown paths never locks out the others behind its NAT or office gateway;
 * only failures without a valid key count against the address (IPv6 by /64). An address over the limit
 * is refused before auth, so a correct guess inside the ban window still learns nothing; a client over its
 * limit is refused right after auth (`clientBans`).
 */
const abuseGuard: FastifyPluginAsync<AbuseGuardOptions> = async (app, opts) => {
  if (opts.failuresPerMinute <= 0) return
  const limit = { max: opts.failuresPerMinute, timeWindow: WINDOW_MS }
  const byAddress = app.createRateLimit({ ...limit, keyGenerator: (r) => `fail:${addressKey(r.ip)}` }) as Limiter
  const byClient = app.createRateLimit({ ...limit, keyGenerator: (r) => `fail:client:${clientOf.get(r) as string}` }) as Limiter
  app.decorate('oaiProxyClientFailures', byClient)
  const identify = opts.identify ?? ((): null => null)

  // `clientBans` records every caller auth identified; outside the proxy routes (where auth never runs) the
  // caller is whoever holds the key it presents, if any.
  const identified = (request: FastifyRequest): string | null => {
    if (!clientOf.has(request)) clientOf.set(request, identify(request))
    return clientOf.get(request) as string | null
  }

  app.addHook('onRequest', async (request) => {
    if (request.routeOptions.config.oaiProxyPublic === true) return
    const r = await byAddress(request, { increment: false })
    if (!r.isAllowed && r.remaining <= 0) {
      throw proxyError('REQUESTS_LIMITED', [`Too many failed requests from your address. Please try again in ${r.ttlInSeconds}s.`], { headers: retryHeaders(r.ttl) })
    }
  })

  app.addHook('onResponse', async (request, reply) => {
    if (!FAILURES.has(reply.statusCode)) return
    try {
      // A 401 never has a valid key: it counts against the address, as every failure without one does.
      await (reply.statusCode !== 401 && identified(request) !== null ? byClient(request) : byAddress(request))
    } catch (err) {
      request.log.warn({ err }, 'oai-proxy: could not count a failed request')
    }
  })
}

/**
 * Refuse a client over its failure limit, right after auth identified it (inside the proxy routes'
 * scope). A no-op when the guard is off.
 */
const clientBansPlugin: FastifyPluginAsync = async (app) => {
  const byClient = app.oaiProxyClientFailures
  if (byClient === undefined) return
  app.addHook('onRequest', async (request) => {
    const client = request.oaiProxyClient
    if (client === null || client.kind === 'anonymous') return
    clientOf.set(request, client.id)
    const r = await byClient(request, { increment: false })
    if (!r.isAllowed && r.remaining <= 0) {
      throw proxyError('REQUESTS_LIMITED', [`Too many failed requests with your key. Please try again in ${r.ttlInSeconds}s.`], { headers: retryHeaders(r.ttl) })
    }
  })
}

export const clientBans = fp(clientBansPlugin, { name: 'oai-proxy-client-bans', fastify: '5.x' })

export default fp(abuseGuard, { name: 'oai-proxy-abuse-guard', fastify: '5.x' })
