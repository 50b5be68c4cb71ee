import { isUtf8 } from 'node:buffer'
import { Transform } from 'node:stream'
import fp from 'fastify-plugin'
import type { FastifyInstance, FastifyPluginAsync, FastifyRequest } from 'fastify'
import sjson from 'secure-json-parse'
import { proxyError } from '../../errors.js'
import { scanJson } from '../../lib/json-scan.js'
import { laterTurn, overBudget } from '../../lib/loop-budget.js'
import { decorateAnalysis } from '../../lib/request-analysis.js'
import { onResponseClose } from '../../lib/response-close.js'
import type { RawBody } from '../../lib/request-body.js'

export interface JsonBodyOptions {
  /** Largest body in bytes; larger bodies get 413 while streaming in, never buffered whole. */
  bodyLimit: number
  /** Deepest nesting accepted. */
  maxJsonDepth: number
  /** Body bytes held at once over all requests (threat LD08); past it a body is refused before it is read. 0: no cap. */
  maxBytesInFlight: number
}

/**
 * The only body parser inside the proxy scope: JSON in UTF-8. Every other media type gets 415, so no body
 * ever reaches upstream without being parsed and checked. The body is read as bytes and scanned once
 * (lib/json-scan.ts: depth, duplicate keys, top-level members) so the forwarder can send the client's own
 * bytes when they mean what was checked. `__proto__` and `constructor.prototype` keys are errors, not
 * silently dropped, so what we check is what we send; bytes that are not UTF-8 are refused rather than
 * replaced, so upstream cannot decode text the filter never saw.
 */
const PROTO = Buffer.from('__proto__')
const CONSTRUCTOR = Buffer.from('constructor')

const jsonBody: FastifyPluginAsync<JsonBodyOptions> = async (app, opts) => {
  decorateAnalysis(app)
  if (opts.maxBytesInFlight > 0) budgetBodies(app, opts.maxBytesInFlight, opts.bodyLimit)
  app.removeAllContentTypeParsers()
  app.addContentTypeParser('application/json', { parseAs: 'buffer', bodyLimit: opts.bodyLimit }, (request: FastifyRequest, body: string | Buffer, done) => {
    if (request.routeOptions.config.oaiProxyEndpoint?.form !== undefined) {
      done(proxyError('FORM_REQUIRED'), undefined)
      return
    }
    // Fastify picked this parser by the content-type header, so it is there.
    const charset = /;\s*charset\s*=\s*"?([^";\s]+)/i.exec(request.headers['content-type'] as string)?.[1]?.toLowerCase()
    if (charset !== undefined && charset !== 'utf-8' && charset !== 'utf8') {
      done(proxyError('UNSUPPORTED_MEDIA_TYPE'), undefined)
      return
    }
    const bytes = body as Buffer
    const run = (): void => {
      const parsed = parse(bytes, opts.maxJsonDepth)
      if (parsed instanceof Error) {
        done(parsed, undefined)
        return
      }
      request.oaiProxyRawBody = parsed.raw
      done(null, parsed.value)
    }
    // A large body waits for a later turn of the event loop while the current one has done its share of
    // heavy work (asked again on waking: many bodies may wake in the same turn).
    const attempt = (): void => {
      if (overBudget()) laterTurn().then(attempt, attempt)
      else run()
    }
    if (bytes.length >= LARGE_BODY) attempt()
    else run()
  })
}

/**
 * Threat LD08: a thousand clients each sending a megabyte at once would have the proxy hold a gigabyte.
 * Every body's bytes count from its first byte until its response closes (the bytes stay referenced until
 * then: the forwarder sends them, the analysis points into them). A body with a declared length reserves
 * it before a byte is read (the cheap, usual case: SDKs and browsers declare it); a chunked one counts as
 * it arrives. Past the cap the body is refused with 503 and `Retry-After`, unread.
 */
function budgetBodies (app: FastifyInstance, max: number, bodyLimit: number): void {
  let held = 0
  const busy = () => proxyError('BODIES_BUSY', [], { headers: { 'retry-after': '1' } })
  app.addHook('preParsing', (request, reply, payload, done) => {
    const length = request.headers['content-length']
    if (length !== undefined) {
      // Node's parser accepted it, so it is a whole number; Fastify checks it against the bytes and the
      // body limit, so a lie costs no more than the limit.
      const size = Math.min(Number(length), bodyLimit)
      if (held + size > max) return done(busy())
      held += size
      onResponseClose(reply.raw, () => { held -= size })
      return done(null, payload)
    }
    if (request.headers['transfer-encoding'] === undefined) return done(null, payload)
    let mine = 0
    onResponseClose(reply.raw, () => { held -= mine })
    const counted = new Transform({
      transform (chunk: Buffer, _enc, next) {
        if (held + chunk.length > max) return next(busy())
        held += chunk.length
        mine += chunk.length
        next(null, chunk)
      }
    })
    payload.on('error', (err) => counted.destroy(err))
    done(null, payload.pipe(counted))
  })
}

/** Bodies this large take about a millisecond to decode and parse: they share the loop's budget. */
const LARGE_BODY = 64 * 1024

function parse (bytes: Buffer, maxDepth: number): { value: unknown, raw: RawBody } | Error {
  const scan = scanJson(bytes, maxDepth)
  if (scan.blank) return proxyError('EMPTY_BODY')
  if (scan.tooDeep) return proxyError('TOO_DEEP', [maxDepth])
  if (!isUtf8(bytes)) return proxyError('INVALID_ENCODING')
  const text = bytes.toString('utf8')
  // A key can only spell `__proto__` or `constructor` literally or with `\u` escapes: without either in the
  // bytes, secure-json-parse's two extra passes over the text would find nothing.
  const plain = !scan.escapes && bytes.indexOf(PROTO) === -1 && bytes.indexOf(CONSTRUCTOR) === -1
  try {
    const value: unknown = plain ? JSON.parse(text) : sjson.parse(text, undefined, { protoAction: 'error', constructorAction: 'error' })
    return { value, raw: { bytes, scan } }
  } catch (err) {
    return proxyError(/prototype property/.test((err as Error).message) ? 'FORBIDDEN_KEY' : 'INVALID_JSON')
  }
}

export default fp(jsonBody, { name: 'oai-proxy-json-body', fastify: '5.x' })
