import type { Readable } from 'node:stream'
import type { JsonScan } from './json-scan.js'

/*
 * The bytes upstream receives. They must mean exactly what was validated and filtered, and cost as little as
 * possible: when the parsed body holds as many members as the text (no duplicate key, see json-scan.ts), the
 * client's own bytes already mean that, integers beyond 2^53 included, so they go as they are; top-level
 * fields the pipeline changed (output caps, `store`, `stream_options`) are spliced in as new members. Only a
 * body with a duplicate key is re-serialised, so upstream sees the value that was checked (the last one),
 * whatever its own parser would pick; json-body.ts refuses such a body when it also holds a number a
 * double cannot carry exactly.
 */

export interface RawBody {
  bytes: Buffer
  scan: JsonScan
}

/** What the forwarder needs of a request's analysis (lib/request-analysis.ts). */
export interface BodyState {
  /** The validated body, changed only through `setField`/`deleteField`. */
  body: Record<string, unknown> | null
  /** Object members in the parsed body. */
  members: number
  /** Top-level fields the pipeline set or removed. */
  patched: Set<string>
}

/** The parsed body repeats a key somewhere (JSON.parse kept the last value). */
export const hasDuplicateKeys = (analysis: BodyState, raw: RawBody): boolean => analysis.members !== raw.scan.members

/** Set a top-level field of the body we forward. */
export function setField (analysis: BodyState, key: string, value: unknown): void {
  (analysis.body as Record<string, unknown>)[key] = value
  analysis.patched.add(key)
}

/** Remove a top-level field from the body we forward. */
export function deleteField (analysis: BodyState, key: string): void {
  delete (analysis.body as Record<string, unknown>)[key]
  analysis.patched.add(key)
}

const OPEN = Buffer.from('{')
const COMMA = Buffer.from(',')
const CLOSE = Buffer.from('}')

/** The body to send upstream: the client's bytes when they can be shown to mean the checked value. */
export function upstreamBody (analysis: BodyState, raw: RawBody | null): Buffer | string | Spliced {
  const body = analysis.body
  if (raw === null || hasDuplicateKeys(analysis, raw)) return JSON.stringify(body)
  if (analysis.patched.size === 0) return raw.bytes
  const parts: Buffer[] = []
  for (const m of raw.scan.top) {
    // Decoded only when it holds an escape; otherwise its bytes between the quotes are the key.
    const quoted = raw.bytes.subarray(m.start, m.keyEnd)
    const key = quoted.includes(0x5c) ? JSON.parse(quoted.toString('utf8')) as string : quoted.toString('utf8', 1, quoted.length - 1)
    if (!analysis.patched.has(key)) parts.push(raw.bytes.subarray(m.start, m.end))
  }
  for (const key of analysis.patched) {
    const value = (body as Record<string, unknown>)[key]
    if (value !== undefined) parts.push(Buffer.from(`${JSON.stringify(key)}:${JSON.stringify(value)}`))
  }
  const pieces: Buffer[] = [OPEN]
  parts.forEach((p, i) => pieces.push(...(i === 0 ? [p] : [COMMA, p])))
  pieces.push(CLOSE)
  return joined(pieces)
}

/** JSON bodies from this size on reach undici as a `WrittenOnce`. */
export const WRITTEN_ONCE_BYTES = 64 * 1024

/**
 * A large spliced body, left in pieces: copying a 256 KB prompt into one new buffer costs ~40 µs and a
 * second copy in memory while it is sent. Pieces of the client's bytes from COPY_FROM on are subarrays of
 * them; the small ones between (`{`, commas, patched members) are joined, so a typical body is three writes.
 */
export class Spliced {
  constructor (readonly pieces: readonly Buffer[], readonly length: number) {}
}

const COPY_FROM = 16 * 1024

function joined (pieces: readonly Buffer[]): Buffer | Spliced {
  const length = pieces.reduce((n, p) => n + p.length, 0)
  if (length < WRITTEN_ONCE_BYTES) return Buffer.concat(pieces, length)
  const out: Buffer[] = []
  let small: Buffer[] = []
  for (const p of pieces) {
    if (p.length < COPY_FROM) {
      small.push(p)
      continue
    }
    if (small.length > 0) out.push(Buffer.concat(small))
    small = []
    out.push(p)
  }
  if (small.length > 0) out.push(Buffer.concat(small))
  return new Spliced(out, length)
}

/**
 * A body undici lets go of once written. undici's request keeps a Buffer body until the answer ends
 * (minutes, for a stream), so a large prompt would stay in memory that long; an async iterable it only
 * reads, a piece at a time. One per attempt: a retry on the next key gets a new one over the same bytes.
 * Its length goes in `content-length` (`upstreamPayload`), so the body is sent as is, not chunked.
 */
export class WrittenOnce implements AsyncIterable<Buffer> {
  #pieces: Buffer[]
  readonly length: number

  constructor (body: Buffer | Spliced) {
    this.#pieces = Buffer.isBuffer(body) ? [body] : [...body.pieces]
    this.length = body.length
  }

  // A plain iterator, not a generator: a finished generator's frame could still hold the bytes.
  [Symbol.asyncIterator] (): AsyncIterator<Buffer> {
    return {
      next: async (): Promise<IteratorResult<Buffer>> => {
        const piece = this.#pieces.shift()
        return piece === undefined ? { done: true, value: undefined } : { done: false, value: piece }
      }
    }
  }
}

/** What goes upstream: JSON bytes or text (maybe in pieces), an upload's stream, or nothing. */
export type UpstreamBody = Buffer | string | Spliced | Readable | undefined

/**
 * What one attempt hands undici: a large JSON body as a `WrittenOnce` (its length set in `headers`), anything
 * else as it is. A string under a quarter of the size cannot reach it in UTF-8 (3 bytes a unit at most).
 */
export function upstreamPayload (body: UpstreamBody, headers: Record<string, string>): Exclude<UpstreamBody, Spliced> | WrittenOnce {
  if (body instanceof Spliced) {
    headers['content-length'] = String(body.length)
    return new WrittenOnce(body)
  }
  if ((typeof body !== 'string' && !Buffer.isBuffer(body)) || body.length < WRITTEN_ONCE_BYTES / 4) return body
  const bytes = typeof body === 'string' ? Buffer.from(body) : body
  if (bytes.length < WRITTEN_ONCE_BYTES) return bytes
  headers['content-length'] = String(bytes.length)
  return new WrittenOnce(bytes)
}
