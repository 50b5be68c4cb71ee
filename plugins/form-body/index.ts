import fp from 'fastify-plugin'
import type { FastifyPluginAsync, FastifyRequest, onSendHookHandler } from 'fastify'
import { proxyError } from '../../errors.js'
import { openForm, type FormLimits, type OpenedForm } from './multipart.js'
import type { UploadCaps } from '../../schemas/openai-uploads.js'

export interface FormBodyOptions {
  /** Largest body in bytes: also the most of an upload held in memory while its fields are still missing. */
  bodyLimit: number
  /** Largest upload, per file and per request, below the endpoint's own caps (`MAX_UPLOAD_BYTES`). Absent: the endpoints' caps. */
  maxUploadBytes?: number | undefined
}

/** An upload being read: the reader, and whether its body went (or is going) upstream. */
export interface OaiProxyForm {
  form: OpenedForm
  forwarded: boolean
}

declare module 'fastify' {
  interface FastifyRequest {
    oaiProxyForm: OaiProxyForm | null
  }
}

const MiB = 1024 * 1024
/** Past this much file data held, with the required fields in, the rest of an upload streams. */
const STREAM_AFTER_BYTES = 1 * MiB

/**
 * `multipart/form-data` for the endpoints whose table row has a `form` (plugins/form-body/multipart.ts does the reading).
 * The parser hands the pipeline the form's text fields, typed, as the request body, as soon as every
 * decision can be made; the rest of the upload stays in the client's socket until the proxy route sends
 * it on. A request refused before that (auth happened earlier; policy, filter, limits, a bad part) closes
 * its connection after the answer and lets the unread rest drain, so an upload is never held or parsed for
 * nothing.
 */
const formBody: FastifyPluginAsync<FormBodyOptions> = async (app, opts) => {
  const limitsFor = (caps: UploadCaps): FormLimits => {
    const cap = (n: number) => (opts.maxUploadBytes === undefined ? n : Math.min(n, opts.maxUploadBytes))
    return {
      maxParts: 128,
      maxHeaderBytes: 8 * 1024,
      // Image prompts run to 32,000 characters; speaker reference clips come as data URLs.
      maxFieldBytes: 1 * MiB,
      maxFieldsBytes: 4 * MiB,
      maxFiles: caps.maxFiles,
      maxFileBytes: cap(caps.maxFileBytes),
      maxTotalFileBytes: cap(caps.maxTotalFileBytes),
      streamAfterBytes: STREAM_AFTER_BYTES,
      holdBytes: opts.bodyLimit
    }
  }

  app.decorateRequest('oaiProxyForm', null)
  app.addContentTypeParser('multipart/form-data', (request: FastifyRequest, payload, done) => {
    const form = request.routeOptions.config.oaiProxyEndpoint?.form
    if (form === undefined) {
      done(proxyError('UNSUPPORTED_MEDIA_TYPE'), undefined)
      return
    }
    // Fastify picked this parser by the content-type header, so it is there.
    openForm(payload, request.headers['content-type'] as string, form.spec, limitsFor(form.caps)).then((opened) => {
      request.oaiProxyForm = { form: opened, forwarded: false }
      // No file at all by the decision point means the form ended without one (streaming needs file bytes).
      const missing = opened.head.files.length === 0 ? Object.keys(form.spec.files).find((name) => form.spec.files[name]?.required === true) : undefined
      if (missing !== undefined) {
        done(proxyError('MULTIPART_INVALID', [`the file part '${missing}' is missing`], { param: missing }), undefined)
        return
      }
      done(null, opened.head.fields)
    }, (err: Error) => { done(err, undefined) })
  })

  // The answer is not the upstream's answer to this upload, or the upload failed on the way: the client may
  // still be sending it. Close the connection after the answer, and read the rest into nothing meanwhile
  // (closing on unread bytes could reset the connection before the client reads the answer). Only on the
  // upload routes: JSON routes pay nothing for it.
  const release: onSendHookHandler = async (request, reply) => {
    const state = request.oaiProxyForm
    if (state === null || (state.forwarded && state.form.failure() === null)) return
    state.form.discard()
    reply.header('connection', 'close')
    // The body budget may have piped the socket into a counter (chunked bodies): take it back first.
    request.raw.unpipe()
    request.raw.resume()
  }
  app.addHook('onRoute', (route) => {
    if (route.config?.oaiProxyEndpoint?.form === undefined) return
    route.onSend = [release, ...[route.onSend ?? []].flat()]
  })
}

export default fp(formBody, { name: 'oai-proxy-form-body', fastify: '5.x', dependencies: ['oai-proxy-json-body'] })
