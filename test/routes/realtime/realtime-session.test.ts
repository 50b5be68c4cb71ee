import type { FastifyServerOptions } from 'fastify'
import t from 'tap'
import { assertNoLeak, sleep } from '../../helper.js'
import { bearer, open, refused, rtTest, type RtHarness } from '../../realtime-helper.js'
import type { RealtimeConnection } from '../../../testing/fake-realtime.js'

/*
 * A Realtime session's life: how it ends (either side, timers, shutdown, oversized messages), what an
 * upstream refusal or error looks like to the client, and what a reader that stops reading costs.
 */

async function upstreamConn (h: RtHarness): Promise<RealtimeConnection> {
  for (let i = 0; i < 200; i++) {
    const c = h.fake.connections.at(-1)
    if (c !== undefined) return c
    await sleep(10)
  }
  throw new Error('no upstream connection')
}

async function upstreamClosed (conn: RealtimeConnection, timeoutMs = 3000): Promise<NonNullable<RealtimeConnection['closed']>> {
  for (let waited = 0; waited < timeoutMs; waited += 5) {
    if (conn.closed !== undefined) return conn.closed
    await sleep(5)
  }
  throw new Error('upstream connection still open')
}

rtTest(t, 'a client close reaches upstream within a second, with its code mapped', {}, async (h, t) => {
  const cases: Array<[string, (ws: import('ws').WebSocket) => void, number]> = [
    ['close(4001)', (ws) => ws.close(4001, 'done'), 4001],
    ['close() without a code', (ws) => ws.close(), 1000],
    ['a dropped connection (1006)', (ws) => ws.terminate(), 1011]
  ]
  for (const [name, end, expected] of cases) {
    const c = await open(t, h.wsUrl, { headers: bearer(h) })
    await c.next('session.created')
    const conn = await upstreamConn(h)
    const started = Date.now()
    end(c.ws)
    const closed = await upstreamClosed(conn)
    t.equal(closed.code, expected, `${name}: upstream got ${expected}`)
    t.ok(closed.at - started < 1000, `${name}: within ${closed.at - started} ms`)
  }
  await sleep(50)
  t.match(h.logs.join(''), /"clientCode":4001,"upstreamCode":4001,"cause":"client".*realtime session ended/)
})

rtTest(t, 'an upstream close reaches the client within a second, its reason redacted; a drop becomes 1011', {}, async (h, t) => {
  const cases: Array<[string, (conn: RealtimeConnection) => void, number, string]> = [
    ['close(4000)', (conn) => conn.socket.close(4000, `bye ${h.keys[0]}`), 4000, 'bye [redacted]'],
    ['a reason that grows when redacted', (conn) => conn.socket.close(4002, 'sk-a '.repeat(24)), 4002, ''],
    ['terminate()', (conn) => conn.socket.terminate(), 1011, '']
  ]
  for (const [name, end, code, reason] of cases) {
    const c = await open(t, h.wsUrl, { headers: bearer(h) })
    await c.next('session.created')
    const started = Date.now()
    end(await upstreamConn(h))
    const closed = await c.closed
    t.equal(closed.code, code, `${name}: the client got ${code}`)
    if (reason !== '') t.equal(closed.reason, reason)
    else t.ok(Buffer.byteLength(closed.reason) <= 123, `${name}: a reason that fits`)
    t.ok(closed.at - started < 1000, `${name}: within ${closed.at - started} ms`)
    assertNoLeak(t, closed.reason, h.secrets, 'the close reason')
  }
})

rtTest(t, 'messages over the frame cap close the session with 1009, either way', { proxy: { realtime: { maxFrameBytes: 4096 } } }, async (h, t) => {
  const c = await open(t, h.wsUrl, { headers: bearer(h) })
  await c.next('session.created')
  const conn = await upstreamConn(h)
  c.send({ type: 'conversation.item.create', item: { type: 'message', role: 'user', content: [{ type: 'input_text', text: 'x'.repeat(5000) }] } })
  t.equal((await c.closed).code, 1009, 'an oversized client message: the client is closed with 1009')
  t.equal((await upstreamClosed(conn)).code, 1009, 'and upstream is closed')
  t.strictSame(conn.received, [], 'the message never reached upstream')

  const d = await open(t, h.wsUrl, { headers: bearer(h) })
  await d.next('session.created')
  const conn2 = await upstreamConn(h)
  h.fake.send(conn2, { type: 'response.output_audio.delta', delta: 'A'.repeat(5000) })
  t.equal((await d.closed).code, 1009, 'an oversized upstream message: the client is closed with 1009')
  t.equal((await upstreamClosed(conn2)).code, 1009)
})

