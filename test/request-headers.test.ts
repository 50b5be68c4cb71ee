import t from 'tap'
import type { Test } from 'tap'
import type { RecordedRequest } from '../testing/fake-openai.js'
import { assertNoLeak, chatBody, proxyTest, randomToken, rawRequest, seenByClient, type Harness } from './helper.js'
import { expectOpenAIError, parseRaw, rawHttp } from './routing-shared.js'

/*
 * Request headers (threat catalogue H01-H07): what goes upstream is an allowlist plus the identity we
 * inject, never anything the client chose. Checked on the recorded upstream request, names and rawHeaders.
 */

/** What undici adds by itself: the upstream Host, keep-alive, and Content-Length for a body. */
const UNDICI = ['connection', 'host']
const BASE = ['accept-encoding', 'authorization', 'openai-organization', 'openai-project', 'user-agent']
const expectedNames = (hasBody: boolean, extra: string[] = []): string[] =>
  [...UNDICI, ...BASE, ...(hasBody ? ['content-length', 'content-type'] : []), ...extra].sort()

/** Each header name in the order and number the upstream received it. */
const rawNames = (r: RecordedRequest | undefined): string[] => (r?.rawHeaders ?? []).filter((_, i) => i % 2 === 0).map((n) => n.toLowerCase())

/** The identity headers upstream must carry, exactly once each, whatever the client sent. */
function checkIdentity (t: Test, h: Harness, r: RecordedRequest | undefined, what: string): void {
  t.equal(rawNames(r).filter((n) => n === 'authorization').length, 1, `${what}: exactly one Authorization upstream`)
  t.equal(r?.headers.authorization, `Bearer ${h.keys[0]}`, `${what}: it is the pool key`)
  t.equal(r?.headers['openai-organization'], h.organization, `${what}: configured organization`)
  t.equal(r?.headers['openai-project'], h.project, `${what}: configured project`)
  t.equal(r?.headers['accept-encoding'], 'identity', `${what}: accept-encoding identity`)
  t.match(r?.headers['user-agent'], /^oai-reverse-proxy\/\d+\.\d+\.\d+$/, `${what}: our user-agent`)
  t.equal(r?.headers.host, new URL(h.upstream.url).host, `${what}: upstream host`)
  const values = (r?.rawHeaders ?? []).filter((_, i) => i % 2 === 1).join('\n')
  t.notOk(values.includes(h.proxyKey), `${what}: the client's proxy key is not forwarded`)
  t.notOk(/attacker|evil|other|spoof/i.test(values), `${what}: no client-chosen value upstream`)
}

/** Headers a client may send that must never go upstream (H01-H05). */
const HOSTILE: Record<string, string> = {
  'x-api-key': 'sk-attacker-x-api-key',
  'api-key': 'sk-attacker-api-key',
  'openai-organization': 'org-other',
  'openai-project': 'proj_other',
  cookie: 'session=attacker; __cf_bm=evil',
  'x-forwarded-for': '203.0.113.7, 10.0.0.1',
  forwarded: 'for=203.0.113.7;host=evil.example;proto=http',
  'x-real-ip': '203.0.113.7',
  'cf-connecting-ip': '203.0.113.7',
  'true-client-ip': '203.0.113.7',
  'x-forwarded-host': 'evil.example',
  'x-forwarded-proto': 'http',
  origin: 'https://evil.example',
  referer: 'https://evil.example/page',
  'proxy-authorization': 'Basic YXR0YWNrZXI6c3Bvb2Y=',
  'proxy-connection': 'keep-alive',
  'keep-alive': 'timeout=5, max=1000',
  te: 'trailers',
  trailer: 'x-evil',
  'user-agent': 'evil-agent/1.0',
  'accept-language': 'en',
  'x-stainless-lang': 'js',
  'x-stainless-package-version': '6.0.0',
  'x-stainless-os': 'Linux',
  'x-stainless-retry-count': '0',
  'x-stainless-helper-method': 'spoof',
  open_ai_organization: 'org-other',
  x_forwarded_for: '203.0.113.7',
  openai_beta: 'spoof',
  'x-request-id': 'spoof',
  'openai-version': 'spoof',
  'x-http-method-override': 'DELETE',
  'content-encoding': 'identity',
  expect: '',
  via: '1.1 evil'
}

function randomHeaders (n: number): Record<string, string> {
  const out: Record<string, string> = {}
  for (let i = 0; i < n; i++) out[`x-${randomToken(8).toLowerCase()}${i % 3 === 0 ? '_under' : ''}`] = `spoof-${randomToken(16)}`
  return out
}

