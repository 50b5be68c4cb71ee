import { randomBytes } from 'node:crypto'
import { Readable } from 'node:stream'
import { proxyError } from '../../errors.js'
import { fieldParts, type FormSpec } from './multipart-fields.js'
import { FormParser, type FileInfo, type FormLimits } from './multipart-form.js'
import { formBoundary } from './multipart-headers.js'

export type { FileType } from './file-sniff.js'
export type { FieldKind, FormSpec } from './multipart-fields.js'
export type { FileInfo, FormLimits } from './multipart-form.js'

/*
 * A client's multipart/form-data upload, read up to the point where the request can be decided, then
 * re-written for upstream as a new form (our boundary, the fields the pipeline checked, clean file parts)
 * that streams the rest of the client's bytes with backpressure.
 *
 * The decision point. A decision that depends on a field (model allowlist, prompt filter, `n` caps) is
 * made before any byte goes upstream, yet an upload is never held whole. So file bytes are held only
 * until (a) the form ends, or (b) `streamAfterBytes` of them are held and every decisive field has
 * arrived: from then on they stream, and a later text part cuts the upstream body (it would not have
 * been checked). Holding past `holdBytes` with a decisive field still missing is refused (c). Holding at
 * all is needed because the openai Node SDK writes form fields in the caller's object order and its
 * README puts `file` before `model`; the Python SDK (httpx) always writes data fields before files.
 */

export interface FormHead {
  /** Typed values: integer/number -> number, boolean -> boolean ('true'/'false' only), strings -> string[], json -> parsed object or the string. */
  fields: Record<string, unknown>
  /** Files identified so far, in order (a file is listed once its first bytes have been sniffed). */
  files: FileInfo[]
}

export interface OpenedForm {
  head: FormHead
  /** Bytes of the form held in memory right now (for the proxy's in-flight body budget). */
  held: () => number
  /**
   * The body to send upstream: a new form with our boundary, the given fields first (numbers with String(),
   * booleans 'true'/'false', arrays as repeated `name[]` parts, objects as `name[key]` parts as the SDKs
   * send them; undefined values left out; anything else throws a TypeError), then every file part in order
   * with a clean header, streaming the rest of the client's bytes as the body is read. Call at most once.
   * Errors (a late field, caps exceeded, a truncated form, a client abort) destroy it with the catalogue
   * error (an abort: the source's own error); `failure()` returns that error afterwards.
   */
  upstream: (fields: Record<string, unknown>) => { body: Readable, contentType: string }
  failure: () => Error | null
  /** Stop reading and release everything (the request was refused before forwarding). The source is left to the caller. */
  discard: () => void
}

/** reading: until the decision point; waiting: for upstream(); streaming: as the body is read; done: ended, failed or released. */
type Phase = 'reading' | 'waiting' | 'streaming' | 'done'

const invalid = (detail: string): Error => proxyError('MULTIPART_INVALID', [detail])

/** Reads the client's form up to the decision point. Rejects with a catalogue error (nothing must go upstream in that case). */
export async function openForm (source: Readable, contentTypeHeader: string, spec: FormSpec, limits: FormLimits): Promise<OpenedForm> {
  // A decisive field the spec does not know could never arrive: every form with a file would be refused.
  const unknown = spec.decisive.find((field) => !Object.hasOwn(spec.fields, field))
  if (unknown !== undefined) throw new TypeError(`FormSpec.decisive names ${unknown}, which is not one of its fields`)
  const boundary = formBoundary(contentTypeHeader)
  // 128 random bits: a file cannot be made to contain our boundary except by chance (RFC 2046 §5.1.1).
  const out = `oai-proxy-${randomBytes(16).toString('hex')}`
  const parser = new FormParser(boundary, out, spec, limits)
  let phase: Phase = 'reading'
  let ended = false
  let failure: Error | null = null
  let body: Readable | null = null
  let wanting = false
  let used = false

  return await new Promise<OpenedForm>((resolve, reject) => {
    const opened: OpenedForm = {
      head: { fields: {}, files: parser.files },
      held: () => (phase === 'done' ? 0 : parser.held),
      upstream,
      failure: () => failure,
      discard: () => { used = true; stop() }
    }

    function detach (): void {
      source.off('readable', drive).off('end', onEnd).off('error', fail).off('close', onClose)
    }

    function stop (): void {
      phase = 'done'
      detach()
    }

    function fail (err: Error): void {
      failure = err
      if (phase === 'reading') reject(err)
      stop()
      body?.destroy(err)
    }

    function onEnd (): void {
      ended = true
      // Nothing more will come; the queue is handed on without the source.
      detach()
      if (!parser.closed) return fail(invalid('the form ends before its closing boundary'))
      drive()
    }

    function onClose (): void {
      if (!ended) fail(invalid('the client closed the connection before the form ended'))
    }

    function decide (): void {
      phase = 'waiting'
      parser.streaming = true
      opened.head.fields = parser.fields.toObject()
      resolve(opened)
    }

    /** Reads while the phase wants data: all of it until the decision, then only as fast as `body` is read. */
    function drive (): void {
      while (phase === 'reading' || (phase === 'streaming' && wanting)) {
        const next = phase === 'streaming' ? parser.take() : undefined
        if (next !== undefined) {
          wanting = (body as Readable).push(next)
          continue
        }
        if (ended) {
          if (phase === 'reading') return decide()
          ;(body as Readable).push(Buffer.from(`--${out}--\r\n`))
          ;(body as Readable).push(null)
          return stop()
        }
        const chunk: unknown = source.read()
        if (chunk === null) return
        try {
          parser.push(Buffer.isBuffer(chunk) ? chunk : Buffer.from(chunk as string))
        } catch (err) {
          return fail(err as Error)
        }
        if (phase === 'reading' && parser.ready()) decide()
      }
    }

    function upstream (fields: Record<string, unknown>): { body: Readable, contentType: string } {
      if (used) throw new Error('upstream() may be called once, and not after discard()')
      const prefix = fieldParts(out, fields, spec)
      used = true
      const stream = new Readable({
        read: () => { wanting = true; drive() },
        destroy: (err, callback) => { if (phase === 'streaming') stop(); callback(err) }
      })
      // An empty push would end a read cycle without data.
      if (prefix.length > 0) stream.push(prefix)
      body = stream
      // Not used and not failed: the form is waiting for this call.
      if (failure !== null) stream.destroy(failure)
      else phase = 'streaming'
      return { body: stream, contentType: `multipart/form-data; boundary=${out}` }
    }

    if (source.readableEnded || source.destroyed) return fail(invalid('the body was already read'))
    source.on('readable', drive).on('end', onEnd).on('error', fail).on('close', onClose)
  })
}
