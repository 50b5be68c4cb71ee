import t from 'tap'
import type { Plan, RecordedRequest } from '../../../testing/fake-openai.js'
import { chatBody, proxyTest, type Harness } from '../../helper.js'

/*
 * The optional moderation check: a call to the upstream `/v1/moderations` with a pool key, cached by a hash
 * of the text, with an explicit fail-open/closed setting.
 */

const flagged = (categories: Record<string, boolean>): Plan => ({ kind: 'json', body: { id: 'modr-1', model: 'omni-moderation-latest', results: [{ flagged: true, categories, category_scores: {} }] } })
const isModeration = (r: RecordedRequest) => r.url === '/v1/moderations'
const flagBadword = (r: RecordedRequest): Plan | undefined => (isModeration(r) && JSON.stringify(r.json).includes('badword') ? flagged({ violence: true, hate: false }) : undefined)
const ask = (h: Harness, content: string) => h.app.inject({ method: 'POST', url: '/v1/chat/completions', headers: h.auth, payload: chatBody({ messages: [{ role: 'user', content }] }) })
const moderationCalls = (h: Harness) => h.upstream.requests.filter(isModeration)
const chatCalls = (h: Harness) => h.upstream.requests.filter((r) => r.url === '/v1/chat/completions')

proxyTest(t, 'flagged text is refused before the real call; the check uses a pool key and the configured model', { keyCount: 2, proxy: { filter: { moderation: { failMode: 'closed' } } } }, async (h, t) => {
  h.upstream.script(flagBadword)
  const res = await ask(h, 'some badword here')
  t.equal(res.statusCode, 400)
  t.match(res.json(), { error: { code: 'content_filter', param: 'messages' } })
  t.equal(chatCalls(h).length, 0, 'the chat call never happened')
  const check = moderationCalls(h)[0]
  t.ok(h.keys.map((k) => `Bearer ${k}`).includes(check?.headers.authorization ?? ''), 'a key from the pool')
  t.equal(check?.headers['openai-organization'], h.organization)
  t.strictSame(check?.json, { model: 'omni-moderation-latest', input: 'some badword here' })
  t.match(h.logs.join(''), /"rule":"moderation".*"categories":\["violence"\]/)
})

proxyTest(t, 'clean text is forwarded; the verdict is cached by content hash', { proxy: { filter: { moderation: { failMode: 'closed', model: 'text-moderation-stable' } } } }, async (h, t) => {
  h.upstream.script(flagBadword)
  for (let i = 0; i < 3; i++) t.equal((await ask(h, 'a perfectly fine question')).statusCode, 200)
  t.equal(moderationCalls(h).length, 1, 'one moderation call for three identical prompts')
  t.equal(chatCalls(h).length, 3)
  t.equal((moderationCalls(h)[0]?.json as { model: string }).model, 'text-moderation-stable')
  for (let i = 0; i < 2; i++) t.equal((await ask(h, 'badword')).statusCode, 400)
  t.equal(moderationCalls(h).length, 2, 'flagged verdicts are cached too')
})

proxyTest(t, 'the cache is bounded (LRU)', { proxy: { filter: { moderation: { failMode: 'closed', cacheSize: 2 } } } }, async (h, t) => {
  for (const text of ['one', 'two', 'one', 'three', 'two', 'one']) t.equal((await ask(h, text)).statusCode, 200)
  // one(miss) two(miss) one(hit) three(miss, evicts two) two(miss, evicts one) one(miss)
  t.equal(moderationCalls(h).length, 5)
})

proxyTest(t, 'fail closed: an unusable moderation answer refuses with 503 and nothing is forwarded', { proxy: { filter: { moderation: { failMode: 'closed' } } } }, async (h, t) => {
  const failures: Plan[] = [
    { kind: 'json', status: 500, body: { error: { message: 'boom', type: 'server_error', param: null, code: null } } },
    { kind: 'raw', body: 'not json' },
    { kind: 'json', body: { results: [] } },
    { kind: 'reset' }
  ]
  for (const plan of failures) {
    h.upstream.script((r) => (isModeration(r) ? plan : undefined))
    const res = await ask(h, 'hello')
    t.equal(res.statusCode, 503, plan.kind)
    t.strictSame(res.json(), { error: { message: 'The content check could not be completed; try again shortly.', type: 'server_error', param: null, code: 'content_filter_unavailable' } })
  }
  t.equal(chatCalls(h).length, 0)
  t.match(h.logs.join(''), /"failMode":"closed".*moderation unavailable/)
})

proxyTest(t, 'fail closed on a timeout, promptly', { proxy: { filter: { moderation: { failMode: 'closed', timeoutMs: 200 } } } }, async (h, t) => {
  h.upstream.script((r) => (isModeration(r) ? { kind: 'stall' } : undefined))
  const started = Date.now()
  t.equal((await ask(h, 'hello')).statusCode, 503)
  t.ok(Date.now() - started < 2000)
  t.equal(chatCalls(h).length, 0)
})

proxyTest(t, 'fail open: an unusable moderation answer lets the request through, loudly', { proxy: { filter: { moderation: { failMode: 'open' } } } }, async (h, t) => {
  h.upstream.script((r) => (isModeration(r) ? { kind: 'json', status: 500, body: { error: { message: 'boom', type: 'server_error', param: null, code: null } } } : undefined))
  t.equal((await ask(h, 'hello')).statusCode, 200)
  t.equal(chatCalls(h).length, 1)
  t.match(h.logs.join(''), /"failMode":"open".*moderation unavailable/)
  const again = await ask(h, 'hello')
  t.equal(again.statusCode, 200)
  t.equal(moderationCalls(h).length, 2, 'failures are never cached')
})

