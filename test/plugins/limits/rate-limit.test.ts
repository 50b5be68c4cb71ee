import OpenAI from 'openai'
import t from 'tap'
import { assertNoLeak, chatBody, proxyTest, seenByClient, type Harness } from '../../helper.js'

const post = (h: Harness, headers: Record<string, string> = h.auth) =>
  h.app.inject({ method: 'POST', url: '/v1/chat/completions', headers, payload: chatBody() })

proxyTest(t, 'N requests pass, the N+1th gets an OpenAI-shaped 429 and never reaches upstream', { proxy: { rateLimit: { requestsPerWindow: 3 } } }, async (h, t) => {
  const remaining: string[] = []
  for (let i = 0; i < 3; i++) {
    const res = await post(h)
    t.equal(res.statusCode, 200)
    t.equal(res.headers['x-ratelimit-limit-requests'], '3')
    t.match(res.headers['x-ratelimit-reset-requests'], /^((\d+h)?(\d+m)?\d+(\.\d+)?s|\d+ms)$/, 'Go duration, like OpenAI')
    remaining.push(String(res.headers['x-ratelimit-remaining-requests']))
  }
  t.strictSame(remaining, ['2', '1', '0'])
  const res = await post(h)
  t.equal(res.statusCode, 429)
  t.match(res.json(), { error: { type: 'requests', code: 'rate_limit_exceeded', param: null, message: /Rate limit reached on requests per 1m0s: Limit 3\. Please try again in \d+s\./ } })
  const retryAfter = Number(res.headers['retry-after'])
  t.ok(Number.isInteger(retryAfter) && retryAfter >= 1 && retryAfter <= 60, `Retry-After in whole seconds (${retryAfter})`)
  t.ok(Number(res.headers['retry-after-ms']) > 0)
  t.equal(res.headers['x-ratelimit-remaining-requests'], '0')
  t.notOk('x-should-retry' in res.headers, 'a one-minute wait is worth retrying')
  t.equal(h.upstream.requests.length, 3, 'upstream received exactly N')
  assertNoLeak(t, seenByClient(res), h.secrets, 'response')
})

proxyTest(t, 'each proxy key has its own bucket', { proxy: { rateLimit: { requestsPerWindow: 1 }, proxyKeys: ['key-alpha-0123456789', 'key-beta-0123456789'] } }, async (h, t) => {
  t.equal((await post(h, { authorization: 'Bearer key-alpha-0123456789' })).statusCode, 200)
  t.equal((await post(h, { authorization: 'Bearer key-alpha-0123456789' })).statusCode, 429)
  t.equal((await post(h, { authorization: 'Bearer key-beta-0123456789' })).statusCode, 200, 'the other client is unaffected')
})

proxyTest(t, '100 concurrent requests straddling the limit: exactly the limit passes', { proxy: { rateLimit: { requestsPerWindow: 10 } } }, async (h, t) => {
  const results = await Promise.all(Array.from({ length: 100 }, () => post(h)))
  t.equal(results.filter((r) => r.statusCode === 200).length, 10)
  t.equal(results.filter((r) => r.statusCode === 429).length, 90)
  t.equal(h.upstream.requests.length, 10)
})

proxyTest(t, 'without TRUST_PROXY, spoofed X-Forwarded-For values from one socket share one bucket', { listen: true, proxy: { proxyKeys: [], rateLimit: { requestsPerWindow: 3 } } }, async (h, t) => {
  const statuses: number[] = []
  for (let i = 0; i < 6; i++) {
    const res = await fetch(`${h.url}/v1/chat/completions`, { method: 'POST', headers: { 'content-type': 'application/json', 'x-forwarded-for': `203.0.113.${i}`, forwarded: `for=198.51.100.${i}`, 'x-real-ip': `192.0.2.${i}` }, body: JSON.stringify(chatBody()) })
    statuses.push(res.status)
    await res.arrayBuffer()
  }
  t.strictSame(statuses, [200, 200, 200, 429, 429, 429])
})

proxyTest(t, 'with TRUST_PROXY set to the load balancer, the right-most untrusted hop is the client', {
  listen: true, fastify: { trustProxy: ['127.0.0.1'] }, proxy: { proxyKeys: [], rateLimit: { requestsPerWindow: 2 } }
}, async (h, t) => {
  const send = async (xff: string) => {
    const res = await fetch(`${h.url}/v1/chat/completions`, { method: 'POST', headers: { 'content-type': 'application/json', 'x-forwarded-for': xff }, body: JSON.stringify(chatBody()) })
    await res.arrayBuffer()
    return res.status
  }
  // The client may prepend anything; only the hop our trusted balancer appended counts.
  t.strictSame([await send('1.1.1.1, 10.0.0.5'), await send('2.2.2.2, 10.0.0.5'), await send('3.3.3.3, 10.0.0.5')], [200, 200, 429])
  t.equal(await send('10.0.0.6'), 200, 'another real client has its own bucket')
})

