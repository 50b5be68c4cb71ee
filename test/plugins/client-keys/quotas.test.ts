import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import t from 'tap'
import OpenAI from 'openai'
import { writeKeysFile } from '../../../plugins/client-keys/file-io.js'
import { hashSecret, newKeyId, newSecret } from '../../../plugins/client-keys/records.js'
import type { ClientKeyRecord } from '../../../plugins/client-keys/schema.js'
import { assertNoLeak, chatBody, harness, proxyTest, seenByClient, sleep, type Harness } from '../../helper.js'
import { hasRedis, startRedis } from '../../redis-helper.js'
import { open, refused, rtTest } from '../../realtime-helper.js'

/*
 * Issue 13: a client key's quotas over UTC calendar windows (tokens per day and per month, requests per
 * day) are enforced with reserve -> settle, answered as OpenAI answers an account out of credit, and the
 * holder can read them at GET /v1/proxy/usage.
 */

const dir = mkdtempSync(join(tmpdir(), 'oai-quotas-'))
t.teardown(() => rmSync(dir, { recursive: true, force: true }))

function record (secret: string, limits: ClientKeyRecord['limits'], extra: Partial<ClientKeyRecord> = {}): ClientKeyRecord {
  return { id: newKeyId(), name: 'quota', hash: hashSecret(secret), prefix: secret.slice(0, 12), created: new Date().toISOString(), disabled: false, scopes: {}, metadata: {}, ...(limits === undefined ? {} : { limits }), ...extra }
}

const daily = newSecret()
const requests = newSecret()
const monthly = newSecret()
const plain = newSecret()
const scoped = newSecret()
const racing = newSecret()
const tpm = newSecret()
const voice = newSecret()
const secrets = [daily, requests, monthly, plain, scoped, racing, tpm, voice]
const records = [
  record(daily, { tokensPerDay: 250 }),
  record(requests, { requestsPerDay: 2 }),
  record(monthly, { tokensPerMonth: 150, tokensPerDay: 1_000_000 }),
  record(plain, undefined),
  record(scoped, { requestsPerDay: 5 }, { scopes: { endpoints: ['embeddings'], models: ['text-embedding-3-small'] } }),
  record(racing, { tokensPerDay: 1000 }),
  record(tpm, { tokensPerDay: 10_000, tokensPerMinute: 50 }),
  record(voice, { tokensPerDay: 300, requestsPerDay: 10 })
]
const file = join(dir, 'keys.jsonl')
await writeKeysFile(file, records)
const idOf = (secret: string) => (records.find((r) => r.hash === hashSecret(secret)) as ClientKeyRecord).id

const headers = (key: string) => ({ 'content-type': 'application/json', authorization: `Bearer ${key}` })
// max_tokens 90 + a short prompt: the reservation is a little over 90 tokens; the fake upstream reports ~12 used.
const chat = (h: Harness, key: string, extra: Record<string, unknown> = { max_tokens: 90 }) =>
  h.app.inject({ method: 'POST', url: '/v1/chat/completions', headers: headers(key), payload: JSON.stringify(chatBody(extra)) })
const usage = async (h: Harness, key: string, url = '/v1/proxy/usage') => {
  const res = await h.app.inject({ method: 'GET', url, headers: { authorization: `Bearer ${key}` } })
  return { res, body: JSON.parse(res.body) }
}
const tomorrow = (): string => {
  const d = new Date()
  return new Date(Date.UTC(d.getUTCFullYear(), d.getUTCMonth(), d.getUTCDate() + 1)).toISOString()
}

proxyTest(t, 'tokens per day: reservations are settled with upstream usage, and a used-up day is a 429 insufficient_quota', { proxy: { keysFile: file } }, async (h, t) => {
  const first = await chat(h, daily)
  t.equal(first.statusCode, 200)
  const after = (await usage(h, daily)).body
  const settled = after.usage.day.tokens as number
  t.ok(settled > 0 && settled < 90, `settled to what upstream reported (${settled}), not the ~90 reserved`)
  t.equal(after.usage.day.requests, 1)
  t.strictSame(after.quotas.tokens_per_day, { limit: 250, used: settled, remaining: 250 - settled, resets_at: tomorrow() })
  t.equal(after.quotas.requests_per_day, null, 'no request quota on this key')

  // Each request reserves ~90 and settles ~12: the day admits requests while a reservation still fits.
  const answers = []
  for (let i = 0; i < 30; i++) answers.push(await chat(h, daily, { max_tokens: 200 }))
  const refused = answers.filter((r) => r.statusCode === 429)
  t.ok(refused.length > 0, 'the quota ran out')
  const last = refused[0] as (typeof answers)[number]
  const err = JSON.parse(last.body).error
  t.equal(err.type, 'insufficient_quota')
  t.equal(err.code, 'insufficient_quota')
  t.match(err.message, /quota of tokens per day \(limit 250, used \d+\)\. It resets at /)
  t.equal(last.headers['x-should-retry'], 'false', 'the SDKs must not retry a used-up quota')
  t.equal(last.headers['x-oai-proxy-quota-reset'], tomorrow())
  t.ok(Number(last.headers['retry-after']) > 0)
  const final = (await usage(h, daily)).body
  t.ok(final.usage.day.tokens <= 250, `never more than the quota is used (${final.usage.day.tokens})`)
  t.equal(h.upstream.requests.length, 1 + answers.filter((r) => r.statusCode === 200).length, 'refused requests never went upstream')
  for (const r of [first, ...answers]) assertNoLeak(t, seenByClient(r), [...h.secrets, ...secrets], 'answer')
})

