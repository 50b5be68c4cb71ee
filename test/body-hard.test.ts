import { brotliCompressSync, createGunzip, deflateSync, gzipSync } from 'node:zlib'
import t from 'tap'
import type { Test } from 'tap'
import { assertNoLeak, chatBody, isAllowlisted, proxyTest, sleep, type Harness } from './helper.js'
import { expectOpenAIError, parseResponses, type Seen } from './routing-shared.js'
import { oaiProxyExpectationHandler } from '../lib/server-options.js'
import { finals, head, pump, rawConn, until, type RawConn } from './adversarial-helper.js'

/*
 * Hostile request bodies over real loopback sockets (issue 11 point 4; threat catalogue A06, B02, B11, H10,
 * LD02, LD04): huge chunked bodies, lying Content-Length, Expect: 100-continue, compressed bodies and a gzip
 * bomb, pipelined requests. Every case ends in a local 4xx in OpenAI's envelope or a closed connection,
 * within bounded time, with nothing sent upstream for the bad request and no secret in what the client saw.
 */

const port = (h: Harness): number => Number(new URL(h.url).port)
const BODY = JSON.stringify(chatBody())
const MiB = 1024 * 1024
const NOTHING: Seen = { statusCode: 0, headers: {}, body: '' }

/** A raw client connection (test/adversarial-helper.ts); destroyed after `hardTimeoutMs` whatever happens. */
type Conn = RawConn
const open = async (h: Harness, hardTimeoutMs = 8000): Promise<Conn> => await rawConn(port(h), hardTimeoutMs)

/** A chunked JSON-looking body of `total` bytes, produced lazily: one 64 KiB frame reused, never the whole body. */
function * hugeChunkedBody (total: number): Generator<Buffer> {
  const start = Buffer.from('{"model":"gpt-4o-mini","messages":[{"role":"user","content":"')
  yield Buffer.from(`${start.length.toString(16)}\r\n${start.toString()}\r\n`)
  const payload = Buffer.alloc(64 * 1024, 'a')
  const frame = Buffer.concat([Buffer.from(`${payload.length.toString(16)}\r\n`), payload, Buffer.from('\r\n')])
  for (let sent = 0; sent < total; sent += payload.length) yield frame
  yield Buffer.from('0\r\n\r\n')
}

function checkSeen (t: Test, h: Harness, conn: Conn, what: string): void {
  assertNoLeak(t, conn.text(), h.secrets, `what the client saw: ${what}`)
}

async function stillServes (t: Test, h: Harness): Promise<void> {
  const before = h.upstream.requests.length
  const res = await fetch(`${h.url}/v1/chat/completions`, { method: 'POST', headers: { ...h.auth, 'content-type': 'application/json' }, body: BODY, signal: AbortSignal.timeout(5000) })
  t.equal(res.status, 200, 'the proxy still serves a normal request afterwards')
  await res.arrayBuffer()
  t.equal(h.upstream.requests.length, before + 1)
}

// ---------------------------------------------------------------------------------------------------------
// 1. A huge chunked body with no Content-Length.

proxyTest(t, '1 GB chunked body without Content-Length: refused once past bodyLimit, the proxy stops reading', { listen: true, proxy: { bodyLimit: MiB } }, async (h, t) => {
  const cases: Array<{ what: string, target: string, headers: Record<string, string>, status: number, code: string }> = [
    { what: 'authenticated, allowed route', target: '/v1/chat/completions', headers: h.auth, status: 413, code: 'request_too_large' },
    { what: 'bad key', target: '/v1/chat/completions', headers: { authorization: 'Bearer sk-oaip-wrong' }, status: 401, code: 'invalid_api_key' },
    { what: 'admin path', target: '/v1/organization/users', headers: h.auth, status: 404, code: 'unknown_url' }
  ]
  for (const c of cases) {
    const conn = await open(h, 10_000)
    const start = Date.now()
    conn.socket.write(head('POST', c.target, { ...c.headers, 'content-type': 'application/json', 'transfer-encoding': 'chunked' }))
    const sent = await pump(conn, hugeChunkedBody(1024 * MiB), 9000)
    await Promise.race([conn.closed, sleep(2000)])
    const ms = Date.now() - start
    t.comment(`${c.what}: client handed over ${(sent / MiB).toFixed(1)} MiB in ${ms} ms before the proxy closed`)
    t.ok(conn.isClosed() && !conn.timedOut(), `${c.what}: the proxy closed the connection (not our timeout)`)
    t.ok(ms < 5000, `${c.what}: over within 5 s (${ms} ms)`)
    // Loopback send and receive buffers hold a few MiB; a proxy that drained the body would take all 1024.
    t.ok(sent < MiB + 16 * MiB, `${c.what}: the proxy stopped reading soon after the limit (${(sent / MiB).toFixed(1)} MiB accepted)`)
    const seen = finals(conn.text())
    // A reset can in principle overtake the answer; when the answer arrives it must be the envelope.
    if (seen.length > 0) {
      t.equal(seen.length, 1, `${c.what}: one answer`)
      expectOpenAIError(t, seen[0] ?? NOTHING, c.status, c.code, c.what)
      t.equal((seen[0] ?? NOTHING).headers.connection, 'close', `${c.what}: Connection: close`)
    } else {
      t.comment(`${c.what}: the connection closed with no answer`)
    }
    checkSeen(t, h, conn, c.what)
    t.equal(h.upstream.requests.length, 0, `${c.what}: nothing upstream`)
  }
  await stillServes(t, h)
})

