import { StringDecoder } from 'node:string_decoder'
import { Transform, type TransformCallback } from 'node:stream'

/*
 * Watches an upstream body go by for its token `usage`, without delaying it:
 * - SSE: complete frames are passed on as soon as their blank line arrives (a partial frame waits for
 *   its end, as it must for any client); frames mentioning "usage" are parsed: chat/completions usage
 *   chunks (`choices: []`) and the Responses API's `response.completed`. A usage-only chunk the proxy
 *   asked for on the client's behalf is dropped (many clients crash on `choices: []`, openai-wire §1.7).
 * - JSON: bytes pass straight through; the last `"total_tokens"` in the final 16 KB is read at the end.
 */

const FRAME = /[\s\S]*?(?:\r\n\r\n|\n\n|\r\r)/g
const TAIL_BYTES = 16 * 1024
const TOTAL_TOKENS = /(?<!\\)"total_tokens"\s*:\s*(\d+)/g

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

export class UsageTap extends Transform {
  readonly #opts: UsageTapOptions
  readonly #decoder = new StringDecoder('utf8')
  #pending = ''
  #tail = Buffer.alloc(0)

  constructor (opts: UsageTapOptions) {
    super()
    this.#opts = opts
  }

  override _transform (chunk: Buffer, _enc: BufferEncoding, done: TransformCallback): void {
    if (this.#opts.mode === 'json') {
      this.#tail = Buffer.concat([this.#tail, chunk]).subarray(-TAIL_BYTES)
      done(null, chunk)
      return
    }
    this.#pending += this.#decoder.write(chunk)
    let out = ''
    const frames = new RegExp(FRAME)
    let consumed = 0
    for (let m = frames.exec(this.#pending); m !== null; m = frames.exec(this.#pending)) {
      consumed = frames.lastIndex
      out += this.#frame(m[0])
    }
    this.#pending = this.#pending.slice(consumed)
    done(null, out.length > 0 ? Buffer.from(out) : undefined)
  }

  override _flush (done: TransformCallback): void {
    if (this.#opts.mode === 'json') {
      const matches = [...this.#tail.toString('utf8').matchAll(TOTAL_TOKENS)]
      const last = matches.at(-1)
      if (last !== undefined) this.#opts.onUsage(Number(last[1]))
      done()
      return
    }
    const rest = this.#pending + this.#decoder.end()
    done(null, rest.length > 0 ? Buffer.from(this.#frame(rest)) : undefined)
  }

  #frame (frame: string): string {
    if (!frame.includes('"usage"')) return frame
    const { total, usageOnly } = usageOf(frame)
    if (total !== null) this.#opts.onUsage(total)
    return usageOnly && this.#opts.hideUsageChunk ? '' : frame
  }
}
