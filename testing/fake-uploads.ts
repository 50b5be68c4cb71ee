import { createHash, type Hash } from 'node:crypto'
import type { IncomingHttpHeaders } from 'node:http'
import { Readable } from 'node:stream'
import { crc32, deflateSync } from 'node:zlib'

/*
 * Multipart helpers for tests and the fake OpenAI server: a recorder of the forms upstream receives, a
 * builder of client forms, and tiny valid WAV and PNG files. The recorder is a separate, deliberately
 * plain parser (it shares no code with plugins/form-body/multipart*.ts), so it can serve as an oracle for the proxy's;
 * it hashes file bytes as they stream and never holds a file.
 */

export interface UploadedFile { field: string, filename: string, contentType: string, bytes: number, sha256: string }
export interface UploadRecord {
  boundary: string
  /** Text values by part name, in arrival order (`image[]` and `image` are different names). */
  fields: Record<string, string[]>
  files: UploadedFile[]
  /** Each part's header block as received. */
  rawHeaderBlocks: string[]
}

type Sink = { name: string, text: Buffer[] } | { hash: Hash, file: UploadedFile }

const param = (header: string, name: string): string | undefined => new RegExp(`;\\s*${name}="([^"]*)"`, 'i').exec(header)?.[1]

/** Read a multipart/form-data request as it arrives; rejects on anything malformed. */
export async function readUploadedForm (req: AsyncIterable<Buffer | string> & { headers: IncomingHttpHeaders }): Promise<UploadRecord> {
  const m = /boundary=(?:"([^"]+)"|([^;\s]+))/i.exec(req.headers['content-type'] ?? '')
  if (m === null) throw new Error('no multipart boundary')
  const boundary = (m[1] ?? m[2]) as string
  const delimiter = Buffer.from(`\r\n--${boundary}`)
  const fields = new Map<string, string[]>()
  const record: UploadRecord = { boundary, fields: {}, files: [], rawHeaderBlocks: [] }
  let sink: Sink | null = null
  let state: 'body' | 'line' | 'headers' | 'done' = 'body'
  let pending = Buffer.from('\r\n')
  const write = (bytes: Buffer): void => {
    if (sink === null || bytes.length === 0) return
    if ('text' in sink) sink.text.push(bytes)
    else { sink.hash.update(bytes); sink.file.bytes += bytes.length }
  }
  const finish = (): void => {
    if (sink === null) return
    if ('text' in sink) {
      fields.set(sink.name, [...fields.get(sink.name) ?? [], Buffer.concat(sink.text).toString('utf8')])
    } else {
      sink.file.sha256 = sink.hash.digest('hex')
      record.files.push(sink.file)
    }
    sink = null
  }
  for await (const chunk of req) {
    pending = Buffer.concat([pending, Buffer.from(chunk)])
    for (let progress = true; progress;) {
      progress = false
      if (state === 'body') {
        const at = pending.indexOf(delimiter)
        const upTo = at === -1 ? Math.max(0, pending.length - delimiter.length) : at
        write(pending.subarray(0, upTo))
        pending = pending.subarray(at === -1 ? upTo : at + delimiter.length)
        if (at !== -1) { finish(); state = 'line'; progress = true }
      } else if (state === 'line' && pending.length >= 2) {
        const two = pending.toString('latin1', 0, 2)
        if (two === '--') state = 'done'
        else if (two === '\r\n') state = 'headers'
        else throw new Error('bad boundary line')
        pending = pending.subarray(2)
        progress = true
      } else if (state === 'headers') {
        const end = Buffer.concat([Buffer.from('\r\n'), pending]).indexOf('\r\n\r\n')
        if (end === -1) continue
        const header = pending.toString('utf8', 0, Math.max(0, end - 2))
        pending = pending.subarray(end + 2)
        record.rawHeaderBlocks.push(header)
        const disposition = /^content-disposition:(.*)$/im.exec(header)?.[1] ?? ''
        const filename = param(disposition, 'filename')
        const name = param(disposition, 'name') as string
        sink = filename === undefined
          ? { name, text: [] }
          : { hash: createHash('sha256'), file: { field: name, filename, contentType: /^content-type:\s*(.*)$/im.exec(header)?.[1] ?? '', bytes: 0, sha256: '' } }
        state = 'body'
        progress = true
      }
    }
  }
  if (state !== 'done') throw new Error('the form ended before its closing boundary')
  record.fields = Object.fromEntries(fields)
  return record
}