// ---------------------------------------------------------------------------------------------------------
// 2. Content-Length that lies.

proxyTest(t, 'Content-Length larger than the bytes sent: a complete JSON body is not forwarded early; the client leaving is a 400, not a crash', { listen: true }, async (h, t) => {
  const conn = await open(h)
  conn.socket.write(head('POST', '/v1/chat/completions', { ...h.auth, 'content-type': 'application/json', 'content-length': String(Buffer.byteLength(BODY) + 100) }) + BODY)
  await sleep(500)
  t.equal(conn.text(), '', 'the proxy waits for the promised bytes: no answer yet')
  t.equal(h.upstream.requests.length, 0, 'the complete-looking JSON was not forwarded')
  conn.socket.destroy()
  await conn.closed
  t.ok(await until(() => h.logs.some((l) => l.includes('request refused')), 2000), 'the abandoned request is settled')
  const refused = h.logs.filter((l) => l.includes('request refused')).map((l) => JSON.parse(l) as { code: string, status: number })
  t.match(refused, [{ code: 'OAI_PROXY_BAD_REQUEST', status: 400 }])
  t.notOk(h.logs.some((l) => l.includes('request failed')), 'no server error')
  t.equal(h.upstream.requests.length, 0, 'nothing upstream')
  await stillServes(t, h)
})

// What server.ts configures (REQUEST_TIMEOUT_MS), shortened; Node checks request timeouts every connectionsCheckingInterval.
// On Node 20 a stalled body is cut at max(requestTimeout, headersTimeout), so both are shortened here.
const timeoutServer = { requestTimeout: 1000, http: { headersTimeout: 1000, connectionsCheckingInterval: 100 } }

proxyTest(t, 'Content-Length larger than the bytes sent, client stalls: requestTimeout closes it with a 408 in the envelope, nothing upstream', { listen: true, fastify: timeoutServer }, async (h, t) => {
  for (const expect of ['', 'Expect: 100-continue']) {
    const what = expect === '' ? 'stalled body' : 'stalled body after 100-continue'
    const conn = await open(h, 6000)
    const start = Date.now()
    const extra: Record<string, string> = expect === '' ? {} : { expect: '100-continue' }
    conn.socket.write(head('POST', '/v1/chat/completions', { ...h.auth, ...extra, 'content-type': 'application/json', 'content-length': String(Buffer.byteLength(BODY) + 100) }) + BODY)
    await conn.closed
    const ms = Date.now() - start
    t.notOk(conn.timedOut(), `${what}: the proxy closed the connection itself (${ms} ms)`)
    t.ok(ms >= 900 && ms < 4000, `${what}: after about requestTimeout (${ms} ms)`)
    const seen = finals(conn.text())
    t.equal(seen.length, 1, `${what}: one final answer`)
    expectOpenAIError(t, seen[0] ?? NOTHING, 408, 'request_timeout', what)
    checkSeen(t, h, conn, what)
    t.equal(h.upstream.requests.length, 0, `${what}: nothing upstream`)
  }
  t.notOk(h.logs.some((l) => l.includes('request failed')), 'no server error')
  await stillServes(t, h)
})

