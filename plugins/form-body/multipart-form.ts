import { proxyError } from '../../errors.js'
import { mimeType, safeFileName, sniff, SNIFF_BYTES, type FileType } from './file-sniff.js'
import { FieldValues, partHeader, slotOf, type FormSpec, type Slot } from './multipart-fields.js'
import { partHead } from './multipart-headers.js'
import { PartSplitter } from './multipart-parts.js'

/*
 * The part-level reader of a client's form: checks each part against the spec and the limits, keeps text
 * values, and turns file parts into the parts we send upstream (our boundary, a clean header from the
 * sniffed type) queued for the caller to take. It never waits: openForm (multipart.ts) decides when to
 * read and when to hand the queue on.
 */

export interface FormLimits {
  maxParts: number
  maxHeaderBytes: number
  maxFieldBytes: number
  maxFieldsBytes: number
  maxFiles: number
  maxFileBytes: number
  maxTotalFileBytes: number
  streamAfterBytes: number
  holdBytes: number
}

export interface FileInfo { field: string, type: FileType, /** safe name sent upstream, e.g. `upload.wav`; the client's name is never forwarded */ name: string }

/** RFC 2046 lets a preamble be anything; clients send none, so a little is plenty. */
const MAX_PREAMBLE = 1024
const CRLF = Buffer.from('\r\n')

interface OpenFile { slot: Slot & { file: true }, wire: string, bytes: number, head: Buffer[] | null }

export class FormParser {
  readonly fields: FieldValues
  readonly files: FileInfo[] = []
  /** Set once file bytes are forwarded: from then on a text part is refused. */
  streaming = false
  readonly #spec: FormSpec
  readonly #limits: FormLimits
  readonly #out: string
  readonly #splitter: PartSplitter
  #queue: Buffer[] = []
  #queued = 0
  #parts = 0
  #fileParts = 0
  #fileBytes = 0
  #file: OpenFile | null = null

  /** `boundary` is the client's; `out` is ours, for the queued parts. */
  constructor (boundary: string, out: string, spec: FormSpec, limits: FormLimits) {
    this.#spec = spec
    this.#limits = limits
    this.#out = out
    this.fields = new FieldValues(limits)
    this.#splitter = new PartSplitter(boundary, { maxHeaderBytes: limits.maxHeaderBytes, maxPreambleBytes: MAX_PREAMBLE }, {
      part: (header) => this.#part(header),
      data: (bytes) => (this.#file === null ? this.fields.data(bytes) : this.#fileData(this.#file, bytes)),
      partEnd: () => this.#partEnd()
    })
  }

  push (chunk: Buffer): void {
    this.#splitter.push(chunk)
  }

  /** The close delimiter has been read. */
  get closed (): boolean {
    return this.#splitter.closed
  }

  /** Bytes held in memory: queued parts, text values, and what the splitter carries. */
  get held (): number {
    const file = this.#file
    const sniffing = file !== null && file.head !== null ? file.bytes : 0
    return this.#queued + this.fields.bytes + this.#splitter.held + sniffing
  }

  /** The first decisive field that has not arrived, if any. */
  missing (): string | undefined {
    return this.#spec.decisive.find((field) => !this.fields.has(field))
  }

  /**
   * Decision point (b): enough file bytes held, every decisive field known, and no text part half read (its
   * value would be stored after the fields were handed over, and never forwarded).
   */
  ready (): boolean {
    return this.#fileBytes >= this.#limits.streamAfterBytes && this.missing() === undefined && !this.fields.receiving
  }

  /** The next queued bytes for upstream. */
  take (): Buffer | undefined {
    const next = this.#queue.shift()
    if (next !== undefined) this.#queued -= next.length
    return next
  }

  #enqueue (bytes: Buffer): void {
    this.#queue.push(bytes)
    this.#queued += bytes.length
  }

  #part (header: Buffer): void {
    const limits = this.#limits
    if (++this.#parts > limits.maxParts) throw proxyError('MULTIPART_TOO_MANY_PARTS', [limits.maxParts, 'parts'])
    const head = partHead(header)
    const slot = slotOf(this.#spec, head.name)
    const field = slot.field
    if (slot.file !== head.file) {
      const detail = slot.file ? 'must be a file (a part with a filename)' : 'must be text, not a file'
      throw proxyError('MULTIPART_INVALID', [`field '${field}' ${detail}`], { param: field })
    }
    if (!slot.file) {
      if (this.streaming) throw proxyError('MULTIPART_FIELD_ORDER', [field, `arrived after ${this.#fileBytes} bytes of file data that were already being forwarded`], { param: field })
      this.fields.open(slot)
      return
    }
    if (++this.#fileParts > limits.maxFiles) throw proxyError('MULTIPART_TOO_MANY_PARTS', [limits.maxFiles, 'files'], { param: field })
    if (!slot.multiple && this.files.some((f) => f.field === field)) throw proxyError('MULTIPART_INVALID', [`field '${field}' takes one file`], { param: field })
    this.#file = { slot, wire: head.name, bytes: 0, head: [] }
  }

  #fileData (file: OpenFile, bytes: Buffer): void {
    const limits = this.#limits
    const field = file.slot.field
    file.bytes += bytes.length
    this.#fileBytes += bytes.length
    if (file.bytes > limits.maxFileBytes) throw proxyError('FILE_TOO_LARGE', [`'${field}' is over ${limits.maxFileBytes} bytes`], { param: field })
    if (this.#fileBytes > limits.maxTotalFileBytes) throw proxyError('FILE_TOO_LARGE', [`the files together are over ${limits.maxTotalFileBytes} bytes`], { param: field })
    if (file.head === null) this.#enqueue(bytes)
    else {
      file.head.push(bytes)
      if (file.bytes >= SNIFF_BYTES) this.#identify(file, file.head)
    }
    // Decision point (c): files may be held only so long waiting for a field that decides the request.
    // Once streaming, every decisive field had arrived, so this never fires then.
    const missing = this.#fileBytes >= limits.holdBytes ? this.missing() : undefined
    if (missing !== undefined) {
      throw proxyError('MULTIPART_FIELD_ORDER', [missing, `must come before the file parts: files are held until it arrives, and they reached the ${limits.holdBytes}-byte limit`], { param: missing })
    }
  }

  /** Sniff the file's first bytes, then queue its clean part header and those bytes. */
  #identify (file: OpenFile, head: Buffer[]): void {
    file.head = null
    const field = file.slot.field
    const bytes = Buffer.concat(head)
    const type = sniff(bytes)
    if (type === null || !file.slot.types.includes(type)) throw proxyError('FILE_TYPE_NOT_ALLOWED', [field, file.slot.types.join(', ')], { param: field })
    const info = { field, type, name: safeFileName(type) }
    this.files.push(info)
    this.#enqueue(Buffer.from(partHeader(this.#out, file.wire, { name: info.name, type: mimeType(type) })))
    this.#enqueue(bytes)
  }

  #partEnd (): void {
    const file = this.#file
    if (file === null) return this.fields.close()
    this.#file = null
    if (file.head !== null) {
      if (file.bytes === 0) throw proxyError('MULTIPART_INVALID', [`field '${file.slot.field}' is an empty file`], { param: file.slot.field })
      this.#identify(file, file.head)
    }
    this.#enqueue(CRLF)
  }
}
