import { Readable } from 'node:stream'
import { AUDIO_TYPES, IMAGE_TYPES } from '../plugins/form-body/file-sniff.js'
import { openForm, type FormLimits, type FormSpec, type OpenedForm } from '../plugins/form-body/multipart.js'
import { formContentType, multipartBody, readUploadedForm, wavHeader, type BufferPart, type UploadRecord } from '../testing/fake-uploads.js'

/* Shared by the test/multipart*.test.ts files: the specs of OpenAI's upload endpoints and small helpers. */

export const AUDIO: FormSpec = {
  fields: {
    model: 'string',
    prompt: 'string',
    language: 'string',
    response_format: 'string',
    temperature: 'number',
    stream: 'boolean',
    include: 'strings',
    timestamp_granularities: 'strings',
    chunking_strategy: 'json'
  },
  files: { file: { multiple: false, types: AUDIO_TYPES } },
  decisive: ['model']
}

export const IMAGES: FormSpec = {
  fields: { model: 'string', prompt: 'string', n: 'integer', size: 'string', quality: 'string' },
  files: { image: { multiple: true, types: IMAGE_TYPES }, mask: { multiple: false, types: ['png'] } },
  decisive: ['model', 'prompt']
}

const KiB = 1024
const MiB = 1024 * KiB
export const LIMITS: FormLimits = {
  maxParts: 64,
  maxHeaderBytes: 8 * KiB,
  maxFieldBytes: MiB,
  maxFieldsBytes: 2 * MiB,
  maxFiles: 16,
  maxFileBytes: 25 * MiB,
  maxTotalFileBytes: 50 * MiB,
  streamAfterBytes: 64 * KiB,
  holdBytes: 512 * KiB
}

export const CT = formContentType()

/** A form body from parts, in the test boundary. */
export const form = (parts: readonly BufferPart[]): Buffer => multipartBody(parts)

/** A source that delivers exactly these chunks (Readable.from: one read() per chunk). */
export const chunked = (chunks: ReadonlyArray<Buffer | string>): Readable => Readable.from(chunks)

/** `body` cut at the given offsets. */
export function cut (body: Buffer, at: readonly number[]): Buffer[] {
  const points = [0, ...at, body.length]
  return points.slice(1).map((end, i) => body.subarray(points[i], end))
}

export async function open (body: Buffer | Readable | Buffer[], spec: FormSpec = AUDIO, limits: FormLimits = LIMITS, contentType = CT): Promise<OpenedForm> {
  const source = Buffer.isBuffer(body) ? chunked([body]) : Array.isArray(body) ? chunked(body) : body
  return await openForm(source, contentType, spec, limits)
}

/** What upstream receives when the form is forwarded with `fields` (default: the fields read). */
export async function forward (opened: OpenedForm, fields: Record<string, unknown> = opened.head.fields): Promise<UploadRecord> {
  const { body, contentType } = opened.upstream(fields)
  return await readUploadedForm(Object.assign(body, { headers: { 'content-type': contentType } }))
}

/** The error a promise rejects with (fails the test if it resolves). */
export async function refusal (p: Promise<unknown>): Promise<Error & { code?: string, statusCode?: number, param?: string | null }> {
  try {
    await p
  } catch (err) {
    return err as Error
  }
  throw new Error('expected a refusal')
}

/** Bytes of silence after a WAV header: an audio file of exactly `bytes` bytes, streamed in `chunk`-byte pieces. */
export async function * wavChunks (bytes: number, chunk = 64 * KiB): AsyncGenerator<Buffer> {
  yield wavHeader(bytes - 44)
  const zeros = Buffer.alloc(chunk)
  for (let left = bytes - 44; left > 0; left -= chunk) yield left >= chunk ? zeros : zeros.subarray(0, left)
}
