import { Transform, type TransformCallback } from 'node:stream'

/*
 * Redaction has two layers. Upstream *error* texts are scrubbed by pattern (any `sk-…` key, OpenAI's masked
 * `sk-proj-abcd…wxyz` form, `org-…` and `proj_…` ids), because OpenAI quotes the key it was sent in its
 * 401s. Every upstream *body* (streams included) additionally has the exact configured secrets cut out by
 * `SecretRedactor`, a catch-all that costs one Buffer.indexOf per secret per chunk.
 */

const KEY_PATTERN = /\bsk-[A-Za-z0-9_*…-]+(?:\.+[A-Za-z0-9_*…-]+)*/g
const ORG_PATTERN = /\borg-[A-Za-z0-9]{6,}/g
const PROJECT_PATTERN = /\bproj_[A-Za-z0-9]{6,}/g

export const REDACTED = '[redacted]'

/** The exact strings that must never reach a client: each key (with and without `sk-`), org and project ids. */
export function secretForms (secrets: readonly string[]): string[] {
  const forms = new Set<string>()
  for (const s of secrets) {
    if (s.length === 0) continue
    forms.add(s)
    if (s.startsWith('sk-') && s.length >= 19) forms.add(s.slice(3))
  }
  // Longest first, so a form that contains another is cut whole.
  return [...forms].sort((a, b) => b.length - a.length)
}

/*
 * The forms as Buffers, computed once per secrets list: the proxy route builds a redactor per response,
 * always from the same `oaiProxyKeys.secrets` array.
 */
const buffersOf = new WeakMap<readonly string[], SecretBytes[]>()
/** A secret's bytes, and which byte values occur in it before its last byte (where a held-back tail can end). */
interface SecretBytes { bytes: Buffer, inPrefix: Uint8Array }

function secretBuffers (secrets: readonly string[]): SecretBytes[] {
  let buffers = buffersOf.get(secrets)
  if (buffers === undefined) {
    buffers = secretForms(secrets).map((s) => {
      const bytes = Buffer.from(s)
      const inPrefix = new Uint8Array(256)
      for (const b of bytes.subarray(0, bytes.length - 1)) inPrefix[b] = 1
      return { bytes, inPrefix }
    })
    buffersOf.set(secrets, buffers)
  }
  return buffers
}

const EMPTY = Buffer.alloc(0)

/** Scrub an upstream error text: exact secrets first, then anything shaped like a key or an account id. */
export function redactText (text: string, secrets: readonly string[]): string {
  let out = text
  for (const s of secretForms(secrets)) out = out.split(s).join(REDACTED)
  return out
    .replace(KEY_PATTERN, 'sk-' + REDACTED)
    .replace(ORG_PATTERN, 'org-' + REDACTED)
    .replace(PROJECT_PATTERN, 'proj_' + REDACTED)
}

const REPLACEMENT = Buffer.from(REDACTED)

function scrub (data: Buffer, secrets: readonly SecretBytes[]): Buffer {
  let cuts: Array<[number, number]> | null = null
  for (const { bytes: s } of secrets) {
    for (let at = data.indexOf(s); at !== -1; at = data.indexOf(s, at + s.length)) (cuts ??= []).push([at, at + s.length])
  }
  if (cuts === null) return data
  cuts.sort((a, b) => a[0] - b[0])
  const parts: Buffer[] = []
  let pos = 0
  for (const [start, end] of cuts) {
    if (end <= pos) continue
    if (start >= pos) parts.push(data.subarray(pos, start), REPLACEMENT)
    pos = end
  }
  parts.push(data.subarray(pos))
  return Buffer.concat(parts)
}

/** A whole upstream body with every exact secret cut out (`data` itself when none occurs). */
export function redactBytes (data: Buffer, secrets: readonly string[]): Buffer {
  return scrub(data, secretBuffers(secrets))
}

