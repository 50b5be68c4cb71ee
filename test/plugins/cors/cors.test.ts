import fastifyCors from '@fastify/cors'
import Fastify from 'fastify'
import t from 'tap'
import oaiProxy from '../../../app.js'
import { corsAllowedHeaders, corsExposedHeaders } from '../../../plugins/cors/index.js'
import { assertNoLeak, canaryKey, chatBody, proxyTest, seenByClient, type Harness } from '../../helper.js'

const PAGE = 'https://chat.example.com'
const cors = { proxy: { cors: { origins: [PAGE, 'https://*.example.org'] } } }
const EXPOSED = 'x-request-id, x-proxy-request-id, retry-after, retry-after-ms, x-should-retry, x-ratelimit-limit-requests, ' +
  'x-ratelimit-remaining-requests, x-ratelimit-reset-requests, x-ratelimit-limit-tokens, x-ratelimit-remaining-tokens, ' +
  'x-ratelimit-reset-tokens, openai-processing-ms'

/** What the openai SDK asks for in its preflight (openai@6, browser build). */
const SDK_REQUEST_HEADERS = 'authorization,content-type,user-agent,x-stainless-arch,x-stainless-lang,x-stainless-os,x-stainless-package-version,x-stainless-retry-count,x-stainless-runtime,x-stainless-runtime-version,x-stainless-timeout,openai-beta'

const preflight = (h: Harness, url: string, origin: string, method = 'POST') => h.app.inject({
  method: 'OPTIONS',
  url,
  headers: { origin, 'access-control-request-method': method, 'access-control-request-headers': SDK_REQUEST_HEADERS }
})

const corsHeaders = (headers: Record<string, unknown>) => Object.fromEntries(Object.entries(headers).filter(([k]) => k.startsWith('access-control-')))

proxyTest(t, 'a preflight from an allowed origin is answered 204 without auth, limits or upstream (C01)', cors, async (h, t) => {
  const res = await preflight(h, '/v1/chat/completions', PAGE)
  t.equal(res.statusCode, 204)
  t.equal(res.body, '')
  t.strictSame(corsHeaders(res.headers), {
    'access-control-allow-origin': PAGE,
    'access-control-expose-headers': EXPOSED,
    'access-control-allow-methods': 'GET, POST',
    'access-control-allow-headers': corsAllowedHeaders.join(', '),
    'access-control-max-age': '600'
  })
  t.match(res.headers.vary, /\bOrigin\b/)
  for (const name of SDK_REQUEST_HEADERS.split(',')) t.ok(corsAllowedHeaders.includes(name), `${name} allowed`)
  t.notOk(res.headers['access-control-allow-credentials'], 'never credentials mode')
  t.equal(h.upstream.requests.length, 0)
  t.notMatch(h.logs.join(''), /request refused/, 'not counted as an auth failure')
})

proxyTest(t, 'preflights look the same for every path, so they reveal no route (C06, M03)', cors, async (h, t) => {
  const seen = new Set<string>()
  for (const url of ['/v1/chat/completions', '/chat/completions', '/v1/models/gpt-4o', '/v1/files', '/v1/organization/users', '/v1/chat/completions/../../v1/files', '/health', '/nothing/here?x=1']) {
    for (const method of ['POST', 'GET', 'DELETE']) {
      const res = await preflight(h, url, 'https://a.example.org', method)
      seen.add(JSON.stringify({ status: res.statusCode, body: res.body, cors: corsHeaders(res.headers), vary: res.headers.vary }))
    }
  }
  t.equal(seen.size, 1, 'one answer for all')
  t.equal(h.upstream.requests.length, 0)
})

proxyTest(t, 'a disallowed origin gets no CORS header at all, and its preflight the ordinary refusal (C02, C03)', cors, async (h, t) => {
  for (const origin of ['https://evil-example.com', 'https://chat.example.com.evil.net', 'https://example.org', 'http://chat.example.com', 'null', 'https://chat.example.com:444']) {
    const res = await preflight(h, '/v1/chat/completions', origin)
    t.strictSame(corsHeaders(res.headers), {}, origin)
    t.equal(res.statusCode, 405, origin)
    t.equal(res.json().error.code, 'method_not_allowed')
    t.match(res.headers.vary, /\bOrigin\b/, 'caches keep allowed and refused answers apart')
    const post = await h.app.inject({ method: 'POST', url: '/v1/chat/completions', headers: { ...h.auth, origin }, payload: chatBody() })
    t.equal(post.statusCode, 200, 'a non-browser client with a key is still served')
    t.strictSame(corsHeaders(post.headers), {}, 'but a browser would not let the page read it')
  }
  const unknown = await preflight(h, '/v1/files', 'https://evil-example.com')
  t.equal(unknown.statusCode, 404)
  t.strictSame(corsHeaders(unknown.headers), {})
  t.equal(h.upstream.requests.filter((r) => r.method === 'OPTIONS').length, 0)
})

proxyTest(t, 'answers to an allowed origin expose the headers SDKs read; upstream CORS headers never pass (C04)', cors, async (h, t) => {
  h.upstream.script(() => ({
    kind: 'json',
    headers: { 'access-control-allow-origin': '*', 'access-control-allow-credentials': 'true', 'access-control-expose-headers': 'openai-organization', vary: 'Accept-Encoding' },
    body: { id: 'chatcmpl-1', object: 'chat.completion', choices: [] }
  }))
  const res = await h.app.inject({ method: 'POST', url: '/v1/chat/completions', headers: { ...h.auth, origin: PAGE }, payload: chatBody() })
  t.equal(res.statusCode, 200)
  t.strictSame(corsHeaders(res.headers), { 'access-control-allow-origin': PAGE, 'access-control-expose-headers': EXPOSED })
  t.equal(res.headers.vary, 'Origin')
  t.equal(res.headers['x-request-id'], 'req_fake')
  t.ok(res.headers['x-proxy-request-id'])
  assertNoLeak(t, seenByClient(res), h.secrets, 'response')
})

