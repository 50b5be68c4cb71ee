import { randomBytes } from 'node:crypto'
import t from 'tap'
import { assertNoLeak, sleep } from '../../helper.js'
import { rawConn, until, type RawConn } from '../../adversarial-helper.js'
import { bearer, connect, open, refused, rtTest, type Client, type RtHarness } from '../../realtime-helper.js'
import type { RealtimeConnection } from '../../../testing/fake-realtime.js'

/*
 * Adversarial Realtime sessions: frames that are not one event, prototype keys and duplicate keys, deep
 * nesting, frames at the cap, binary frames, models hidden in odd places, blocked text where the model
 * reads it, ping floods, a client flooding an upstream that does not read, odd close codes and raw
 * protocol errors, and handshake tricks (key subprotocol casing, doubled headers, query games, Origin).
 * rtTest checks after each: no upstream secret in anything a client saw, neither secrets nor the proxy key
 * in the logs, every upstream handshake `GET /v1/realtime?model=…` with a pool key and no client credential.
 */

const PHRASE = 'forbidden lighthouse'
const MODEL_POLICY = { allowedModels: ['gpt-realtime'] }
const item = (...texts: string[]) => ({ type: 'conversation.item.create', item: { type: 'message', role: 'user', content: texts.map((text) => ({ type: 'input_text', text })) } })

async function upstreamConn (h: RtHarness): Promise<RealtimeConnection> {
  const ok = await until(() => h.fake.connections.length > 0, 3000)
  if (!ok) throw new Error('no upstream connection')
  return h.fake.connections.at(-1) as RealtimeConnection
}

async function upstreamClosed (conn: RealtimeConnection, ms = 3000): Promise<NonNullable<RealtimeConnection['closed']>> {
  if (!await until(() => conn.closed !== undefined, ms)) throw new Error('upstream connection still open')
  return conn.closed as NonNullable<RealtimeConnection['closed']>
}

/** Send events, then a marker; resolve once upstream has the marker: everything before it was forwarded or dropped by then. */
async function sendAndSettle (c: Client, conn: RealtimeConnection, events: unknown[]): Promise<string[]> {
  const before = conn.received.length
  for (const e of events) c.send(e)
  const marker = `marker_${randomBytes(4).toString('hex')}`
  c.send({ type: 'input_audio_buffer.clear', event_id: marker })
  if (!await until(() => conn.received.some((m) => m.includes(marker)), 5000)) throw new Error('the marker never reached upstream')
  return conn.received.slice(before).filter((m) => !m.includes(marker))
}

/** The next `error` event's `error` object (or the timeout's failure). */
async function errorOf (c: Client): Promise<Record<string, unknown>> {
  return (await c.next('error', 5000)).error as Record<string, unknown>
}

/** A masked client frame (RFC 6455 §5.2). */
function frame (opcode: number, payload: Buffer, fin = true, masked = true): Buffer {
  const len = payload.length
  const size = len < 126 ? 2 : len < 65536 ? 4 : 10
  const h = Buffer.alloc(size)
  h[0] = (fin ? 0x80 : 0) | opcode
  if (len < 126) h[1] = len
  else if (len < 65536) { h[1] = 126; h.writeUInt16BE(len, 2) } else { h[1] = 127; h.writeBigUInt64BE(BigInt(len), 2) }
  if (!masked) return Buffer.concat([h, payload])
  h[1] = (h[1] as number) | 0x80
  const mask = randomBytes(4)
  return Buffer.concat([h, mask, Buffer.from(payload.map((b, i) => b ^ (mask[i % 4] as number)))])
}
const closeFrame = (code: number | null, reason: Buffer = Buffer.alloc(0)): Buffer => {
  if (code === null) return frame(0x8, reason)
  const p = Buffer.alloc(2)
  p.writeUInt16BE(code)
  return frame(0x8, Buffer.concat([p, reason]))
}

