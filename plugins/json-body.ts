import fp from 'fastify-plugin'
import type { FastifyPluginAsync, FastifyRequest } from 'fastify'
import sjson from 'secure-json-parse'
import { proxyError } from '../errors.js'
import { exceedsDepth } from '../lib/json-depth.js'

export interface JsonBodyOptions {
  /** Largest body in bytes; larger bodies get 413 while streaming in, never buffered whole. */
  bodyLimit: number
  /** Deepest nesting accepted. */
  maxJsonDepth: number
}

/**
 * The only body parser inside the proxy scope: JSON in UTF-8. Every other media type gets 415, so no body
 * ever reaches upstream without being parsed, checked and re-serialised. `__proto__` and
 * `constructor.prototype` keys are errors, not silently dropped, so what we check is what we send.
 */
const jsonBody: FastifyPluginAsync<JsonBodyOptions> = async (app, opts) => {
  app.removeAllContentTypeParsers()
  app.addContentTypeParser('application/json', { parseAs: 'string', bodyLimit: opts.bodyLimit }, (request: FastifyRequest, body: string | Buffer, done) => {
    // Fastify picked this parser by the content-type header, so it is there.
    const charset = /;\s*charset\s*=\s*"?([^";\s]+)/i.exec(request.headers['content-type'] as string)?.[1]?.toLowerCase()
    if (charset !== undefined && charset !== 'utf-8' && charset !== 'utf8') {
      done(proxyError('UNSUPPORTED_MEDIA_TYPE'), undefined)
      return
    }
    const text = body.toString()
    if (text.trim().length === 0) {
      done(proxyError('EMPTY_BODY'), undefined)
      return
    }
    if (exceedsDepth(text, opts.maxJsonDepth)) {
      done(proxyError('TOO_DEEP', [opts.maxJsonDepth]), undefined)
      return
    }
    let value: unknown
    try {
      value = sjson.parse(text, undefined, { protoAction: 'error', constructorAction: 'error' })
    } catch (err) {
      done(proxyError(/prototype property/.test((err as Error).message) ? 'FORBIDDEN_KEY' : 'INVALID_JSON'), undefined)
      return
    }
    done(null, value)
  })
}

export default fp(jsonBody, { name: 'oai-proxy-json-body', fastify: '5.x' })
