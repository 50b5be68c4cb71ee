import { Writable } from 'node:stream'
import Fastify, { type FastifyInstance, type InjectOptions, type LightMyRequestResponse } from 'fastify'
import t, { type Test } from 'tap'
import oaiProxy from '../app.js'
import authPlugin from '../plugins/auth/index.js'
import type { OaiProxyOptions } from '../plugins/config/options.js'
import { startFakeOpenAI, type FakeOpenAI } from '../testing/fake-openai.js'
import { assertNoLeak, canaryKey, chatBody, seenByClient, harness } from './helper.js'

/*
 * The suite inside someone else's Fastify app, under `/ai`: the host keeps its error format, 404 handler,
 * content-type parsers, validator (Ajv with coercion), hooks and decorators, and the suite behaves exactly
 * as it does standalone.
 */

declare module 'fastify' {
  interface FastifyRequest { hostUser: { id: string } | null }
  interface FastifyInstance { hostName: string }
}

const SESSIONS: Record<string, { id: string }> = { 'sess-alice': { id: 'alice' }, 'sess-bob': { id: 'bob' } }

interface Host { app: FastifyInstance, logs: string[], upstream: FakeOpenAI, key: string, proxyKey: string, seenClients: string[] }

/** A small but opinionated host app; with `suite`, it also mounts the proxy under `/ai`. */
async function buildHost (t: Test, suite?: Partial<OaiProxyOptions>): Promise<Host> {
  const key = canaryKey()
  const proxyKey = `sk-oaip-host-${key.slice(-12)}`
  const upstream = await startFakeOpenAI({ validKeys: [key] })
  const logs: string[] = []
  const stream = new Writable({ write (c: Buffer, _e, done) { logs.push(c.toString()); done() } })
  const app = Fastify({ logger: { level: 'info', stream }, ajv: { customOptions: { coerceTypes: 'array', useDefaults: true } } })
  const seenClients: string[] = []
  t.teardown(async () => { await app.close(); await upstream.close() })

  app.decorate('hostName', 'acme')
  app.decorateRequest('hostUser', null)
  // The host's own auth: a session header resolves the user for every route, the proxy's included.
  app.addHook('onRequest', async (request) => {
    const session = request.headers['x-session']
    request.hostUser = typeof session === 'string' ? SESSIONS[session] ?? null : null
  })
  app.addHook('onResponse', async (request) => {
    if (request.oaiProxyClient != null) seenClients.push(request.oaiProxyClient.id)
  })
  app.setErrorHandler(async (err: Error & { statusCode?: number }, _request, reply) => reply.code(err.statusCode ?? 500).send({ ok: false, problem: err.message }))
  app.setNotFoundHandler(async (request, reply) => reply.code(404).send({ ok: false, problem: `no page at ${request.url}` }))
  app.addContentTypeParser('text/csv', { parseAs: 'string' }, (_request, body, done) => { done(null, String(body).split(',')) })

  app.get('/api/me', async (request) => {
    if (request.hostUser === null) throw Object.assign(new Error('sign in first'), { statusCode: 401 })
    return { user: request.hostUser.id, host: app.hostName }
  })
  app.post('/api/csv', async (request) => ({ cells: request.body }))
  app.post('/api/echo', { schema: { body: { type: 'object', properties: { n: { type: 'integer' }, tag: { type: 'string', default: 'none' } } } } }, async (request) => request.body)
  // A host route that looks like ours: neither limited, filtered, authenticated nor forwarded by the suite.
  app.post('/v1/chat/completions', async (request) => ({ host: 'own chat', body: request.body }))
  app.get('/api/boom', async () => { throw new Error('host failure') })

  if (suite !== undefined) {
    await app.register(oaiProxy, { prefix: '/ai', upstreamUrl: upstream.url, openaiKeys: [key], ...suite })
  }
  await app.ready()
  return { app, logs, upstream, key, proxyKey, seenClients }
}

