import type { IncomingHttpHeaders, IncomingMessage } from 'node:http'
import type { FastifyBaseLogger } from 'fastify'
import { WebSocket, type ClientOptions } from 'ws'
import { proxyError } from '../../errors.js'
import type { ErrorEnvelope } from '../../schemas/errors.js'
import { clientResponseHeaders } from '../../plugins/upstream/headers.js'
import type { KeyPool } from '../../plugins/upstream/key-pool.js'
import { errorCode, judgeUpstreamError, readCapped } from '../../plugins/upstream/upstream-errors.js'

/*
 * Opening the upstream Realtime WebSocket before the client's handshake is answered, so that an upstream
 * refusal becomes an ordinary HTTP error for the client (redacted, as on the HTTP routes) instead of a
 * socket that opens and dies, and a revoked key is taken out of the pool and the next one tried.
 */

type Attempt =
  | { ws: WebSocket }
  | { status: number, headers: IncomingHttpHeaders, text: string | null }
  | { failure: 'timeout' | 'unreachable', code?: string }

export interface ConnectOptions {
  url: string
  pool: KeyPool
  secrets: readonly string[]
  /** The upstream handshake's headers for one pool key. */
  headers: (key: string) => Record<string, string>
  /** Time for TCP, TLS and upstream's 101 answer. */
  timeoutMs: number
  ws: ClientOptions
  log: FastifyBaseLogger
}

export type Connected =
  | { ws: WebSocket, keyId: string }
  | { answer: { status: number, headers: Record<string, string>, body: ErrorEnvelope } }

/** One handshake with one key. Every outcome ends in exactly one result; the socket is cut unless it opened. */
function attempt (url: string, options: ClientOptions, timeoutMs: number): Promise<Attempt> {
  return new Promise((resolve) => {
    const ws = new WebSocket(url, options)
    let done = false
    const finish = (result: Attempt): void => {
      if (done) return
      done = true
      clearTimeout(timer)
      if (!('ws' in result)) ws.terminate()
      resolve(result)
    }
    const timer = setTimeout(() => finish({ failure: 'timeout' }), timeoutMs)
    ws.once('open', () => {
      // Upstream talks first (`session.created`): hold its messages until the relay listens (Relay resumes).
      ws.pause()
      finish({ ws })
    })
    // 'on', not 'once': terminating a handshake in progress emits a second error.
    ws.on('error', (err) => finish({ failure: 'unreachable', code: errorCode(err) }))
    ws.once('unexpected-response', (_req, res: IncomingMessage) => {
      readCapped(res).then((text) => finish({ status: res.statusCode as number, headers: res.headers, text }), () => finish({ status: res.statusCode as number, headers: res.headers, text: null }))
    })
  })
}

/**
 * The open upstream socket; or the answer the client gets when upstream refused (as judged for the HTTP
 * routes: a revoked key is disabled and the next one tried, a 429 cools the key down). Throws a catalogue
 * error when upstream cannot be reached or no key is left. A client that leaves meanwhile goes unnoticed
 * until then (its socket is not read before the upgrade): the handshake is bounded by `timeoutMs`.
 */
export async function connectUpstream (opts: ConnectOptions): Promise<Connected> {
  for (const key of opts.pool.rotation()) {
    const r = await attempt(opts.url, { ...opts.ws, headers: opts.headers(key.key) }, opts.timeoutMs)
    if ('ws' in r) return { ws: r.ws, keyId: key.id }
    if ('failure' in r) {
      opts.log.warn({ code: r.code ?? r.failure, key: key.id }, 'oai-proxy: upstream realtime handshake failed')
      throw proxyError(r.failure === 'timeout' ? 'UPSTREAM_TIMEOUT' : 'UPSTREAM_UNREACHABLE')
    }
    // A redirect or a 2xx that is not a WebSocket answer: something between us and OpenAI is wrong.
    if (r.status < 400) throw proxyError('UPSTREAM_BAD_RESPONSE')
    const verdict = judgeUpstreamError(r.status, r.text, r.headers['retry-after'], opts.secrets)
    if (opts.pool.settle(key.id, verdict)) {
      opts.log.warn({ key: key.id, reason: verdict.disable }, 'oai-proxy: upstream key taken out of rotation')
      continue
    }
    const headers = clientResponseHeaders(r.headers as Record<string, string | string[] | undefined>)
    return { answer: { status: verdict.status, headers, body: verdict.body } }
  }
  throw proxyError('NO_UPSTREAM_KEYS', [], { headers: { 'x-should-retry': 'false' } })
}