/** A raw WebSocket handshake on the realtime route; resolves once the 101 arrived (or with the refusal). */
async function rawSession (h: RtHarness, extra: string[] = [], target = '/v1/realtime?model=gpt-realtime'): Promise<{ conn: RawConn, answer: string }> {
  const conn = await rawConn(Number(new URL(h.url).port), 8000)
  const lines = [`GET ${target} HTTP/1.1`, 'Host: proxy.test', 'Connection: Upgrade', 'Upgrade: websocket', 'Sec-WebSocket-Version: 13', `Sec-WebSocket-Key: ${randomBytes(16).toString('base64')}`, ...extra]
  conn.socket.write(lines.join('\r\n') + '\r\n\r\n')
  await until(() => conn.text().includes('\r\n\r\n') || conn.isClosed(), 5000)
  const text = conn.text()
  return { conn, answer: text.slice(0, text.indexOf('\r\n\r\n') + 4) }
}

// ---------------------------------------------------------------------------------------------------------

rtTest(t, 'frames that are not exactly one JSON event are answered with invalid_event and never forwarded', {}, async (h, t) => {
  const c = await open(t, h.wsUrl, { headers: bearer(h) })
  await c.next('session.created')
  const conn = await upstreamConn(h)
  const deep = `{"type":"response.create","a":${'['.repeat(10_000)}${']'.repeat(10_000)}}`
  const deepObj = `{"type":"response.create","a":${'{"a":'.repeat(10_000)}1${'}'.repeat(10_000)}}`
  const cases: Array<[string, string]> = [
    ['empty', ''],
    ['whitespace', ' \n\t'],
    ['null', 'null'],
    ['a string', '"response.create"'],
    ['a numeric type', '{"type":1}'],
    ['truncated', '{"type":"response.create"'],
    ['two values', '{"type":"response.create"} {}'],
    ['a trailing comma', '{"type":"response.create",}'],
    ['NaN', '{"type":"response.create","x":NaN}'],
    ['a BOM', '\uFEFF{"type":"response.create"}'],
    ['single quotes', "{'type':'response.create'}"],
    ['10,000 nested arrays', deep],
    ['10,000 nested objects', deepObj],
    ['a duplicate key spelt with an escape (model)', '{"type":"session.update","session":{"model":"gpt-realtime","mod\\u0065l":"gpt-4o-realtime-preview"}}'],
    ['a duplicate type spelt with an escape', '{"t\\u0079pe":"input_audio_buffer.clear","type":"session.update","session":{"instructions":"x"}}'],
    ['a duplicate deep in an item', JSON.stringify(item('hello')).replace('"text":"hello"', '"text":"hello","text":"' + PHRASE + '"')],
    ['a duplicate session', '{"type":"session.update","session":{"instructions":"a"},"session":{"instructions":"b"}}']
  ]
  const started = Date.now()
  const forwarded = await sendAndSettle(c, conn, [])
  t.strictSame(forwarded, [])
  for (const [what, text] of cases) {
    const before = conn.received.length
    c.ws.send(text)
    const err = await errorOf(c)
    t.match(err, { type: 'invalid_request_error', code: 'invalid_event', event_id: null }, what)
    t.equal(conn.received.length, before, `${what}: nothing forwarded`)
  }
  t.ok(Date.now() - started < 3000, `all refused in ${Date.now() - started} ms`)
  // Binary frames, even holding a valid event.
  c.ws.send(Buffer.from('{"type":"response.create"}'), { binary: true })
  t.match(await errorOf(c), { code: 'invalid_event' }, 'a binary frame holding a valid event')
  t.strictSame(await sendAndSettle(c, conn, []), [], 'upstream never saw any of them')
  c.send({ type: 'response.create' })
  await c.next('response.done')
  t.ok(conn.received.every((m) => { try { return typeof JSON.parse(m).type === 'string' } catch { return false } }), 'upstream got only JSON events')
})

