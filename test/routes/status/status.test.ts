import { createHash, randomBytes } from 'node:crypto'
import { mkdtempSync, readFileSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import t from 'tap'
import { request } from 'undici'
import { fingerprint } from '../../../plugins/upstream/key-pool.js'
import { mintBrowserToken } from '../../../plugins/client-keys/browser-tokens.js'
import { writeKeysFile } from '../../../plugins/client-keys/file-io.js'
import { buildIndex, hashSecret, newKeyId, newSecret } from '../../../plugins/client-keys/records.js'
import { escapeHtml, statusHtml } from '../../../routes/status/html.js'
import { keyCounts, type StatusView } from '../../../routes/status/view.js'
import type { ClientKeyRecord } from '../../../plugins/client-keys/schema.js'
import { assertNoLeak, chatBody, proxyTest, seenByClient, type Harness } from '../../helper.js'

/*
 * Issue 14 point 2: the status page at `/`. What a friend needs, never a secret, a key fragment or id, an
 * organization or a project; the caller's own usage with its key; off with statusPage false.
 */

const VERSION = (JSON.parse(readFileSync(new URL('../../../package.json', import.meta.url), 'utf8')) as { version: string }).version
const dir = mkdtempSync(join(tmpdir(), 'oai-status-'))
t.teardown(() => rmSync(dir, { recursive: true, force: true }))

const plain = newSecret()
const record: ClientKeyRecord = { id: newKeyId(), name: 'friend', hash: hashSecret(plain), prefix: plain.slice(0, 12), created: new Date().toISOString(), disabled: false, scopes: {}, metadata: {}, limits: { tokensPerDay: 100_000, requestsPerDay: 50 } }
const keysFile = join(dir, 'keys.jsonl')
writeKeysFile(keysFile, [record])
const tokenSecret = randomBytes(32).toString('base64url')
const ORIGIN = 'https://app.example'

const page = (h: Harness, headers: Record<string, string> = {}, url = '/') => h.app.inject({ url, headers })
const json = async (h: Harness, headers: Record<string, string> = {}) => {
  const res = await page(h, headers, '/?format=json')
  if (res.statusCode !== 200) throw new Error(`status page: ${res.statusCode} ${res.body}`)
  return res
}
/** Every secret of a harness plus what the page must not show either: upstream key ids. */
const forbidden = (h: Harness, extra: string[] = []) => [...h.secrets, h.proxyKey, ...h.keys.map((k) => fingerprint(k)), ...extra]

proxyTest(t, 'HTML: a small page with a strict CSP, no script, nothing forwarded, no secret', {
  keyCount: 2, proxy: { policy: { allowedModels: ['gpt-4o*', 'gpt-5'], maxOutputTokens: 2048 }, rateLimit: { requestsPerWindow: 60, tokensPerMinute: 90_000, maxConcurrent: 4 } }
}, async (h, t) => {
  const res = await page(h)
  t.equal(res.statusCode, 200)
  t.match(res.headers['content-type'], /^text\/html; charset=utf-8/)
  const csp = res.headers['content-security-policy'] as string
  const style = /<style>(.*)<\/style>/.exec(res.body)?.[1] as string
  t.equal(csp, `default-src 'none'; style-src 'sha256-${createHash('sha256').update(style).digest('base64')}'; img-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'`)
  t.equal(res.headers['x-content-type-options'], 'nosniff')
  t.equal(res.headers['x-frame-options'], 'DENY')
  t.equal(res.headers['cache-control'], 'no-store')
  t.notMatch(res.body, /<script|<link|<img|src=|href=/i, 'no script and no external asset')
  t.match(res.body, `<th>version</th><td>${VERSION}</td>`)
  t.match(res.body, '<code>POST /v1/chat/completions</code>')
  t.match(res.body, '<code>gpt-4o*</code>, <code>gpt-5</code>')
  t.match(res.body, '<th>requests</th><td>60 per 60 s</td>')
  t.match(res.body, '<th>tokens per minute</th><td>90,000</td>')
  t.match(res.body, '<th>output tokens per request</th><td>2,048</td>')
  t.match(res.body, '<th>active</th><td>2</td>')
  t.match(res.body, 'yes: send it as &#39;Authorization: Bearer &lt;key&gt;&#39;')
  t.notMatch(res.body, 'Your key', 'no usage without a key')
  assertNoLeak(t, seenByClient(res), forbidden(h), 'the status page')
  const head = await h.app.inject({ method: 'HEAD', url: '/' })
  t.equal(head.statusCode, 200)
  t.equal(head.body, '')
  t.equal(h.upstream.requests.length, 0, 'never forwarded')
})

proxyTest(t, 'JSON: ?format=json or Accept: application/json; key pool health as counts only', { keyCount: 3 }, async (h, t) => {
  const [dead, busy] = h.keys as [string, string, string]
  h.upstream.script((req) => {
    if (req.headers.authorization === `Bearer ${dead}`) return { kind: 'json', status: 401, body: { error: { message: 'Incorrect API key provided', type: 'invalid_request_error', param: null, code: 'invalid_api_key' } } }
    if (req.headers.authorization === `Bearer ${busy}`) return { kind: 'json', status: 429, headers: { 'retry-after': '30' }, body: { error: { message: 'Rate limit reached', type: 'requests', param: null, code: 'rate_limit_exceeded' } } }
    return undefined
  })
  const post = () => h.app.inject({ method: 'POST', url: '/v1/chat/completions', headers: h.auth, payload: chatBody() })
  t.equal((await post()).statusCode, 429, 'the first key is dead, the second busy')
  t.equal((await post()).statusCode, 200, 'the third works')
  const before = h.upstream.requests.length

  const res = await json(h)
  t.match(res.headers['content-type'], /^application\/json/)
  t.equal(res.headers['content-security-policy'], undefined)
  const view = res.json()
  t.strictSame(Object.keys(view), ['object', 'status', 'version', 'uptime_seconds', 'key_required', 'endpoints', 'models', 'limits', 'upstream_keys', 'rate_limit_store', 'you'])
  t.match(view, { object: 'proxy.status', status: 'ok', version: VERSION, key_required: true, models: null, rate_limit_store: 'memory', you: null })
  t.strictSame(view.upstream_keys, { active: 1, resting: 1, disabled: 1 })
  t.ok(Number.isInteger(view.uptime_seconds) && view.uptime_seconds >= 0)
  t.strictSame(view.endpoints[0], { id: 'chat.completions', method: 'POST', path: '/v1/chat/completions' })
  t.strictSame(view.limits, { requests_per_window: 0, window_seconds: 60, tokens_per_minute: 0, max_concurrent_requests: 0, max_body_bytes: 10 * 1024 * 1024, max_output_tokens: null, max_n: null })
  const byAccept = await page(h, { accept: 'application/json' })
  t.strictSame(Object.keys(byAccept.json()), Object.keys(view), 'Accept: application/json alone gets JSON')
  t.match((await page(h, { accept: 'text/html,application/json;q=0.9' })).headers['content-type'], /^text\/html/, 'a browser gets HTML')
  t.match((await page(h, { accept: 'application/json' }, '/?format=html')).headers['content-type'], /^text\/html/, '?format=html wins')
  const html = await page(h)
  t.match(html.body, '<th>resting</th><td>1</td>')
  for (const r of [res, byAccept, html]) assertNoLeak(t, seenByClient(r), forbidden(h), 'the status page')
  t.equal(h.upstream.requests.length, before, 'never forwarded')
})

proxyTest(t, "with the caller's own client key: its usage, as GET /v1/proxy/usage counts it, without its record id", {
  proxy: { keysFile }
}, async (h, t) => {
  const auth = { authorization: `Bearer ${plain}` }
  t.equal((await h.app.inject({ method: 'POST', url: '/v1/chat/completions', headers: auth, payload: chatBody() })).statusCode, 200)
  const usage = (await h.app.inject({ url: '/v1/proxy/usage', headers: auth })).json()
  const res = await json(h, auth)
  const you = res.json().you
  t.strictSame(you, { kind: 'client-key', metered: true, quotas: usage.quotas, usage: usage.usage })
  t.equal(you.usage.day.requests, 1)
  t.ok(you.usage.day.tokens > 0)
  const html = await page(h, auth)
  t.match(html.body, '<h2>Your key</h2>')
  t.match(html.body, '<th>requests today</th><td>1</td>')
  t.match(html.body, /<th>tokens per day<\/th><td>\d+ of 100,000 \(resets /)
  t.match(html.body, /<th>requests per day<\/th><td>1 of 50 /)
  for (const r of [res, html]) assertNoLeak(t, seenByClient(r), forbidden(h, [plain, record.id, record.hash, record.prefix]), 'the status page with a client key')
  const proxyKeyed = (await json(h, h.auth)).json()
  t.strictSame(proxyKeyed.you, { kind: 'proxy-key', metered: false, quotas: null, usage: null })
  t.match((await page(h, h.auth)).body, 'A proxy-key: its use is not metered.')
})

proxyTest(t, 'a wrong key is a 401 the failed-request guard counts; the page itself never is', {
  proxy: { keysFile, rateLimit: { failuresPerMinute: 3 } }
}, async (h, t) => {
  for (let i = 0; i < 5; i++) t.equal((await page(h)).statusCode, 200, 'the page is not a failure')
  for (const key of [`${plain}x`, 'sk-wrong', newSecret()]) {
    const res = await page(h, { authorization: `Bearer ${key}` })
    t.equal(res.statusCode, 401)
    t.equal(res.json().error.code, 'invalid_api_key')
  }
  const banned = await page(h)
  t.equal(banned.statusCode, 429, 'three wrong keys: the address is refused, here too')
  t.match(banned.json().error.message, /^Too many failed requests/)
})

proxyTest(t, 'a browser token shows its usage; one from another origin is a 401', {
  proxy: { keysFile, browserTokens: { secrets: [tokenSecret] }, cors: { origins: [ORIGIN] } }
}, async (h, t) => {
  const token = mintBrowserToken({ sub: 'alice', origin: ORIGIN, key: record.id }, [tokenSecret], buildIndex([record]).byId).token
  const res = await json(h, { authorization: `Bearer ${token}`, origin: ORIGIN })
  t.match(res.json().you, { kind: 'browser-token', metered: true })
  t.equal((await page(h, { authorization: `Bearer ${token}`, origin: 'https://other.example' })).statusCode, 401)
  assertNoLeak(t, seenByClient(res), forbidden(h, [token, tokenSecret, record.id]), 'the status page with a token')
})

proxyTest(t, 'an open proxy: no key required, a presented key means nothing', { proxy: { proxyKeys: [] } }, async (h, t) => {
  const view = (await json(h, { authorization: 'Bearer anything' })).json()
  t.equal(view.key_required, false)
  t.equal(view.you, null)
  t.match((await page(h)).body, '<th>key required</th><td>no</td>')
})

proxyTest(t, 'statusPage false: / is an unknown path like any other', { proxy: { statusPage: false } }, async (h, t) => {
  const res = await page(h)
  t.equal(res.statusCode, 404)
  t.strictSame(res.json(), { error: { message: 'Unknown request URL: GET /. This proxy only forwards generation endpoints.', type: 'invalid_request_error', param: null, code: 'unknown_url' } })
  t.equal((await page(h, {}, '/?format=json')).statusCode, 404)
})

proxyTest(t, 'over a real socket, under the failed-request guard, with every key out of rotation', {
  listen: true, proxy: { rateLimit: { failuresPerMinute: 2 } }
}, async (h, t) => {
  h.upstream.script(() => ({ kind: 'json', status: 401, body: { error: { message: 'Incorrect API key provided', type: 'invalid_request_error', param: null, code: 'invalid_api_key' } } }))
  await h.app.inject({ method: 'POST', url: '/v1/chat/completions', headers: h.auth, payload: chatBody() })
  const res = await request(`${h.url}/`, { headers: { accept: 'application/json' } })
  t.equal(res.statusCode, 200)
  const view = await res.body.json() as { status: string, upstream_keys: unknown }
  t.equal(view.status, 'degraded')
  t.strictSame(view.upstream_keys, { active: 0, resting: 0, disabled: 1 })
  const html = await request(`${h.url}/`)
  t.match(await html.body.text(), 'up, but no upstream key is usable')
})

t.test('rendering: uptime units, escaping, quotas not set, pool states not known', async (t) => {
  const base: StatusView = {
    object: 'proxy.status',
    status: 'ok',
    version: '1',
    uptime_seconds: 5,
    key_required: false,
    endpoints: [],
    models: ['<b>&"\''],
    limits: { requests_per_window: 0, window_seconds: 60, tokens_per_minute: 0, max_concurrent_requests: 0, max_body_bytes: 1024, max_output_tokens: null, max_n: null },
    upstream_keys: { active: 1, resting: 0, disabled: 0 },
    rate_limit_store: 'memory',
    you: null
  }
  t.match(statusHtml(base), '<td>0 min 5 s</td>')
  t.match(statusHtml({ ...base, uptime_seconds: 3 * 3600 + 120 }), '<td>3 h 2 min</td>')
  t.match(statusHtml({ ...base, uptime_seconds: 2 * 86400 + 3600 }), '<td>2 d 1 h</td>')
  t.match(statusHtml(base), '<code>&lt;b&gt;&amp;&quot;&#39;</code>')
  t.equal(escapeHtml('<a href="x">\'&'), '&lt;a href=&quot;x&quot;&gt;&#39;&amp;')
  const day = { start: '2026-01-01T00:00:00.000Z', tokens: 5, requests: 2 }
  const you = { kind: 'client-key' as const, metered: true, quotas: { tokens_per_day: null, tokens_per_month: null, requests_per_day: null }, usage: { day, month: { start: day.start, tokens: 9 } } }
  const html = statusHtml({ ...base, you })
  t.match(html, '<th>tokens this month</th><td>9</td>')
  t.notMatch(html, 'tokens per day', 'a quota not set is not shown')
  t.strictSame(keyCounts([{ state: 'active' }, { state: 'resting' }, { state: 'cooling' }, { state: 'invalid' }, { state: 'insufficient_quota' }]), { active: 1, resting: 2, disabled: 2 })
})
