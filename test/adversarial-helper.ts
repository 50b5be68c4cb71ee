import { connect, type Socket } from 'node:net'
import { sleep } from './helper.js'
import { parseResponses, type Seen } from './routing-shared.js'

/*
 * Shared by test/plugins/form-body/uploads-adversarial.test.ts and test/routes/realtime/realtime-adversarial.test.ts: a raw TCP client that
 * controls every byte it writes (and when), records every byte it receives, and never waits unbounded.
 */

export interface RawConn {
  socket: Socket
  /** Everything received so far, as latin1. */
  text: () => string
  bytes: () => Buffer
  closed: Promise<void>
  isClosed: () => boolean
  /** Our own hard timeout closed the socket (the peer did not). */
  timedOut: () => boolean
}

/** Open a loopback connection; it is destroyed after `hardTimeoutMs` whatever happens. */
export async function rawConn (port: number, hardTimeoutMs = 8000): Promise<RawConn> {
  const socket = connect(port, '127.0.0.1')
  socket.setNoDelay(true)
  const chunks: Buffer[] = []
  let closed = false
  let timedOut = false
  const timer = setTimeout(() => {
    timedOut = true
    socket.destroy()
  }, hardTimeoutMs)
  socket.on('data', (c: Buffer) => chunks.push(c))
  // EPIPE / ECONNRESET are expected once the peer has closed on us; tests assert on what was received.
  socket.on('error', () => {})
  const done = new Promise<void>((resolve) => socket.once('close', () => {
    closed = true
    clearTimeout(timer)
    resolve()
  }))
  await new Promise<void>((resolve, reject) => {
    socket.once('connect', resolve)
    socket.once('close', () => reject(new Error('could not connect')))
  })
  return { socket, text: () => Buffer.concat(chunks).toString('latin1'), bytes: () => Buffer.concat(chunks), closed: done, isClosed: () => closed, timedOut: () => timedOut }
}

/** Poll until `pred` holds or `ms` pass; true when it held. */
export async function until (pred: () => boolean, ms: number): Promise<boolean> {
  const deadline = Date.now() + ms
  while (!pred()) {
    if (Date.now() > deadline) return false
    await sleep(5)
  }
  return true
}

/** A request head; header values are written exactly as given. */
export function head (method: string, target: string, headers: Record<string, string>, version = 'HTTP/1.1'): string {
  return [`${method} ${target} ${version}`, 'Host: proxy.test', ...Object.entries(headers).map(([k, v]) => `${k}: ${v}`)].join('\r\n') + '\r\n\r\n'
}

/** Final (non-1xx) responses in what a connection received. */
export const finals = (text: string): Seen[] => parseResponses(text).filter((r) => r.statusCode >= 200)

/** True once the text holds one whole final response (by its Content-Length; chunked answers need the close). */
export function oneWholeResponse (text: string): boolean {
  const first = finals(text)[0]
  if (first === undefined) return false
  const length = first.headers['content-length']
  return length !== undefined && Buffer.byteLength(first.body, 'latin1') >= Number(length)
}

/** Write `chunks` with backpressure until they run out, the socket closes, or `maxMs` pass; returns the bytes handed over. */
export async function pump (conn: RawConn, chunks: Iterable<Buffer>, maxMs: number): Promise<number> {
  let sent = 0
  const deadline = Date.now() + maxMs
  for (const chunk of chunks) {
    if (conn.isClosed() || !conn.socket.writable || Date.now() > deadline) break
    sent += chunk.length
    if (!conn.socket.write(chunk)) await Promise.race([new Promise((resolve) => conn.socket.once('drain', resolve)), conn.closed, sleep(Math.max(0, deadline - Date.now()))])
  }
  return sent
}