proxyTest(t, 'baseline: the upstream header set is exactly the allowlist plus what undici adds', {}, async (h, t) => {
  const post = await h.app.inject({ method: 'POST', url: '/v1/chat/completions', headers: h.auth, payload: chatBody() })
  t.equal(post.statusCode, 200)
  const get = await h.app.inject({ method: 'GET', url: '/v1/models', headers: h.auth })
  t.equal(get.statusCode, 200)
  const [p, g] = h.upstream.requests
  t.strictSame(rawNames(p).sort(), expectedNames(true), 'POST: exact header names, each once')
  t.strictSame(rawNames(g).sort(), expectedNames(false), 'GET: exact header names, each once (no content-type, no content-length)')
  t.equal(p?.headers['content-type'], 'application/json')
  t.equal(p?.headers['content-length'], String(p?.body.length))
  checkIdentity(t, h, p, 'POST')
  checkIdentity(t, h, g, 'GET')
  assertNoLeak(t, seenByClient(post) + seenByClient(get), h.secrets, 'responses')
})

proxyTest(t, 'H01-H05: client credentials, identity, spoofing, hop-by-hop and random headers stay on our side', {}, async (h, t) => {
  const auths: Array<Record<string, string>> = [
    h.auth,
    { 'x-api-key': h.proxyKey, 'api-key': 'sk-attacker-api-key' },
    { 'api-key': h.proxyKey }
  ]
  for (const [i, auth] of auths.entries()) {
    for (const ep of [{ method: 'POST' as const, url: '/v1/chat/completions', body: chatBody() }, { method: 'GET' as const, url: '/v1/models' }]) {
      const headers: Record<string, string> = { ...HOSTILE, ...randomHeaders(200), ...auth, connection: 'close, authorization' }
      // x-api-key outranks api-key: drop the hostile one when api-key carries the credential.
      if (auth['api-key'] === h.proxyKey) delete headers['x-api-key']
      const res = await h.app.inject({ method: ep.method, url: ep.url, headers, ...(ep.body === undefined ? {} : { payload: ep.body }) })
      const what = `auth #${i} ${ep.method} ${ep.url}`
      t.equal(res.statusCode, 200, `${what}: 200`)
      const r = h.upstream.requests.at(-1)
      t.strictSame(rawNames(r).sort(), expectedNames(ep.body !== undefined), `${what}: only the allowlist upstream`)
      checkIdentity(t, h, r, what)
      assertNoLeak(t, seenByClient(res), h.secrets, 'response')
    }
  }
  t.equal(h.upstream.requests.length, 6)
})

proxyTest(t, 'H01: an attacker Authorization beside a valid x-api-key is refused, not forwarded', {}, async (h, t) => {
  const res = await h.app.inject({ method: 'POST', url: '/v1/chat/completions', headers: { authorization: 'Bearer sk-attacker-0000', 'x-api-key': h.proxyKey }, payload: chatBody() })
  expectOpenAIError(t, res, 401, 'invalid_api_key', 'attacker Authorization')
  t.notMatch(res.body, /attacker/, 'the presented key is not echoed')
  t.equal(h.upstream.requests.length, 0)
  t.notOk(h.logs.join('').includes('sk-attacker-0000'), 'the presented key is not logged')
  assertNoLeak(t, seenByClient(res), h.secrets, 'response')
})

proxyTest(t, 'H02: with no organization or project configured, the client\'s are not forwarded', { proxy: { organization: undefined, project: undefined } }, async (h, t) => {
  const res = await h.app.inject({ method: 'GET', url: '/v1/models', headers: { ...h.auth, 'openai-organization': 'org-other', 'openai-project': 'proj_other' } })
  t.equal(res.statusCode, 200)
  const names = rawNames(h.upstream.requests[0])
  t.strictSame(names.filter((n) => n.startsWith('openai-')), [], 'no openai-organization or openai-project upstream')
  t.strictSame(names.sort(), ['accept-encoding', 'authorization', 'connection', 'host', 'user-agent'])
  assertNoLeak(t, seenByClient(res), h.secrets, 'response')
})

proxyTest(t, 'accept, openai-beta and x-client-request-id pass only with clean values', {}, async (h, t) => {
  const clean = { accept: 'text/event-stream', 'openai-beta': 'responses=v1, assistants=v2', 'x-client-request-id': 'req-123_abc' }
  const res = await h.app.inject({ method: 'POST', url: '/v1/chat/completions', headers: { ...h.auth, ...clean }, payload: chatBody() })
  t.equal(res.statusCode, 200)
  const r = h.upstream.requests[0]
  t.strictSame(rawNames(r).sort(), expectedNames(true, ['accept', 'openai-beta', 'x-client-request-id']), 'the three optional headers added')
  t.strictSame([r?.headers.accept, r?.headers['openai-beta'], r?.headers['x-client-request-id']], Object.values(clean), 'values unchanged')
  assertNoLeak(t, seenByClient(res), h.secrets, 'response')

  // inject() does not validate header values the way Node's parser does, so the proxy's own check is tested here.
  for (const dirty of ['a=1\r\ninjected: 1', 'a=1\ninjected: 1', 'a=1\u0000', 'a=1\tb', 'é=1', 'x'.repeat(600)]) {
    const before = h.upstream.requests.length
    const res = await h.app.inject({ method: 'GET', url: '/v1/models', headers: { ...h.auth, accept: dirty, 'openai-beta': dirty, 'x-client-request-id': dirty } })
    t.equal(res.statusCode, 200, `${JSON.stringify(dirty.slice(0, 20))}: request still served`)
    t.strictSame(rawNames(h.upstream.requests[before]).sort(), expectedNames(false), `${JSON.stringify(dirty.slice(0, 20))}: dropped`)
  }
})

