import { EventEmitter } from 'node:events'
import { Readable } from 'node:stream'
import type { FastifyInstance, FastifyPluginAsync, FastifyReply, FastifyRequest } from 'fastify'
import { proxyError } from '../../errors.js'
import { clientResponseHeaders, firstHeader, upstreamRequestHeaders } from '../../plugins/upstream/headers.js'
import { SecretRedactor, filtersInRow, redactBytes, type ChunkFilter } from '../../plugins/upstream/redact.js'
import { sendRewritten } from './response-rewrite.js'
import { UsageReader, lastTotalTokens, watchUsage } from './usage-tap.js'
import { mayReadWhole, readSmall } from './whole-answer.js'
import { chain } from './stream-chain.js'
import { onResponseClose } from '../../lib/response-close.js'
import { errorCode, judgeUpstreamError, readCapped } from '../../plugins/upstream/upstream-errors.js'
import { typeboxValidator } from '../../lib/validator.js'
import { upstreamPath, type EndpointDefinition } from '../../schemas/endpoints.js'
import { analysisOf, decorateAnalysis, planFor, releaseBody, type RequestAnalysis } from '../../lib/request-analysis.js'
import { upstreamBody, upstreamPayload, type UpstreamBody } from '../../lib/request-body.js'
import { request as upstreamRequest } from '../../plugins/upstream/undici-core.js'
import { StreamGuard, type StreamLimits } from './stream-guard.js'
import { OUTPUT_WHOLE_LIMIT, OutputGuard, checkWholeAnswer, type OutputRules } from '../../plugins/prompt-filter/output-guard.js'
import type { RuleMatch } from '../../plugins/prompt-filter/filter-rules.js'

export interface ProxyRoutesOptions {
  /** The endpoint-table rows to serve (see `schemas/endpoints.ts`). */
  endpoints: readonly EndpointDefinition[]
  /** Serve each endpoint at `/<path>` as well as `/v1/<path>`. */
  unprefixedRoutes: boolean
  /** Largest request body in bytes, per route. */
  bodyLimit: number
  /** `User-Agent` sent upstream in place of the client's. */
  userAgent: string
  /** When a response is cut: a client that stopped reading, a call that lasts too long (routes/proxy/stream-guard.ts). */
  streamLimits: StreamLimits
  /** The output guardrail's rules (plugins/prompt-filter/output-guard.ts); null: generated text is not checked. */
  output: OutputRules | null
}

declare module 'fastify' {
  interface FastifyContextConfig {
    /** The endpoint-table row a proxy route was generated from. */
    oaiProxyEndpoint?: EndpointDefinition
  }
}

/** Map an undici failure onto the catalogue; the client learns the class of failure, never the details. */
function upstreamFailure (err: unknown): Error {
  const code = (err as { code?: string }).code
  if (code === 'UND_ERR_CONNECT_TIMEOUT' || code === 'UND_ERR_HEADERS_TIMEOUT' || code === 'UND_ERR_BODY_TIMEOUT') {
    return proxyError('UPSTREAM_TIMEOUT')
  }
  return proxyError('UPSTREAM_UNREACHABLE')
}

/**
 * When a token budget meters this request, read upstream's `usage` as the body goes by: inside the redactor's
 * stage when a usage chunk must be dropped (the reader returned), else by listening (returns undefined).
 */
function usageReader (request: FastifyRequest, source: Readable, contentType: string | undefined): UsageReader | undefined {
  const usage = request.oaiProxyUsage
  if (usage === null || usage === undefined) return undefined
  const mode = contentType?.startsWith('text/event-stream') === true ? 'sse' : contentType?.includes('json') === true ? 'json' : undefined
  if (mode === undefined) return undefined
  const onUsage = (n: number) => { usage.settle(n) }
  if (mode === 'sse' && usage.hideUsageChunk) return new UsageReader({ mode, hideUsageChunk: true, onUsage })
  watchUsage(source, { mode, onUsage })
  return undefined
}

/**
 * The abort signal of one upstream call. undici takes an EventEmitter with `aborted` and an `abort` event as
 * well as an AbortSignal; an AbortController costs several times more to create (an EventTarget and its
 * internals), once per request on the hot path.
 */
class UpstreamAbort extends EventEmitter {
  aborted = false

  /** Called once: when the client's response closes unfinished. */
  abort (): void {
    this.aborted = true
    this.emit('abort')
  }
}

/** Error codes of a call that never reached upstream (refused, unresolvable, TLS refused, connect timeout). */
const CONNECT_FAILURE = /^(ECONNREFUSED|ENOTFOUND|EAI_AGAIN|EHOSTUNREACH|ENETUNREACH|UND_ERR_CONNECT_TIMEOUT|ERR_TLS_|DEPTH_ZERO|SELF_SIGNED|UNABLE_TO_|CERT_)/

/**
 * What goes upstream, and its content type: the checked JSON (the client's bytes where they mean exactly
 * that, lib/request-body.ts), or an upload rebuilt behind its checked fields, streaming the rest as it comes.
 */