rtTest(t, 'prototype keys in events pollute nothing; the policy and filter read what upstream reads', {
  proxy: { policy: MODEL_POLICY, filter: { phrases: [PHRASE] } }
}, async (h, t) => {
  const c = await open(t, h.wsUrl, { headers: bearer(h) })
  await c.next('session.created')
  const conn = await upstreamConn(h)
  const events = [
    '{"type":"session.update","session":{"__proto__":{"model":"gpt-4o-realtime-preview","instructions":"' + PHRASE + '"}}}',
    '{"type":"session.update","__proto__":{"type":"x"},"session":{"constructor":{"prototype":{"model":"gpt-4o-realtime-preview"}}}}',
    '{"type":"conversation.item.create","item":{"type":"message","role":"user","content":[{"type":"input_text","__proto__":{"text":"' + PHRASE + '"},"text":"hi"}]}}'
  ]
  const forwarded = await sendAndSettle(c, conn, events)
  const proto = Object.prototype as Record<string, unknown>
  t.equal(proto.model, undefined, 'Object.prototype has no model')
  t.equal(proto.instructions, undefined, 'Object.prototype has no instructions')
  t.equal(proto.text, undefined, 'Object.prototype has no text')
  for (const m of forwarded) t.ok(events.includes(m), 'what was forwarded is the client\'s bytes, unchanged')
  // JSON bodies on the HTTP routes refuse these keys (onProtoPoisoning/onConstructorPoisoning: 'error');
  // a Realtime event carrying them goes upstream, where a JavaScript consumer that merges objects would
  // read `model` and `instructions` the proxy never checked.
  t.strictSame(forwarded, [], 'events with __proto__/constructor.prototype keys are refused as on the HTTP routes')
})

rtTest(t, 'models hidden in odd places: refused, never forwarded', { proxy: { policy: MODEL_POLICY } }, async (h, t) => {
  const c = await open(t, h.wsUrl, { headers: bearer(h) })
  await c.next('session.created')
  const conn = await upstreamConn(h)
  const models: unknown[] = [['gpt-realtime'], { id: 'gpt-realtime' }, 'gpt-realtime ', ' gpt-realtime', 'gpt-realtime\n', 'GPT-REALTIME', 'gpt-reaItime',
    'gpt\u2010realtime', 'gpt-realtime\u200b', 'ｇｐｔ-realtime', 'gpt-realtime\u0000', null, 0, true, '', 'gpt-realtime*']
  for (const model of models) {
    for (const [type, key] of [['session.update', 'session'], ['response.create', 'response']] as const) {
      c.send({ type, event_id: 'evt_m', [key]: { model } })
      t.match(await errorOf(c), { code: 'model_not_allowed', param: `${key}.model`, event_id: 'evt_m' }, `${type} ${JSON.stringify(model)}`)
    }
  }
  t.strictSame(await sendAndSettle(c, conn, []), [], 'no refused settings reached upstream')
  // Other models a session bills: the input transcription model (GA and beta shapes, and the beta
  // transcription session). ALLOWED_MODELS is documented as the models a client may use.
  const transcription = [
    { type: 'session.update', session: { type: 'realtime', audio: { input: { transcription: { model: 'whisper-1' } } } } },
    { type: 'session.update', session: { type: 'transcription', audio: { input: { transcription: { model: 'gpt-4o-transcribe' } } } } },
    { type: 'session.update', session: { input_audio_transcription: { model: 'whisper-1' } } },
    { type: 'transcription_session.update', session: { input_audio_transcription: { model: 'gpt-4o-transcribe' } } }
  ]
  const through = await sendAndSettle(c, conn, transcription)
  t.strictSame(through.map((m) => JSON.parse(m) as unknown), [], 'transcription models off the allowlist are refused too')
})

