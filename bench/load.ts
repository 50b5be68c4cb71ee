import { setMaxListeners } from 'node:events'
import { performance } from 'node:perf_hooks'
import { Pool } from 'undici'

/*
 * The load generator: bounded loops only (a fixed number of requests, or a fixed duration), each request
 * bounded by undici's header/body timeouts, so a misbehaving proxy shows up as counted errors, never as
 * a benchmark that hangs.
 */

export const PATH = '/v1/chat/completions'

/** A chat completion request of exactly `bytes` bytes (the prompt padded with lorem ipsum); `extra` fields beside the model. */
export function chatBody (bytes: number, extra: Record<string, unknown> = {}): Buffer {
  const base = JSON.stringify({ model: 'gpt-4o-mini', ...extra, messages: [{ role: 'user', content: '' }] }).length
  const content = 'Say hello to the benchmark. ' + 'lorem ipsum '.repeat(Math.ceil(bytes / 12))
  return Buffer.from(JSON.stringify({ model: 'gpt-4o-mini', ...extra, messages: [{ role: 'user', content: content.slice(0, Math.max(1, bytes - base)) }] }))
}

// The fake echoes up to 200 characters, one frame per word: 100 one-letter words give 110 frames, so a
// stream lasts at least 110 x the fake's chunk delay, and the streams of a burst overlap.
export const STREAM_BODY = Buffer.from(JSON.stringify({ model: 'gpt-4o-mini', stream: true, messages: [{ role: 'user', content: 'a '.repeat(100).trim() }] }))

export interface Target {
  /** A label (floor, defaults, all, direct, or a scenario's own). */
  name: string
  origin: string
  headers: Record<string, string>
  pool: Pool
}

export interface Tally {
  latencies: number[]
  ok: number
  errors: Record<string, number>
  elapsedMs: number
}

export const newTally = (): Tally => ({ latencies: [], ok: 0, errors: {}, elapsedMs: 0 })

const errorName = (err: unknown): string => (err as { code?: string }).code ?? (err as Error).name ?? 'Error'

export function newPool (origin: string, connections: number, timeoutMs = 10_000): Pool {
  return new Pool(origin, { connections, pipelining: 1, headersTimeout: timeoutMs, bodyTimeout: timeoutMs, keepAliveTimeout: 60_000 })
}

async function once (target: Target, body: Buffer, tally: Tally): Promise<void> {
  const t0 = performance.now()
  try {
    const res = await target.pool.request({ path: PATH, method: 'POST', headers: target.headers, body })
    const text = await res.body.text()
    const ms = performance.now() - t0
    if (res.statusCode === 200 && text.includes('"chat.completion"')) {
      tally.ok++
      tally.latencies.push(ms)
    } else {
      const key = `HTTP ${res.statusCode}`
      tally.errors[key] = (tally.errors[key] ?? 0) + 1
    }
  } catch (err) {
    const key = errorName(err)
    tally.errors[key] = (tally.errors[key] ?? 0) + 1
  }
}

/** `n` requests one after another (concurrency 1). */
export async function runCount (target: Target, body: Buffer, n: number, tally: Tally): Promise<void> {
  const t0 = performance.now()
  for (let i = 0; i < n; i++) await once(target, body, tally)
  tally.elapsedMs += performance.now() - t0
}

/** `concurrency` closed-loop workers for `durationMs`; in-flight requests finish after the deadline. */
export async function runFor (target: Target, body: Buffer, concurrency: number, durationMs: number, tally: Tally): Promise<void> {
  const t0 = performance.now()
  const end = t0 + durationMs
  const worker = async (): Promise<void> => {
    while (performance.now() < end) await once(target, body, tally)
  }
  await Promise.all(Array.from({ length: concurrency }, worker))
  tally.elapsedMs += performance.now() - t0
}

export interface StreamResult {
  status?: number
  /** Request issued -> first body byte. */
  ttfbMs?: number
  totalMs?: number
  /** SSE frames received (count of blank-line terminators). */
  frames: number
  /** The body's last frame was `data: [DONE]`. */
  done: boolean
  error?: string
}

export interface Burst {
  results: StreamResult[]
  /** Most streams open at once (response headers received, body not yet ended), seen by the client. */
  peakOpen: number
  wallMs: number
}

/** Issue `n` streamed requests at the same instant, each on its own connection, and read them to the end. */
export async function sseBurst (origin: string, headers: Record<string, string>, body: Buffer, n: number, timeoutMs: number): Promise<Burst> {
  const pool = newPool(origin, n, timeoutMs)
  const signal = AbortSignal.timeout(timeoutMs)
  // One deadline shared by every stream: undici adds one abort listener per request.
  setMaxListeners(n + 10, signal)
  let open = 0
  let peakOpen = 0
  const t0 = performance.now()
  const one = async (): Promise<StreamResult> => {
    const r: StreamResult = { frames: 0, done: false }
    const start = performance.now()
    let counted = false
    try {
      const res = await pool.request({ path: PATH, method: 'POST', headers, body, signal })
      r.status = res.statusCode
      open++
      counted = true
      peakOpen = Math.max(peakOpen, open)
      let prev = 0
      let tail = ''
      for await (const chunk of res.body as AsyncIterable<Buffer>) {
        r.ttfbMs ??= performance.now() - start
        for (let i = 0; i < chunk.length; i++) {
          if (chunk[i] === 10 && prev === 10) r.frames++
          prev = chunk[i] as number
        }
        tail = (tail + chunk.toString('latin1')).slice(-32)
      }
      r.totalMs = performance.now() - start
      r.done = r.status === 200 && tail.endsWith('data: [DONE]\n\n')
    } catch (err) {
      r.error = errorName(err)
    } finally {
      if (counted) open--
    }
    return r
  }
  const results = await Promise.all(Array.from({ length: n }, one))
  const wallMs = performance.now() - t0
  await pool.close().catch(() => pool.destroy())
  return { results, peakOpen, wallMs }
}
