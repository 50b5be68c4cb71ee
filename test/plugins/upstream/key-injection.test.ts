import t from 'tap'
import { assertNoLeak, chatBody, proxyTest, seenByClient, sleep, type Harness } from '../../helper.js'

const post = (h: Harness, payload: Record<string, unknown> = chatBody()) =>
  h.app.inject({ method: 'POST', url: '/v1/chat/completions', headers: h.auth, payload })

proxyTest(t, 'keys rotate least-recently-used', { keyCount: 3 }, async (h, t) => {
  for (let i = 0; i < 6; i++) t.equal((await post(h)).statusCode, 200)
  const used = h.upstream.requests.map((r) => r.headers.authorization)
  t.strictSame(used, [...h.keys, ...h.keys].map((k) => `Bearer ${k}`), 'each key in turn, then again')
})

proxyTest(t, 'the configured organization and project are sent, the client cannot steer them', {}, async (h, t) => {
  await h.app.inject({ method: 'POST', url: '/v1/chat/completions', headers: { ...h.auth, 'openai-organization': 'org-attacker', 'openai-project': 'proj_attacker' }, payload: chatBody() })
  const seen = h.upstream.requests[0]?.headers
  t.equal(seen?.['openai-organization'], h.organization)
  t.equal(seen?.['openai-project'], h.project)
})

proxyTest(t, 'a revoked key is taken out and the request is retried on the next key', { keyCount: 2 }, async (h, t) => {
  const revoked = h.keys[0] as string
  h.upstream.script((r) => r.headers.authorization === `Bearer ${revoked}`
    ? { kind: 'json', status: 401, body: { error: { message: `Incorrect API key provided: ${revoked.slice(0, 8)}****${revoked.slice(-4)}.`, type: 'invalid_request_error', param: null, code: 'invalid_api_key' } } }
    : undefined)
  const first = await post(h)
  t.equal(first.statusCode, 200, 'the client never notices')
  assertNoLeak(t, seenByClient(first), h.secrets, 'response')
  t.strictSame(h.upstream.requests.map((r) => r.headers.authorization), [`Bearer ${revoked}`, `Bearer ${h.keys[1]}`])
  for (let i = 0; i < 3; i++) t.equal((await post(h)).statusCode, 200)
  t.equal(h.upstream.requests.filter((r) => r.headers.authorization === `Bearer ${revoked}`).length, 1, 'the revoked key is never used again')
  t.match(h.logs.join(''), /taken out of rotation/)
})

proxyTest(t, 'an exhausted quota takes the key out too', { keyCount: 2 }, async (h, t) => {
  const broke = h.keys[1] as string
  h.upstream.script((r) => r.headers.authorization === `Bearer ${broke}`
    ? { kind: 'json', status: 429, body: { error: { message: 'You exceeded your current quota, please check your plan and billing details.', type: 'insufficient_quota', param: null, code: 'insufficient_quota' } } }
    : undefined)
  for (let i = 0; i < 4; i++) t.equal((await post(h)).statusCode, 200)
  t.equal(h.upstream.requests.filter((r) => r.headers.authorization === `Bearer ${broke}`).length, 1)
})

proxyTest(t, 'when every key is gone the client gets a clear 503 that says not to retry', { keyCount: 2 }, async (h, t) => {
  h.upstream.script(() => ({ kind: 'json', status: 401, body: { error: { message: 'Incorrect API key provided: sk-proj-****abcd.', type: 'invalid_request_error', param: null, code: 'invalid_api_key' } } }))
  const res = await post(h)
  t.equal(res.statusCode, 503)
  t.equal(res.headers['x-should-retry'], 'false')
  t.strictSame(res.json(), { error: { message: 'No upstream API key is currently usable. Contact the operator of this proxy.', type: 'server_error', param: null, code: 'upstream_keys_exhausted' } })
  t.equal(h.upstream.requests.length, 2, 'each key tried once')
  const again = await post(h)
  t.equal(again.statusCode, 503)
  t.equal(h.upstream.requests.length, 2, 'no upstream call once the pool is empty')
  const health = await h.app.inject({ method: 'GET', url: '/health' })
  t.strictSame(health.json(), { status: 'ok', upstream_keys: 'exhausted', rate_limit_store: 'memory' })
  assertNoLeak(t, seenByClient(res) + seenByClient(health), h.secrets, 'responses')
})