/**
 * Sees a body's chunks before redaction, in the same stream stage (one Transform per response, not two):
 * `feed` returns what may be passed on (the chunk itself, or text it released, possibly none); `finish`
 * what it still held at the end. A filter that sets `ended` has ended the body: what `feed` returned last
 * is its end, and nothing after it is passed on.
 */
export interface ChunkFilter {
  feed: (chunk: Buffer) => Buffer | string
  finish: () => string
  readonly ended?: boolean
}

const asBuffer = (out: Buffer | string): Buffer => typeof out === 'string' ? Buffer.from(out) : out

/** Two filters in a row: `second` sees what `first` passes on; the body ends when `first` ends it. */
export function filtersInRow (first: ChunkFilter, second: ChunkFilter): ChunkFilter {
  return {
    feed: (chunk) => {
      const out = first.feed(chunk)
      return out.length === 0 ? out : second.feed(asBuffer(out))
    },
    finish: () => {
      const rest = first.finish()
      return (rest.length === 0 ? '' : asBuffer(second.feed(Buffer.from(rest))).toString()) + second.finish()
    },
    get ended () {
      return first.ended === true
    }
  }
}

/**
 * A byte stream filter that replaces every occurrence of the given secrets. It holds back only a chunk
 * tail that could be the start of a secret, so an SSE frame (which ends in "\n\n") is never delayed.
 */
export class SecretRedactor extends Transform {
  readonly #secrets: SecretBytes[]
  #carry: Buffer = EMPTY
  #ended = false

  readonly #before: ChunkFilter | undefined

  /** `before`: a filter that sees each chunk first (the usage reader, the output guard). */
  constructor (secrets: readonly string[], before?: ChunkFilter) {
    super()
    this.#secrets = secretBuffers(secrets)
    this.#before = before
  }

  override _transform (chunk: Buffer, _enc: BufferEncoding, done: TransformCallback): void {
    // The filter ended the body: the rest of upstream's is dropped until the caller stops it.
    if (this.#ended) return done()
    const out = this.#before === undefined ? chunk : this.#before.feed(chunk)
    if (out.length > 0) this.#pass(asBuffer(out))
    if (this.#before?.ended === true) {
      this.#ended = true
      this.#release()
      this.push(null)
    }
    done()
  }

  override _flush (done: TransformCallback): void {
    if (!this.#ended) {
      const rest = this.#before?.finish() ?? ''
      if (rest.length > 0) this.#pass(Buffer.from(rest))
      this.#release()
    }
    done()
  }

  /** The body is over: what was held back cannot become a secret any more. */
  #release (): void {
    if (this.#carry.length > 0) this.push(scrub(this.#carry, this.#secrets))
    this.#carry = EMPTY
  }

  #pass (chunk: Buffer): void {
    // Scrub first, then hold back: a whole secret at the very end (one whose last character is also its
    // first, e.g. a key ending in "s") must be cut now, not mistaken for the start of another.
    const clean = scrub(this.#carry.length > 0 ? Buffer.concat([this.#carry, chunk]) : chunk, this.#secrets)
    const hold = this.#holdback(clean)
    this.#carry = hold > 0 ? Buffer.from(clean.subarray(clean.length - hold)) : EMPTY
    if (clean.length > hold) this.push(clean.subarray(0, clean.length - hold))
  }

  /** Length of the longest tail of `data` that is a proper prefix of some secret (0 if none). */
  #holdback (data: Buffer): number {
    let hold = 0
    const last = data[data.length - 1] as number
    for (const { bytes: s, inPrefix } of this.#secrets) {
      // A tail that starts a secret ends in a byte of the secret's prefix: an SSE frame ends in a newline,
      // which no secret holds, so this is usually the whole check.
      if (inPrefix[last] !== 1) continue
      const from = Math.max(0, data.length - s.length + 1)
      for (let i = from; i < data.length; i++) {
        const tail = data.length - i
        if (data[i] === s[0] && data.subarray(i).equals(s.subarray(0, tail))) {
          // The leftmost match is the longest tail for this secret.
          hold = Math.max(hold, tail)
          break
        }
      }
    }
    return hold
  }
}
