import t from 'tap'
import { Redis } from 'ioredis'
import { KeyPool, fingerprint, type KeyState } from '../../../plugins/upstream/key-pool.js'
import { KEY_STATE_HASH, KeyStateSync } from '../../../plugins/upstream/key-state-sync.js'
import type { FastifyBaseLogger } from 'fastify'
import { parseGoDuration } from '../../../lib/durations.js'
import { canaryKey, chatBody, harness, proxyTest, sleep, type Harness } from '../../helper.js'
import { hasRedis, startRedis } from '../../redis-helper.js'
import type { RecordedRequest } from '../../../testing/fake-openai.js'

/*
 * Issue 14: upstream key health. Keys are checked at start-up and on a timer, dead ones leave rotation
 * before a user's request fails on them and come back when they recover; rotation prefers keys with
 * headroom; with Redis, one replica's knowledge of a key is every replica's.
 */

const bearer = (r: RecordedRequest) => /^Bearer (.+)$/.exec(r.headers.authorization ?? '')?.[1]
const chat = (h: Harness) => h.app.inject({ method: 'POST', url: '/v1/chat/completions', headers: { ...h.auth, 'content-type': 'application/json' }, payload: JSON.stringify(chatBody()) })
const error = (status: number, code: string, type = 'invalid_request_error') => ({ kind: 'json' as const, status, body: { error: { message: `fake ${code}`, type, param: null, code } } })

t.test('Go durations as upstream sends them', async (t) => {
  t.strictSame(['1s', '6m0s', '20ms', '1h2m3.5s', '1.5s', '7us', undefined, 'soon', ''].map(parseGoDuration), [1000, 360_000, 20, 3_723_500, 1500, 0.007, 0, 0, 0])
})

t.test('the pool: enable, headroom, rests, shared states', async (t) => {
  let now = 1000
  const pool = new KeyPool(['a', 'b', 'c'], () => now)
  const changes: Array<[string, KeyState]> = []
  pool.onChange = (id, state) => changes.push([id, state])
  const [a, b, c] = ['a', 'b', 'c'].map((k) => fingerprint(k)) as [string, string, string]

  // Headroom: a key upstream says is nearly spent is passed over while others have more.
  pool.observe(a, { 'x-ratelimit-remaining-requests': '2', 'x-ratelimit-limit-requests': '100', 'x-ratelimit-remaining-tokens': '90000', 'x-ratelimit-limit-tokens': '100000' })
  t.strictSame([pool.acquire()?.key, pool.acquire()?.key, pool.acquire()?.key], ['b', 'c', 'b'], 'a (2% left) is used only after the others')
  pool.observe(a, { 'x-ratelimit-remaining-requests': ['60'], 'x-ratelimit-limit-requests': '100' })
  t.equal(pool.acquire()?.key, 'a', 'with headroom again it is back in the rotation')
  // The bands: 30% left beats 10%, which beats 2%; the same band rotates least recently used.
  const bands = new KeyPool(['p', 'q', 'r'])
  const left = (k: string, n: number) => bands.observe(fingerprint(k), { 'x-ratelimit-remaining-requests': String(n), 'x-ratelimit-limit-requests': '100' })
  left('p', 2)
  left('q', 10)
  left('r', 30)
  t.strictSame([bands.acquire()?.key, bands.acquire()?.key], ['r', 'r'])
  left('r', 8)
  t.strictSame([bands.acquire()?.key, bands.acquire()?.key], ['q', 'r'], '10% and 8% are one band: least recently used')
  bands.coolDown('key_unknown', 1000)
  t.strictSame(bands.describe().map((k) => k.state), ['active', 'active', 'active'], 'a rest for a key the pool does not hold changes nothing')
  pool.observe(c, { 'x-ratelimit-remaining-requests': 'x', 'x-ratelimit-limit-requests': '0' })
  pool.observe('key_unknown', { 'x-ratelimit-remaining-requests': '0' })
  pool.observe(b, {})
  t.equal(changes.length, 0, 'no headers, unknown keys and unreadable values change nothing')

  // Nothing left: the key rests until its window resets (at least 1 s, at most a minute).
  pool.observe(b, { 'x-ratelimit-remaining-requests': '0', 'x-ratelimit-limit-requests': '100', 'x-ratelimit-reset-requests': '6m0s' })
  t.strictSame(changes.at(-1), [b, { disabled: null, coolUntil: 61_000 }])
  t.equal(pool.describe()[1]?.state, 'cooling')
  pool.observe(c, { 'x-ratelimit-remaining-requests': '5', 'x-ratelimit-limit-requests': '100', 'x-ratelimit-remaining-tokens': '0', 'x-ratelimit-limit-tokens': '100' })
  t.strictSame(changes.at(-1), [c, { disabled: null, coolUntil: 2000 }], 'no reset given: one second')
  pool.coolDown(c, 500)
  t.equal(changes.length, 2, 'a shorter rest than the one in force is no change')

  pool.disable(a, 'insufficient_quota')
  pool.disable(a, 'invalid_api_key')
  t.strictSame(changes.at(-1), [a, { disabled: 'insufficient_quota', coolUntil: 0 }])
  t.equal(changes.length, 3, 'disabling twice is one change')
  t.equal(pool.enable(b), false, 'enabling an enabled key does nothing')
  t.equal(pool.enable(a), true)
  t.strictSame(changes.at(-1), [a, { disabled: null, coolUntil: 0 }])
  t.equal(pool.enable('key_unknown'), false)

  // States from another replica are applied as they are and not reported again.
  pool.apply(c, { disabled: 'invalid_api_key', coolUntil: 0 })
  pool.apply('key_unknown', { disabled: null, coolUntil: 0 })
  t.equal(changes.length, 4)
  now = 70_000
  t.strictSame(pool.describe().map((k) => k.state), ['active', 'active', 'invalid_api_key'])
  t.equal(pool.keys.length, 3)
})