proxyTest(t, 'Content-Length smaller than the bytes sent: the excess is parsed as the next request and judged on its own, never smuggled', { listen: true }, async (h, t) => {
  const smuggled = head('GET', '/v1/files', { ...h.auth, connection: 'close' })
  const cases: Array<{ what: string, extra: string, code: string }> = [
    { what: 'excess is an admin request', extra: smuggled, code: 'unknown_url' },
    { what: 'excess is an admin POST with a body', extra: head('POST', '/v1/organization/users', { ...h.auth, 'content-type': 'application/json', 'content-length': '2', connection: 'close' }) + '{}', code: 'unknown_url' }
  ]
  for (const c of cases) {
    const before = h.upstream.requests.length
    const conn = await open(h)
    conn.socket.write(head('POST', '/v1/chat/completions', { ...h.auth, 'content-type': 'application/json', 'content-length': String(Buffer.byteLength(BODY)) }) + BODY + c.extra)
    await Promise.race([conn.closed, until(() => finals(conn.text()).length >= 2, 4000)])
    conn.socket.destroy()
    const seen = finals(conn.text())
    t.strictSame(seen.map((r) => r.statusCode), [200, 404], `${c.what}: 200 for the first request, 404 for the excess`)
    expectOpenAIError(t, seen[1] ?? NOTHING, 404, c.code, c.what)
    const sent = h.upstream.requests.slice(before)
    t.strictSame(sent.map((r) => `${r.method} ${r.url}`), ['POST /v1/chat/completions'], `${c.what}: upstream got only the first request`)
    t.equal(sent[0]?.body.toString(), BODY, `${c.what}: with exactly Content-Length bytes`)
    checkSeen(t, h, conn, c.what)
  }

  /** Bytes the parser fails on behind a first request: its 400 goes out first and closes the connection. */
  const parserRefuses = async (what: string, payload: string): Promise<Array<{ method: string, url: string, body: Buffer }>> => {
    const before = h.upstream.requests.length
    const conn = await open(h)
    conn.socket.write(payload)
    await conn.closed
    t.notOk(conn.timedOut(), `${what}: the proxy closed the connection`)
    const seen = finals(conn.text())
    t.strictSame(seen.map((r) => r.statusCode), [400], `${what}: one 400 from the parser, then closed`)
    expectOpenAIError(t, seen[0] ?? NOTHING, 400, 'bad_request', what)
    await sleep(200)
    checkSeen(t, h, conn, what)
    return h.upstream.requests.slice(before)
  }

  // Excess that is not a request, while the first request is still in flight: the first answer is lost. The
  // first request was valid and allowed; it may still be forwarded, verbatim. Nothing else reaches upstream.
  const sent = await parserRefuses('garbage excess', head('POST', '/v1/chat/completions', { ...h.auth, 'content-type': 'application/json', 'content-length': String(Buffer.byteLength(BODY)) }) + BODY + ',"tools":[{"x":1}]}\r\n\r\n')
  t.ok(sent.length <= 1, `garbage excess: at most the first request upstream (${sent.length})`)
  t.ok(sent.every((r) => r.url === '/v1/chat/completions' && r.body.toString() === BODY), 'garbage excess: and only verbatim')

  // Content-Length cuts the JSON short: the first body is invalid JSON and the rest is not a request; the first
  // request's own 400 is never written.
  t.strictSame(await parserRefuses('cut JSON', head('POST', '/v1/chat/completions', { ...h.auth, 'content-type': 'application/json', 'content-length': '20' }) + BODY), [], 'cut JSON: nothing upstream')
  await stillServes(t, h)
})

// ---------------------------------------------------------------------------------------------------------
// 3. Expect: 100-continue.