proxyTest(t, 'requests per day count every request of the key, metered or not; the usage route is free', { proxy: { keysFile: file } }, async (h, t) => {
  t.equal((await h.app.inject({ method: 'GET', url: '/v1/models', headers: headers(requests) })).statusCode, 200)
  t.equal((await chat(h, requests)).statusCode, 200)
  const third = await chat(h, requests)
  t.equal(third.statusCode, 429)
  t.match(JSON.parse(third.body).error.message, /quota of requests per day \(limit 2, used 2\)/)
  const { res, body } = await usage(h, requests)
  t.equal(res.statusCode, 200, 'reading the usage is not a request of the quota')
  t.equal(res.headers['cache-control'], 'no-store')
  t.strictSame(body.quotas.requests_per_day, { limit: 2, used: 2, remaining: 0, resets_at: tomorrow() })
  t.equal(body.client.id, idOf(requests))
  t.equal(body.client.kind, 'client-key')
  t.notOk(JSON.stringify(body).includes(hashSecret(requests)), 'no hash in the usage answer')
})

proxyTest(t, 'tokens per month: a request past the month is refused before upstream, and the SDK raises RateLimitError once, without retrying (days within a month: test/plugins/client-keys/quota-store.test.ts)', { listen: true, proxy: { keysFile: file } }, async (h, t) => {
  const client = new OpenAI({ apiKey: monthly, baseURL: `${h.url}/v1`, maxRetries: 2 })
  await client.chat.completions.create({ model: 'gpt-4o-mini', messages: [{ role: 'user', content: 'hello' }], max_tokens: 100 })
  const before = h.upstream.requests.length
  const err = await client.chat.completions.create({ model: 'gpt-4o-mini', messages: [{ role: 'user', content: 'hello' }], max_tokens: 140 }).catch((e: unknown) => e)
  t.ok(err instanceof OpenAI.RateLimitError, 'RateLimitError')
  t.equal((err as InstanceType<typeof OpenAI.RateLimitError>).code, 'insufficient_quota')
  t.equal(h.upstream.requests.length, before, 'nothing went upstream')
  const month = (await usage(h, monthly)).body.quotas.tokens_per_month
  const d = new Date()
  t.equal(month.resets_at, new Date(Date.UTC(d.getUTCFullYear(), d.getUTCMonth() + 1, 1)).toISOString())
})

proxyTest(t, 'keys without quotas are still metered; PROXY_KEY callers learn they are not', { proxy: { keysFile: file } }, async (h, t) => {
  t.equal((await chat(h, plain)).statusCode, 200)
  const body = (await usage(h, plain)).body
  t.strictSame(body.quotas, { tokens_per_day: null, tokens_per_month: null, requests_per_day: null })
  t.equal(body.usage.day.requests, 1)
  t.ok(body.usage.month.tokens > 0)
  const open = await h.app.inject({ method: 'GET', url: '/proxy/usage', headers: h.auth })
  t.strictSame(JSON.parse(open.body), { object: 'proxy.usage', client: { kind: 'proxy-key' }, metered: false, quotas: null, usage: null })
  t.equal((await h.app.inject({ method: 'GET', url: '/v1/proxy/usage' })).statusCode, 401, 'the usage route needs a key')
  t.equal(h.upstream.requests.filter((r) => r.url.includes('proxy')).length, 0, 'never forwarded')
})

proxyTest(t, 'without unprefixed routes the usage is at /v1/proxy/usage only', { proxy: { keysFile: file, unprefixedRoutes: false } }, async (h, t) => {
  t.equal((await usage(h, plain)).res.statusCode, 200)
  t.equal((await usage(h, plain, '/proxy/usage')).res.statusCode, 404)
})

proxyTest(t, 'a key scoped to other endpoints and models still reads its usage', { proxy: { keysFile: file } }, async (h, t) => {
  const { res, body } = await usage(h, scoped)
  t.equal(res.statusCode, 200)
  t.equal(body.quotas.requests_per_day.used, 0)
  t.equal((await chat(h, scoped)).statusCode, 403, 'its scopes still hold on the proxy routes')
})

proxyTest(t, 'a request the token budget refuses gives its quota reservation back', { proxy: { keysFile: file } }, async (h, t) => {
  const refused = await chat(h, tpm, { max_tokens: 100 })
  t.equal(refused.statusCode, 429)
  t.equal(JSON.parse(refused.body).error.code, 'rate_limit_exceeded', 'the per-minute budget refused it')
  const body = (await usage(h, tpm)).body
  t.equal(body.usage.day.tokens, 0, 'tokens refunded')
  t.equal(body.usage.day.requests, 0, 'request refunded')
})

