import { connect } from 'node:net'
import t from 'tap'
import { chatBody, proxyTest, rawRequest, sleep, type Harness } from '../../helper.js'

const send = (h: Harness, payload: string | Buffer, headers: Record<string, string> = { 'content-type': 'application/json' }, url = '/v1/chat/completions') =>
  h.app.inject({ method: 'POST', url, headers: { ...h.auth, ...headers }, payload })

const errorOf = (res: { json: () => unknown }) => (res.json() as { error: { message: string, type: string, param: string | null, code: string | null } }).error

proxyTest(t, 'validation never changes the body: unknown fields and exact values reach upstream', {}, async (h, t) => {
  const body = { ...chatBody(), temperature: 0.5, some_new_param: { nested: [1, 'two', null] }, seed: 42, logit_bias: { 50256: -100 } }
  const res = await send(h, JSON.stringify(body))
  t.equal(res.statusCode, 200)
  t.strictSame(h.upstream.requests[0]?.json, body)
  t.equal(h.upstream.requests[0]?.headers['content-type'], 'application/json')
})

proxyTest(t, 'no type coercion: wrong types are refused with the parameter named', {}, async (h, t) => {
  const cases: Array<[Record<string, unknown>, string]> = [
    [{ ...chatBody(), stream: 'true' }, 'stream'],
    [{ ...chatBody(), stream: 1 }, 'stream'],
    [{ ...chatBody(), model: '' }, 'model'],
    [{ ...chatBody(), model: 5 }, 'model'],
    [{ model: 'gpt-4o-mini' }, 'messages'],
    [{ ...chatBody(), messages: [] }, 'messages'],
    [{ ...chatBody(), messages: 'hello' }, 'messages'],
    [{ ...chatBody(), messages: [{ content: 'no role' }] }, 'messages[0].role']
  ]
  for (const [body, param] of cases) {
    const res = await send(h, JSON.stringify(body))
    t.equal(res.statusCode, 400, JSON.stringify(body))
    t.match(errorOf(res), { type: 'invalid_request_error', param, code: 'invalid_request_body' })
  }
  const other: Array<[string, Record<string, unknown>, string]> = [
    ['/v1/completions', { model: 'm' }, 'prompt'],
    ['/v1/embeddings', { model: 'm' }, 'input'],
    ['/v1/responses', { input: 'hi' }, 'model'],
    ['/v1/moderations', {}, 'input']
  ]
  for (const [url, body, param] of other) {
    const res = await send(h, JSON.stringify(body), undefined, url)
    t.equal(res.statusCode, 400, url)
    t.equal(errorOf(res).param, param)
  }
  t.equal(h.upstream.requests.length, 0)
})

proxyTest(t, 'falsy, empty and non-object bodies are 400', {}, async (h, t) => {
  for (const payload of ['', '   ', 'null', '0', 'false', '""', '[]', '[{"model":"x"}]', '{"model":', 'not json']) {
    const res = await send(h, payload)
    t.equal(res.statusCode, 400, `body ${JSON.stringify(payload)}`)
    t.equal(errorOf(res).type, 'invalid_request_error')
  }
  t.equal(h.upstream.requests.length, 0)
})

proxyTest(t, 'content types other than UTF-8 JSON are 415 and never forwarded', {}, async (h, t) => {
  const body = JSON.stringify(chatBody())
  for (const ct of ['text/plain', 'application/x-www-form-urlencoded', 'multipart/form-data; boundary=x', 'application/json; charset=utf-16', 'application/octet-stream']) {
    const res = await send(h, body, { 'content-type': ct })
    t.equal(res.statusCode, 415, ct)
    t.equal(errorOf(res).code, 'unsupported_media_type')
  }
  for (const ct of ['Application/JSON', 'application/json; charset=utf-8', 'application/json;charset=UTF-8']) {
    t.equal((await send(h, body, { 'content-type': ct })).statusCode, 200, ct)
  }
  for (const enc of ['gzip', 'deflate', 'br', 'gzip, gzip']) {
    const res = await send(h, body, { 'content-type': 'application/json', 'content-encoding': enc })
    t.equal(res.statusCode, 415, `content-encoding ${enc}`)
  }
  t.equal(h.upstream.requests.length, 3, 'only the three JSON variants went through')
})

proxyTest(t, 'a missing content type is refused', { listen: true }, async (h, t) => {
  const body = JSON.stringify(chatBody())
  const port = Number(new URL(h.url).port)
  const raw = await rawRequest(port, `POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer ${h.proxyKey}\r\nContent-Length: ${Buffer.byteLength(body)}\r\nConnection: close\r\n\r\n${body}`)
  t.match(raw, /^HTTP\/1\.1 415 /)
  t.match(raw, /"code":"unsupported_media_type"/)
  t.equal(h.upstream.requests.length, 0)
})