proxyTest(t, 'Expect: 100-continue: a valid key gets 100 then the answer; a bad key is refused without the body; nothing upstream for it', { listen: true }, async (h, t) => {
  const length = String(Buffer.byteLength(BODY))
  {
    const conn = await open(h)
    conn.socket.write(head('POST', '/v1/chat/completions', { ...h.auth, 'content-type': 'application/json', 'content-length': length, expect: '100-continue', connection: 'close' }))
    t.ok(await until(() => conn.text().length > 0, 2000), 'valid key: the proxy answers the headers')
    t.match(conn.text(), /^HTTP\/1\.1 100 Continue\r\n\r\n$/, 'valid key: 100 Continue, nothing else yet')
    t.equal(h.upstream.requests.length, 0, 'valid key: nothing upstream before the body')
    conn.socket.write(BODY)
    await conn.closed
    t.notOk(conn.timedOut(), 'valid key: finished')
    t.strictSame(parseResponses(conn.text()).map((r) => r.statusCode), [100, 200], 'valid key: 100 then 200')
    t.strictSame(h.upstream.requests.map((r) => `${r.method} ${r.url}`), ['POST /v1/chat/completions'])
    t.equal(h.upstream.requests[0]?.body.toString(), BODY, 'valid key: the body forwarded as sent')
    t.equal(h.upstream.requests[0]?.headers.expect, undefined, 'Expect is not forwarded upstream')
    checkSeen(t, h, conn, '100-continue, valid key')
  }
  const refusals: Array<{ what: string, target: string, headers: Record<string, string>, status: number, code: string | null }> = [
    { what: 'bad key', target: '/v1/chat/completions', headers: { authorization: 'Bearer sk-oaip-wrong' }, status: 401, code: 'invalid_api_key' },
    { what: 'no key', target: '/v1/chat/completions', headers: {}, status: 401, code: null },
    { what: 'admin path', target: '/v1/organization/users', headers: h.auth, status: 404, code: 'unknown_url' },
    { what: 'gzip body', target: '/v1/chat/completions', headers: { ...h.auth, 'content-encoding': 'gzip' }, status: 415, code: 'unsupported_media_type' }
  ]
  for (const c of refusals) {
    const before = h.upstream.requests.length
    const conn = await open(h)
    conn.socket.write(head('POST', c.target, { ...c.headers, 'content-type': 'application/json', 'content-length': length, expect: '100-continue' }))
    // The body is never sent: the refusal must come from the headers alone, and the proxy must close.
    await conn.closed
    t.notOk(conn.timedOut(), `${c.what}: the proxy answered and closed without the body`)
    const all = parseResponses(conn.text())
    t.comment(`${c.what}: ${all.map((r) => r.statusCode).join(', ')}`)
    const seen = all.filter((r) => r.statusCode >= 200)
    t.equal(seen.length, 1, `${c.what}: one final answer`)
    t.ok(all.every((r) => r.statusCode === 100 || r === seen[0]), `${c.what}: at most a 100 before it`)
    if (c.code === null) t.match(JSON.parse((seen[0] ?? NOTHING).body || 'null'), { error: { type: 'invalid_request_error', param: null, code: null, message: String } }, c.what)
    else expectOpenAIError(t, seen[0] ?? NOTHING, c.status, c.code, c.what)
    t.equal((seen[0] ?? NOTHING).statusCode, c.status, `${c.what}: ${c.status}`)
    t.equal(h.upstream.requests.length, before, `${c.what}: nothing upstream`)
    checkSeen(t, h, conn, c.what)
  }
})

proxyTest(t, 'Expect with another value: 417 in OpenAI\'s envelope (oaiProxyExpectationHandler, as server.ts registers it); nothing upstream', { listen: true }, async (h, t) => {
  h.app.server.on('checkExpectation', oaiProxyExpectationHandler)
  const conn = await open(h)
  conn.socket.write(head('POST', '/v1/chat/completions', { ...h.auth, 'content-type': 'application/json', 'content-length': String(Buffer.byteLength(BODY)), expect: 'something-else', connection: 'close' }) + BODY)
  await conn.closed
  t.notOk(conn.timedOut(), 'answered and closed')
  const seen = finals(conn.text())
  t.strictSame(seen.map((r) => r.statusCode), [417], '417 Expectation Failed')
  t.equal(h.upstream.requests.length, 0, 'nothing upstream')
  checkSeen(t, h, conn, 'Expect: something-else')
  const body = (seen[0] ?? NOTHING).body
  t.match(JSON.parse(body), { error: { type: 'invalid_request_error', code: 'expectation_failed', param: null } }, 'the 417 is in OpenAI\'s envelope')
})

// ---------------------------------------------------------------------------------------------------------
// 4. Compressed bodies and a gzip bomb.

/** A multi-member gzip (valid for any gunzip) of `members` × 16 MiB of zeros: ~16 KiB per member, built from one compressed block. */
function gzipBomb (members: number): Buffer {
  const one = gzipSync(Buffer.alloc(16 * MiB), { level: 9 })
  return Buffer.concat(Array.from({ length: members }, () => one))
}

async function inflatedSize (gz: Buffer): Promise<number> {
  const gunzip = createGunzip()
  let n = 0
  gunzip.on('data', (c: Buffer) => { n += c.length })
  const done = new Promise<void>((resolve, reject) => {
    gunzip.once('end', resolve)
    gunzip.once('error', reject)
  })
  gunzip.end(gz)
  await done
  return n
}

