import { randomBytes } from 'node:crypto'
import Fastify from 'fastify'
import oaiProxy from 'oai-reverse-proxy'

/*
 * An existing Fastify app with its own users, sessions, error format and routes, adding the OpenAI proxy
 * under `/ai`. Its users call `/ai/v1/chat/completions` with their own session token as the API key (the
 * openai SDK sends it as `Authorization: Bearer <token>`); the proxy never sees a shared proxy key, and
 * limits apply per user. The sessions here are a toy Map: use @fastify/session, @fastify/jwt or your
 * identity provider in a real app.
 */

/**
 * @param {object} opts
 * @param {string[]} opts.openaiKeys upstream OpenAI keys (server-side only)
 * @param {string} [opts.upstreamUrl] default https://api.openai.com
 * @param {string[]} [opts.corsOrigins] browser origins allowed to call `/ai` from another origin
 * @param {import('fastify').FastifyServerOptions['logger']} [opts.logger]
 */
export async function buildApp ({ openaiKeys, upstreamUrl, corsOrigins = [], logger = true }) {
  const app = Fastify({ logger })

  /** @type {Map<string, { id: string, name: string }>} session token -> user */
  const sessions = new Map()

  // The host's own auth, for every route (the proxy's included): who is this request?
  app.decorateRequest('user', null)
  app.addHook('onRequest', async (request) => {
    const token = /^Bearer ([A-Za-z0-9_-]{20,100})$/.exec(request.headers.authorization ?? '')?.[1]
    request.user = token === undefined ? null : sessions.get(token) ?? null
  })

  // The host's own error format; the proxy keeps OpenAI's format under /ai.
  app.setErrorHandler(async (error, request, reply) => {
    const status = error.statusCode ?? 500
    if (status >= 500) request.log.error(error)
    return reply.code(status).send({ ok: false, error: status >= 500 ? 'Something went wrong' : error.message })
  })

  app.post('/login', { schema: { body: { type: 'object', required: ['name'], properties: { name: { type: 'string', minLength: 1, maxLength: 40 } } } } }, async (request) => {
    const token = randomBytes(24).toString('base64url')
    const name = /** @type {{ name: string }} */ (request.body).name
    sessions.set(token, { id: name.toLowerCase(), name })
    return { ok: true, token }
  })

  app.get('/api/me', async (request, reply) => {
    if (request.user === null) return reply.code(401).send({ ok: false, error: 'Sign in first' })
    return { ok: true, user: request.user }
  })

  await app.register(oaiProxy, {
    prefix: '/ai',
    openaiKeys,
    upstreamUrl,
    // Expose only what the product needs.
    endpoints: ['chat.completions', 'responses', 'models.list'],
    cors: { origins: corsOrigins },
    // Replaces proxy keys: the host decides who the caller is; the id keys rate limits and logs.
    resolveClient: async (request) => (request.user === null ? null : { id: `user:${request.user.id}` })
  })

  return app
}