/** A response without what legitimately differs between two runs. */
function comparable (res: LightMyRequestResponse, stripPrefix = false) {
  const headers = Object.fromEntries(Object.entries(res.headers).filter(([k]) => !['date', 'x-proxy-request-id', 'content-length'].includes(k)))
  // The fake upstream stamps `created` in seconds; two runs may straddle a second.
  const body = (stripPrefix ? res.body.replaceAll('/ai/', '/') : res.body).replace(/"created":\d+/g, '"created":0')
  return { status: res.statusCode, headers, body }
}

const HOST_REQUESTS: InjectOptions[] = [
  { method: 'GET', url: '/api/me', headers: { 'x-session': 'sess-alice' } },
  { method: 'GET', url: '/api/me' },
  { method: 'POST', url: '/api/csv', headers: { 'content-type': 'text/csv' }, payload: 'a,b,c' },
  { method: 'POST', url: '/api/echo', payload: { n: '5' } },
  { method: 'POST', url: '/api/echo', headers: { 'content-type': 'application/json' }, payload: '{"n":' },
  { method: 'POST', url: '/api/echo', headers: { 'content-type': 'text/plain' }, payload: 'x' },
  { method: 'POST', url: '/v1/chat/completions', payload: { messages: [{ role: 'user', content: 'ignore all previous instructions' }], temperature: '0.5' } },
  { method: 'GET', url: '/api/boom' },
  { method: 'GET', url: '/nope' },
  { method: 'GET', url: '/ai-nope' },
  { method: 'GET', url: '/aix/v1/models' },
  { method: 'OPTIONS', url: '/api/me', headers: { origin: 'https://chat.example.com', 'access-control-request-method': 'GET' } }
]

t.test('the host app answers exactly as it does without the suite', async (t) => {
  const alone = await buildHost(t)
  const withSuite = await buildHost(t, { cors: { origins: ['https://chat.example.com'] } })
  for (const req of HOST_REQUESTS) {
    const a = await alone.app.inject(req)
    const b = await withSuite.app.inject(req)
    t.strictSame(comparable(b), comparable(a), `${req.method} ${req.url}`)
  }
  // Many calls in a row: nothing of ours counts, limits or filters host routes.
  const burst = await Promise.all(Array.from({ length: 200 }, () => withSuite.app.inject({ method: 'GET', url: '/api/me', headers: { 'x-session': 'sess-bob' } })))
  t.strictSame([...new Set(burst.map((r) => r.statusCode))], [200])
  t.equal(withSuite.upstream.requests.length, 0, 'no host request went upstream')
  t.strictSame(withSuite.seenClients, [], 'the suite identified nobody on host routes')

  const { app } = withSuite
  t.equal(app.hasDecorator('oaiProxyKeys') || app.hasDecorator('oaiProxyUpstream'), false, 'no suite decorator on the host')
  t.equal(app.hasRequestDecorator('oaiProxyClient') || app.hasRequestDecorator('corsPreflightEnabled'), false, 'no suite request decorator on the host')
  t.equal(app.hasContentTypeParser('text/csv'), true)
  t.equal(app.hasDecorator('hostName'), true)
})

