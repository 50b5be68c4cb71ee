import t from 'tap'
import type { Test } from 'tap'
import { startFakeOpenAI } from '../testing/fake-openai.js'
import { assertNoLeak, chatBody, proxyTest, rawRequest, type Harness } from './helper.js'
import { PATH_CASES, checkExpect, expectOpenAIError, parseRaw, rawHttp, type Expect, type Seen } from './routing-shared.js'

/*
 * Routing over real sockets (threat catalogue R04-R14, R16-R18, M02): inject() skips Node's HTTP parser
 * and normalises URLs with WHATWG rules, so everything about request targets is repeated here with the
 * bytes a hostile client would actually send.
 */

const port = (h: Harness): number => Number(new URL(h.url).port)
const BODY = JSON.stringify(chatBody())

async function raw (h: Harness, bytes: string, timeoutMs?: number): Promise<{ seen: Seen, text: string }> {
  const text = await rawRequest(port(h), Buffer.from(bytes, 'latin1'), timeoutMs)
  return { seen: parseRaw(text), text }
}

async function stillServes (t: Test, h: Harness): Promise<void> {
  const before = h.upstream.requests.length
  const { seen } = await raw(h, rawHttp('POST', '/v1/chat/completions', h.auth, BODY))
  t.equal(seen.statusCode, 200, 'a normal request over a socket still succeeds afterwards')
  t.equal(h.upstream.requests.length, before + 1, 'and reaches upstream once')
}

/** Send one request and check it against `expect`, as routing.test.ts does over inject. */
async function expectRaw (t: Test, h: Harness, method: string, bytes: string, expect: Expect, what: string, timeoutMs?: number): Promise<Seen> {
  const before = h.upstream.requests.length
  const { seen } = await raw(h, bytes, timeoutMs)
  checkExpect(t, h, method, seen, expect, before, what)
  return seen
}

proxyTest(t, 'R04-R12, R15: path tricks through Node\'s HTTP parser', { listen: true }, async (h, t) => {
  for (const c of PATH_CASES) {
    const bytes = rawHttp(c.method, c.path, h.auth, c.method === 'POST' ? BODY : undefined)
    await expectRaw(t, h, c.method, bytes, c.raw, `raw ${c.method} ${c.path.slice(0, 70)}`)
  }
  await stillServes(t, h)
})

proxyTest(t, 'R12: raw control bytes, non-ASCII and fragments in the request target', { listen: true }, async (h, t) => {
  const parser: Expect = { status: 400, parser: true }
  for (const target of ['/v1/chat/completions\tx', '/v1/m\xc3\xa9dels', '/v1/chat/completions\x00', '/v1/chat\x7fcompletions']) {
    await expectRaw(t, h, 'POST', rawHttp('POST', target, h.auth, BODY), parser, `raw target ${JSON.stringify(target)}`)
  }
  // Node keeps the fragment in req.url; the router stops at '#', and upstream gets the constant path.
  await expectRaw(t, h, 'POST', rawHttp('POST', '/v1/chat/completions#/../../organization/users', h.auth, BODY), { status: 200, forwardedTo: '/v1/chat/completions' }, 'fragment on a served route')
  await expectRaw(t, h, 'GET', rawHttp('GET', '/v1/organization/users#x', h.auth), { status: 404, code: 'unknown_url' }, 'fragment on an admin route')
  await stillServes(t, h)
})

proxyTest(t, 'R16: query strings never reach upstream; an oversized request line is refused by Node', { listen: true }, async (h, t) => {
  for (const q of ['?x=../../organization', '?__proto__[a]=1', `?q=${'a'.repeat(12 * 1024)}`, '?x=1&x=2&api-version=1']) {
    await expectRaw(t, h, 'POST', rawHttp('POST', '/v1/chat/completions' + q, h.auth, BODY), { status: 200, forwardedTo: '/v1/chat/completions' }, `query ${q.slice(0, 30)}`)
  }
  const huge = await raw(h, rawHttp('GET', `/v1/models?q=${'a'.repeat(17 * 1024)}`, h.auth))
  t.equal(huge.seen.statusCode, 431, 'a 17 KB request line is over Node\'s 16 KB header limit: 431')
  t.equal(({} as Record<string, unknown>).a, undefined, 'Object.prototype untouched')
  await stillServes(t, h)
})