proxyTest(t, '100 concurrent requests at the edge of a quota: exactly as many as fit are admitted', { proxy: { keysFile: file } }, async (h, t) => {
  // Each reserves the same amount; upstream is slow so none settles before all have been admitted or refused.
  const answer = { id: 'chatcmpl-1', object: 'chat.completion', created: 1, model: 'gpt-4o-mini', choices: [], usage: { prompt_tokens: 9, completion_tokens: 3, total_tokens: 12 } }
  h.upstream.script(() => ({ kind: 'delay', ms: 200, then: { kind: 'json', body: answer } }))
  // One request first, read while in flight: what a reservation of this size is.
  const probe = chat(h, racing, { max_tokens: 90 })
  await new Promise((resolve) => setTimeout(resolve, 100))
  const reservation = (await usage(h, racing)).body.usage.day.tokens as number
  t.equal((await probe).statusCode, 200)
  const left = 1000 - ((await usage(h, racing)).body.usage.day.tokens as number)
  const answers = await Promise.all(Array.from({ length: 100 }, () => chat(h, racing, { max_tokens: 90 })))
  const admitted = answers.filter((r) => r.statusCode === 200).length
  t.equal(answers.filter((r) => r.statusCode === 429).length, 100 - admitted, 'the rest refused with 429')
  t.equal(admitted, Math.floor(left / reservation), `admitted ${admitted}: every reservation of ${reservation} that fits in the ${left} left, and not one more`)
  t.equal(h.upstream.requests.length, admitted + 1, 'only the admitted went upstream')
  const used = (await usage(h, racing)).body.usage.day.tokens as number
  t.ok(used <= 1000, `usage after settling (${used}) is within the quota: overshoot 0`)
})

t.test('two replicas on one real Redis share a quota: 100 concurrent requests split between them', { skip: !hasRedis && 'no redis-server' }, async (t) => {
  const server = await startRedis()
  t.teardown(server.stop)
  const slow = { id: 'chatcmpl-1', object: 'chat.completion', created: 1, model: 'gpt-4o-mini', choices: [], usage: { prompt_tokens: 9, completion_tokens: 3, total_tokens: 12 } }
  const replicas = await Promise.all([harness({ proxy: { keysFile: file, redisUrl: server.url } }), harness({ proxy: { keysFile: file, redisUrl: server.url } })])
  t.teardown(async () => { for (const h of replicas) await h.close() })
  for (const h of replicas) h.upstream.script(() => ({ kind: 'delay', ms: 200, then: { kind: 'json', body: slow } }))
  const [a, b] = replicas
  const probe = chat(a, racing, { max_tokens: 90 })
  await new Promise((resolve) => setTimeout(resolve, 100))
  const reservation = (await usage(b, racing)).body.usage.day.tokens as number
  t.ok(reservation > 90, 'the other replica sees the reservation in flight')
  await probe
  const left = 1000 - ((await usage(b, racing)).body.usage.day.tokens as number)
  const answers = await Promise.all(Array.from({ length: 100 }, (_, i) => chat(i % 2 === 0 ? a : b, racing, { max_tokens: 90 })))
  const admitted = answers.filter((r) => r.statusCode === 200).length
  t.equal(admitted, Math.floor(left / reservation), `admitted ${admitted} between the two replicas: as many as fit, not one more`)
  t.equal(a.upstream.requests.length + b.upstream.requests.length, admitted + 1)
  t.ok(((await usage(a, racing)).body.usage.day.tokens as number) <= 1000, 'settled usage within the quota')
  for (const h of replicas) for (const r of answers) assertNoLeak(t, seenByClient(r), [...h.secrets, ...secrets], 'answer')
})

rtTest(t, 'a Realtime session is charged to its key\'s quota: responses stop when the day is used up, and so do new sessions', {
  proxy: { keysFile: file },
  realtime: { tokensPerResponse: 120 }
}, async (h, t) => {
  const c = await open(t, h.wsUrl, { headers: { authorization: `Bearer ${voice}` } })
  for (let i = 0; i < 3; i++) {
    c.send({ type: 'response.create' })
    await c.next('response.done')
  }
  await sleep(50)
  c.send({ type: 'response.create', event_id: 'evt_over' })
  t.match(await c.next('error'), { error: { type: 'insufficient_quota', code: 'insufficient_quota', event_id: 'evt_over', message: /quota of tokens per day \(limit 300, used 360\)/ } })
  c.ws.close()
  await c.closed
  const again = await refused(h.wsUrl, { headers: { authorization: `Bearer ${voice}` } })
  t.equal(again.status, 429, 'a used-up day refuses the next session at the handshake')
  t.match(JSON.parse(again.body), { error: { code: 'insufficient_quota' } })
  t.equal(again.headers['x-should-retry'], 'false')
  const day = (await usage(h, voice)).body.usage.day
  t.strictSame([day.tokens, day.requests], [360, 1], 'the session\'s tokens and one request; the refused handshake is not counted')
})
