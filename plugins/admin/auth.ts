import { createHash } from 'node:crypto'
import type { FastifyInstance, FastifyRequest, onRequestAsyncHookHandler } from 'fastify'
import { proxyError } from '../../errors.js'
import { addressKey } from '../../lib/client-address.js'
import { retryHeaders } from '../../lib/durations.js'
import { matchKey } from '../auth/index.js'

/*
 * Who may call the admin API: whoever presents ADMIN_KEY, and nobody else (a proxy key or a client key is
 * as wrong as any other string). Failed attempts have their own bucket per client address, much smaller
 * than the proxy's, because a guess here is worth every key.
 */

/** Failed admin requests per address per minute; past it every admin request from there gets 429 for the rest of the minute. */
export const ADMIN_FAILURES_PER_MINUTE = 10

/**
 * The keys presented: `Authorization: Bearer <key>` and `x-admin-key: <key>` (for tools whose
 * Authorization header is already taken), each by the Bearer rule of plugins/auth/index.ts (printable ASCII).
 */
function presented (request: FastifyRequest): string[] {
  const keys: string[] = []
  const auth = request.headers.authorization
  const bearer = typeof auth === 'string' ? /^Bearer[ \t]+([\x21-\x7e]{1,1024})[ \t]*$/i.exec(auth)?.[1] : undefined
  if (bearer !== undefined) keys.push(bearer)
  const header = request.headers['x-admin-key']
  const own = typeof header === 'string' ? /^[ \t]*([\x21-\x7e]{1,1024})[ \t]*$/.exec(header)?.[1] : undefined
  if (own !== undefined) keys.push(own)
  return keys
}

/** The onRequest hook of the admin scope: before the body is read, as the proxy's own auth. */
export function adminAuth (app: FastifyInstance, key: string): onRequestAsyncHookHandler {
  // matchKey hashes the candidate to 32 bytes and compares in constant time against these digests.
  const digests = [createHash('sha256').update(key).digest()]
  const failures = app.createRateLimit({ max: ADMIN_FAILURES_PER_MINUTE, timeWindow: 60_000, keyGenerator: (r) => `admin-fail:${addressKey(r.ip)}` })
  return async (request) => {
    // Checked first: inside the ban window even the right key learns nothing.
    const seen = await failures(request, { increment: false })
    if (!seen.isAllowed && seen.remaining <= 0) {
      throw proxyError('REQUESTS_LIMITED', [`Too many failed admin requests from your address. Please try again in ${seen.ttlInSeconds}s.`], { headers: retryHeaders(seen.ttl) })
    }
    if (presented(request).some((candidate) => matchKey(candidate, digests) === 0)) return
    await failures(request)
    throw proxyError('ADMIN_UNAUTHORIZED')
  }
}