proxyTest(t, 'prototype poisoning is refused, not silently stripped', {}, async (h, t) => {
  const poisoned = [
    '{"model":"gpt-4o-mini","messages":[{"role":"user","content":"x"}],"__proto__":{"store":true}}',
    '{"model":"gpt-4o-mini","messages":[{"role":"user","content":"x","__proto__":{"x":1}}]}',
    '{"model":"gpt-4o-mini","messages":[{"role":"user","content":"x"}],"metadata":{"constructor":{"prototype":{"x":1}}}}',
    // Spelled with escapes only: the bytes hold neither word.
    '{"model":"gpt-4o-mini","messages":[{"role":"user","content":"x"}],"\\u005f_proto__":{"store":true}}',
    '{"model":"gpt-4o-mini","messages":[{"role":"user","content":"x"}],"metadata":{"\\u0063onstructor":{"prototype":{"x":1}}}}'
  ]
  for (const p of poisoned) {
    const res = await send(h, p)
    t.equal(res.statusCode, 400, p)
    t.match(errorOf(res), { code: 'invalid_json', message: /forbidden key/ }, p)
  }
  t.equal((await send(h, '{"model":"gpt-4o-mini","messages":[{"role":"user","content":"what is a constructor?"}]}')).statusCode, 200, 'the word in text is fine')
  t.equal(({} as Record<string, unknown>).store, undefined, 'Object.prototype untouched')
  t.equal(h.upstream.requests.length, 1)
})

proxyTest(t, 'deep nesting is refused quickly; moderate nesting passes', {}, async (h, t) => {
  for (const depth of [1_000, 100_000]) {
    const deep = `{"model":"gpt-4o-mini","messages":[{"role":"user","content":"x"}],"x":${'['.repeat(depth)}${']'.repeat(depth)}}`
    const start = process.hrtime.bigint()
    const res = await send(h, deep)
    const ms = Number(process.hrtime.bigint() - start) / 1e6
    t.equal(res.statusCode, 400, `depth ${depth}`)
    t.match(errorOf(res).message, /nested deeper than 64/)
    t.ok(ms < 500, `depth ${depth} refused in ${ms.toFixed(1)} ms`)
  }
  const tricky = JSON.stringify({ ...chatBody(), note: '[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[["]\\"[[' })
  t.equal((await send(h, tricky)).statusCode, 200, 'brackets inside strings do not count')
  const nested = { ...chatBody(), tools: [{ type: 'function', function: { name: 'f', parameters: { type: 'object', properties: { a: { type: 'object', properties: { b: { type: 'array', items: { type: 'string' } } } } } } } }] }
  t.equal((await send(h, JSON.stringify(nested))).statusCode, 200)
})

proxyTest(t, 'the body limit is enforced with 413 before anything goes upstream', { proxy: { bodyLimit: 4096 } }, async (h, t) => {
  const base = JSON.stringify(chatBody({ pad: '' }))
  const exact = JSON.stringify(chatBody({ pad: 'x'.repeat(4096 - base.length) }))
  t.equal(Buffer.byteLength(exact), 4096)
  t.equal((await send(h, exact)).statusCode, 200, 'exactly the limit is fine')
  const over = JSON.stringify(chatBody({ pad: 'x'.repeat(4097 - base.length) }))
  const res = await send(h, over)
  t.equal(res.statusCode, 413)
  t.strictSame(errorOf(res), { message: 'The request body is larger than this proxy accepts.', type: 'invalid_request_error', param: null, code: 'request_too_large' })
  t.equal(h.upstream.requests.length, 1)
})

proxyTest(t, 'duplicate keys: upstream receives the value that was validated', {}, async (h, t) => {
  const res = await send(h, '{"model":"gpt-4o-mini","messages":[{"role":"user","content":"clean"}],"messages":[{"role":"user","content":"second"}]}')
  t.equal(res.statusCode, 200)
  t.strictSame(h.upstream.requests[0]?.json, { model: 'gpt-4o-mini', messages: [{ role: 'user', content: 'second' }] })
  t.notMatch(h.upstream.requests[0]?.body.toString() ?? '', /clean/, 'the shadowed value never reaches upstream')
})

proxyTest(t, 'a client that leaves mid-body is logged as a refused bad request, never a 500, and nothing goes upstream', { listen: true }, async (h, t) => {
  const port = Number(new URL(h.url).port)
  const socket = connect(port, '127.0.0.1')
  socket.on('error', () => {})
  await new Promise<void>((resolve) => socket.once('connect', resolve))
  socket.write(`POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer ${h.proxyKey}\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{"model":"gpt-4o-mini",`)
  await sleep(100)
  socket.destroy()
  const deadline = Date.now() + 2000
  while (!h.logs.some((l) => l.includes('request refused')) && Date.now() < deadline) await sleep(10)
  const refused = h.logs.filter((l) => l.includes('request refused')).map((l) => JSON.parse(l) as { code: string, status: number })
  t.match(refused, [{ code: 'OAI_PROXY_BAD_REQUEST', status: 400 }])
  t.notOk(h.logs.some((l) => l.includes('request failed')), 'not logged as a server error')
  t.equal(h.upstream.requests.length, 0)
})