rtTest(t, 'blocked text wherever the model reads it', { proxy: { filter: { phrases: [PHRASE] } } }, async (h, t) => {
  const c = await open(t, h.wsUrl, { headers: bearer(h) })
  await c.next('session.created')
  const conn = await upstreamConn(h)
  const refusedEvents: Array<[string, unknown]> = [
    ['split over three parts, an invisible in the middle', item('the forb', 'id\u200bden light', 'house')],
    ['fullwidth letters', item('ＦＯＲＢＩＤＤＥＮ lighthouse')],
    ['a JSON escape', '{"type":"conversation.item.create","item":{"type":"message","role":"user","content":[{"type":"input_text","text":"forbidden \\u006cighthouse"}]}}'],
    ['an input_audio transcript', { type: 'conversation.item.create', item: { type: 'message', role: 'user', content: [{ type: 'input_audio', audio: 'AAAA', transcript: PHRASE }] } }],
    ['an assistant output_text part', { type: 'conversation.item.create', item: { type: 'message', role: 'assistant', content: [{ type: 'output_text', text: PHRASE }] } }],
    ['a system message', { type: 'conversation.item.create', item: { type: 'message', role: 'system', content: [{ type: 'input_text', text: PHRASE }] } }],
    ['response.create instructions', { type: 'response.create', response: { instructions: `say ${PHRASE}` } }],
    ['response.create input', { type: 'response.create', response: { input: [item('x', PHRASE).item] } }],
    ['a function_call_output', { type: 'conversation.item.create', item: { type: 'function_call_output', call_id: 'c1', output: PHRASE } }],
    ['session instructions', { type: 'session.update', session: { instructions: PHRASE } }]
  ]
  for (const [what, event] of refusedEvents) {
    c.send(event)
    t.match(await errorOf(c), { code: 'content_filter' }, what)
  }
  t.strictSame(await sendAndSettle(c, conn, []), [], 'none of them reached upstream')
  // Text the model reads that the Realtime filter does not look at (the HTTP filter reads all of these on
  // the Responses and chat routes: tool descriptions, function-call arguments).
  const unread: Array<[string, unknown]> = [
    ['a function_call item\'s arguments', { type: 'conversation.item.create', item: { type: 'function_call', call_id: 'c2', name: 'lookup', arguments: JSON.stringify({ q: PHRASE }) } }],
    ['a session tool description', { type: 'session.update', session: { tools: [{ type: 'function', name: 'f', description: `Always mention the ${PHRASE}.`, parameters: { type: 'object', properties: {} } }] } }],
    ['a response tool parameter description', { type: 'response.create', response: { tools: [{ type: 'function', name: 'g', description: 'x', parameters: { type: 'object', properties: { a: { type: 'string', description: PHRASE } } } }] } }],
    ['the transcription prompt', { type: 'session.update', session: { audio: { input: { transcription: { model: 'gpt-4o-transcribe', prompt: PHRASE } } } } }]
  ]
  for (const [what, event] of unread) {
    const through = await sendAndSettle(c, conn, [event])
    t.strictSame(through, [], `${what}: refused, not forwarded`)
  }
})

rtTest(t, 'frames at the cap: a blocked phrase at the very end is found; one byte over closes both sides with 1009, unforwarded', {
  proxy: { filter: { phrases: [PHRASE] }, realtime: { maxFrameBytes: 64 * 1024 } }
}, async (h, t) => {
  const c = await open(t, h.wsUrl, { headers: bearer(h) })
  await c.next('session.created')
  const conn = await upstreamConn(h)
  const sized = (bytes: number, tail: string): string => {
    const shell = JSON.stringify(item(''))
    const fill = bytes - Buffer.byteLength(shell) - Buffer.byteLength(tail)
    return JSON.stringify(item('a'.repeat(fill) + tail))
  }
  const atCap = sized(64 * 1024, ` ${PHRASE}`)
  t.equal(Buffer.byteLength(atCap), 64 * 1024)
  c.ws.send(atCap)
  t.match(await errorOf(c), { code: 'content_filter' }, 'a phrase in the last bytes of a 64 KiB frame')
  const clean = sized(64 * 1024, ' fine')
  const through = await sendAndSettle(c, conn, [JSON.parse(clean)])
  t.equal(through.length, 1, 'a clean frame at the cap is forwarded')
  t.equal(through[0], clean, 'byte for byte')
  c.ws.send(sized(64 * 1024 + 1, ' fine'))
  t.equal((await c.closed).code, 1009, 'one byte over: the client is closed with 1009')
  t.equal((await upstreamClosed(conn)).code, 1009, 'and upstream with 1009')
  t.notOk(conn.received.some((m) => m.length > 64 * 1024), 'the oversized frame never reached upstream')
})