rtTest(t, 'a silent client is closed after the idle timeout; one that talks is not', { proxy: { realtime: { idleTimeoutMs: 300 } } }, async (h, t) => {
  // Upstream says nothing either way: the timer is about the client's messages.
  h.fake.script(() => ({ stall: true }))
  const quiet = await open(t, h.wsUrl, { headers: bearer(h) })
  const started = Date.now()
  const closed = await quiet.closed
  t.strictSame([closed.code, closed.reason], [1001, 'idle timeout'])
  t.ok(closed.at - started >= 280 && closed.at - started < 1000, `closed after ${closed.at - started} ms`)
  t.equal((await upstreamClosed(h.fake.connections[0] as RealtimeConnection)).code, 1001, 'upstream too')

  const chatty = await open(t, h.wsUrl, { headers: bearer(h) })
  for (let i = 0; i < 6; i++) {
    chatty.send({ type: 'input_audio_buffer.clear' })
    await sleep(100)
  }
  t.equal(chatty.ws.readyState, chatty.ws.OPEN, 'open after 600 ms of talking')
  await sleep(50)
  t.match(h.logs.join(''), /"clientCode":1001,"upstreamCode":1001,"cause":"idle"/)
})

rtTest(t, 'a session is closed at streamMaxDurationMs', { proxy: { streamMaxDurationMs: 300 } }, async (h, t) => {
  const c = await open(t, h.wsUrl, { headers: bearer(h) })
  for (let i = 0; i < 4; i++) {
    c.send({ type: 'input_audio_buffer.clear' })
    await sleep(50)
  }
  const closed = await c.closed
  t.strictSame([closed.code, closed.reason], [1001, 'session time limit'])
})

rtTest(t, "Node's request timeout does not cut a session (server.ts sets one)", { fastify: { requestTimeout: 300, http: { connectionsCheckingInterval: 50 } } as unknown as FastifyServerOptions }, async (h, t) => {
  const c = await open(t, h.wsUrl, { headers: bearer(h) })
  await c.next('session.created')
  await sleep(1000)
  c.send({ type: 'response.create' })
  await c.next('response.done')
  t.equal(c.ws.readyState, c.ws.OPEN)
})

rtTest(t, 'shutting the proxy down closes sessions with 1001', {}, async (h, t) => {
  const c = await open(t, h.wsUrl, { headers: bearer(h) })
  await c.next('session.created')
  const closing = h.app.close()
  t.strictSame([(await c.closed).code, (await c.closed).reason], [1001, 'server shutting down'])
  await closing
})

rtTest(t, 'a handshake still opening upstream when shutdown begins is closed with 1001 once open', {}, async (h, t) => {
  h.fake.script(() => ({ acceptAfterMs: 300 }))
  const opening = open(t, h.wsUrl, { headers: bearer(h) })
  while (h.fake.handshakes.length === 0) await sleep(10)
  const closing = h.app.close()
  const c = await opening
  t.strictSame([(await c.closed).code, (await c.closed).reason], [1001, 'server shutting down'])
  await closing
})

rtTest(t, 'an upstream error event quoting a key reaches the client redacted', {}, async (h, t) => {
  const key = h.keys[0] as string
  h.fake.script(() => ({
    onOpen: (conn) => {
      h.fake.send(conn, { type: 'error', event_id: 'event_up', error: { type: 'invalid_request_error', code: 'invalid_api_key', message: `Incorrect API key provided: ${key.slice(0, 8)}****${key.slice(-4)}. Key ${key}, org ${h.organization}.`, param: key.slice(3), event_id: null } })
      h.fake.send(conn, { type: 'response.output_text.delta', delta: `the key is ${key} and ${key.slice(3)}` })
      // Odd upstream messages pass as they are (with secrets cut) and charge nothing.
      h.fake.send(conn, `not JSON, but it says "error" and ${key}`)
      h.fake.send(conn, { type: 'error' })
      h.fake.send(conn, { type: 'response.done' })
      h.fake.send(conn, { type: 'response.done', response: { usage: { total_tokens: -5 } } })
    }
  }))
  const c = await open(t, h.wsUrl, { headers: bearer(h) })
  const err = await c.next('error')
  t.match(err, { type: 'error', event_id: 'event_up', error: { type: 'invalid_request_error', code: 'invalid_api_key', message: /^Incorrect API key provided: sk-\[redacted\]/ } })
  t.match(await c.next('response.output_text.delta'), { delta: 'the key is [redacted] and [redacted]' })
  t.match(await c.next('(not JSON)'), { text: 'not JSON, but it says "error" and [redacted]' })
  t.strictSame((await c.next('error')).error, {})
  await c.next('response.done')
  await c.next('response.done')
  assertNoLeak(t, c.seen(), h.secrets, 'what the client saw')
  c.ws.close()
  await c.closed
  await sleep(50)
  t.match(h.logs.join(''), /"tokens":0,.*realtime session ended/, 'no usage was charged')
})

