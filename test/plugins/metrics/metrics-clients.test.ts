import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import t from 'tap'
import { writeKeysFile } from '../../../plugins/client-keys/file-io.js'
import { hashSecret, newKeyId, newSecret } from '../../../plugins/client-keys/records.js'
import type { ClientKeyRecord } from '../../../plugins/client-keys/schema.js'
import { assertNoLeak, chatBody, proxyTest, randomToken, sleep, type Harness } from '../../helper.js'

/*
 * Issue 14 point 1: labels stay bounded. 1,000 client keys make one client class, not 1,000 series; per-client
 * series are opt-in and capped. Quota refusals are a limit kind of their own. Admin, usage, health and
 * status routes get labels of their own.
 */

const KEY = `mk-${randomToken(32)}`
const ADMIN = `ak-${randomToken(40)}`
const dir = mkdtempSync(join(tmpdir(), 'oai-metrics-clients-'))
t.teardown(() => rmSync(dir, { recursive: true, force: true }))

const CLIENTS = 1000
const secrets = Array.from({ length: CLIENTS }, newSecret)
const record = (secret: string, extra: Partial<ClientKeyRecord> = {}): ClientKeyRecord =>
  ({ id: newKeyId(), name: 'many', hash: hashSecret(secret), prefix: secret.slice(0, 12), created: new Date().toISOString(), disabled: false, scopes: {}, metadata: {}, ...extra })
const records = secrets.map((s) => record(s))
const quotaSecret = newSecret()
const quotaRecord = record(quotaSecret, { limits: { requestsPerDay: 1 } })
const keysFile = join(dir, 'keys.jsonl')
writeKeysFile(keysFile, [...records, quotaRecord])

const lines = (text: string, name: string): string[] => text.split('\n').filter((l) => l.startsWith(`${name}{`) || l.startsWith(`${name} `))
const value = (line: string): number => Number(line.slice(line.lastIndexOf(' ') + 1))
async function scrape (h: Harness): Promise<string> {
  await sleep(20)
  return (await h.app.inject({ url: '/metrics', headers: { authorization: `Bearer ${KEY}` } })).body
}
/** One cheap forwarded request per client key (GET /v1/models), a few at a time. */
async function everyClient (h: Harness): Promise<void> {
  for (let i = 0; i < CLIENTS; i += 50) {
    await Promise.all(secrets.slice(i, i + 50).map(async (s) => {
      const res = await h.app.inject({ url: '/v1/models', headers: { authorization: `Bearer ${s}` } })
      if (res.statusCode !== 200) throw new Error(`models: ${res.statusCode}`)
    }))
  }
}

proxyTest(t, '1,000 client keys: one client class series, no per-client label', { proxy: { keysFile, metrics: { enabled: true, key: KEY } } }, async (h, t) => {
  await everyClient(h)
  const text = await scrape(h)
  t.strictSame(lines(text, 'oai_proxy_requests_total'), ['oai_proxy_requests_total{endpoint="models.list",status_class="2xx",client_class="client-key"} 1000'])
  t.equal(lines(text, 'oai_proxy_client_requests_total').length, 0)
  t.ok(text.split('\n').length < 400, `the whole exposition stays small (${text.split('\n').length} lines)`)
  assertNoLeak(t, text, [...h.secrets, ...secrets.slice(0, 20)], '/metrics')
  t.notMatch(text, records[0]?.id as string, 'no record id')
})

proxyTest(t, 'per-client series when asked for: capped at METRICS_CLIENT_LABELS, the rest under _other', {
  proxy: { keysFile, metrics: { enabled: true, key: KEY, perClientLabels: 10 }, rateLimit: { tokensPerMinute: 1_000_000 } }
}, async (h, t) => {
  await everyClient(h)
  const chat = await h.app.inject({ method: 'POST', url: '/v1/chat/completions', headers: { authorization: `Bearer ${secrets[0] as string}` }, payload: chatBody() })
  const tokens = chat.json().usage.total_tokens as number
  const proxyKeyed = await h.app.inject({ url: '/v1/models', headers: h.auth })
  t.equal(proxyKeyed.statusCode, 200)
  t.equal((await h.app.inject({ url: '/health' })).statusCode, 200, 'a request without a client')
  const text = await scrape(h)
  const perClient = lines(text, 'oai_proxy_client_requests_total')
  t.equal(perClient.length, 11, '10 clients and _other')
  t.equal(perClient.reduce((n, l) => n + value(l), 0), CLIENTS + 2, 'every request with a client counted once')
  t.equal(value(perClient.find((l) => l.includes('client="_other"')) as string), CLIENTS - 10 + 1, 'the proxy key came after the cap')
  t.strictSame(lines(text, 'oai_proxy_client_tokens_settled_total'), [`oai_proxy_client_tokens_settled_total{client="${records[0]?.id as string}"} ${tokens}`])
})

proxyTest(t, 'an open proxy: anonymous callers are never labelled, even with per-client series on', {
  proxy: { proxyKeys: [], metrics: { enabled: true, key: KEY, perClientLabels: 5 } }
}, async (h, t) => {
  t.equal((await h.app.inject({ url: '/v1/models' })).statusCode, 200)
  const text = await scrape(h)
  t.strictSame(lines(text, 'oai_proxy_requests_total'), ['oai_proxy_requests_total{endpoint="models.list",status_class="2xx",client_class="anonymous"} 1'])
  t.equal(lines(text, 'oai_proxy_client_requests_total').length, 0)
})

proxyTest(t, 'a quota refusal is the quota kind; routes of the proxy itself get labels of their own', {
  proxy: { keysFile, metrics: { enabled: true, key: KEY }, admin: { key: ADMIN }, realtime: { enabled: true } }
}, async (h, t) => {
  const auth = { authorization: `Bearer ${quotaSecret}` }
  const post = () => h.app.inject({ method: 'POST', url: '/v1/chat/completions', headers: auth, payload: chatBody() })
  t.equal((await post()).statusCode, 200)
  const refused = await post()
  t.equal(refused.statusCode, 429)
  t.equal(refused.json().error.code, 'insufficient_quota')
  t.equal((await h.app.inject({ url: '/v1/proxy/usage', headers: auth })).statusCode, 200)
  t.equal((await h.app.inject({ url: '/health' })).statusCode, 200)
  t.equal((await h.app.inject({ url: '/' })).statusCode, 200)
  t.equal((await h.app.inject({ url: '/admin/keys', headers: { authorization: `Bearer ${ADMIN}` } })).statusCode, 200)
  const text = await scrape(h)
  t.strictSame(lines(text, 'oai_proxy_limit_rejections_total'), ['oai_proxy_limit_rejections_total{kind="quota"} 1'])
  for (const [endpoint, client] of [['proxy.usage', 'client-key'], ['health', 'none'], ['status', 'none'], ['admin', 'none']] as const) {
    t.ok(lines(text, 'oai_proxy_requests_total').includes(`oai_proxy_requests_total{endpoint="${endpoint}",status_class="2xx",client_class="${client}"} 1`), endpoint)
  }
  assertNoLeak(t, text, [...h.secrets, quotaSecret, ADMIN, KEY], '/metrics')
})
