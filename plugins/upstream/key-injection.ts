import fp from 'fastify-plugin'
import type { FastifyPluginAsync } from 'fastify'
import { KeyPool } from './key-pool.js'

export interface KeyInjectionOptions {
  /** Upstream API keys, rotated least-recently-used. */
  openaiKeys: readonly string[]
  /** Sent upstream as `OpenAI-Organization`, replacing whatever the client sent. */
  organization?: string | undefined
  /** Sent upstream as `OpenAI-Project`, replacing whatever the client sent. */
  project?: string | undefined
}

export interface OaiProxyKeys {
  pool: KeyPool
  organization?: string | undefined
  project?: string | undefined
  /** Every value a client must never see: keys, organization and project ids. */
  secrets: readonly string[]
}

declare module 'fastify' {
  interface FastifyInstance {
    oaiProxyKeys: OaiProxyKeys
  }
}

/**
 * Owns the upstream credentials. The proxy route asks it for a key per attempt and reports upstream
 * verdicts back; nothing else in the suite touches a secret.
 */
const keyInjection: FastifyPluginAsync<KeyInjectionOptions> = async (app, opts) => {
  const pool = new KeyPool(opts.openaiKeys)
  const secrets = [...pool.secrets, opts.organization, opts.project].filter((s): s is string => typeof s === 'string' && s.length > 0)
  app.decorate('oaiProxyKeys', { pool, organization: opts.organization, project: opts.project, secrets })
}

export default fp(keyInjection, { name: 'oai-proxy-key-injection', fastify: '5.x' })