rtTest(t, 'pings and pongs: a paced stream costs nothing upstream; a flood is cut (ws maxPendingAutoPongs), both sides closed', {}, async (h, t) => {
  const c = await open(t, h.wsUrl, { headers: bearer(h) })
  await c.next('session.created')
  const conn = await upstreamConn(h)
  let pongs = 0
  c.ws.on('pong', () => { pongs++ })
  const payload = randomBytes(125)
  for (let batch = 0; batch < 50; batch++) {
    for (let i = 0; i < 20; i++) c.ws.ping(payload)
    for (let i = 0; i < 20; i++) c.ws.pong(payload)
    if (!await until(() => pongs >= (batch + 1) * 20, 3000)) break
  }
  t.equal(pongs, 1000, 'every paced ping answered')
  t.strictSame(await sendAndSettle(c, conn, []), [], 'no ping or pong became a message upstream')
  c.send({ type: 'response.create' })
  await c.next('response.done')
  // A burst of unanswered pings: ws (8.23) terminates a peer with too many auto-pongs pending.
  const started = Date.now()
  for (let i = 0; i < 5000; i++) c.ws.ping(payload)
  const closed = await Promise.race([c.closed, sleep(5000).then(() => null)])
  t.ok(closed !== null, `a ping flood ends the session (client code ${closed?.code}, after ${Date.now() - started} ms)`)
  t.equal((await upstreamClosed(conn)).code, 1011, 'upstream is closed too (a dropped client: 1011)')
  t.notOk(conn.received.some((m) => !m.startsWith('{')), 'upstream only ever got JSON events')
})

rtTest(t, 'a client flooding an upstream that does not read is stopped by backpressure; the stalled session ends at the idle timeout', { proxy: { realtime: { idleTimeoutMs: 2000 } } }, async (h, t) => {
  h.fake.script(() => ({ onOpen: (conn) => conn.socket.pause() }))
  const c = await open(t, h.wsUrl, { headers: bearer(h) })
  const message = JSON.stringify({ type: 'input_audio_buffer.append', audio: 'A'.repeat(64 * 1024) })
  const MiB = 1024 * 1024
  let offered = 0
  const deadline = Date.now() + 3000
  // Send as fast as the client's socket takes it; stop once 96 MiB are offered or the client's own buffer holds 24 MiB.
  while (offered < 96 * MiB && Date.now() < deadline) {
    if (c.ws.bufferedAmount > 24 * MiB) {
      await sleep(50)
      if (c.ws.bufferedAmount > 24 * MiB) break
      continue
    }
    c.ws.send(message)
    offered += message.length
    if (offered % (4 * MiB) < message.length) await sleep(0)
  }
  await sleep(300)
  const accepted = offered - c.ws.bufferedAmount
  t.comment(`offered ${(offered / MiB).toFixed(1)} MiB; the proxy (and the kernel's buffers) took ${(accepted / MiB).toFixed(1)} MiB`)
  t.ok(accepted < 64 * MiB, `the proxy stopped reading the client (${(accepted / MiB).toFixed(1)} MiB taken)`)
  t.ok(c.ws.bufferedAmount > 0, 'the rest waits in the client')
  // Neither side is read now, so neither close can be seen: the client's idle timer ends the session (both
  // sockets cut after the close grace), which bounds how long a stalled session holds its slot.
  // Upstream reads nothing, not even a close frame: the relay's end is read from its log line.
  t.ok(await until(() => h.logs.some((l) => l.includes('realtime session ended')), 8000), 'the stalled session ends')
  t.match(h.logs.find((l) => l.includes('realtime session ended')), /"cause":"idle"/, 'at the idle timeout')
  c.ws.terminate()
})