rtTest(t, 'upstream refuses the handshake with 401: the key is disabled and the next one used; none left is a 503', { keyCount: 2 }, async (h, t) => {
  h.fake.setValidKeys([h.keys[1] as string])
  const c = await open(t, h.wsUrl, { headers: bearer(h) })
  await c.next('session.created')
  t.strictSame(h.fake.handshakes.map((hs) => hs.headers.authorization), h.keys.map((k) => `Bearer ${k}`), 'the first key was refused, the second used')
  const again = await open(t, h.wsUrl, { headers: bearer(h) })
  await again.next('session.created')
  t.equal(h.fake.handshakes.at(-1)?.headers.authorization, `Bearer ${h.keys[1]}`, 'the disabled key is not tried again')
  t.equal(h.fake.handshakes.length, 3)
  h.fake.setValidKeys([])
  const r = await refused(h.wsUrl, { headers: bearer(h) })
  t.equal(r.status, 503)
  t.match(JSON.parse(r.body), { error: { type: 'server_error', code: 'upstream_keys_exhausted' } })
  t.equal(r.headers['x-should-retry'], 'false')
  assertNoLeak(t, JSON.stringify(r), h.secrets, 'the refusal')
  t.match(h.logs.join(''), /upstream key taken out of rotation/)
})

rtTest(t, 'other upstream refusals are answered as on the HTTP routes, redacted', {}, async (h, t) => {
  const key = h.keys[0] as string
  const cases: Array<[string, { status: number, body: unknown, headers?: Record<string, string> }, number, object]> = [
    ['a restricted key (401 without invalid_api_key)', { status: 401, body: { error: { message: `Missing scopes for ${key}`, type: 'invalid_request_error', code: 'missing_scope', param: null } } }, 403, { error: { type: 'permission_denied', message: 'Missing scopes for [redacted]' } }],
    ['a rate limit', { status: 429, body: { error: { message: 'Rate limit reached', type: 'requests', code: 'rate_limit_exceeded', param: null } }, headers: { 'retry-after': '2', 'openai-organization': 'org-secret' } }, 429, { error: { code: 'rate_limit_exceeded' } }],
    ['a server error', { status: 503, body: 'overloaded' }, 503, { error: { type: 'server_error', message: 'The upstream API returned an error (HTTP 503).' } }],
    ['a redirect', { status: 302, body: {}, headers: { location: 'https://elsewhere.example/' } }, 502, { error: { code: 'upstream_bad_response' } }]
  ]
  for (const [name, refuse, status, body] of cases) {
    h.fake.script(() => ({ refuse }))
    const r = await refused(h.wsUrl, { headers: bearer(h) })
    t.equal(r.status, status, name)
    t.match(JSON.parse(r.body), body, name)
    t.equal(r.headers['openai-organization'], undefined)
    assertNoLeak(t, JSON.stringify(r), h.secrets, name)
  }
})

rtTest(t, 'an upstream that cannot be reached is a 502; one that never answers the handshake a 504', { proxy: { upstreamConnectTimeoutMs: 300 } }, async (h, t) => {
  h.fake.script(() => ({ hold: true }))
  const started = Date.now()
  const slow = await refused(h.wsUrl, { headers: bearer(h) })
  t.equal(slow.status, 504)
  t.ok(Date.now() - started < 1500, `after ${Date.now() - started} ms`)
  h.upstreamServer.close()
  h.upstreamServer.closeAllConnections()
  await sleep(50)
  const gone = await refused(h.wsUrl, { headers: bearer(h) })
  t.equal(gone.status, 502)
  t.match(JSON.parse(gone.body), { error: { code: 'upstream_unreachable' } })
})

rtTest(t, 'a client that leaves during the upstream handshake costs at most the handshake timeout', { proxy: { upstreamConnectTimeoutMs: 300 } }, async (h, t) => {
  h.fake.script(() => ({ hold: true }))
  const { WebSocket } = await import('ws')
  const ws = new WebSocket(h.wsUrl, { headers: bearer(h) })
  ws.on('error', () => {})
  while (h.fake.handshakes.length === 0) await sleep(10)
  ws.terminate()
  await sleep(600)
  t.match(h.logs.join(''), /"code":"timeout".*upstream realtime handshake failed/, 'the upstream handshake was given up')
  t.notMatch(h.logs.join(''), /realtime session ended/, 'and no session began')
})
