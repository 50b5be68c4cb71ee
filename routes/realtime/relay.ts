import { WebSocket } from 'ws'

/*
 * One Realtime session: two WebSockets (client and upstream) and the messages between them. Every client
 * message goes through `fromClient` in order, one at a time (it may be async: the prompt filter), which
 * forwards it, possibly as other bytes, or answers the client instead; every upstream message goes through
 * `fromUpstream`. Writes respect backpressure: while more than `highWaterBytes` wait to be written to one
 * side, the other side is not read (TCP then slows its sender), so a reader that stops reading costs a
 * bounded amount of memory. Either side closing closes the other within `closeGraceMs`.
 */

export type Verdict = { forward: Buffer | string } | { answer: string }

export interface RelayOptions {
  /** Close the session when the client has sent no message for this long (ms; 0 = never). */
  idleTimeoutMs: number
  /** Close the session this long after it began (ms; 0 = never). */
  maxDurationMs: number
  /** Stop reading one side while this many bytes wait to be written to the other. */
  highWaterBytes: number
  /** How long a side asked to close may take to finish the close handshake before it is cut. */
  closeGraceMs: number
  fromClient: (data: Buffer, binary: boolean) => Verdict | Promise<Verdict>
  fromUpstream: (data: Buffer, binary: boolean) => Buffer | string
  /** The reason text upstream gave for closing, as the client may see it. */
  closeReason: (reason: string) => string
}

/** Why the session ended: a side closed, a timer ran out, the server shut down, or the relay failed. */
export type EndCause = 'client' | 'upstream' | 'idle' | 'duration' | 'shutdown' | 'error'

export interface RelayEnd {
  cause: EndCause
  /** The close codes each side reported (1006: its connection dropped without a close frame). */
  clientCode: number
  upstreamCode: number
  framesIn: number
  framesOut: number
  ms: number
}

/**
 * A close code one side reported, as the other side may be sent it: 1005 (closed without a code) is a
 * normal close; 1006 (dropped), 1015 (TLS) and codes no endpoint may send become 1011 (unexpected failure).
 */
export function relayCode (code: number): number {
  if (code === 1005) return 1000
  const sendable = (code >= 1000 && code <= 1014 && code !== 1004 && code !== 1005 && code !== 1006) || (code >= 3000 && code <= 4999)
  return sendable ? code : 1011
}

export class Relay {
  readonly done: Promise<RelayEnd>
  readonly #client: WebSocket
  readonly #upstream: WebSocket
  readonly #opts: RelayOptions
  readonly #startedAt = Date.now()
  readonly #timers: NodeJS.Timeout[] = []
  #idle: NodeJS.Timeout | undefined
  #cause: EndCause | undefined
  #codes = { client: 1006, upstream: 1006 }
  #failed: { client?: number | undefined, upstream?: number | undefined } = {}
  #framesIn = 0
  #framesOut = 0
  /** Client bytes received and not yet through `fromClient`. */
  #queued = 0
  #chain: Promise<void> = Promise.resolve()
  #resolve!: (end: RelayEnd) => void