function requestBody (request: FastifyRequest, analysis: RequestAnalysis): { body: UpstreamBody, contentType: string | undefined } {
  const endpoint = analysis.endpoint
  if (endpoint.method !== 'POST') return { body: undefined, contentType: undefined }
  if (endpoint.form === undefined) return { body: upstreamBody(analysis, request.oaiProxyRawBody), contentType: 'application/json' }
  // A form endpoint's body was read by the form parser: without one, validation refused the request.
  const upload = request.oaiProxyForm as NonNullable<FastifyRequest['oaiProxyForm']>
  upload.forwarded = true
  return upload.form.upstream(analysis.body as Record<string, unknown>)
}

function forwarder (app: FastifyInstance, opts: ProxyRoutesOptions, guard: StreamGuard) {
  const { dispatcher, origin, basePath } = app.oaiProxyUpstream
  const keys = app.oaiProxyKeys
  // Present only when metrics are on: a few timestamps on the request, no per-chunk work (plugins/metrics).
  const metrics = app.oaiProxyMetrics?.recorder ?? null

  return async function forward (request: FastifyRequest, reply: FastifyReply): Promise<FastifyReply> {
    const startedAt = Date.now()
    // From here a successful answer is on its way to the client: cut it if the client stops reading or
    // the call runs past its cap (destroying the response aborts upstream, below).
    const guardAnswer = () => guard.watch(reply.raw, startedAt, (reason) => {
      request.log.warn({ reason, ms: Date.now() - startedAt }, 'oai-proxy: response cut')
    })
    // Every proxy route carries its table row, so there is an analysis (made here if no step asked before).
    const analysis = analysisOf(request) as RequestAnalysis
    const endpoint = analysis.endpoint
    // The output guardrail matched, in a whole answer or a stream: logged with the rule id, never the text.
    const outputFiltered = (rule: RuleMatch) => {
      request.log.info({ rule: rule.id, endpoint: endpoint.id }, 'oai-proxy: output filtered')
      metrics?.outputFiltered(rule.id)
    }
    const path = basePath + upstreamPath(endpoint, request.params as Record<string, string>)
    const { body, contentType: bodyType } = requestBody(request, analysis)
    releaseBody(request)

    // A client that goes away aborts the upstream call, before or after its headers arrive.
    const abort = new UpstreamAbort()
    onResponseClose(reply.raw, () => {
      if (reply.raw.writableFinished) return
      abort.abort()
      metrics?.aborted(request)
    })

    for (const key of keys.pool.rotation()) {
      const headers = upstreamRequestHeaders(request.headers, { key: key.key, organization: keys.organization, project: keys.project, userAgent: opts.userAgent }, bodyType)

      let res
      metrics?.sent(request, reply)
      try {
        res = await upstreamRequest(dispatcher, { origin, path, method: endpoint.method, headers, body: upstreamPayload(body, headers), signal: abort })
      } catch (err) {
        metrics?.upstreamDone(request, reply)
        // The upload itself failed on the way (a late field, a cap, the client left): that is the answer.
        const refused = request.oaiProxyForm?.form.failure()
        if (refused !== null && refused !== undefined) throw refused
        const code = errorCode(err)
        request.log.warn({ code, key: key.id, aborted: abort.aborted }, 'oai-proxy: upstream request failed')
        // Never connected: upstream cannot have billed anything, so a token reservation is refunded.
        if (CONNECT_FAILURE.test(code)) request.oaiProxyUsage?.refund()
        throw upstreamFailure(err)
      }

      const status = res.statusCode
      metrics?.answered(request, reply)
      // How much of the key's rate limit upstream says is left: rotation prefers keys with headroom.
      keys.pool.observe(key.id, res.headers)
      if (status >= 200 && status < 300) {
        // Every line counts: `identity` on the first must not hide `gzip` on the second.
        const encodings = [res.headers['content-encoding'] ?? []].flat()
        if (encodings.some((e) => e.toLowerCase() !== 'identity')) {
          res.body.destroy()
          throw proxyError('UPSTREAM_BAD_RESPONSE')
        }
        // A small JSON answer a plugin asked to rewrite (only where the endpoint table allows it).
        const rewrite = endpoint.rewritableResponse === undefined ? null : request.oaiProxyRewriteResponse
        guardAnswer()
        if (typeof rewrite === 'function') return sendRewritten(reply, res, rewrite, keys.secrets)
        const contentType = firstHeader(res.headers['content-type'])
        // Generated text the output guardrail checks: whole answers are read whole (up to a bound), streams
        // go through its stage; any other answer on such an endpoint could not be checked, so it is refused.
        const shape = opts.output === null ? undefined : endpoint.replyShape
        const wholeLimit = shape === undefined ? undefined : OUTPUT_WHOLE_LIMIT
        if (mayReadWhole(contentType, firstHeader(res.headers['content-length']), wholeLimit)) {
          let whole: Buffer | null
          try {
            whole = await readSmall(res.body, wholeLimit)
          } catch (err) {
            request.log.warn({ code: errorCode(err), aborted: abort.aborted }, 'oai-proxy: upstream body ended abnormally')
            throw upstreamFailure(err)
          }
          if (whole !== null) {
            metrics?.upstreamDone(request, reply)
            const used = lastTotalTokens(whole)
            if (used !== null) request.oaiProxyUsage?.settle(used)
            const filtered = shape === undefined ? null : await checkWholeAnswer(shape, whole, opts.output as OutputRules)
            if (filtered !== null) outputFiltered(filtered.rule)
            return reply.code(status).headers(clientResponseHeaders(res.headers)).send(redactBytes(filtered?.body ?? whole, keys.secrets))
          }
        }
        let before: ChunkFilter | undefined = usageReader(request, res.body, contentType)
        if (shape !== undefined) {
          if (contentType?.startsWith('text/event-stream') !== true) {
            request.log.warn({ contentType, endpoint: endpoint.id }, 'oai-proxy: an answer the output filter cannot check was refused')
            res.body.destroy()
            throw proxyError('UPSTREAM_BAD_RESPONSE')
          }
          const outputGuard = new OutputGuard(shape, opts.output as OutputRules, outputFiltered)
          before = before === undefined ? outputGuard : filtersInRow(outputGuard, before)
        }
        const out = new SecretRedactor(keys.secrets, before)
        // An upstream that dies mid-stream cuts the client's response off (never ended cleanly); a client
        // that leaves destroys the chain, which aborts the upstream body.
        const body = chain(res.body, [out], (err) => {
          request.log.warn({ code: errorCode(err) }, 'oai-proxy: upstream stream ended abnormally')
          return upstreamFailure(err)
        })
        // The guard ended the stream early: stop upstream (it would go on generating, and billing).
        if (shape !== undefined) {
          body.once('end', () => {
            if (!res.body.readableEnded) res.body.destroy()
          })
        }
        metrics?.streaming(request, reply, res.body)
        return reply.code(status).headers(clientResponseHeaders(res.headers)).send(body)
      }
      if (status < 400) {
        // OpenAI does not redirect; a 3xx means something between us and it is wrong. Never follow it.
        res.body.destroy()
        throw proxyError('UPSTREAM_BAD_RESPONSE')
      }

      let text: string | null
      try {
        text = await readCapped(res.body)
      } catch (err) {
        throw upstreamFailure(err)
      }
      metrics?.upstreamDone(request, reply)
      const verdict = judgeUpstreamError(status, text, firstHeader(res.headers['retry-after']), keys.secrets)
      if (keys.pool.settle(key.id, verdict)) {
        request.log.warn({ key: key.id, reason: verdict.disable }, 'oai-proxy: upstream key taken out of rotation')
        // An upload was read as it went: it cannot be sent again on the next key. The SDKs retry a 503.
        if (body instanceof Readable) throw proxyError('UPSTREAM_KEY_FAILED', [], { headers: { 'retry-after': '0' } })
        continue
      }
      // Upstream refused the call: nothing was billed, so a token reservation is refunded.
      request.oaiProxyUsage?.refund()
      return reply.code(verdict.status).headers(clientResponseHeaders(res.headers)).type('application/json').send(verdict.body)
    }
    request.oaiProxyUsage?.refund()
    throw proxyError('NO_UPSTREAM_KEYS', [], { headers: { 'x-should-retry': 'false' } })
  }
}

