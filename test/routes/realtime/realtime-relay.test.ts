import { connect as tcpConnect } from 'node:net'
import type { AddressInfo } from 'node:net'
import t, { type Test } from 'tap'
import { WebSocket, WebSocketServer } from 'ws'
import { sleep } from '../../helper.js'
import { bearer, rtTest } from '../../realtime-helper.js'
import { Relay, relayCode, type RelayOptions } from '../../../routes/realtime/relay.js'
import type { RealtimeConnection } from '../../../testing/fake-realtime.js'

/*
 * The relay on its own (two real WebSocket pairs on loopback, no proxy), then backpressure through the
 * whole proxy: an upstream that floods a client that does not read.
 */

interface Pair { outer: WebSocket, inner: WebSocket }

/** A client socket and the server's end of it. */
async function pair (t: Test): Promise<Pair> {
  const wss = new WebSocketServer({ port: 0, host: '127.0.0.1' })
  await new Promise<void>((resolve) => wss.once('listening', resolve))
  const inner = new Promise<WebSocket>((resolve) => wss.once('connection', resolve))
  const outer = new WebSocket(`ws://127.0.0.1:${(wss.address() as AddressInfo).port}`)
  outer.on('error', () => {})
  await new Promise((resolve) => outer.once('open', resolve))
  t.teardown(() => { outer.terminate(); wss.close() })
  return { outer, inner: await inner }
}

const base: RelayOptions = {
  idleTimeoutMs: 0,
  maxDurationMs: 0,
  highWaterBytes: 1024 * 1024,
  closeGraceMs: 200,
  fromClient: (data) => ({ forward: data }),
  fromUpstream: (data) => data,
  closeReason: (r) => r
}

const closedWith = (ws: WebSocket): Promise<number> => new Promise((resolve) => ws.once('close', (code) => resolve(code)))

t.test('relayCode: codes that cannot be sent are mapped', async (t) => {
  t.strictSame([1000, 1005, 1006, 1004, 1015, 999, 1012, 2999, 3000, 4999, 5000].map(relayCode), [1000, 1000, 1011, 1011, 1011, 1011, 1012, 1011, 3000, 4999, 1011])
})

t.test('a failing client-message check ends the session with 1011', async (t) => {
  const client = await pair(t)
  const upstream = await pair(t)
  const relay = new Relay(client.inner, upstream.outer, { ...base, fromClient: () => { throw new Error('boom') } })
  const clientClosed = closedWith(client.outer)
  const upstreamClosed = closedWith(upstream.inner)
  client.outer.send('{"type":"x"}')
  t.equal(await clientClosed, 1011)
  t.equal(await upstreamClosed, 1011)
  t.match(await relay.done, { cause: 'error', framesIn: 1, framesOut: 0 })
})

t.test('a message whose check finishes after upstream closed is dropped', async (t) => {
  const client = await pair(t)
  const upstream = await pair(t)
  const got: string[] = []
  upstream.inner.on('message', (d: Buffer) => got.push(d.toString()))
  const relay = new Relay(client.inner, upstream.outer, { ...base, fromClient: async (data) => { await sleep(100); return { forward: data } } })
  client.outer.send('{"type":"late"}')
  await sleep(20)
  upstream.inner.close(1000)
  const end = await relay.done
  t.strictSame(got, [])
  t.equal(end.cause, 'upstream')
})

t.test('malformed client frames: the code ws sent is the one passed on', async (t) => {
  // Raw frames, so the client can break the protocol: invalid UTF-8 in a text frame (1007), an unmasked frame (1002).
  for (const [name, frame, code] of [
    ['invalid UTF-8', Buffer.from([0x81, 0x82, 1, 2, 3, 4, 0xff ^ 1, 0xfe ^ 2]), 1007],
    ['an unmasked frame', Buffer.from([0x81, 0x02, 0x68, 0x69]), 1002]
  ] as const) {
    const wss = new WebSocketServer({ port: 0, host: '127.0.0.1' })
    await new Promise<void>((resolve) => wss.once('listening', resolve))
    const upstream = await pair(t)
    const inner = new Promise<WebSocket>((resolve) => wss.once('connection', resolve))
    const socket = tcpConnect((wss.address() as AddressInfo).port, '127.0.0.1')
    socket.on('error', () => {})
    socket.write('GET / HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n')
    const relay = new Relay(await inner, upstream.outer, base)
    const upstreamClosed = closedWith(upstream.inner)
    socket.write(frame)
    t.equal(await upstreamClosed, code, `${name}: upstream is closed with ${code}`)
    t.equal((await relay.done).clientCode, code)
    socket.destroy()
    wss.close()
  }
})

