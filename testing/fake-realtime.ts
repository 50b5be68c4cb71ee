import type { IncomingHttpHeaders, IncomingMessage, Server } from 'node:http'
import type { Server as HttpsServer } from 'node:https'
import type { Duplex } from 'node:stream'
import { WebSocketServer, type WebSocket } from 'ws'

/*
 * A fake Realtime API (`GET /v1/realtime?model=…` over WebSocket) on the fake OpenAI's HTTP server, or any
 * other: `attachFakeRealtime(server)`. It records every handshake and every message, and talks like OpenAI
 * by default: `session.created` on connect, `session.updated` for `session.update`, and for
 * `response.create` text and audio deltas then `response.done` with `usage`. A test can script each
 * connection: refuse the handshake with a status, stall, or take over the socket (send an `error` event,
 * close with a code, flood).
 */

export interface RealtimeHandshake {
  /** The request target exactly as received. */
  url: string
  headers: IncomingHttpHeaders
  /** The subprotocols offered, in order. */
  protocols: string[]
  at: number
}

export interface RealtimeConnection {
  handshake: RealtimeHandshake
  socket: WebSocket
  /** Every message received, as text. */
  received: string[]
  /** Messages sent, and their bytes. */
  sent: number
  sentBytes: number
  /** How the proxy closed this connection, once it has. */
  closed?: { code: number, reason: string, at: number }
}

export interface RealtimePlan {
  /** Refuse the handshake with this HTTP status and JSON body. */
  refuse?: { status: number, body: unknown, headers?: Record<string, string> }
  /** Never answer the handshake (the socket stays open until the client gives up). */
  hold?: boolean
  /** Answer the handshake only after this long. */
  acceptAfterMs?: number
  /** Accept, then say nothing and answer nothing. */
  stall?: boolean
  /** Called once the socket is open (after `session.created`, unless stalled). */
  onOpen?: (conn: RealtimeConnection) => void
  /** Called for each client event first; return true when it answered the event itself. */
  onEvent?: (conn: RealtimeConnection, event: Record<string, unknown>) => boolean
}

export interface FakeRealtimeOptions {
  /** Keys accepted; others get OpenAI's 401 quoting the key masked. Default: any Bearer token. */
  validKeys?: readonly string[]
  /** Text deltas per response. Default 3. */
  deltas?: number
  /** `total_tokens` reported per response. Default 120. */
  tokensPerResponse?: number
}

export interface FakeRealtime {
  handshakes: RealtimeHandshake[]
  connections: RealtimeConnection[]
  script: (fn: ((h: RealtimeHandshake) => RealtimePlan | undefined) | undefined) => void
  /** Replace the accepted keys (tests learn them after the fake starts). */
  setValidKeys: (keys: readonly string[]) => void
  /** Send an event on a connection, counted. */
  send: (conn: RealtimeConnection, event: unknown, cb?: (err?: Error) => void) => void
  close: () => void
}

const mask = (key: string): string => `${key.slice(0, 8)}${'*'.repeat(Math.max(0, key.length - 12))}${key.slice(-4)}`
let nextId = 0
const id = (prefix: string): string => `${prefix}_fake${++nextId}`

function refuse (socket: Duplex, status: number, body: unknown, headers: Record<string, string> = {}): void {
  const text = JSON.stringify(body)
  const extra = Object.entries(headers).map(([k, v]) => `${k}: ${v}\r\n`).join('')
  socket.end(`HTTP/1.1 ${status} Refused\r\ncontent-type: application/json\r\ncontent-length: ${Buffer.byteLength(text)}\r\n${extra}connection: close\r\n\r\n${text}`)
}