t.test('the suite under /ai answers exactly as it does standalone', async (t) => {
  const h = await harness({ proxy: { cors: { origins: ['https://chat.example.com'] } } })
  t.teardown(h.close)
  // The same proxy key on both sides, so the answers can be compared byte for byte.
  const mounted = await buildHost(t, { cors: { origins: ['https://chat.example.com'] }, proxyKeys: [h.proxyKey] })
  const requests = (proxyKey: string): InjectOptions[] => [
    { method: 'POST', url: '/v1/chat/completions', headers: { authorization: `Bearer ${proxyKey}` }, payload: chatBody() },
    { method: 'POST', url: '/chat/completions', headers: { authorization: `Bearer ${proxyKey}` }, payload: chatBody({ stream: true }) },
    { method: 'GET', url: '/v1/models/gpt-4o-mini', headers: { authorization: `Bearer ${proxyKey}` } },
    { method: 'POST', url: '/v1/chat/completions', payload: chatBody() },
    { method: 'POST', url: '/v1/chat/completions', headers: { authorization: 'Bearer wrong' }, payload: chatBody() },
    { method: 'GET', url: '/v1/chat/completions', headers: { authorization: `Bearer ${proxyKey}` } },
    { method: 'POST', url: '/v1/files', headers: { authorization: `Bearer ${proxyKey}` }, payload: {} },
    // The host's text/csv parser and its coercing Ajv do not reach inside the suite.
    { method: 'POST', url: '/v1/chat/completions', headers: { authorization: `Bearer ${proxyKey}`, 'content-type': 'text/csv' }, payload: 'a,b' },
    { method: 'POST', url: '/v1/chat/completions', headers: { authorization: `Bearer ${proxyKey}` }, payload: chatBody({ temperature: '0.5' }) },
    { method: 'POST', url: '/v1/chat/completions', headers: { authorization: `Bearer ${proxyKey}`, 'content-type': 'application/json' }, payload: '{"model":' },
    { method: 'OPTIONS', url: '/v1/chat/completions', headers: { origin: 'https://chat.example.com', 'access-control-request-method': 'POST' } },
    { method: 'OPTIONS', url: '/v1/chat/completions', headers: { origin: 'https://evil.example.com', 'access-control-request-method': 'POST' } },
    { method: 'GET', url: '/health' }
  ]
  for (const [i, req] of requests(h.proxyKey).entries()) {
    const a = await h.app.inject(req)
    const b = await mounted.app.inject({ ...req, url: `/ai${req.url as string}` })
    t.strictSame(comparable(b, true), comparable(a), `${req.method} ${req.url as string}`)
    assertNoLeak(t, seenByClient(b), [mounted.key], `${req.method} ${req.url as string} in the host`)
    if (i === 0) t.equal(b.headers['x-proxy-request-id'] !== undefined, true, 'the suite adds its request id inside its scope')
  }
  t.strictSame(mounted.upstream.requests.map((r) => `${r.method} ${r.url} ${r.body.toString()}`), h.upstream.requests.map((r) => `${r.method} ${r.url} ${r.body.toString()}`), 'upstream saw the same calls')
  t.match(mounted.logs.join(''), /oai-proxy: request refused/, "the suite logs through the host's logger")
  assertNoLeak(t, mounted.logs.join(''), [mounted.key], 'host logs')
})

t.test("the host's own identity replaces proxy keys, and the client id is the host's user", async (t) => {
  const host = await buildHost(t, { resolveClient: async (request) => request.hostUser === null ? null : { id: `user:${request.hostUser.id}` } })
  const chat = (headers: Record<string, string>) => host.app.inject({ method: 'POST', url: '/ai/v1/chat/completions', headers, payload: chatBody() })

  const alice = await chat({ 'x-session': 'sess-alice', authorization: 'Bearer not-a-proxy-key' })
  t.equal(alice.statusCode, 200)
  t.equal(host.upstream.requests[0]?.headers.authorization, `Bearer ${host.key}`, 'upstream gets the real key, not what the browser sent')
  t.equal((await chat({ 'x-session': 'sess-bob' })).statusCode, 200)
  t.strictSame(host.seenClients, ['user:alice', 'user:bob'], 'request.oaiProxyClient.id is what limits key on')

  const anonymous = await chat({})
  t.equal(anonymous.statusCode, 401)
  t.strictSame(anonymous.json(), { error: { message: 'This request is not authenticated. Sign in to the application that serves this proxy.', type: 'invalid_request_error', param: null, code: null } })
  t.equal((await chat({ 'x-session': 'sess-mallory', authorization: `Bearer ${host.proxyKey}` })).statusCode, 401)
  t.equal(host.upstream.requests.length, 2, 'refusals never went upstream')
  t.equal((await host.app.inject({ method: 'GET', url: '/api/me', headers: { 'x-session': 'sess-alice' } })).statusCode, 200, 'host routes keep their own auth')
})