proxyTest(t, 'a revoked key on the moderation call is taken out and the next key used', { keyCount: 2, proxy: { filter: { moderation: { failMode: 'closed' } } } }, async (h, t) => {
  const revoked = `Bearer ${h.keys[0] as string}`
  h.upstream.script((r) => (r.headers.authorization === revoked
    ? { kind: 'json', status: 401, body: { error: { message: 'Incorrect API key provided: sk-proj-****abcd.', type: 'invalid_request_error', param: null, code: 'invalid_api_key' } } }
    : undefined))
  t.equal((await ask(h, 'hello')).statusCode, 200)
  t.strictSame(h.upstream.requests.map((r) => `${r.url} ${r.headers.authorization === revoked ? 'revoked' : 'good'}`), ['/v1/moderations revoked', '/v1/moderations good', '/v1/chat/completions good'])
})

proxyTest(t, 'long prompts are checked in pieces in one call', { proxy: { filter: { moderation: { failMode: 'closed' } } } }, async (h, t) => {
  t.equal((await ask(h, 'x '.repeat(20_000))).statusCode, 200)
  const input = (moderationCalls(h)[0]?.json as { input: string[] }).input
  t.equal(input.length, 3)
  t.equal(input.join(''), 'x '.repeat(20_000))
})

proxyTest(t, 'the only key revoked on the moderation call: fail closed, saying no key was left', { proxy: { filter: { moderation: { failMode: 'closed' } } } }, async (h, t) => {
  h.upstream.script((r) => (isModeration(r)
    ? { kind: 'json', status: 401, body: { error: { message: 'Incorrect API key provided: sk-proj-****abcd.', type: 'invalid_request_error', param: null, code: 'invalid_api_key' } } }
    : undefined))
  const res = await ask(h, 'hello')
  t.equal(res.statusCode, 503)
  t.match(res.json(), { error: { code: 'content_filter_unavailable' } })
  t.equal(moderationCalls(h).length, 1, 'the revoked key is not tried twice')
  t.equal(chatCalls(h).length, 0)
  t.match(h.logs.join(''), /"reason":"no usable upstream key","failMode":"closed".*moderation unavailable/)
})

proxyTest(t, 'a 429 on the moderation call rests that key: the next calls prefer the other one', { keyCount: 2, proxy: { filter: { moderation: { failMode: 'closed' } } } }, async (h, t) => {
  const limited = `Bearer ${h.keys[0] as string}`
  h.upstream.script((r) => (isModeration(r) && r.headers.authorization === limited
    ? { kind: 'json', status: 429, headers: { 'retry-after': '30' }, body: { error: { message: 'Rate limit reached', type: 'requests', param: null, code: 'rate_limit_exceeded' } } }
    : undefined))
  const first = await ask(h, 'hello')
  t.equal(first.statusCode, 503, 'a rate-limited check fails closed')
  t.match(h.logs.join(''), /"reason":"upstream status 429"/)
  t.equal((await ask(h, 'hello again')).statusCode, 200)
  // Least recently used would pick the first key for the chat call; it is cooling down, so the second is used.
  t.strictSame(h.upstream.requests.map((r) => `${r.url} ${r.headers.authorization === limited ? 'limited' : 'other'}`), ['/v1/moderations limited', '/v1/moderations other', '/v1/chat/completions other'])
})

proxyTest(t, 'an oversized moderation answer is not read: fail closed', { proxy: { filter: { moderation: { failMode: 'closed' } } } }, async (h, t) => {
  h.upstream.script((r) => (isModeration(r) ? { kind: 'raw', headers: { 'content-type': 'application/json' }, body: `{"results":[{"flagged":false,"pad":"${'x'.repeat(300 * 1024)}"}]}` } : undefined))
  t.equal((await ask(h, 'hello')).statusCode, 503)
  t.match(h.logs.join(''), /"reason":"malformed answer","failMode":"closed"/)
  t.equal(chatCalls(h).length, 0)
})

proxyTest(t, 'results without categories: the flag alone decides', { proxy: { filter: { moderation: { failMode: 'closed' } } } }, async (h, t) => {
  h.upstream.script((r) => (isModeration(r) ? { kind: 'json', body: { results: [{ flagged: JSON.stringify(r.json).includes('badword') }] } } : undefined))
  t.equal((await ask(h, 'fine')).statusCode, 200)
  const res = await ask(h, 'badword')
  t.equal(res.statusCode, 400)
  t.match(res.json(), { error: { code: 'content_filter', param: 'messages' } })
  t.match(h.logs.join(''), /"rule":"moderation","param":"messages","endpoint":"chat.completions","reply":"error","categories":\[\]/)
})

proxyTest(t, 'a timed-out moderation call is logged by name', { proxy: { filter: { moderation: { failMode: 'closed', timeoutMs: 100 } } } }, async (h, t) => {
  h.upstream.script((r) => (isModeration(r) ? { kind: 'stall' } : undefined))
  t.equal((await ask(h, 'hello')).statusCode, 503)
  t.match(h.logs.join(''), /"code":"TimeoutError","key":"key_[0-9a-f]{10}","msg":"oai-proxy: moderation call failed"/)
  h.upstream.script((r) => (isModeration(r) ? { kind: 'reset' } : undefined))
  t.equal((await ask(h, 'hello')).statusCode, 503)
  t.match(h.logs.join(''), /"code":"UND_ERR_SOCKET","key":"key_[0-9a-f]{10}","msg":"oai-proxy: moderation call failed"/)
})

proxyTest(t, 'a request without prompt text costs no moderation call', { proxy: { filter: { moderation: { failMode: 'closed' } } } }, async (h, t) => {
  t.equal((await ask(h, '')).statusCode, 200)
  t.equal(moderationCalls(h).length, 0)
  t.equal(chatCalls(h).length, 1)
})
