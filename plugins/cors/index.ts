import fp from 'fastify-plugin'
import fastifyCors from '@fastify/cors'
import type { FastifyPluginAsync } from 'fastify'
import { compileOrigins } from '../../lib/origins.js'

export interface CorsOptions {
  /**
   * Browser origins allowed to call the proxy: exact origins (`https://app.example.com`,
   * `http://127.0.0.1:5173`) and subdomain patterns (`https://*.example.com`; no scheme means https).
   * Anchored; `null` and `*` are refused. Empty: no CORS headers at all, browsers cannot call the proxy.
   */
  origins: readonly string[]
}

/**
 * Request headers a browser may send: what OpenAI-compatible clients send (openai-wire.md §1.4), including
 * the openai SDK's `x-stainless-*` telemetry and the `User-Agent` Firefox lists in preflights. Allowing
 * `OpenAI-Organization`/`-Project` only lets the call through; the proxy never forwards the client's values.
 */
export const corsAllowedHeaders: readonly string[] = [
  'authorization', 'content-type', 'accept', 'openai-beta', 'openai-organization', 'openai-project',
  'x-api-key', 'api-key', 'x-client-request-id', 'user-agent',
  'x-stainless-arch', 'x-stainless-lang', 'x-stainless-os', 'x-stainless-package-version',
  'x-stainless-runtime', 'x-stainless-runtime-version', 'x-stainless-retry-count', 'x-stainless-timeout',
  'x-stainless-helper-method', 'x-stainless-poll-helper', 'x-stainless-custom-poll-interval'
]

/** Response headers a page may read (openai-wire.md §1.5): browsers hide all others, `Retry-After` included. */
export const corsExposedHeaders: readonly string[] = [
  'x-request-id', 'x-proxy-request-id', 'retry-after', 'retry-after-ms', 'x-should-retry',
  'x-ratelimit-limit-requests', 'x-ratelimit-remaining-requests', 'x-ratelimit-reset-requests',
  'x-ratelimit-limit-tokens', 'x-ratelimit-remaining-tokens', 'x-ratelimit-reset-tokens',
  'openai-processing-ms'
]

/**
 * CORS for browser callers, via @fastify/cors. Register it before auth: its onRequest hook answers
 * preflights (which carry no `Authorization`) before any other hook of the suite runs, so they are never
 * authenticated, limited or forwarded. Every preflight from an allowed origin gets the same 204 whatever
 * the path, so preflights reveal nothing about which routes exist. A disallowed origin gets no CORS header
 * at all, and its preflight falls through to the suite's ordinary 404/405. Never credentials mode: the proxy
 * authenticates with a header, never with cookies a browser would attach on its own.
 */
const cors: FastifyPluginAsync<CorsOptions> = async (app, opts) => {
  let allowed: ReturnType<typeof compileOrigins>
  try {
    allowed = compileOrigins(opts.origins)
  } catch (err) {
    throw new Error(`oai-proxy: invalid option /cors/origins: ${(err as Error).message}`)
  }
  if (opts.origins.length === 0) return
  if (app.hasRequestDecorator('corsPreflightEnabled')) {
    throw new Error('oai-proxy: @fastify/cors is already registered in a scope that contains the proxy; ' +
      'leave the `cors` option unset and give your CORS plugin corsAllowedHeaders/corsExposedHeaders, ' +
      'or register yours in a scope that does not contain the proxy')
  }
  await app.register(fastifyCors, {
    // A function (not a list) so a disallowed origin disables CORS entirely for that request, and so
    // @fastify/cors adds `Vary: Origin` to every response, allowed or not.
    origin: (origin, cb) => { cb(null, allowed(origin) ? origin as string : false) },
    credentials: false,
    methods: ['GET', 'POST'],
    allowedHeaders: [...corsAllowedHeaders],
    exposedHeaders: [...corsExposedHeaders],
    // Chromium caps this at 2 h; 10 min keeps a page from preflighting every call without pinning a
    // policy change in browsers for long.
    maxAge: 600,
    // An OPTIONS without `Access-Control-Request-Method` still gets the uniform 204 instead of a
    // text/plain 400 that is not OpenAI's shape.
    strictPreflight: false,
    hook: 'onRequest'
  })
}

export default fp(cors, { name: 'oai-proxy-cors', fastify: '5.x' })
