import { StringDecoder } from 'node:string_decoder'
import type { Readable } from 'node:stream'
import type { ChunkFilter } from '../../plugins/upstream/redact.js'
import { FrameSplitter, endsFrame } from '../../lib/sse-frames.js'

/*
 * Reads an upstream body's token `usage` as it goes by, without delaying it:
 * - SSE: frames are split at their blank line; frames mentioning "usage" are parsed: chat/completions
 *   usage chunks (`choices: []`) and the Responses API's `response.completed`. A usage-only chunk the
 *   proxy asked for on the client's behalf is dropped (many clients crash on `choices: []`, openai-wire
 *   §1.7): only then does the reader sit in the stream, inside the redactor's stage (`UsageReader` as its
 *   `before` filter); otherwise it just listens (`watchUsage`).
 * - JSON: the last `"total_tokens"` in the final 16 KB, read at the end.
 */

const TAIL_BYTES = 16 * 1024
const TOTAL_TOKENS = Buffer.from('"total_tokens"')

const isSpace = (b: number | undefined): boolean => b === 0x20 || b === 0x0a || b === 0x0d || b === 0x09
const isDigit = (b: number | undefined): b is number => b !== undefined && b >= 0x30 && b <= 0x39

/**
 * The value of the last `"total_tokens": <integer>` member in a JSON body's bytes, or null. The usage
 * object comes last in OpenAI's answers, so the search runs backwards. Generated text quoting JSON holds
 * the name as `\"total_tokens\"` (not a match); a backslash before the quote means the match ends a longer
 * key (`"x\"total_tokens":`), not a member.
 */
export function lastTotalTokens (bytes: Buffer): number | null {
  for (let at = bytes.lastIndexOf(TOTAL_TOKENS); at !== -1; at = at === 0 ? -1 : bytes.lastIndexOf(TOTAL_TOKENS, at - 1)) {
    if (bytes[at - 1] === 0x5c) continue
    let i = at + TOTAL_TOKENS.length
    while (isSpace(bytes[i])) i++
    if (bytes[i++] !== 0x3a) continue
    while (isSpace(bytes[i])) i++
    const from = i
    let n = 0
    for (let b = bytes[i]; isDigit(b); b = bytes[++i]) n = n * 10 + b - 0x30
    if (i > from) return n
  }
  return null
}

export interface UsageTapOptions {
  mode: 'sse' | 'json'
  /** Drop chat/completions usage-only chunks (the client did not ask for them). */
  hideUsageChunk: boolean
  onUsage: (totalTokens: number) => void
}

function usageOf (frame: string): { total: number | null, usageOnly: boolean } {
  const data = frame.split(/\r\n|\n|\r/).filter((l) => l.startsWith('data:')).map((l) => l.slice(5).trimStart()).join('\n')
  try {
    const obj = JSON.parse(data) as { usage?: { total_tokens?: unknown }, choices?: unknown, type?: unknown, response?: { usage?: { total_tokens?: unknown } } }
    const usage = obj.type === 'response.completed' ? obj.response?.usage : obj.usage
    const total = typeof usage?.total_tokens === 'number' ? usage.total_tokens : null
    return { total, usageOnly: total !== null && Array.isArray(obj.choices) && obj.choices.length === 0 }
  } catch {
    return { total: null, usageOnly: false }
  }
}

const USAGE = Buffer.from('"usage"')
const EMPTY = Buffer.alloc(0)

/**
 * The parsing, for the listener and, as the redactor's `before` filter (plugins/upstream/redact.ts), for the stream stage
 * that drops the usage-only chunk: `feed` returns what may be passed on.
 */
export class UsageReader implements ChunkFilter {
  readonly #opts: UsageTapOptions
  // SSE only (a JSON body is read from its tail, as bytes), and made on the first chunk that has to be read:
  // most of a stream passes untouched, and a stream in flight need not carry them.
  #decoder: StringDecoder | null = null
  #frames: FrameSplitter | null = null
  /** JSON: the body's last bytes (none yet: one shared empty Buffer, not an allocation per stream). */
  #tail: Buffer = EMPTY
  /** Nothing is held from earlier chunks: the last one ended on a frame boundary, all of it passed on. */
  #clean = true

  constructor (opts: UsageTapOptions) {
    this.#opts = opts
  }

  /** What may be passed on: `chunk` itself when it holds only whole frames none of which mentions usage. */
  feed (chunk: Buffer): Buffer | string {
    if (this.#opts.mode === 'json') {
      this.#tail = Buffer.concat([this.#tail, chunk]).subarray(-TAIL_BYTES)
      return chunk
    }
    // Most chunks are whole frames of generated text: they need no decoding, splitting or re-encoding.
    const whole = endsFrame(chunk)
    if (this.#clean && whole && chunk.indexOf(USAGE) === -1) return chunk
    let out = ''
    const frames = (this.#frames ??= new FrameSplitter())
    frames.push((this.#decoder ??= new StringDecoder('utf8')).write(chunk), (frame) => {
      out += this.#frame(frame)
      return true
    })
    this.#clean = whole && frames.held === 0
    return out
  }

  finish (): string {
    if (this.#opts.mode === 'json') {
      const total = lastTotalTokens(this.#tail)
      if (total !== null) this.#opts.onUsage(total)
      return ''
    }
    // Never made: every chunk was whole frames passed on untouched, so nothing is held.
    if (this.#frames === null) return ''
    const rest = this.#frames.end() + (this.#decoder as StringDecoder).end()
    return rest.length > 0 ? this.#frame(rest) : ''
  }

  #frame (frame: string): string {
    if (!frame.includes('"usage"')) return frame
    const { total, usageOnly } = usageOf(frame)
    if (total !== null) this.#opts.onUsage(total)
    return usageOnly && this.#opts.hideUsageChunk ? '' : frame
  }
}

/** Listen to `source` for usage without becoming a stage of its pipe (nothing is dropped or delayed). */
export function watchUsage (source: Readable, opts: Omit<UsageTapOptions, 'hideUsageChunk'>): void {
  const reader = new UsageReader({ ...opts, hideUsageChunk: false })
  source.on('data', (chunk: Buffer) => { reader.feed(chunk) })
  source.once('end', () => { reader.finish() })
}