proxyTest(t, 'compressed request bodies are 415 before the body is read; a gzip bomb is refused as fast; nothing upstream', { listen: true, proxy: { bodyLimit: MiB } }, async (h, t) => {
  const bomb = gzipBomb(32)
  t.ok(bomb.length < MiB, `the bomb fits the body limit (${(bomb.length / 1024).toFixed(0)} KiB)`)
  t.equal(await inflatedSize(bomb), 512 * MiB, 'and would inflate to 512 MiB')
  const cases: Array<{ what: string, encoding: string, body: Buffer, auth?: boolean }> = [
    { what: 'gzip', encoding: 'gzip', body: gzipSync(BODY) },
    { what: 'deflate', encoding: 'deflate', body: deflateSync(BODY) },
    { what: 'br', encoding: 'br', body: brotliCompressSync(BODY) },
    { what: 'Gzip, mixed case', encoding: 'GZip', body: gzipSync(BODY) },
    { what: 'gzip ×1000', encoding: Array.from({ length: 1000 }, () => 'gzip').join(', '), body: gzipSync(BODY) },
    { what: 'identity, gzip', encoding: 'identity, gzip', body: gzipSync(BODY) },
    { what: 'gzip bomb', encoding: 'gzip', body: bomb },
    { what: 'gzip bomb, no key', encoding: 'gzip', body: bomb, auth: false }
  ]
  for (const c of cases) {
    for (const sendBody of [false, true]) {
      const what = `${c.what}${sendBody ? '' : ', headers only'}`
      const conn = await open(h)
      const start = Date.now()
      const auth = c.auth === false ? {} : h.auth
      conn.socket.write(head('POST', '/v1/chat/completions', { ...auth, 'content-type': 'application/json', 'content-encoding': c.encoding, 'content-length': String(c.body.length) }))
      // Headers only: the answer must not wait for a single body byte (so nothing can have been inflated).
      if (sendBody) conn.socket.write(c.body)
      await conn.closed
      const ms = Date.now() - start
      t.notOk(conn.timedOut(), `${what}: answered and closed`)
      t.ok(ms < 2000, `${what}: within 2 s (${ms} ms)`)
      const seen = finals(conn.text())
      t.equal(seen.length, 1, `${what}: one answer`)
      expectOpenAIError(t, seen[0] ?? NOTHING, 415, 'unsupported_media_type', what)
      t.equal(h.upstream.requests.length, 0, `${what}: nothing upstream`)
      checkSeen(t, h, conn, what)
    }
  }

  // Chunked, no Content-Length, the bomb streamed in 16 KiB pieces: refused from the headers.
  const conn = await open(h)
  conn.socket.write(head('POST', '/v1/chat/completions', { ...h.auth, 'content-type': 'application/json', 'content-encoding': 'gzip', 'transfer-encoding': 'chunked' }))
  const pieces = function * () {
    for (let i = 0; i < bomb.length; i += 16 * 1024) {
      const piece = bomb.subarray(i, i + 16 * 1024)
      yield Buffer.concat([Buffer.from(`${piece.length.toString(16)}\r\n`), piece, Buffer.from('\r\n')])
    }
    yield Buffer.from('0\r\n\r\n')
  }
  await pump(conn, pieces(), 3000)
  await conn.closed
  t.notOk(conn.timedOut(), 'chunked bomb: answered and closed')
  expectOpenAIError(t, finals(conn.text())[0] ?? { statusCode: 0, headers: {}, body: '' }, 415, 'unsupported_media_type', 'chunked bomb')
  t.equal(h.upstream.requests.length, 0, 'chunked bomb: nothing upstream')

  // `identity` is not compression; gzip bytes labelled identity are simply not JSON.
  const id = await open(h)
  id.socket.write(head('POST', '/v1/chat/completions', { ...h.auth, 'content-type': 'application/json', 'content-encoding': 'identity', 'content-length': String(bomb.length), connection: 'close' }))
  id.socket.write(bomb)
  await id.closed
  const idSeen = finals(id.text())
  t.equal(idSeen.length, 1, 'gzip bytes as identity: one answer')
  t.equal((idSeen[0] ?? NOTHING).statusCode, 400, 'gzip bytes as identity: 400')
  t.match(JSON.parse((idSeen[0] ?? NOTHING).body || 'null'), { error: { type: 'invalid_request_error', code: 'invalid_json' } })
  t.equal(h.upstream.requests.length, 0, 'gzip bytes as identity: nothing upstream')
  await stillServes(t, h)
})