rtTest(t, 'close codes: sendable ones pass through, others are mapped; raw protocol errors close both sides', {}, async (h, t) => {
  const viaWs: Array<[string, (c: Client) => void, number]> = [
    ['close(4999)', (c) => c.ws.close(4999, 'bye'), 4999],
    ['close(3000)', (c) => c.ws.close(3000), 3000],
    ['close(1000) with a long UTF-8 reason', (c) => c.ws.close(1000, 'é'.repeat(61)), 1000],
    ['terminate (1006)', (c) => c.ws.terminate(), 1011]
  ]
  for (const [what, end, code] of viaWs) {
    const c = await open(t, h.wsUrl, { headers: bearer(h) })
    await c.next('session.created')
    const conn = await upstreamConn(h)
    end(c)
    t.equal((await upstreamClosed(conn)).code, code, `${what}: upstream gets ${code}`)
  }
  const auth = [`Authorization: Bearer ${h.proxyKey}`]
  const raw: Array<[string, Buffer, number]> = [
    ['close with 1005 on the wire', closeFrame(1005), 1002],
    ['close with 1006 on the wire', closeFrame(1006), 1002],
    ['close with 999', closeFrame(999), 1002],
    ['close with 5000', closeFrame(5000), 1002],
    ['close with a 1-byte payload', frame(0x8, Buffer.from([3])), 1002],
    ['close with an invalid UTF-8 reason', closeFrame(1000, Buffer.from([0xff, 0xfe])), 1007],
    ['a text frame with invalid UTF-8', frame(0x1, Buffer.from([0x7b, 0xff, 0x7d])), 1007],
    ['an unmasked frame', frame(0x1, Buffer.from('{"type":"response.create"}'), true, false), 1002],
    ['a reserved opcode', frame(0x3, Buffer.from('x')), 1002],
    ['RSV1 set without an extension', Buffer.from([0xc1, 0x80, 0, 0, 0, 0]), 1002],
    ['a continuation with nothing to continue', frame(0x0, Buffer.from('x')), 1002],
    ['a fragmented ping', frame(0x9, Buffer.from('x'), false), 1002]
  ]
  for (const [what, bytes, code] of raw) {
    const before = h.fake.connections.length
    const { conn, answer } = await rawSession(h, auth)
    t.match(answer, /^HTTP\/1\.1 101 /, `${what}: upgraded`)
    if (!await until(() => h.fake.connections.length > before, 3000)) throw new Error('no upstream')
    const up = h.fake.connections.at(-1) as RealtimeConnection
    conn.socket.write(bytes)
    t.equal((await upstreamClosed(up)).code, code, `${what}: upstream gets ${code}`)
    t.strictSame(up.received, [], `${what}: nothing forwarded`)
    await Promise.race([conn.closed, sleep(2000)])
    t.ok(conn.isClosed(), `${what}: the client connection is closed`)
    assertNoLeak(t, conn.text(), h.secrets, what)
    conn.socket.destroy()
  }
})

rtTest(t, 'a message split into fragments (with a ping between them) is judged whole', { proxy: { filter: { phrases: [PHRASE] } } }, async (h, t) => {
  const { conn, answer } = await rawSession(h, [`Authorization: Bearer ${h.proxyKey}`])
  t.match(answer, /^HTTP\/1\.1 101 /)
  const up = await upstreamConn(h)
  const text = Buffer.from(JSON.stringify(item(`a ${PHRASE} b`)))
  const at = text.indexOf('lighthouse') + 3
  conn.socket.write(Buffer.concat([frame(0x1, text.subarray(0, at), false), frame(0x9, Buffer.from('p')), frame(0x0, text.subarray(at), true)]))
  t.ok(await until(() => conn.text().includes('content_filter'), 3000), 'the reassembled message was refused')
  conn.socket.write(frame(0x1, Buffer.from('{"type":"input_audio_buffer.clear","event_id":"m1"}')))
  t.ok(await until(() => up.received.length > 0, 3000))
  t.strictSame(up.received.map((m) => (JSON.parse(m) as { type: string }).type), ['input_audio_buffer.clear'], 'only the clean event upstream')
  conn.socket.write(closeFrame(1000))
  await Promise.race([conn.closed, sleep(2000)])
  conn.socket.destroy()
})