/** The allowlisted routes, generated from the endpoint table. Nothing else in the suite talks to upstream. */
const proxyRoutes: FastifyPluginAsync<ProxyRoutesOptions> = async (app, opts) => {
  app.setValidatorCompiler(typeboxValidator)
  decorateAnalysis(app)
  const guard = new StreamGuard(opts.streamLimits)
  app.addHook('onClose', async () => guard.close())
  const handler = forwarder(app, opts, guard)
  for (const endpoint of opts.endpoints) {
    // Per-endpoint work is done here, once, not per request.
    planFor(endpoint)
    for (const prefix of opts.unprefixedRoutes ? ['/v1', ''] : ['/v1']) {
      app.route({
        method: endpoint.method,
        url: prefix + endpoint.path,
        exposeHeadRoute: false,
        bodyLimit: opts.bodyLimit,
        schema: {
          ...(endpoint.body === undefined ? {} : { body: endpoint.body }),
          ...(endpoint.params === undefined ? {} : { params: endpoint.params })
        },
        config: { oaiProxyEndpoint: endpoint },
        handler
      })
    }
  }
}

export default proxyRoutes

/** Methods served at a request URL (for 405 answers); empty when the path is not ours at all. */
export function allowedMethods (endpoints: readonly EndpointDefinition[], unprefixed: boolean): (url: string) => string[] {
  const table = endpoints.map((e) => ({
    method: e.method,
    pattern: new RegExp('^' + (unprefixed ? '(?:/v1)?' : '/v1') + e.path.replace(/:[a-z_]+/g, '[^/]+') + '$')
  }))
  return (url) => {
    const path = url.replace(/[?#].*$/s, '')
    return [...new Set(table.filter((t) => t.pattern.test(path)).map((t) => t.method))]
  }
}
