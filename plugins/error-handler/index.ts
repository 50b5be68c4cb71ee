import fp from 'fastify-plugin'
import type { FastifyError, FastifyPluginAsync, FastifyReply, FastifyRequest, FastifySchemaValidationError } from 'fastify'
import { envelope, openaiShapeByCode, proxyError, type ProxyErrorExtras } from '../../errors.js'
import { redactText } from '../upstream/redact.js'

export interface ErrorHandlerOptions {
  /** For a path we serve under another method: the methods it does allow (405 instead of 404). */
  allowedMethods: (url: string) => readonly string[]
}

/** Fastify's own errors that reach us, mapped onto the catalogue (JSON errors come from plugins/json-body/index.ts, already in it). */
const FASTIFY_CODES: Record<string, Parameters<typeof proxyError>[0]> = {
  FST_ERR_CTP_INVALID_MEDIA_TYPE: 'UNSUPPORTED_MEDIA_TYPE',
  FST_ERR_CTP_BODY_TOO_LARGE: 'BODY_TOO_LARGE',
  FST_ERR_CTP_INVALID_CONTENT_LENGTH: 'BAD_REQUEST'
}

/** `/messages/0/role` -> `messages[0].role`, as OpenAI names parameters. */
function paramName (instancePath: string): string | null {
  const parts = instancePath.split('/').filter((p) => p.length > 0)
  if (parts.length === 0) return null
  return parts.reduce((acc, p) => (/^\d+$/.test(p) ? `${acc}[${p}]` : acc.length === 0 ? p : `${acc}.${p}`), '')
}

function normalise (err: FastifyError & ProxyErrorExtras): FastifyError & ProxyErrorExtras {
  if (err.code !== undefined && openaiShapeByCode.has(err.code)) return err
  if (err.validation !== undefined) {
    // Our validator (lib/validator.ts) reports exactly one error, with a message; Fastify names the part
    // of the request it checked.
    const first = err.validation[0] as FastifySchemaValidationError & { message: string }
    const param = paramName(first.instancePath)
    const where = err.validationContext === 'params' ? 'INVALID_PARAM' : 'INVALID_BODY'
    const detail = `${param ?? err.validationContext}: ${first.message}`
    return proxyError(where, [detail], { param }) as FastifyError
  }
  const mapped = err.code === undefined ? undefined : FASTIFY_CODES[err.code]
  if (mapped !== undefined) return proxyError(mapped) as FastifyError
  if (typeof err.statusCode === 'number' && err.statusCode >= 400 && err.statusCode < 500) return proxyError('BAD_REQUEST') as FastifyError
  return proxyError('INTERNAL') as FastifyError
}

/**
 * One error handler and one not-found handler for the suite's scope: every answer the proxy makes itself
 * is OpenAI's envelope, so the SDKs raise the right class. A host app's own handlers are untouched.
 */
const errorHandler: FastifyPluginAsync<ErrorHandlerOptions> = async (app, opts) => {
  app.setErrorHandler(async (error: FastifyError & ProxyErrorExtras, request: FastifyRequest, reply: FastifyReply) => {
    // normalise() returns catalogue errors only: each has a status and an OpenAI shape.
    const err = normalise(error)
    const status = err.statusCode as number
    if (status >= 500) {
      // Never the error object whole: a library's error may carry raw upstream bytes (undici's parser
      // errors keep the bytes they choked on), which can quote a key.
      const detail = { type: error.name, code: error.code, message: redactText(error.message, []), stack: redactText(String(error.stack), []) }
      request.log.error({ err: detail }, 'oai-proxy: request failed')
    } else {
      request.log.info({ code: err.code, status }, 'oai-proxy: request refused')
    }
    const shape = openaiShapeByCode.get(err.code) as { type: string, code: string | null }
    if (err.headers !== undefined) reply.headers(err.headers)
    // Refused before reading the body (auth, limits): close the connection rather than drain what may be
    // megabytes the client is still sending.
    if (!request.raw.complete) reply.header('connection', 'close')
    return reply.code(status).type('application/json').send(envelope(err.message, shape.type, shape.code, err.param ?? null))
  })

  // Inside a host app the suite lives under a prefix (`/ai`); the endpoint table knows only its own paths.
  const prefix = app.prefix
  // Nothing in this scope needs a body: unknown routes are refused without reading (or parsing) one.
  // The proxy routes' own scope installs the JSON parser.
  app.removeAllContentTypeParsers()
  app.addContentTypeParser('*', (_request, _payload, done) => { done(null, undefined) })

  app.setNotFoundHandler(async (request, reply) => {
    const path = request.url.replace(/[?#].*$/s, '').slice(0, 200)
    const allowed = opts.allowedMethods(prefix !== '' && request.url.startsWith(prefix + '/') ? request.url.slice(prefix.length) : request.url)
    const err = allowed.length > 0
      ? proxyError('METHOD_NOT_ALLOWED', [request.method, path], { headers: { allow: allowed.join(', ') } })
      : proxyError('UNSUPPORTED_ENDPOINT', [request.method, path])
    throw err
  })
}

export default fp(errorHandler, { name: 'oai-proxy-error-handler', fastify: '5.x' })
