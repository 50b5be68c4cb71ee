import t from 'tap'
import type { Test } from 'tap'
import { assertNoLeak, chatBody, proxyTest, seenByClient, type Harness } from './helper.js'
import { ALLOWLISTED, PATH_CASES, checkExpect, expectOpenAIError } from './routing-shared.js'

/*
 * Routing over inject() (threat catalogue R02, R04-R12, R14-R17, M01-M04): only the allowlisted
 * (method, path) pairs reach upstream, always at the constant `/v1<path>` with no query string.
 * routing-raw.test.ts repeats the path tricks through Node's real HTTP parser.
 */

type Method = 'GET' | 'POST' | 'PUT' | 'PATCH' | 'DELETE' | 'HEAD' | 'OPTIONS' | 'TRACE' | 'PROPFIND'

async function send (h: Harness, method: Method, url: string, headers: Record<string, string> = {}, body?: unknown) {
  return h.app.inject({ method, url, headers: { ...h.auth, ...headers }, ...(body === undefined ? {} : { payload: body as object }) })
}

async function normalRequestStillWorks (t: Test, h: Harness): Promise<void> {
  const before = h.upstream.requests.length
  const res = await send(h, 'POST', '/v1/chat/completions', {}, chatBody())
  t.equal(res.statusCode, 200, 'a normal request still succeeds afterwards')
  t.equal(h.upstream.requests.length, before + 1, 'and reaches upstream once')
}

const QUERIES = ['', '?x=../../organization', '?__proto__[a]=1&constructor[prototype][b]=2&__proto__.c=3', `?q=${'a'.repeat(16 * 1024)}`, '?api-version=2024-01-01&x=1&x=2']

proxyTest(t, 'R02: every allowlisted pair reaches upstream at exactly /v1<path>, same method, no query', {}, async (h, t) => {
  const protoBefore = Object.getOwnPropertyNames(Object.prototype).sort()
  for (const ep of ALLOWLISTED) {
    for (const prefix of ['/v1', '']) {
      for (const query of QUERIES) {
        const what = `${ep.method} ${prefix}${ep.path}${query.slice(0, 40)}`
        const before = h.upstream.requests.length
        const res = await send(h, ep.method, prefix + ep.path + query, {}, ep.body)
        t.equal(res.statusCode, 200, `${what}: 200`)
        const sent = h.upstream.requests.slice(before)
        t.strictSame(sent.map((r) => `${r.method} ${r.url}`), [`${ep.method} /v1${ep.path}`], `${what}: one upstream request at the constant path, no query`)
        if (ep.body === undefined) t.equal(sent[0]?.body.length, 0, `${what}: no body upstream`)
        // The default request policy forces `store: false` on Responses (the key owner's stored data).
        else t.strictSame(sent[0]?.json, ep.path === '/responses' ? { ...ep.body, store: false } : ep.body, `${what}: body forwarded as sent`)
        assertNoLeak(t, seenByClient(res), h.secrets, `response to ${what}`)
      }
    }
  }
  t.strictSame(Object.getOwnPropertyNames(Object.prototype).sort(), protoBefore, 'R16: query strings never touch Object.prototype')
  t.equal(({} as Record<string, unknown>).a, undefined, 'no polluted key a')
})

proxyTest(t, 'R15: a fine-tuned model id is forwarded as exactly one encoded segment', {}, async (h, t) => {
  for (const prefix of ['/v1', '']) {
    const before = h.upstream.requests.length
    const res = await send(h, 'GET', `${prefix}/models/ft:gpt-4o-mini:org:custom:abc?x=/../organization`)
    t.equal(res.statusCode, 404, 'the fake upstream does not know the model (status passed through)')
    t.match(res.json(), { error: { code: 'model_not_found' } })
    t.strictSame(h.upstream.requests.slice(before).map((r) => r.url), ['/v1/models/ft%3Agpt-4o-mini%3Aorg%3Acustom%3Aabc'], 'one segment, re-encoded')
    assertNoLeak(t, seenByClient(res), h.secrets, 'response')
  }
  const res = await send(h, 'GET', '/v1/models/gpt-4o')
  t.equal(res.statusCode, 200)
  t.match(res.json(), { id: 'gpt-4o', object: 'model' })
  t.equal(h.upstream.requests.at(-1)?.url, '/v1/models/gpt-4o')
  assertNoLeak(t, seenByClient(res), h.secrets, 'response')
})

proxyTest(t, 'R15: a bad model id is refused with 400 naming the param', {}, async (h, t) => {
  const res = await send(h, 'GET', '/v1/models/..%2Forganization')
  expectOpenAIError(t, res, 400, 'invalid_value', 'GET /v1/models/..%2Forganization')
  t.equal(res.json().error.param, 'model')
  t.notMatch(res.body, /organization/, 'the error does not echo the hostile value')
  t.equal(h.upstream.requests.length, 0)
})