proxyTest(t, 'R13: absolute-form targets are treated as their path; no other host is contacted', { listen: true }, async (h, t) => {
  const evil = await startFakeOpenAI()
  try {
    const upstreamHost = new URL(h.upstream.url).host
    await expectRaw(t, h, 'POST', rawHttp('POST', 'http://api.openai.com/v1/organization/users', h.auth, BODY), { status: 404, code: 'unknown_url' }, 'absolute-form admin path')
    for (const [method, target, path] of [
      ['POST', 'http://api.openai.com/v1/chat/completions', '/v1/chat/completions'],
      ['GET', 'http://evil.example/v1/models', '/v1/models'],
      ['GET', 'https://x/v1/models', '/v1/models'],
      ['GET', `http://127.0.0.1:${evil.port}/v1/models`, '/v1/models'],
      ['GET', `http://127.0.0.1:${evil.port}/v1/organization/users`, null]
    ] as const) {
      const expect: Expect = path === null ? { status: 404, code: 'unknown_url' } : { status: 200, forwardedTo: path }
      await expectRaw(t, h, method, rawHttp(method, target, h.auth, method === 'POST' ? BODY : undefined), expect, `absolute-form ${method} ${target}`)
    }
    t.ok(h.upstream.requests.every((r) => r.headers.host === upstreamHost), 'every upstream request went to the configured host')
    t.equal(evil.requests.length, 0, 'the listener named in the target received nothing')
  } finally {
    await evil.close()
  }
})

proxyTest(t, 'R14: Host games over a socket leave the upstream host and path unchanged', { listen: true }, async (h, t) => {
  const evil = await startFakeOpenAI()
  try {
    const upstreamHost = new URL(h.upstream.url).host
    const overrides = 'X-Original-URL: /v1/organization/users\r\nX-Rewrite-URL: /v1/organization/users\r\nX-Forwarded-Host: evil.example\r\n'
    const a = `authorization: ${h.auth.authorization}\r\n`
    const requests = [
      `GET /v1/models HTTP/1.1\r\nHost: evil.example\r\n${overrides}${a}Connection: close\r\n\r\n`,
      `GET /v1/models HTTP/1.1\r\nHost: 127.0.0.1:${evil.port}\r\n${a}Connection: close\r\n\r\n`,
      `GET /v1/models HTTP/1.1\r\nHost: a.example\r\nHost: 127.0.0.1:${evil.port}\r\n${a}Connection: close\r\n\r\n`,
      `GET /v1/models HTTP/1.0\r\n${a}\r\n`
    ]
    for (const bytes of requests) {
      await expectRaw(t, h, 'GET', bytes, { status: 200, forwardedTo: '/v1/models' }, `host game ${JSON.stringify(bytes.split('\r\n').slice(0, 3))}`)
      const r = h.upstream.requests.at(-1)
      t.equal(r?.headers.host, upstreamHost, 'upstream Host is the configured one')
      t.strictSame(Object.keys(r?.headers ?? {}).filter((n) => n.startsWith('x-')), [], 'override headers not forwarded')
    }
    t.equal(evil.requests.length, 0, 'the host named by the client received nothing')
  } finally {
    await evil.close()
  }
})

proxyTest(t, 'R17: Connection: Upgrade + Upgrade: websocket is refused with 400, no upstream socket', { listen: true }, async (h, t) => {
  const upgrade = 'Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n'
  for (const [method, path, body] of [['POST', '/v1/chat/completions', BODY], ['GET', '/v1/models', '']] as const) {
    const length = body === '' ? '' : `Content-Type: application/json\r\nContent-Length: ${body.length}\r\n`
    const bytes = `${method} ${path} HTTP/1.1\r\nHost: proxy.test\r\n${upgrade}authorization: ${h.auth.authorization}\r\n${length}\r\n${body}`
    // No `Connection: close` here (it would change the request), so the socket is cut after 500 ms.
    await expectRaw(t, h, method, bytes, { status: 400, code: 'bad_request' }, `upgrade on ${method} ${path}`, 500)
  }
  await stillServes(t, h)
})