rtTest(t, 'handshake tricks: key subprotocol casing, doubled and long protocol lists, two credentials, query games, Origin', {}, async (h, t) => {
  const key = `openai-insecure-api-key.${h.proxyKey}`
  // Subprotocol names are case-sensitive (RFC 6455 §4.1): another casing is not a key; it must not be used,
  // forwarded, selected or logged all the same.
  const odd = await refused(h.wsUrl, { protocols: ['realtime', `OpenAI-Insecure-Api-Key.${h.proxyKey}`] })
  t.equal(odd.status, 401, 'the key subprotocol in another casing is not a credential')
  const oddWithBearer = await open(t, h.wsUrl, { headers: bearer(h), protocols: ['realtime', `OpenAI-Insecure-Api-Key.${h.proxyKey}`] })
  await oddWithBearer.next('session.created')
  t.equal(oddWithBearer.ws.protocol, 'realtime')
  oddWithBearer.ws.close()
  // Two credentials: the header wins, and a subprotocol key never reaches upstream either way.
  const wrongSub = await open(t, h.wsUrl, { headers: bearer(h), protocols: ['realtime', 'openai-insecure-api-key.sk-someone-else'] })
  await wrongSub.next('session.created')
  wrongSub.ws.close()
  t.equal((await refused(h.wsUrl, { headers: { authorization: 'Bearer sk-wrong' }, protocols: ['realtime', key] })).status, 401, 'a wrong Bearer with a right subprotocol key: 401')
  t.equal((await refused(h.wsUrl, { headers: { 'x-api-key': 'sk-wrong' }, protocols: ['realtime', key] })).status, 401, 'a wrong x-api-key with a right subprotocol key: 401')
  // Long lists: 300 protocols with the key among them; a header too large for the parser.
  const many = Array.from({ length: 300 }, (_, i) => `p${i}`)
  const long = await open(t, h.wsUrl, { protocols: [...many.slice(0, 150), key, ...many.slice(150), 'realtime'] })
  await long.next('session.created')
  t.equal(long.ws.protocol, 'realtime', '300 protocols: the key is taken out, realtime selected')
  long.ws.close()
  const huge = await connect(h.wsUrl, { protocols: [key, ...Array.from({ length: 4000 }, (_, i) => `proto-${i}`), 'realtime'] }).catch((err: Error) => err)
  t.ok(huge instanceof Error || (!('ws' in huge) && huge.status >= 400 && huge.status < 500), 'a 40 KB protocol list is refused')
  // The key in its own Sec-WebSocket-Protocol header line, before or after `realtime`.
  for (const lines of [['Sec-WebSocket-Protocol: realtime', `Sec-WebSocket-Protocol: ${key}`], [`Sec-WebSocket-Protocol: ${key}`, 'Sec-WebSocket-Protocol: realtime']]) {
    const { conn, answer } = await rawSession(h, lines)
    t.match(answer, /^HTTP\/1\.1 101 /, `${lines.join(' + ')}: upgraded`)
    t.match(answer, /\r\nSec-WebSocket-Protocol: realtime\r\n/i, 'realtime selected')
    t.notOk(answer.includes(h.proxyKey), 'the key is not echoed')
    conn.socket.write(closeFrame(1000))
    await Promise.race([conn.closed, sleep(2000)])
    conn.socket.destroy()
  }
  // Query games.
  const before = h.fake.handshakes.length
  for (const query of ['?model=gpt-realtime&model=gpt-realtime', '?model=', '?model=%2e%2e', '?model=..%2F..%2Fv1%2Fmodels', '?model=gpt-realtime%00', '?model=gpt-realtime%0d%0aX-Evil:%201',
    '?model[]=gpt-realtime', '?MODEL=gpt-realtime', '?model=gpt-realtime%26call_id%3Drtc_1', `?model=${'a'.repeat(300)}`, '?model=gpt-realtime%2Fx']) {
    const r = await refused(h.wsUrl.replace('?model=gpt-realtime', query), { headers: bearer(h) })
    t.equal(r.status, 400, `query ${query}: 400`)
    t.match(JSON.parse(r.body), { error: { param: 'model' } })
  }
  t.equal(h.fake.handshakes.length, before, 'no refused query reached upstream')
  for (const query of ['?model=gpt%2Drealtime', '?model=gpt-realtime&call_id=rtc_1&api-key=sk-x&model_=y', '?__proto__[model]=x&model=gpt-realtime']) {
    const c = await open(t, h.wsUrl.replace('?model=gpt-realtime', query), { headers: bearer(h) })
    await c.next('session.created')
    t.equal(h.fake.handshakes.at(-1)?.url, '/v1/realtime?model=gpt-realtime', `query ${query}: upstream gets only model`)
    c.ws.close()
  }
  t.equal((Object.prototype as Record<string, unknown>).model, undefined, 'no prototype pollution from the query')
  // Origin without a CORS list: any page is refused, even `null` and the empty string.
  for (const origin of ['null', '', 'file://', 'http://127.0.0.1']) {
    const { conn, answer } = await rawSession(h, [`Authorization: Bearer ${h.proxyKey}`, `Origin: ${origin}`])
    t.match(answer, /^HTTP\/1\.1 403 /, `Origin: ${JSON.stringify(origin)}: 403`)
    conn.socket.destroy()
  }
  t.notOk(h.logs.join('').toLowerCase().includes('insecure-api-key'), 'no key subprotocol, in any casing, in the logs')
})

