import type { FastifyPluginAsync } from 'fastify'
import type { QuotaUsage, Quotas } from '../plugins/limits/limit-store.js'
import type { GuardedLimitStore } from '../plugins/limits/store-guard.js'
import type { OaiProxyClient } from '../plugins/auth/index.js'

export interface UsageRouteOptions {
  /** Serve `/proxy/usage` too, as the proxy routes are served without `/v1`. */
  unprefixedRoutes: boolean
}

declare module 'fastify' {
  interface FastifyContextConfig {
    /** One of the proxy's own routes inside the pipeline (authenticated, rate limited), never forwarded, never metered. */
    oaiProxyLocal?: boolean
  }
}

/** Where a key holder reads their own usage: under `/v1/proxy/`, a namespace OpenAI does not use. */
const USAGE_PATH = '/v1/proxy/usage'

function quotaView (quotas: Quotas, usage: QuotaUsage) {
  const one = (limit: number | undefined, used: number, resetsAt: string) =>
    limit === undefined ? null : { limit, used, remaining: Math.max(0, limit - used), resets_at: resetsAt }
  return {
    tokens_per_day: one(quotas.tokensPerDay, usage.day.tokens, usage.day.resetAt),
    tokens_per_month: one(quotas.tokensPerMonth, usage.month.tokens, usage.month.resetAt),
    requests_per_day: one(quotas.requestsPerDay, usage.day.requests, usage.day.resetAt)
  }
}

/**
 * A caller's own quotas and usage: the body of GET /v1/proxy/usage, and the `you` part of the status page
 * (routes/status). Usage is counted for client keys only; other callers learn their kind and that nothing is metered.
 */
export async function usageView (client: OaiProxyClient, store: GuardedLimitStore) {
  const quota = client.quota
  if (quota === undefined) return { object: 'proxy.usage', client: { kind: client.kind }, metered: false, quotas: null, usage: null }
  const usage = await store.quotaUsage(quota.account, Date.now())
  return {
    object: 'proxy.usage',
    client: { kind: client.kind, id: quota.account },
    metered: true,
    quotas: quotaView(quota.quotas, usage),
    usage: { day: { start: usage.day.start, tokens: usage.day.tokens, requests: usage.day.requests }, month: { start: usage.month.start, tokens: usage.month.tokens } }
  }
}

/**
 * `GET /v1/proxy/usage`: the caller's own quotas and what it has used this UTC day and month (tokens
 * reserved by requests still in flight included). Usage is counted for client keys; other callers
 * (PROXY_KEY, a host's resolver, an open proxy) learn who they are to the proxy and that nothing is metered.
 */
const usageRoute: FastifyPluginAsync<UsageRouteOptions> = async (app, opts) => {
  const { store } = app.oaiProxyLimits
  const paths = opts.unprefixedRoutes ? [USAGE_PATH, USAGE_PATH.slice(3)] : [USAGE_PATH]
  for (const url of paths) {
    app.get(url, { config: { oaiProxyLocal: true } }, async (request, reply) => {
      reply.header('cache-control', 'no-store')
      // Auth ran first (this route is in the pipeline), so there is a client.
      return usageView(request.oaiProxyClient as OaiProxyClient, store)
    })
  }
}

export default usageRoute