proxyTest(t, 'R18, M01-M03: unusual methods over a socket', { listen: true }, async (h, t) => {
  const cases: Array<[string, string, Expect]> = [
    ['TRACE', '/v1/models', { status: 405, code: 'method_not_allowed', allow: 'GET' }],
    ['PROPFIND', '/v1/models', { status: 405, code: 'method_not_allowed', allow: 'GET' }],
    ['GET', '/v1/chat/completions', { status: 405, code: 'method_not_allowed', allow: 'POST' }],
    ['DELETE', '/v1/models/x', { status: 405, code: 'method_not_allowed', allow: 'GET' }],
    ['OPTIONS', '/v1/chat/completions', { status: 405, code: 'method_not_allowed', allow: 'POST' }],
    ['OPTIONS', '/v1/organization/users', { status: 404, code: 'unknown_url' }],
    ['OPTIONS', '*', { status: 404, code: 'unknown_url' }],
    ['FOO', '/v1/models', { status: 400, parser: true }],
    ['FOO', '/v1/chat/completions', { status: 400, parser: true }]
  ]
  for (const [method, target, expect] of cases) {
    await expectRaw(t, h, method, rawHttp(method, target, h.auth), expect, `raw ${method} ${target}`)
  }
  for (const [path, allow] of [['/v1/models', 'GET'], ['/v1/chat/completions', 'POST']]) {
    const { seen, text } = await raw(h, rawHttp('HEAD', path ?? '', h.auth))
    t.equal(seen.statusCode, 405, `HEAD ${path}: 405`)
    t.equal(seen.headers.allow, allow, `HEAD ${path}: Allow: ${allow}`)
    t.equal(text.slice(text.indexOf('\r\n\r\n') + 4), '', `HEAD ${path}: no body bytes`)
    assertNoLeak(t, text, h.secrets, 'HEAD response')
  }
  // Node answers CONNECT only through a 'connect' listener; with none it closes the socket.
  const connect = await raw(h, `CONNECT api.openai.com:443 HTTP/1.1\r\nHost: api.openai.com:443\r\nauthorization: ${h.auth.authorization}\r\n\r\n`)
  t.equal(connect.text, '', 'CONNECT: socket closed without a response')
  t.equal(h.upstream.requests.length, 0, 'nothing reached upstream')
  await stillServes(t, h)
})

proxyTest(t, 'R12: a 10 KB path is an ordinary 404 with a truncated echo', { listen: true }, async (h, t) => {
  const path = '/v1/organization/' + 'a'.repeat(10 * 1024)
  const seen = await expectRaw(t, h, 'GET', rawHttp('GET', path, h.auth), { status: 404, code: 'unknown_url' }, '10 KB path')
  expectOpenAIError(t, seen, 404, 'unknown_url', '10 KB path')
  t.ok(seen.body.length < 1024, 'the error body does not echo the whole path')
})

proxyTest(t, 'unknown URLs are 404 whatever their body, without reading it', { listen: true }, async (h, t) => {
  for (const [body, what] of [['{bad', 'invalid JSON'], [`{"a":"${'x'.repeat(2 * 1024 * 1024)}"}`, 'a 2 MiB body']] as const) {
    const text = await rawRequest(port(h), rawHttp('POST', '/v1/organization/users', {}, body))
    const seen = parseRaw(text)
    t.equal(h.upstream.requests.length, 0, `${what}: never forwarded`)
    t.equal(seen.statusCode, 404, `unauthenticated POST /v1/organization/users with ${what}: 404`)
    assertNoLeak(t, text, h.secrets, 'response')
  }
  await stillServes(t, h)
})
