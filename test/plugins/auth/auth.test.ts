import { createHash } from 'node:crypto'
import t from 'tap'
import { matchKey } from '../../../plugins/auth/index.js'
import { assertNoLeak, chatBody, proxyTest, rawRequest, seenByClient, type Harness } from '../../helper.js'

const post = (h: Harness, headers: Record<string, string>, url = '/v1/chat/completions') =>
  h.app.inject({ method: 'POST', url, headers: { 'content-type': 'application/json', ...headers }, payload: JSON.stringify(chatBody()) })

const MISSING = { error: { message: "You didn't provide an API key. Send your proxy key as 'Authorization: Bearer <key>'.", type: 'invalid_request_error', param: null, code: null } }
const INVALID = { error: { message: 'Incorrect API key provided.', type: 'invalid_request_error', param: null, code: 'invalid_api_key' } }

proxyTest(t, 'the proxy key is accepted as Bearer, x-api-key or api-key', {}, async (h, t) => {
  const variants: Array<[string, string]> = [['authorization', `Bearer ${h.proxyKey}`], ['authorization', `bearer   ${h.proxyKey}  `], ['x-api-key', h.proxyKey], ['api-key', h.proxyKey]]
  for (const [name, value] of variants) {
    t.equal((await post(h, { [name]: value })).statusCode, 200, name)
  }
  t.equal(h.upstream.requests.length, variants.length)
  for (const r of h.upstream.requests) {
    t.equal(r.headers.authorization, `Bearer ${h.keys[0]}`)
    t.notOk(r.headers['x-api-key'] ?? r.headers['api-key'], 'client key headers stripped')
  }
})

proxyTest(t, 'x-api-key and api-key follow the Bearer rule: spaces and tabs around the key, nothing else', {}, async (h, t) => {
  t.equal((await post(h, { 'x-api-key': `\t ${h.proxyKey} \t` })).statusCode, 200, 'tabs and spaces')
  for (const [name, value] of [['x-api-key', `\u00a0${h.proxyKey}\u00a0`], ['api-key', `${h.proxyKey}\u00a0`], ['x-api-key', `${h.proxyKey} x`]]) {
    const res = await post(h, { [name as string]: value as string })
    t.equal(res.statusCode, 401, `${name as string}: ${JSON.stringify(value).replace(h.proxyKey, 'KEY')}`)
    t.equal((res.json() as { error: { code: string } }).error.code, 'invalid_api_key')
  }
  t.equal(h.upstream.requests.length, 1, 'only the well-formed key went through')
})

proxyTest(t, 'a missing key is 401 in OpenAI shape; query strings and cookies never count', {}, async (h, t) => {
  for (const [label, headers, url] of [
    ['nothing', {}, undefined],
    ['cookie', { cookie: `key=${h.proxyKey}` }, undefined],
    ['query', {}, `/v1/chat/completions?key=${h.proxyKey}`]
  ] as Array<[string, Record<string, string>, string | undefined]>) {
    const res = await post(h, headers, url)
    t.equal(res.statusCode, 401, label)
    t.strictSame(res.json(), MISSING, label)
  }
  t.equal(h.upstream.requests.length, 0)
})

proxyTest(t, 'every wrong key gets the identical answer, and never a 500', {}, async (h, t) => {
  const k = h.proxyKey
  // The last character changed (a random key may already end in X: 1 run in 62 sent the right key).
  const lastWrong = k.endsWith('X') ? 'Y' : 'X'
  const wrong = ['Bearer', 'Bearer ', `Basic ${Buffer.from('a:b').toString('base64')}`, `Bearer ${k.slice(0, -1)}${lastWrong}`, `Bearer ${k.slice(0, 10)}`, `Bearer ${k}x`, `Bearer ${k} ${k}`, `Bearer ${'z'.repeat(5000)}`, 'Bearer sk-ünïcödé']
  const answers = new Set<string>()
  for (const authorization of wrong) {
    const res = await post(h, { authorization })
    t.equal(res.statusCode, 401, authorization.slice(0, 30))
    answers.add(JSON.stringify({ body: res.json(), type: res.headers['content-type'] }))
    assertNoLeak(t, seenByClient(res), [...h.secrets, k], 'response')
  }
  t.strictSame([...answers], [JSON.stringify({ body: INVALID, type: 'application/json; charset=utf-8' })], 'one answer for all')
  t.equal(h.upstream.requests.length, 0)
  t.notMatch(h.logs.join(''), new RegExp(k), 'the proxy key is never logged')
})

proxyTest(t, 'a wrong key with a malformed body gets 401, not 400: auth runs before the body is parsed', {}, async (h, t) => {
  const res = await h.app.inject({ method: 'POST', url: '/v1/chat/completions', headers: { authorization: 'Bearer nope' }, payload: 'not even json' })
  t.equal(res.statusCode, 401)
  t.equal(h.upstream.requests.length, 0)
})

proxyTest(t, 'an unauthenticated client is refused before its body is read', { listen: true }, async (h, t) => {
  const port = Number(new URL(h.url).port)
  const start = Date.now()
  // Announce 50 MB but send only the headers: the 401 must come without waiting for the body.
  const raw = await rawRequest(port, 'POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 52428800\r\n\r\n{"model":', 3000)
  t.match(raw, /^HTTP\/1\.1 401 /)
  t.ok(Date.now() - start < 2000, `answered in ${Date.now() - start} ms`)
  t.equal(h.upstream.requests.length, 0)
})

proxyTest(t, 'a 1 MB key header is refused by the parser, not by a crash', { listen: true }, async (h, t) => {
  const port = Number(new URL(h.url).port)
  const raw = await rawRequest(port, `POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer ${'k'.repeat(1024 * 1024)}\r\n\r\n`, 3000)
  t.match(raw, /^HTTP\/1\.1 431 |^$/, 'header too large (or connection closed)')
  const ok = await fetch(`${h.url}/v1/chat/completions`, { method: 'POST', headers: { ...h.auth, 'content-type': 'application/json' }, body: JSON.stringify(chatBody()) })
  t.equal(ok.status, 200, 'the proxy still serves')
})

proxyTest(t, 'without proxy keys the proxy is open and says so loudly', { proxy: { proxyKeys: [] } }, async (h, t) => {
  t.equal((await post(h, {})).statusCode, 200)
  t.match(h.logs.join(''), /no proxy keys configured/)
})

t.test('matchKey compares hashed keys and finds the right index', async (t) => {
  const digests = ['alpha', 'beta', 'gamma'].map((k) => createHash('sha256').update(k).digest())
  t.equal(matchKey('beta', digests), 1)
  t.equal(matchKey('gamma', digests), 2)
  t.equal(matchKey('bet', digests), -1)
  t.equal(matchKey('x'.repeat(10_000), digests), -1, 'any length: hashing first means timingSafeEqual never throws')
})