proxyTest(t, 'health checks take dead keys out before any request fails on them, and bring recovered ones back', {
  keyCount: 3,
  proxy: { keyHealth: { intervalMs: 150 } }
}, async (h, t) => {
  const [good, dead, broke] = h.keys as [string, string, string]
  let brokeRecovered = false
  h.upstream.script((r) => {
    const key = bearer(r)
    if (key === dead) return error(401, 'invalid_api_key')
    if (key === broke && r.method === 'POST' && !brokeRecovered) return error(429, 'insufficient_quota', 'insufficient_quota')
    return undefined
  })
  await h.upstream.waitFor((r) => bearer(r) === broke && r.url === '/v1/embeddings')
  await sleep(50)
  const logs = () => h.logs.map((l) => JSON.parse(l) as { msg: string, key?: string, reason?: string, by?: string })
  t.ok(logs().some((l) => l.msg === 'oai-proxy: upstream key taken out of rotation' && l.key === fingerprint(dead) && l.reason === 'invalid_api_key' && l.by === 'health-check'))
  t.ok(logs().some((l) => l.msg === 'oai-proxy: upstream key taken out of rotation' && l.key === fingerprint(broke) && l.reason === 'insufficient_quota'), 'out of credit: found by the billed probe, though it lists models')
  const before = h.upstream.requests.length
  for (let i = 0; i < 6; i++) t.equal((await chat(h)).statusCode, 200)
  const used = h.upstream.requests.slice(before).filter((r) => r.url === '/v1/chat/completions').map(bearer)
  t.strictSame(new Set(used), new Set([good]), 'users only ever reach the good key')

  brokeRecovered = true
  t.ok(await waitLog(h, (l) => l.includes('back in rotation') && l.includes(fingerprint(broke))), 'the recovered key comes back')
  const after = h.upstream.requests.length
  for (let i = 0; i < 4; i++) await chat(h)
  t.strictSame(new Set(h.upstream.requests.slice(after).filter((r) => r.url === '/v1/chat/completions').map(bearer)), new Set([good, broke]))
  t.notOk(h.logs.some((l) => l.includes('back in rotation') && l.includes(fingerprint(dead))), 'a revoked key stays out')
})

async function waitLog (h: Harness, match: (line: string) => boolean, ms = 3000): Promise<boolean> {
  const end = Date.now() + ms
  while (Date.now() < end) {
    if (h.logs.some(match)) return true
    await sleep(25)
  }
  return false
}

proxyTest(t, 'a check that cannot tell (upstream 5xx, a rate limit, another refusal) changes nothing but a rest', {
  keyCount: 1,
  proxy: { keyHealth: { intervalMs: 100 } }
}, async (h, t) => {
  const answers = [error(500, 'server_error', 'server_error'), error(429, 'rate_limit_exceeded', 'requests'), error(403, 'unsupported_country_region_territory')]
  let n = 0
  h.upstream.script((r) => (r.url === '/v1/models' ? answers[n++ % 3] : undefined))
  await h.upstream.waitFor(() => n >= 4)
  t.notOk(h.logs.some((l) => l.includes('taken out of rotation')))
  h.upstream.script(undefined)
  t.equal((await chat(h)).statusCode, 200)
})

proxyTest(t, 'a check that cannot reach upstream changes nothing; closing stops the checks at once', {
  keyCount: 1,
  proxy: { keyHealth: { intervalMs: 100 } }
}, async (h, t) => {
  h.upstream.script(() => ({ kind: 'reset' }))
  await h.upstream.waitFor((r) => r.url === '/v1/models')
  await sleep(150)
  h.upstream.script(() => ({ kind: 'stall' }))
  await sleep(150)
  const t0 = Date.now()
  await h.app.close()
  t.ok(Date.now() - t0 < 2000, 'a check in flight does not hold the close')
  t.notOk(h.logs.some((l) => l.includes('taken out of rotation')))
})