proxyTest(t, 'M01/M03: other methods on served paths get 405 with Allow; never forwarded', {}, async (h, t) => {
  const cases: Array<[Method, string, string]> = [
    ['GET', '/v1/chat/completions', 'POST'], // GET /chat/completions is OpenAI's stored-completions list
    ['GET', '/chat/completions', 'POST'],
    ['PUT', '/v1/chat/completions', 'POST'],
    ['PATCH', '/v1/chat/completions', 'POST'],
    ['DELETE', '/v1/chat/completions', 'POST'],
    ['OPTIONS', '/v1/chat/completions', 'POST'],
    ['GET', '/v1/responses', 'POST'],
    ['GET', '/v1/embeddings', 'POST'],
    ['DELETE', '/v1/models/x', 'GET'], // OpenAI's "delete a fine-tuned model"
    ['DELETE', '/models/ft:gpt-4o-mini:org:custom:abc', 'GET'],
    ['POST', '/v1/models/x', 'GET'],
    ['POST', '/v1/models', 'GET'],
    ['TRACE', '/v1/models', 'GET'],
    ['PROPFIND', '/v1/models', 'GET']
  ]
  for (const [method, url, allow] of cases) {
    const res = await send(h, method, url)
    expectOpenAIError(t, res, 405, 'method_not_allowed', `${method} ${url}`)
    t.equal(res.headers.allow, allow, `${method} ${url}: Allow: ${allow}`)
    assertNoLeak(t, seenByClient(res), h.secrets, 'response')
  }
  const options = await send(h, 'OPTIONS', '/v1/organization/users')
  expectOpenAIError(t, options, 404, 'unknown_url', 'OPTIONS /v1/organization/users')
  t.equal(h.upstream.requests.length, 0, 'nothing reached upstream')
})

proxyTest(t, 'M02/M03: HEAD is refused with 405 and no body, never forwarded as GET', {}, async (h, t) => {
  for (const [url, allow] of [['/v1/models', 'GET'], ['/v1/models/gpt-4o', 'GET'], ['/v1/chat/completions', 'POST']] as const) {
    const res = await send(h, 'HEAD', url)
    t.equal(res.statusCode, 405, `HEAD ${url}: 405`)
    t.equal(res.headers.allow, allow, `HEAD ${url}: Allow: ${allow}`)
    t.equal(res.body, '', `HEAD ${url}: no body`)
    assertNoLeak(t, seenByClient(res), h.secrets, 'response')
  }
  t.equal(h.upstream.requests.length, 0)
})

proxyTest(t, 'M04: method-override headers and _method change nothing and are not forwarded', {}, async (h, t) => {
  const overrides = { 'x-http-method-override': 'DELETE', 'x-http-method': 'DELETE', 'x-method-override': 'GET' }
  const res = await send(h, 'POST', '/v1/chat/completions?_method=DELETE', overrides, chatBody())
  t.equal(res.statusCode, 200)
  t.strictSame(h.upstream.requests.map((r) => `${r.method} ${r.url}`), ['POST /v1/chat/completions'], 'routing unchanged')
  const names = Object.keys(h.upstream.requests[0]?.headers ?? {})
  t.strictSame(names.filter((n) => n.includes('method')), [], 'no override header upstream')
  assertNoLeak(t, seenByClient(res), h.secrets, 'response')

  const get = await send(h, 'GET', '/v1/models', { 'x-http-method-override': 'DELETE' })
  t.equal(get.statusCode, 200)
  t.equal(h.upstream.requests[1]?.method, 'GET', 'GET stays GET')
  assertNoLeak(t, seenByClient(get), h.secrets, 'response')
})

proxyTest(t, 'R14: Host and URL-override headers change neither upstream host nor path', {}, async (h, t) => {
  const games = {
    host: 'evil.example',
    'x-original-url': '/v1/organization/users',
    'x-rewrite-url': '/v1/organization/users',
    'x-forwarded-host': 'evil.example',
    'x-forwarded-prefix': '/v1/organization',
    'x-forwarded-proto': 'http'
  }
  for (const ep of ALLOWLISTED) {
    const before = h.upstream.requests.length
    const res = await send(h, ep.method, '/v1' + ep.path, games, ep.body)
    t.equal(res.statusCode, 200, `${ep.method} ${ep.path}: 200`)
    const r = h.upstream.requests[before]
    t.equal(r?.url, '/v1' + ep.path, 'path unchanged')
    t.equal(r?.headers.host, new URL(h.upstream.url).host, 'upstream Host is the configured upstream')
    t.strictSame(Object.keys(r?.headers ?? {}).filter((n) => n.startsWith('x-')), [], 'no override header forwarded')
    assertNoLeak(t, seenByClient(res), h.secrets, 'response')
  }
})

proxyTest(t, 'R17: protocol upgrades are refused with 400 on every route', {}, async (h, t) => {
  for (const ep of ALLOWLISTED) {
    const res = await send(h, ep.method, '/v1' + ep.path, { connection: 'Upgrade', upgrade: 'websocket', 'sec-websocket-version': '13', 'sec-websocket-key': 'dGhlIHNhbXBsZSBub25jZQ==' }, ep.body)
    expectOpenAIError(t, res, 400, 'bad_request', `upgrade on ${ep.method} ${ep.path}`)
    assertNoLeak(t, seenByClient(res), h.secrets, 'response')
  }
  t.equal(h.upstream.requests.length, 0)
})

// inject's URL parser resolves GET /models/%2e%2e to GET /, which is the status page when it is on.
proxyTest(t, 'R04-R12, R15: path tricks over inject', { proxy: { statusPage: false } }, async (h, t) => {
  for (const c of PATH_CASES) {
    const before = h.upstream.requests.length
    const res = await send(h, c.method, c.path, {}, c.method === 'POST' ? chatBody() : undefined)
    checkExpect(t, h, c.method, res, c.inject, before, `inject ${c.method} ${c.path.slice(0, 70)}`)
  }
  await normalRequestStillWorks(t, h)
})