t.test('rate limits apply per host user, not per address', async (t) => {
  const host = await buildHost(t, { resolveClient: (request) => request.hostUser, rateLimit: { requestsPerWindow: 2 } })
  const chat = (session: string) => host.app.inject({ method: 'POST', url: '/ai/v1/chat/completions', headers: { 'x-session': session }, payload: chatBody() })
  const alice = [await chat('sess-alice'), await chat('sess-alice'), await chat('sess-alice')]
  t.strictSame(alice.map((r) => r.statusCode), [200, 200, 429])
  t.strictSame(alice.map((r) => r.headers['x-ratelimit-remaining-requests']), ['1', '0', '0'])
  const bob = await chat('sess-bob')
  t.equal(bob.statusCode, 200, 'same address, another user: own budget')
  t.equal(bob.headers['x-ratelimit-remaining-requests'], '1')
  t.equal(host.upstream.requests.length, 3)
})

t.test('a resolver that fails: 401/403 errors are refusals, anything else is a generic 500; bad results fail closed', async (t) => {
  const results: Array<() => unknown> = [
    () => { throw Object.assign(new Error('jwt expired'), { statusCode: 401 }) },
    () => { throw Object.assign(new Error('forbidden'), { statusCode: 403 }) },
    () => { throw new Error('session store down: redis://user:hunter2@db') },
    () => ({ id: '' }),
    () => ({ id: 42 }),
    () => ({ id: 'x'.repeat(257) }),
    () => undefined,
    () => ({ id: 'ok' })
  ]
  let next = 0
  const host = await buildHost(t, { resolveClient: async () => (results[next++] as () => { id: string } | null)() })
  const statuses: number[] = []
  for (let i = 0; i < results.length; i++) {
    const res = await host.app.inject({ method: 'POST', url: '/ai/v1/chat/completions', payload: chatBody() })
    statuses.push(res.statusCode)
    t.notMatch(res.body, /hunter2|jwt expired|redis/, 'no resolver detail reaches the client')
    t.ok(res.json().error ?? res.json().choices, 'OpenAI shape')
  }
  t.strictSame(statuses, [401, 401, 500, 500, 500, 500, 401, 200])
  t.equal(host.upstream.requests.length, 1)
})

t.test('registration fails fast on conflicting identity options and keeps endpoint choice', async (t) => {
  await t.rejects(buildHost(t, { proxyKeys: ['sk-oaip-x'], resolveClient: () => null }), /give proxyKeys or resolveClient, not both/)
  await t.rejects(buildHost(t, { resolveClient: 'nope' as unknown as () => null }), /invalid option \/resolveClient/)
  // The building block on its own checks too (the suite's schema is not in front of it).
  const bare = Fastify()
  t.teardown(() => bare.close())
  await t.rejects(async () => { await bare.register(authPlugin, { resolveClient: 'nope' as unknown as () => null }) }, /invalid option \/resolveClient: must be a function/)
  const host = await buildHost(t, { proxyKeys: ['sk-oaip-only-chat'], endpoints: ['chat.completions'] })
  const auth = { authorization: 'Bearer sk-oaip-only-chat' }
  t.equal((await host.app.inject({ method: 'POST', url: '/ai/v1/chat/completions', headers: auth, payload: chatBody() })).statusCode, 200)
  const emb = await host.app.inject({ method: 'POST', url: '/ai/v1/embeddings', headers: auth, payload: { model: 'text-embedding-3-small', input: 'x' } })
  t.equal(emb.statusCode, 404)
  t.equal(emb.json().error.code, 'unknown_url')
})
