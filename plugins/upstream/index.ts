import fp from 'fastify-plugin'
import type { Dispatcher } from 'undici'
import { Agent } from './undici-core.js'
import type { FastifyPluginAsync } from 'fastify'

export interface UpstreamOptions {
  /** Origin plus optional path prefix, already normalised (no trailing `/` or `/v1`). */
  upstreamUrl: string
  /** Extra trusted CA certificate(s), PEM. */
  ca?: string | undefined
  /** Time to open the TCP/TLS connection to upstream, in ms. */
  connectTimeoutMs: number
  /** Time for upstream to send response headers, in ms. */
  headersTimeoutMs: number
  /** Longest silence between two body chunks from upstream, in ms. */
  idleTimeoutMs: number
}

export interface OaiProxyUpstream {
  origin: string
  /** Path prefix prepended to every endpoint path (usually ''). */
  basePath: string
  dispatcher: Dispatcher
}

declare module 'fastify' {
  interface FastifyInstance {
    oaiProxyUpstream: OaiProxyUpstream
  }
}

/**
 * Our own undici Agent for the upstream. It verifies TLS certificates (undici's default; we never pass
 * `rejectUnauthorized: false`, unlike @fastify/reply-from's defaults), follows no redirects (plain
 * `request` has no redirect interceptor) and bounds every wait.
 */
const upstream: FastifyPluginAsync<UpstreamOptions> = async (app, opts) => {
  const url = new URL(opts.upstreamUrl)
  const dispatcher = new Agent({
    connect: {
      timeout: opts.connectTimeoutMs,
      rejectUnauthorized: true,
      ...(opts.ca === undefined ? {} : { ca: opts.ca })
    },
    headersTimeout: opts.headersTimeoutMs,
    bodyTimeout: opts.idleTimeoutMs,
    keepAliveTimeout: 30_000
  })
  app.decorate('oaiProxyUpstream', { origin: url.origin, basePath: url.pathname.replace(/\/+$/, ''), dispatcher })
  app.addHook('onClose', async () => {
    await dispatcher.destroy()
  })
}

export default fp(upstream, { name: 'oai-proxy-upstream', fastify: '5.x' })