proxyTest(t, 'a bogus model, a bad parameter or a scoped 401 never change a key', { keyCount: 1 }, async (h, t) => {
  const bogus = await post(h, chatBody({ model: 'unknown-model-xyz' }))
  t.equal(bogus.statusCode, 404)
  t.equal(bogus.json().error.code, 'model_not_found')
  h.upstream.script(() => ({ kind: 'json', status: 401, body: { error: { message: 'You have insufficient permissions for this operation. Missing scopes: model.request.', type: 'invalid_request_error', param: null, code: null } } }))
  const scoped = await post(h)
  t.equal(scoped.statusCode, 403, 'our credentials lack a scope: permission denied, not "your key is wrong"')
  t.equal(scoped.json().error.type, 'permission_denied')
  h.upstream.script(() => ({ kind: 'json', status: 400, body: { error: { message: 'Unrecognized request argument supplied: foo', type: 'invalid_request_error', param: 'foo', code: null } } }))
  t.equal((await post(h)).statusCode, 400)
  h.upstream.script(undefined)
  t.equal((await post(h)).statusCode, 200, 'the single key still works')
})

proxyTest(t, 'an upstream rate limit cools the key down and reaches the client with Retry-After', { keyCount: 2 }, async (h, t) => {
  const limited = h.keys[0] as string
  h.upstream.script((r) => r.headers.authorization === `Bearer ${limited}`
    ? { kind: 'json', status: 429, headers: { 'retry-after': '20', 'x-ratelimit-remaining-requests': '0' }, body: { error: { message: 'Rate limit reached for gpt-4o-mini in organization org-ABCDEFGH123 on requests per min (RPM): Limit 3, Used 3.', type: 'requests', param: null, code: 'rate_limit_exceeded' } } }
    : undefined)
  const res = await post(h)
  t.equal(res.statusCode, 429)
  t.equal(res.headers['retry-after'], '20')
  t.notOk('x-ratelimit-remaining-requests' in res.headers, 'upstream limit headers are not relayed')
  t.match(res.json().error, { type: 'requests', code: 'rate_limit_exceeded' })
  t.notMatch(res.body, /org-ABCDEFGH123/, 'organization id redacted')
  for (let i = 0; i < 3; i++) t.equal((await post(h)).statusCode, 200, 'the other key serves while the first cools down')
  t.equal(h.upstream.requests.filter((r) => r.headers.authorization === `Bearer ${limited}`).length, 1)
})

proxyTest(t, 'an upstream 429 without a usable Retry-After rests the key for one second', { keyCount: 2 }, async (h, t) => {
  const [first, second] = h.keys as [string, string]
  let limitOnce = true
  h.upstream.script((r) => {
    if (!limitOnce || r.headers.authorization !== `Bearer ${first}`) return undefined
    limitOnce = false
    return { kind: 'json', status: 429, headers: { 'retry-after': 'soon' }, body: { error: { message: 'Rate limit reached.', type: 'requests', param: null, code: 'rate_limit_exceeded' } } }
  })
  t.equal((await post(h)).statusCode, 429)
  t.equal((await post(h)).statusCode, 200)
  await sleep(1200)
  t.equal((await post(h)).statusCode, 200)
  t.strictSame(h.upstream.requests.map((r) => r.headers.authorization), [first, second, first].map((k) => `Bearer ${k}`), 'rested, then back in rotation')
})

proxyTest(t, 'a Retry-After sent twice: the first value sets the rest', { keyCount: 2 }, async (h, t) => {
  const [first, second] = h.keys as [string, string]
  let limitOnce = true
  h.upstream.script((r) => {
    if (!limitOnce || r.headers.authorization !== `Bearer ${first}`) return undefined
    limitOnce = false
    return { kind: 'json', status: 429, headers: { 'retry-after': ['3', '0'] }, body: { error: { message: 'Rate limit reached.', type: 'requests', param: null, code: 'rate_limit_exceeded' } } }
  })
  t.equal((await post(h)).statusCode, 429)
  t.equal((await post(h)).statusCode, 200)
  await sleep(1200)
  t.equal((await post(h)).statusCode, 200)
  t.strictSame(h.upstream.requests.map((r) => r.headers.authorization), [first, second, second].map((k) => `Bearer ${k}`), 'still resting after a second')
})