proxyTest(t, 'streamed answers and refusals carry CORS headers too, so the page can read the error', cors, async (h, t) => {
  const stream = await h.app.inject({ method: 'POST', url: '/v1/chat/completions', headers: { ...h.auth, origin: PAGE }, payload: chatBody({ stream: true }) })
  t.equal(stream.statusCode, 200)
  t.match(stream.headers['content-type'], /^text\/event-stream/)
  t.equal(stream.headers['access-control-allow-origin'], PAGE)
  t.match(stream.body, /data: \[DONE\]/)
  const before = h.upstream.requests.length
  const refusals = [
    await h.app.inject({ method: 'POST', url: '/v1/chat/completions', headers: { origin: PAGE }, payload: chatBody() }),
    await h.app.inject({ method: 'POST', url: '/v1/chat/completions', headers: { origin: PAGE, authorization: 'Bearer wrong' }, payload: chatBody() }),
    await h.app.inject({ method: 'POST', url: '/v1/files', headers: { ...h.auth, origin: PAGE }, payload: {} }),
    await h.app.inject({ method: 'POST', url: '/v1/chat/completions', headers: { ...h.auth, origin: PAGE, 'content-type': 'text/plain' }, payload: 'x' })
  ]
  t.strictSame(refusals.map((r) => r.statusCode), [401, 401, 404, 415])
  for (const r of refusals) {
    t.strictSame(corsHeaders(r.headers), { 'access-control-allow-origin': PAGE, 'access-control-expose-headers': EXPOSED })
    t.ok(r.json().error, 'OpenAI envelope')
  }
  t.equal(h.upstream.requests.length, before, 'nothing refused went upstream')
})

proxyTest(t, 'a page can read why it was rate limited and when to retry', { proxy: { ...cors.proxy, rateLimit: { requestsPerWindow: 1 } } }, async (h, t) => {
  const call = () => h.app.inject({ method: 'POST', url: '/v1/chat/completions', headers: { ...h.auth, origin: PAGE }, payload: chatBody() })
  t.equal((await call()).statusCode, 200)
  const limited = await call()
  t.equal(limited.statusCode, 429)
  t.strictSame(corsHeaders(limited.headers), { 'access-control-allow-origin': PAGE, 'access-control-expose-headers': EXPOSED })
  for (const name of ['retry-after', 'x-ratelimit-remaining-requests']) {
    t.ok(limited.headers[name] !== undefined && EXPOSED.split(', ').includes(name), `${name} sent and exposed`)
  }
  t.equal((await preflight(h, '/v1/chat/completions', PAGE)).statusCode, 204, 'preflights are not limited')
  t.equal(h.upstream.requests.length, 1)
})

proxyTest(t, 'a cross-site "simple" POST with cookies but no key is refused (C05)', cors, async (h, t) => {
  const res = await h.app.inject({ method: 'POST', url: '/v1/chat/completions', headers: { origin: 'https://evil-example.com', 'content-type': 'text/plain', cookie: `session=1; key=${h.proxyKey}` }, payload: JSON.stringify(chatBody()) })
  t.equal(res.statusCode, 401)
  t.strictSame(corsHeaders(res.headers), {})
  t.equal(h.upstream.requests.length, 0)
})

proxyTest(t, 'without cors options there are no CORS headers, and preflights are ordinary refusals', {}, async (h, t) => {
  h.upstream.script(() => ({ kind: 'json', headers: { 'access-control-allow-origin': '*' }, body: { object: 'list', data: [] } }))
  const pre = await preflight(h, '/v1/chat/completions', PAGE)
  t.equal(pre.statusCode, 405)
  t.strictSame(corsHeaders(pre.headers), {})
  const res = await h.app.inject({ method: 'GET', url: '/v1/models', headers: { ...h.auth, origin: PAGE } })
  t.equal(res.statusCode, 200)
  t.strictSame(corsHeaders(res.headers), {}, "the upstream's ACAO is dropped")
  t.equal(res.headers.vary, undefined)
  t.equal(h.upstream.requests.length, 1)
})

t.test('bad origins stop registration naming the option; a host CORS plugin around the suite is refused clearly', async (t) => {
  const key = canaryKey()
  const app = Fastify()
  await t.rejects(async () => { await app.register(oaiProxy, { openaiKeys: [key], cors: { origins: ['https://*.com'] } }) }, /^oai-proxy: invalid option \/cors\/origins: "https:\/\/\*\.com"/)
  await app.close()

  const host = Fastify()
  await host.register(fastifyCors, { origin: 'https://host.example.com' })
  await t.rejects(async () => {
    await host.register(oaiProxy, { prefix: '/ai', openaiKeys: [key], cors: { origins: [PAGE] } })
    await host.ready()
  }, /@fastify\/cors is already registered in a scope that contains the proxy/)
  await host.close()
  t.equal(corsExposedHeaders.join(', '), EXPOSED, 'the exported lists are what a host needs for its own CORS plugin')
})