const port = (h: Harness): number => Number(new URL(h.url).port)

proxyTest(t, 'H06: CR, LF, NUL, obs-fold and tabs in OpenAI-Beta over a socket are refused or dropped, never injected', { listen: true }, async (h, t) => {
  const cases: Array<[string, number, string | undefined]> = [
    ['assistants=v2\rinjected: 1', 400, undefined],
    ['assistants=v2\ninjected: 1', 400, undefined],
    ['assistants=v2\r\n\tinjected: 1', 400, undefined], // obs-fold
    ['assistants=v2\x00injected', 400, undefined],
    ['assistants=v2\tinjected', 200, undefined], // Node accepts a tab inside a value; our pattern drops it
    ['\tassistants=v2\t', 200, 'assistants=v2'] // leading/trailing whitespace is OWS, trimmed by Node
  ]
  for (const [value, status, forwarded] of cases) {
    const what = `OpenAI-Beta ${JSON.stringify(value)}`
    const before = h.upstream.requests.length
    const text = await rawRequest(port(h), Buffer.from(rawHttp('GET', '/v1/models', { ...h.auth, 'openai-beta': value }), 'latin1'))
    const seen = parseRaw(text)
    t.equal(seen.statusCode, status, `${what}: ${status}`)
    t.equal(h.upstream.requests.length - before, status === 200 ? 1 : 0, `${what}: upstream count`)
    const r = h.upstream.requests[before]
    if (r !== undefined) {
      t.equal(r.headers['openai-beta'], forwarded, `${what}: forwarded as ${String(forwarded)}`)
      t.notOk(rawNames(r).includes('injected'), `${what}: no injected header`)
      checkIdentity(t, h, r, what)
    }
    assertNoLeak(t, text, h.secrets, 'response')
  }
})

proxyTest(t, 'H07, H03: duplicates and hop-by-hop nomination over a socket', { listen: true }, async (h, t) => {
  const send = async (lines: string): Promise<{ status: number, text: string }> => {
    const text = await rawRequest(port(h), `GET /v1/models HTTP/1.1\r\nHost: proxy.test\r\n${lines}Connection: close\r\n\r\n`)
    assertNoLeak(t, text, h.secrets, 'response')
    return { status: parseRaw(text).statusCode, text }
  }
  const auth = `Authorization: ${h.auth.authorization}\r\n`

  const beta = await send(`${auth}OpenAI-Beta: a=1\r\nOpenAI-Beta: b=2\r\n`)
  t.equal(beta.status, 200)
  let r = h.upstream.requests.at(-1)
  t.equal(rawNames(r).filter((n) => n === 'openai-beta').length, 1, 'duplicate OpenAI-Beta: one header upstream')
  t.equal(r?.headers['openai-beta'], 'a=1, b=2', 'Node joined the two values; the joined value passed the pattern')

  // Node keeps the first Authorization and discards the rest.
  const twoAuth = await send(`${auth}Authorization: Bearer sk-attacker-second\r\n`)
  t.equal(twoAuth.status, 200, 'valid key first: served')
  checkIdentity(t, h, h.upstream.requests.at(-1), 'two Authorization headers')
  const before = h.upstream.requests.length
  const attackerFirst = await send(`Authorization: Bearer sk-attacker-first\r\n${auth}`)
  t.equal(attackerFirst.status, 401, 'attacker key first: 401')
  t.equal(h.upstream.requests.length, before, 'and nothing upstream')

  const hop = await send(`${auth}Connection: close, Authorization, OpenAI-Organization\r\nKeep-Alive: timeout=5\r\nTE: trailers\r\nTrailer: x-evil\r\nProxy-Authorization: Basic c3Bvb2Y=\r\nProxy-Connection: keep-alive\r\nUpgrade-Insecure-Requests: 1\r\n`)
  t.equal(hop.status, 200)
  r = h.upstream.requests.at(-1)
  t.strictSame(rawNames(r).sort(), expectedNames(false), 'hop-by-hop headers dropped; nominated ones still injected')
  checkIdentity(t, h, r, 'Connection: close, Authorization')

  const many = Object.entries({ ...HOSTILE, ...randomHeaders(200) }).filter(([, v]) => v !== '').map(([k, v]) => `${k}: ${v}\r\n`).join('')
  const big = await send(`${auth}${many}`)
  t.equal(big.status, 200, '230 extra headers over a socket: served')
  t.strictSame(rawNames(h.upstream.requests.at(-1)).sort(), expectedNames(false), 'only the allowlist upstream')
  checkIdentity(t, h, h.upstream.requests.at(-1), '230 extra headers')
})