export function attachFakeRealtime (server: Server | HttpsServer, opts: FakeRealtimeOptions = {}): FakeRealtime {
  let validKeys = opts.validKeys
  let script: ((h: RealtimeHandshake) => RealtimePlan | undefined) | undefined
  const handshakes: RealtimeHandshake[] = []
  const connections: RealtimeConnection[] = []
  const held = new Set<Duplex>()
  const wss = new WebSocketServer({ noServer: true })

  const send = (conn: RealtimeConnection, event: unknown, cb?: (err?: Error) => void): void => {
    const text = typeof event === 'string' ? event : JSON.stringify(event)
    conn.sent++
    conn.sentBytes += Buffer.byteLength(text)
    conn.socket.send(text, cb)
  }

  function answer (conn: RealtimeConnection, event: Record<string, unknown>, model: string): void {
    if (event.type === 'session.update') {
      send(conn, { type: 'session.updated', event_id: id('event'), session: { id: 'sess_fake', object: 'realtime.session', type: 'realtime', model, ...(event.session as object) } })
    } else if (event.type === 'response.create') {
      const response = id('resp')
      send(conn, { type: 'response.created', event_id: id('event'), response: { id: response, object: 'realtime.response', status: 'in_progress' } })
      for (let i = 0; i < (opts.deltas ?? 3); i++) {
        send(conn, { type: 'response.output_text.delta', event_id: id('event'), response_id: response, delta: `word${i} ` })
        send(conn, { type: 'response.output_audio.delta', event_id: id('event'), response_id: response, delta: Buffer.alloc(48, i).toString('base64') })
      }
      const total = opts.tokensPerResponse ?? 120
      send(conn, { type: 'response.done', event_id: id('event'), response: { id: response, object: 'realtime.response', status: 'completed', usage: { total_tokens: total, input_tokens: Math.floor(total / 3), output_tokens: total - Math.floor(total / 3) } } })
    }
  }

  const onUpgrade = (req: IncomingMessage, socket: Duplex, head: Buffer): void => {
    const url = req.url as string
    if (url.split('?')[0] !== '/v1/realtime') return refuse(socket, 404, { error: { message: 'Not found', type: 'invalid_request_error', param: null, code: null } })
    const protocols = String(req.headers['sec-websocket-protocol'] ?? '').split(',').map((p) => p.trim()).filter((p) => p.length > 0)
    const handshake: RealtimeHandshake = { url, headers: req.headers, protocols, at: Date.now() }
    handshakes.push(handshake)
    const plan = script?.(handshake) ?? {}
    if (plan.refuse !== undefined) return refuse(socket, plan.refuse.status, plan.refuse.body, plan.refuse.headers)
    if (plan.hold === true) {
      held.add(socket)
      socket.once('close', () => held.delete(socket))
      return
    }
    const key = /^Bearer (.+)$/.exec(req.headers.authorization ?? '')?.[1]
    if (key === undefined || (validKeys !== undefined && !validKeys.includes(key))) {
      const message = key === undefined ? "You didn't provide an API key." : `Incorrect API key provided: ${mask(key)}. You can find your API key at https://platform.openai.com/account/api-keys.`
      return refuse(socket, 401, { error: { message, type: 'invalid_request_error', param: null, code: key === undefined ? null : 'invalid_api_key' } })
    }
    const model = new URL(url, 'http://fake').searchParams.get('model') as string
    setTimeout(() => wss.handleUpgrade(req, socket, head, (ws) => {
      const conn: RealtimeConnection = { handshake, socket: ws, received: [], sent: 0, sentBytes: 0 }
      connections.push(conn)
      ws.on('error', () => {})
      ws.on('close', (code, reason) => { conn.closed = { code, reason: reason.toString(), at: Date.now() } })
      ws.on('message', (data: Buffer) => {
        const text = data.toString()
        conn.received.push(text)
        if (plan.stall === true) return
        // The proxy forwards JSON events only: anything else throws here and fails the test.
        const event = JSON.parse(text) as Record<string, unknown>
        if (plan.onEvent?.(conn, event) === true) return
        answer(conn, event, model)
      })
      if (plan.stall !== true) send(conn, { type: 'session.created', event_id: id('event'), session: { id: 'sess_fake', object: 'realtime.session', type: 'realtime', model } })
      plan.onOpen?.(conn)
    }), plan.acceptAfterMs ?? 0)
  }
  server.on('upgrade', onUpgrade)

  return {
    handshakes,
    connections,
    script: (fn) => { script = fn },
    setValidKeys: (keys) => { validKeys = keys },
    send,
    close: () => {
      server.off('upgrade', onUpgrade)
      for (const c of connections) c.socket.terminate()
      for (const s of held) s.destroy()
    }
  }
}
