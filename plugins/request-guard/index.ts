import fp from 'fastify-plugin'
import type { FastifyPluginAsync } from 'fastify'
import { proxyError } from '../../errors.js'

export interface RequestGuardOptions {}

/**
 * Cheap refusals that need only the request line and headers, before auth and before any body is read:
 * protocol upgrades (we never open a tunnel upstream) and compressed request bodies (the filter and
 * schemas must see the bytes we forward; decompression would also be a zip-bomb vector).
 */
const requestGuard: FastifyPluginAsync<RequestGuardOptions> = async (app) => {
  app.addHook('onRequest', async (request) => {
    if (request.headers.upgrade !== undefined) throw proxyError('BAD_REQUEST')
    const encoding = request.headers['content-encoding']
    if (encoding !== undefined && encoding.trim().toLowerCase() !== 'identity') throw proxyError('UNSUPPORTED_MEDIA_TYPE')
  })
}

export default fp(requestGuard, { name: 'oai-proxy-request-guard', fastify: '5.x' })