rtTest(t, 'a spent token budget also stops responses the client triggers without response.create (turn detection)', {
  proxy: { rateLimit: { tokensPerMinute: 1000 } },
  realtime: { tokensPerResponse: 400 }
}, async (h, t) => {
  // The fake answers each committed audio turn with a response, as OpenAI does under server VAD
  // (turn_detection.create_response defaults to true): no response.create is ever sent.
  h.fake.script(() => ({
    onEvent: (conn, event) => {
      if (event.type !== 'input_audio_buffer.commit') return false
      h.fake.send(conn, { type: 'response.created', response: { id: 'resp_vad', status: 'in_progress' } })
      h.fake.send(conn, { type: 'response.done', response: { id: 'resp_vad', status: 'completed', usage: { total_tokens: 400 } } })
      return true
    }
  }))
  const c = await open(t, h.wsUrl, { headers: bearer(h) })
  await c.next('session.created')
  const conn = await upstreamConn(h)
  for (let i = 0; i < 3; i++) {
    c.send({ type: 'input_audio_buffer.append', audio: 'AAAA' })
    c.send({ type: 'input_audio_buffer.commit' })
    await c.next('response.done')
  }
  await sleep(50)
  c.send({ type: 'response.create', event_id: 'evt_over' })
  t.match(await errorOf(c), { code: 'rate_limit_exceeded' }, 'the budget is spent: response.create is refused')
  const commitsBefore = conn.received.filter((m) => m.includes('input_audio_buffer.commit')).length
  for (let i = 0; i < 3; i++) {
    c.send({ type: 'input_audio_buffer.append', audio: 'AAAA' })
    c.send({ type: 'input_audio_buffer.commit' })
  }
  await sendAndSettle(c, conn, [])
  await sleep(50)
  const commitsAfter = conn.received.filter((m) => m.includes('input_audio_buffer.commit')).length - commitsBefore
  c.ws.close()
  await c.closed
  await until(() => h.logs.some((l) => l.includes('realtime session ended')), 3000)
  const ended = h.logs.find((l) => l.includes('realtime session ended')) ?? '{}'
  const tokens = (JSON.parse(ended) as { tokens?: number }).tokens ?? 0
  t.comment(`tokens charged in one window: ${tokens} (limit 1000, one response 400)`)
  t.ok(tokens <= 1000 + 400 || commitsAfter === 0, `a window ends at most one response over its limit (docs/realtime.md): ${tokens} tokens, ${commitsAfter} turns after the budget was spent`)
})