rtTest(t, 'backpressure: an upstream flooding a client that does not read is paused; memory stays bounded; nothing is lost', {}, async (h, t) => {
  const FRAME = 64 * 1024
  const TOTAL = 128 * 1024 * 1024
  const delta = 'A'.repeat(FRAME)
  let started: (conn: RealtimeConnection) => void = () => {}
  const flood = new Promise<RealtimeConnection>((resolve) => { started = resolve })
  h.fake.script(() => ({
    onEvent: (conn, event) => {
      if (event.type !== 'response.create') return false
      started(conn)
      const write = async (): Promise<void> => {
        // A well-behaved server: it writes only while its own socket drains.
        while (conn.sentBytes < TOTAL && conn.socket.readyState === WebSocket.OPEN) {
          if (conn.socket.bufferedAmount > 1024 * 1024) await sleep(2)
          else h.fake.send(conn, { type: 'response.output_audio.delta', delta })
        }
      }
      write().catch(() => {})
      return true
    }
  }))
  const ws = new WebSocket(h.wsUrl, { headers: bearer(h) })
  t.teardown(() => ws.terminate())
  let received = 0
  ws.on('message', (d: Buffer) => { received += d.length })
  await new Promise((resolve) => ws.once('open', resolve))
  const before = process.memoryUsage()
  ws.send('{"type":"response.create"}')
  const flooding = await flood
  await sleep(50)
  ws.pause()
  // Wait until upstream stops making progress.
  let last = -1
  while (flooding.sentBytes !== last) {
    last = flooding.sentBytes
    await sleep(300)
  }
  const stuck = flooding.sentBytes
  const at = process.memoryUsage()
  const grew = (at.heapUsed + at.arrayBuffers - before.heapUsed - before.arrayBuffers) / 2 ** 20
  t.comment(`upstream stopped after ${(stuck / 2 ** 20).toFixed(1)} MiB of ${TOTAL / 2 ** 20} MiB; client had read ${(received / 2 ** 20).toFixed(1)} MiB; heap+buffers grew ${grew.toFixed(1)} MiB; rss ${(at.rss / 2 ** 20).toFixed(0)} MiB (was ${(before.rss / 2 ** 20).toFixed(0)})`)
  t.ok(stuck < 48 * 2 ** 20, 'upstream was paused long before the end of its flood')
  t.ok(grew < 48, 'the proxy did not buffer the flood')

  ws.resume()
  const deadline = Date.now() + 30_000
  while (flooding.sentBytes < TOTAL && Date.now() < deadline) await sleep(50)
  while (received < flooding.sentBytes && Date.now() < deadline) await sleep(50)
  t.ok(flooding.sentBytes >= TOTAL, 'once the client reads, upstream finishes')
  t.equal(received, flooding.sentBytes, 'and every byte reached the client')
})

t.test('the fake on its own: a wrong path, a missing key, any key when none are set', async (t) => {
  const { createServer } = await import('node:http')
  const { attachFakeRealtime } = await import('../../../testing/fake-realtime.js')
  const server = createServer()
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  const fake = attachFakeRealtime(server)
  t.teardown(() => { fake.close(); server.close() })
  const base = `ws://127.0.0.1:${(server.address() as AddressInfo).port}`
  const status = (url: string, headers: Record<string, string> = {}): Promise<number> => new Promise((resolve, reject) => {
    const ws = new WebSocket(url, { headers })
    ws.on('unexpected-response', (_req, res) => resolve(res.statusCode as number))
    ws.on('open', () => { ws.close(); resolve(101) })
    ws.on('error', reject)
  })
  t.equal(await status(`${base}/v1/models`), 404)
  t.equal(await status(`${base}/v1/realtime?model=m`), 401)
  t.equal(await status(`${base}/v1/realtime?model=m`, { authorization: 'Bearer anything' }), 101)
  t.equal(fake.handshakes.length, 2)
})