proxyTest(t, 'failed requests without a valid key (401) are counted per address: past the limit even a correct key from there is refused', { proxy: { rateLimit: { failuresPerMinute: 5 } } }, async (h, t) => {
  const statuses: number[] = []
  for (let i = 0; i < 5; i++) {
    const headers = i % 2 === 0 ? { authorization: `Bearer wrong-${i}` } : {}
    statuses.push((await h.app.inject({ method: i === 4 ? 'GET' : 'POST', url: i === 4 ? '/v1/files' : '/v1/chat/completions', headers, payload: i === 4 ? undefined : chatBody() })).statusCode)
  }
  t.strictSame(statuses, [401, 401, 401, 401, 404], 'wrong keys, no key, and an unknown path without a key')
  const blocked = await post(h)
  t.equal(blocked.statusCode, 429, 'even a correct key is refused once the address is over the failure limit')
  t.match(blocked.json(), { error: { type: 'requests', code: 'rate_limit_exceeded', message: /Too many failed requests from your address/ } })
  t.ok(Number(blocked.headers['retry-after']) >= 1)
  t.equal((await h.app.inject({ method: 'GET', url: '/health' })).statusCode, 200, 'health checks are exempt')
  t.equal(h.upstream.requests.length, 0)
})

t.test('failures by a client with a valid key count against that key: it is refused, others at its address are not', async (t) => {
  const mine = `sk-oaip-${'a'.repeat(24)}${Date.now()}`
  const theirs = `sk-oaip-${'b'.repeat(24)}${Date.now()}`
  await proxyTest(t, 'one keyed client probing unknown paths', { proxy: { proxyKeys: [mine, theirs], rateLimit: { failuresPerMinute: 5 } } }, async (h, t) => {
    const as = (key: string) => ({ authorization: `Bearer ${key}` })
    const probes: number[] = []
    for (const [method, url] of [['GET', '/v1/files'], ['GET', '/v1/organization/users'], ['GET', '/v1/chat/completions'], ['GET', '/v1/models/unknown-model'], ['DELETE', '/v1/models/x']] as Array<['GET' | 'DELETE', string]>) {
      probes.push((await h.app.inject({ method, url, headers: as(mine) })).statusCode)
    }
    t.strictSame(probes, [404, 404, 405, 404, 405], 'five failures with a valid key, one of them upstream\'s (a model that does not exist)')
    const send = (key: string) => h.app.inject({ method: 'POST', url: '/v1/chat/completions', headers: as(key), payload: chatBody() })
    const refused = await send(mine)
    t.equal(refused.statusCode, 429, 'that client is over its limit')
    t.match(refused.json(), { error: { type: 'requests', code: 'rate_limit_exceeded', message: /Too many failed requests with your key/ } })
    t.ok(Number(refused.headers['retry-after']) >= 1)
    t.equal((await send(theirs)).statusCode, 200, 'another client at the same address is served')
    t.equal(h.upstream.requests.length, 2, 'only the model lookup and the other client\'s request went upstream')
    // The address bucket is untouched: four wrong keys still get 401, not 429.
    for (let i = 0; i < 4; i++) t.equal((await h.app.inject({ method: 'POST', url: '/v1/chat/completions', headers: as(`wrong-${i}`), payload: chatBody() })).statusCode, 401)
    t.equal((await send(theirs)).statusCode, 200, 'and the other client is still served')
  })
})

t.test('without proxy keys every failure counts per address; with resolveClient a routed failure counts per client', async (t) => {
  await proxyTest(t, 'an open proxy', { proxy: { proxyKeys: [], rateLimit: { failuresPerMinute: 3 } } }, async (h, t) => {
    for (let i = 0; i < 2; i++) t.equal((await h.app.inject({ method: 'GET', url: `/v1/files/${i}` })).statusCode, 404)
    t.equal((await h.app.inject({ method: 'GET', url: '/v1/models/unknown-model' })).statusCode, 404, 'a routed failure by an anonymous caller counts per address too')
    t.equal((await h.app.inject({ method: 'GET', url: '/v1/models' })).statusCode, 429, 'the address is over its limit')
  })
  const resolveClient = (r: { headers: Record<string, unknown> }) => (typeof r.headers['x-user'] === 'string' ? { id: `user:${r.headers['x-user']}` } : null)
  await proxyTest(t, 'host identities', { proxy: { proxyKeys: undefined, resolveClient, rateLimit: { failuresPerMinute: 3 } } }, async (h, t) => {
    const get = (user: string, url: string) => h.app.inject({ method: 'GET', url, headers: { 'x-user': user } })
    // The model does not exist upstream: a 404 on a proxy route, after the host identified the caller.
    for (let i = 0; i < 3; i++) t.equal((await get('alice', '/v1/models/unknown-model')).statusCode, 404)
    t.equal((await get('alice', '/v1/models')).statusCode, 429, 'alice is over her limit')
    t.equal((await get('bob', '/v1/models')).statusCode, 200, 'bob, at the same address, is not')
  })
})

proxyTest(t, 'the openai SDK gets a RateLimitError with type and code, and honours Retry-After', { listen: true, proxy: { rateLimit: { requestsPerWindow: 1, windowMs: 1000 } } }, async (h, t) => {
  const strict = new OpenAI({ baseURL: `${h.url}/v1`, apiKey: h.proxyKey, maxRetries: 0 })
  await strict.chat.completions.create(chatBody() as never)
  const err = await strict.chat.completions.create(chatBody() as never).catch((e: unknown) => e)
  t.type(err, OpenAI.RateLimitError)
  t.match(err, { status: 429, type: 'requests', code: 'rate_limit_exceeded' })
  const patient = new OpenAI({ baseURL: `${h.url}/v1`, apiKey: h.proxyKey, maxRetries: 2 })
  const start = Date.now()
  const ok = await patient.chat.completions.create(chatBody() as never)
  t.match(ok, { object: 'chat.completion' })
  t.ok(Date.now() - start >= 200, `the SDK waited for the window (${Date.now() - start} ms) and then succeeded`)
})
