import type { FastifyInstance } from 'fastify'
import type { OaiProxyClient } from '../../plugins/auth/index.js'
import type { EndpointDefinition } from '../../schemas/endpoints.js'
import { usageView } from '../usage.js'

/*
 * What the status page says, as data (the JSON form; the HTML form renders the same object). Only what a
 * friend needs to use the proxy: never a secret, a key fragment or id, an organization or a project.
 */

export interface StatusFacts {
  version: string
  endpoints: readonly EndpointDefinition[]
  /** The model allowlist (patterns), or null when any model goes. */
  models: readonly string[] | null
  keyRequired: boolean
  limits: {
    requestsPerWindow: number
    windowMs: number
    tokensPerMinute: number
    maxConcurrent: number
    bodyLimit: number
    maxOutputTokens: number | null
    maxN: number | null
  }
}

/** How upstream keys are doing, as counts only. Pool states not known here count as disabled (out of rotation). */
export function keyCounts (states: ReadonlyArray<{ state: string }>): { active: number, resting: number, disabled: number } {
  const counts = { active: 0, resting: 0, disabled: 0 }
  for (const { state } of states) {
    if (state === 'active') counts.active++
    else if (state === 'cooling' || state === 'resting') counts.resting++
    else counts.disabled++
  }
  return counts
}

export type StatusView = Awaited<ReturnType<typeof statusView>>

export async function statusView (app: FastifyInstance, facts: StatusFacts, startedAt: number, client: OaiProxyClient | null) {
  const keys = keyCounts(app.oaiProxyKeys.pool.describe())
  const l = facts.limits
  const you = client === null ? null : await usageView(client, app.oaiProxyLimits.store)
  return {
    object: 'proxy.status',
    status: keys.active + keys.resting > 0 ? 'ok' : 'degraded',
    version: facts.version,
    uptime_seconds: Math.floor((Date.now() - startedAt) / 1000),
    key_required: facts.keyRequired,
    endpoints: facts.endpoints.map((e) => ({ id: e.id, method: e.method, path: `/v1${e.path}` })),
    models: facts.models,
    // 0 or null: no such limit.
    limits: {
      requests_per_window: l.requestsPerWindow,
      window_seconds: l.windowMs / 1000,
      tokens_per_minute: l.tokensPerMinute,
      max_concurrent_requests: l.maxConcurrent,
      max_body_bytes: l.bodyLimit,
      max_output_tokens: l.maxOutputTokens,
      max_n: l.maxN
    },
    upstream_keys: keys,
    rate_limit_store: app.oaiProxyLimits.guard.state,
    // The caller's own usage, without the record id: the page shows no key id of any kind.
    you: you === null ? null : { kind: you.client.kind, metered: you.metered, quotas: you.quotas, usage: you.usage }
  }
}