export type BufferPart = { name: string, value: string } | { name: string, filename: string, contentType: string, data: Buffer }
export type FormPart = BufferPart | { name: string, filename: string, contentType: string, data: Buffer | AsyncIterable<Buffer> }

export const TEST_BOUNDARY = '----oaiProxyTest7MA4YWxkTrZu0gW'
export const formContentType = (boundary = TEST_BOUNDARY): string => `multipart/form-data; boundary=${boundary}`

/** The parts' headers as a client writes them; names are written as given, so tests can send odd ones. */
function partHeader (part: FormPart, boundary: string): Buffer {
  const file = 'data' in part ? `; filename="${part.filename}"\r\nContent-Type: ${part.contentType}` : ''
  return Buffer.from(`--${boundary}\r\nContent-Disposition: form-data; name="${part.name}"${file}\r\n\r\n`)
}

async function * pieces (parts: readonly FormPart[], boundary: string): AsyncGenerator<Buffer> {
  for (const part of parts) {
    yield partHeader(part, boundary)
    if (!('data' in part)) yield Buffer.from(part.value)
    else if (Buffer.isBuffer(part.data)) yield part.data
    else yield * part.data
    yield Buffer.from('\r\n')
  }
  yield Buffer.from(`--${boundary}--\r\n`)
}

/** A client's form body: a Buffer when every file is a Buffer, otherwise a Readable that streams the files. */
export function multipartBody (parts: readonly BufferPart[], boundary?: string): Buffer
export function multipartBody (parts: readonly FormPart[], boundary?: string): Readable
export function multipartBody (parts: readonly FormPart[], boundary = TEST_BOUNDARY): Buffer | Readable {
  if (parts.some((p) => 'data' in p && !Buffer.isBuffer(p.data))) return Readable.from(pieces(parts, boundary), { objectMode: false })
  const all: Buffer[] = []
  for (const part of parts as readonly BufferPart[]) all.push(partHeader(part, boundary), 'data' in part ? part.data : Buffer.from(part.value), Buffer.from('\r\n'))
  all.push(Buffer.from(`--${boundary}--\r\n`))
  return Buffer.concat(all)
}

/** A 44-byte PCM WAV header (16-bit mono) for `dataBytes` of samples. */
export function wavHeader (dataBytes: number, sampleRate = 16000): Buffer {
  const h = Buffer.alloc(44)
  h.write('RIFF', 0, 'latin1')
  h.writeUInt32LE(36 + dataBytes, 4)
  h.write('WAVEfmt ', 8, 'latin1')
  h.writeUInt32LE(16, 16)
  h.writeUInt16LE(1, 20)
  h.writeUInt16LE(1, 22)
  h.writeUInt32LE(sampleRate, 24)
  h.writeUInt32LE(sampleRate * 2, 28)
  h.writeUInt16LE(2, 32)
  h.writeUInt16LE(16, 34)
  h.write('data', 36, 'latin1')
  h.writeUInt32LE(dataBytes, 40)
  return h
}

/** A valid WAV file of `seconds` of silence. */
export function wavBytes (seconds: number, sampleRate = 16000): Buffer {
  const data = Math.round(seconds * sampleRate) * 2
  return Buffer.concat([wavHeader(data, sampleRate), Buffer.alloc(data)])
}

function pngChunk (type: string, data: Buffer): Buffer {
  const body = Buffer.concat([Buffer.from(type, 'latin1'), data])
  const frame = Buffer.alloc(body.length + 8)
  frame.writeUInt32BE(data.length, 0)
  body.copy(frame, 4)
  frame.writeUInt32BE(crc32(body), body.length + 4)
  return frame
}

/** A valid `w`×`h` RGB PNG (a gradient), deflated with zlib and with correct CRCs. */
export function pngBytes (w: number, h: number): Buffer {
  const ihdr = Buffer.alloc(13)
  ihdr.writeUInt32BE(w, 0)
  ihdr.writeUInt32BE(h, 4)
  ihdr.set([8, 2, 0, 0, 0], 8)
  const rows = Buffer.alloc(h * (1 + w * 3))
  for (let y = 0; y < h; y++) for (let x = 0; x < w; x++) rows.set([x * 7, y * 11, (x + y) * 3], y * (1 + w * 3) + 1 + x * 3)
  const signature = Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a])
  return Buffer.concat([signature, pngChunk('IHDR', ihdr), pngChunk('IDAT', deflateSync(rows)), pngChunk('IEND', Buffer.alloc(0))])
}