// ---------------------------------------------------------------------------------------------------------
// 5. Pipelined requests in one TCP write.

proxyTest(t, 'pipelined requests in one write: each judged on its own, only the allowed ones reach upstream', { listen: true }, async (h, t) => {
  const post = (target: string, headers: Record<string, string>, body = BODY) => head('POST', target, { ...headers, 'content-type': 'application/json', 'content-length': String(Buffer.byteLength(body)) }) + body
  const sequences: Array<{ what: string, requests: string[], statuses: number[], codes: Array<string | null>, upstream: string[] }> = [
    {
      what: 'allowed then POST admin',
      requests: [post('/v1/chat/completions', h.auth), post('/v1/organization/users', { ...h.auth, connection: 'close' }, '{"email":"x@example.com","role":"owner"}')],
      statuses: [200, 404],
      codes: [null, 'unknown_url'],
      upstream: ['POST /v1/chat/completions']
    },
    {
      what: 'allowed then GET /v1/files',
      requests: [post('/v1/chat/completions', h.auth), head('GET', '/v1/files', { ...h.auth, connection: 'close' })],
      statuses: [200, 404],
      codes: [null, 'unknown_url'],
      upstream: ['POST /v1/chat/completions']
    },
    {
      what: 'mixed: allowed, admin, wrong method, bad key, allowed',
      requests: [
        post('/v1/chat/completions', h.auth),
        head('DELETE', '/v1/files/file-abc', h.auth),
        head('DELETE', '/v1/models/gpt-4o-mini', h.auth),
        head('GET', '/v1/models', { authorization: 'Bearer sk-oaip-wrong' }),
        head('GET', '/v1/models', { ...h.auth, connection: 'close' })
      ],
      statuses: [200, 404, 405, 401, 200],
      codes: [null, 'unknown_url', 'method_not_allowed', 'invalid_api_key', null],
      upstream: ['POST /v1/chat/completions', 'GET /v1/models']
    }
  ]
  for (const s of sequences) {
    const before = h.upstream.requests.length
    const conn = await open(h)
    conn.socket.write(s.requests.join(''))
    await Promise.race([conn.closed, until(() => finals(conn.text()).length >= s.statuses.length, 4000)])
    await sleep(50)
    conn.socket.destroy()
    const seen = finals(conn.text())
    t.strictSame(seen.map((r) => r.statusCode), s.statuses, `${s.what}: answers in order`)
    s.codes.forEach((code, i) => {
      if (code !== null && seen[i] !== undefined) expectOpenAIError(t, seen[i], s.statuses[i] as number, code, `${s.what} #${i + 1}`)
    })
    const sent = h.upstream.requests.slice(before)
    t.strictSame(sent.map((r) => `${r.method} ${r.url}`), s.upstream, `${s.what}: upstream got only the allowed requests`)
    t.ok(sent.every(isAllowlisted), `${s.what}: all allowlisted`)
    checkSeen(t, h, conn, s.what)
  }
})

proxyTest(t, 'bytes that are not a request, sent while a streamed answer is in flight, do not corrupt that answer', { listen: true }, async (h, t) => {
  h.upstream.script(() => ({ kind: 'sse', frames: ['data: {"i":1}\n\n', 'data: {"i":2}\n\n', 'data: [DONE]\n\n'], delayMs: 300 }))
  const body = JSON.stringify(chatBody({ stream: true }))
  const conn = await open(h)
  conn.socket.write(head('POST', '/v1/chat/completions', { ...h.auth, 'content-type': 'application/json', 'content-length': String(Buffer.byteLength(body)) }) + body)
  t.ok(await until(() => conn.text().includes('data: {"i":1}'), 3000), 'the stream started')
  conn.socket.write('garbage garbage\r\n\r\n')
  await conn.closed
  t.notOk(conn.timedOut(), 'the proxy closed the connection')
  t.equal(h.upstream.requests.length, 1, 'only the streamed request reached upstream')
  checkSeen(t, h, conn, 'garbage mid-stream')
  const text = conn.text()
  const second = text.indexOf('HTTP/1.1', 1)
  t.equal(second, -1, 'no second status line written into the chunked SSE body: the connection is cut instead')
})
