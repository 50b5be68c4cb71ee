import type { FastifyPluginAsync } from 'fastify'

export interface HealthRouteOptions {}

/**
 * `GET /health`, unauthenticated, for load balancers and the container HEALTHCHECK. It says whether the
 * proxy can serve, never how many keys it has or whose they are.
 */
const health: FastifyPluginAsync<HealthRouteOptions> = async (app) => {
  app.get('/health', { exposeHeadRoute: true, config: { oaiProxyPublic: true } }, async () => ({
    status: 'ok',
    upstream_keys: app.oaiProxyKeys.pool.usableCount > 0 ? 'available' : 'exhausted',
    rate_limit_store: app.oaiProxyLimits.guard.state
  }))
}

export default health