  constructor (client: WebSocket, upstream: WebSocket, opts: RelayOptions) {
    this.#client = client
    this.#upstream = upstream
    this.#opts = opts
    this.done = new Promise((resolve) => { this.#resolve = resolve })
    client.on('message', (data: Buffer, binary) => this.#fromClient(data, binary))
    upstream.on('message', (data: Buffer, binary) => this.#send(client, opts.fromUpstream(data, binary), binary, () => this.#framesOut++))
    // ws closes a side itself after an oversized or malformed message and stops reading it, so its 'close'
    // reports 1006: the code ws sent (1009, 1007, 1002) is the one to report and pass on.
    // A peer that broke the protocol is not waited for (ws would give it 30 s to answer the close).
    client.on('error', (err) => { this.#failed.client ??= protocolCode(err); this.#shut(client, 1011, '') })
    upstream.on('error', (err) => { this.#failed.upstream ??= protocolCode(err); this.#shut(upstream, 1011, '') })
    client.on('close', (code, reason) => this.#closed('client', this.#failed.client ?? code, reason.toString()))
    upstream.on('close', (code, reason) => this.#closed('upstream', this.#failed.upstream ?? code, fitReason(opts.closeReason(reason.toString()))))
    if (opts.maxDurationMs > 0) this.#timers.push(setTimeout(() => this.close('duration', 1001, 'session time limit'), opts.maxDurationMs).unref())
    this.#touch()
    // Paused since it opened (routes/realtime/upstream.ts), so nothing it said before now was lost.
    upstream.resume()
  }

  /** End the session from our side: both sockets get a close frame, and are cut if they do not finish. */
  close (cause: EndCause, code: number, reason: string): void {
    this.#cause ??= cause
    this.#shut(this.#client, code, reason)
    this.#shut(this.#upstream, code, '')
  }

  #touch (): void {
    if (this.#opts.idleTimeoutMs <= 0) return
    if (this.#idle === undefined) {
      this.#idle = setTimeout(() => this.close('idle', 1001, 'idle timeout'), this.#opts.idleTimeoutMs).unref()
      this.#timers.push(this.#idle)
    } else {
      this.#idle.refresh()
    }
  }

  #fromClient (data: Buffer, binary: boolean): void {
    this.#framesIn++
    this.#touch()
    this.#queued += data.length
    this.#valves()
    this.#chain = this.#chain.then(async () => {
      const verdict = await this.#opts.fromClient(data, binary)
      this.#queued -= data.length
      if ('answer' in verdict) this.#send(this.#client, verdict.answer, false)
      else this.#send(this.#upstream, verdict.forward, binary)
    }).catch(() => this.close('error', 1011, 'internal error'))
  }

  #send (to: WebSocket, data: Buffer | string, binary: boolean, count?: () => void): void {
    if (to.readyState !== WebSocket.OPEN) return
    count?.()
    to.send(data, { binary }, () => this.#valves())
    this.#valves()
  }

  /** Read a side only while the other side's unwritten bytes (and, for the client, its queue) are low. */
  #valves (): void {
    const high = this.#opts.highWaterBytes
    valve(this.#client, this.#upstream.bufferedAmount + this.#queued, high)
    valve(this.#upstream, this.#client.bufferedAmount, high)
  }

  #closed (side: 'client' | 'upstream', code: number, reason: string): void {
    this.#codes[side] = code
    this.#cause ??= side
    const other = side === 'client' ? this.#upstream : this.#client
    this.#shut(other, relayCode(code), reason)
    if (this.#client.readyState !== WebSocket.CLOSED || this.#upstream.readyState !== WebSocket.CLOSED) return
    for (const t of this.#timers) clearTimeout(t)
    this.#resolve({ cause: this.#cause, clientCode: this.#codes.client, upstreamCode: this.#codes.upstream, framesIn: this.#framesIn, framesOut: this.#framesOut, ms: Date.now() - this.#startedAt })
  }

  #shut (ws: WebSocket, code: number, reason: string): void {
    if (ws.readyState === WebSocket.CLOSED) return
    // A paused side would never read the peer's close frame.
    ws.resume()
    if (ws.readyState === WebSocket.OPEN) ws.close(code, reason)
    this.#timers.push(setTimeout(() => ws.terminate(), this.#opts.closeGraceMs).unref())
  }
}

/**
 * The close code ws sent after refusing what a peer sent. On an open socket ws emits 'error' only for that
 * (`WS_ERR_*` codes; a socket error just closes it, and its sender fails only with compression or Blobs,
 * which we do not use).
 */
function protocolCode (err: Error & { code?: string }): number {
  if (err.code === 'WS_ERR_UNSUPPORTED_MESSAGE_LENGTH') return 1009
  return err.code === 'WS_ERR_INVALID_UTF8' ? 1007 : 1002
}

/** A close reason is at most 123 bytes; cut whole characters, so it stays valid UTF-8. */
function fitReason (reason: string): string {
  let out = reason
  while (Buffer.byteLength(out) > 123) out = out.slice(0, -1)
  return out
}

const paused = new WeakSet<WebSocket>()

/** Pause `ws` above `high` bytes waiting elsewhere; resume below half of it (so it does not flap). ws ignores both once closed. */
function valve (ws: WebSocket, waiting: number, high: number): void {
  if (!paused.has(ws) && waiting > high) {
    paused.add(ws)
    ws.pause()
  } else if (paused.has(ws) && waiting <= high / 2) {
    paused.delete(ws)
    ws.resume()
  }
}