t.test('with Redis, one replica learning that a key is out of quota takes it out everywhere', { skip: !hasRedis && 'no redis-server' }, async (t) => {
  const server = await startRedis()
  t.teardown(server.stop)
  const keys = [canaryKey(), canaryKey(), canaryKey()]
  const replica = () => harness({ fake: { validKeys: undefined }, proxy: { openaiKeys: keys, redisUrl: server.url } })
  const a = await replica()
  const b = await replica()
  t.teardown(async () => { await a.close(); await b.close() })
  const [spent, fine, extra] = keys as [string, string, string]
  a.upstream.script((r) => (bearer(r) === spent ? error(429, 'insufficient_quota', 'insufficient_quota') : undefined))
  // Least recently used: A's first request tries `spent`, learns, and is answered through `fine`.
  t.equal((await chat(a)).statusCode, 200)
  t.strictSame(a.upstream.requests.map(bearer), [spent, fine], 'tried the least recently used, then the next')
  await sleep(2500)
  for (let i = 0; i < 4; i++) t.equal((await chat(b)).statusCode, 200)
  t.strictSame(new Set(b.upstream.requests.map(bearer)), new Set([fine, extra]), 'B never tries the key A found spent')
  t.ok(b.logs.some((l) => l.includes('upstream key state changed') && l.includes('another replica')))
  // Values that are not ours in the hash are ignored, not applied.
  const redis = new Redis(server.url)
  t.teardown(() => { redis.disconnect() })
  await redis.hset(KEY_STATE_HASH, fingerprint(fine), JSON.stringify({ at: 'soon', coolUntil: 0, disabled: 'insufficient_quota' }))
  await redis.hset(KEY_STATE_HASH, fingerprint(extra), 'not json')
  // A third replica started later learns it at start-up.
  const c = await replica()
  t.teardown(c.close)
  for (let i = 0; i < 3; i++) await chat(c)
  t.strictSame(new Set(c.upstream.requests.map(bearer)), new Set([fine, extra]), 'nor does a late replica; values that are not ours change nothing')
  for (const h of [a, b, c]) t.notOk(keys.some((k) => h.logs.join('').includes(k)), 'no key in the logs')
})

t.test('key state sync on its own: every shared state applied once, an outage logged once and its end too', { skip: !hasRedis && 'no redis-server' }, async (t) => {
  const server = await startRedis()
  t.teardown(server.stop)
  const redis = new Redis(server.url, { enableOfflineQueue: false, maxRetriesPerRequest: 0, retryStrategy: () => 50 })
  redis.on('error', () => {})
  t.teardown(() => { redis.disconnect() })
  await new Promise((resolve) => redis.once('ready', resolve))
  const lines: string[] = []
  const log = { info: (o: unknown, m?: string) => lines.push(`${m ?? String(o)} ${JSON.stringify(o)}`), warn: (o: unknown, m?: string) => lines.push(`${m ?? ''} ${JSON.stringify(o)}`) } as unknown as FastifyBaseLogger
  const pool = new KeyPool(['a', 'b'])
  const sync = new KeyStateSync(pool, redis, log)
  const [a, b] = ['a', 'b'].map((k) => fingerprint(k)) as [string, string]
  await redis.hset(KEY_STATE_HASH, a, JSON.stringify({ disabled: 'invalid_api_key', coolUntil: 0, at: Date.now() }))
  await redis.hset(KEY_STATE_HASH, b, JSON.stringify({ disabled: null, coolUntil: Date.now() + 60_000, at: Date.now() }))
  await sync.start(60_000)
  t.strictSame(pool.describe().map((k) => k.state), ['invalid_api_key', 'cooling'], 'a revoked key and a resting one, from another replica')
  t.equal(lines.filter((l) => l.includes('upstream key state changed')).length, 1, 'only a change of rotation is logged, not a rest')
  await redis.hset(KEY_STATE_HASH, a, JSON.stringify({ disabled: null, coolUntil: 0, at: Date.now() + 1 }))
  await sync.poll()
  t.equal(pool.describe()[0]?.state, 'active')
  t.match(lines.at(-1), /"state":"active"/, 'back in rotation, logged as active')
  await server.stop()
  await sleep(100)
  await sync.poll()
  await sync.poll()
  t.equal(lines.filter((l) => l.includes('cannot be shared')).length, 1, 'an outage is logged once')
  const ready = new Promise((resolve) => redis.once('ready', resolve))
  await server.start()
  await ready
  await sync.poll()
  t.ok(lines.some((l) => l.includes('shared through redis again')), 'and its end')
  await sync.stop()
})
