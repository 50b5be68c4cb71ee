import { execFileSync } from 'node:child_process'
import { Redis } from 'ioredis'
import Fastify from 'fastify'
import t from 'tap'
import clientKeyRedis from '../../../plugins/client-keys/redis-store.js'
import oaiProxy, { resolveOptions } from '../../../app.js'
import { buildIndex, hashSecret, newKeyId, newSecret, serializeKeys } from '../../../plugins/client-keys/records.js'
import { mintBrowserToken } from '../../../plugins/client-keys/browser-tokens.js'
import { RedisRecords } from '../../../plugins/client-keys/redis-records.js'
import type { ClientKeyRecord } from '../../../plugins/client-keys/schema.js'
import { assertNoLeak, chatBody, harness, seenByClient, sleep, type Harness } from '../../helper.js'
import { hasRedis, startRedis } from '../../redis-helper.js'

/*
 * Client key records in Redis (KEYS_STORE=redis): every replica sees a change within its poll, writers
 * never lose each other's change, a broken value is never overwritten, and a Redis outage keeps the last
 * good keys in force.
 */

if (!hasRedis && process.env.CI === undefined) t.plan(0, 'redis-server is not installed (apt-get install redis-server)')

function record (secret: string, extra: Partial<ClientKeyRecord> = {}): ClientKeyRecord {
  return { id: newKeyId(), name: 'redis', hash: hashSecret(secret), prefix: secret.slice(0, 12), created: new Date().toISOString(), disabled: false, scopes: {}, metadata: {}, ...extra }
}

const chat = (h: Harness, key: string) =>
  h.app.inject({ method: 'POST', url: '/v1/chat/completions', headers: { 'content-type': 'application/json', authorization: `Bearer ${key}` }, payload: JSON.stringify(chatBody()) })

async function until (check: () => Promise<boolean>, ms = 3000): Promise<boolean> {
  const end = Date.now() + ms
  while (Date.now() < end) {
    if (await check()) return true
    await sleep(50)
  }
  return false
}

t.test('options: redis records need a Redis and exclude a keys file', async (t) => {
  t.throws(() => resolveOptions({ openaiKeys: ['sk-test'], keysStore: 'redis' }), { message: 'oai-proxy: invalid option /keysStore: redis needs redisUrl (REDIS_URL)' })
  t.throws(() => resolveOptions({ openaiKeys: ['sk-test'], keysStore: 'redis', keysFile: '/tmp/k', redisUrl: 'redis://127.0.0.1:1' }), { message: /give keysFile \(KEYS_FILE\) or keysStore redis/ })
})

t.test('two replicas share records kept in Redis', async (t) => {
  const server = await startRedis()
  t.teardown(server.stop)
  const admin = new Redis(server.url)
  t.teardown(() => { admin.disconnect() })
  const alice = newSecret()
  const store = new RedisRecords(admin)
  t.teardown(() => store.close())
  await store.update((records) => ({ records: [...records, record(alice)], result: undefined }))

  const a = await harness({ proxy: { keysStore: 'redis', redisUrl: server.url } })
  const b = await harness({ proxy: { keysStore: 'redis', redisUrl: server.url } })
  t.teardown(async () => { await a.close(); await b.close() })
  t.equal((await chat(a, alice)).statusCode, 200, 'a key written before start-up')

  // The store plugin itself, as the admin API uses it (the suite's decorator is encapsulated).
  const plugin = Fastify()
  const pluginRedis = new Redis(server.url)
  await plugin.register(clientKeyRedis, { redis: pluginRedis, pollMs: 100 })
  t.teardown(async () => { await plugin.close(); pluginRedis.disconnect() })
  const keys = plugin.oaiProxyClientKeys
  t.equal(keys.kind, 'redis')
  const bob = newSecret()
  const bobRecord = record(bob)
  await keys.update((records) => ({ records: [...records, bobRecord], result: undefined }))
  t.equal(keys.lookup(bob)?.id, bobRecord.id, 'the writing replica has it when update resolves')
  t.equal(keys.byId(bobRecord.id)?.name, 'redis')
  t.equal(keys.size, 2)
  t.ok(await until(async () => (await chat(a, bob)).statusCode === 200 && (await chat(b, bob)).statusCode === 200), 'the other replicas within their poll')

  // Disabled through the store: refused on both replicas within about a second.
  const t0 = Date.now()
  await store.update((records) => ({ records: records.map((r) => (r.id === bobRecord.id ? { ...r, disabled: true } : r)), result: undefined }))
  t.ok(await until(async () => (await chat(a, bob)).statusCode === 401 && (await chat(b, bob)).statusCode === 401), 'revoked everywhere')
  t.ok(Date.now() - t0 < 2500, `within ${Date.now() - t0} ms`)
  t.ok(await until(async () => keys.lookup(bob) === null), 'and in the plugin by its poll')
  t.equal(await keys.reload(), false, 'nothing new to load')

  // 40 writes racing from two writers (separate connections, as two processes would be): none lost.
  const other = new RedisRecords(pluginRedis)
  t.teardown(() => other.close())
  const ids = await Promise.all(Array.from({ length: 40 }, async (_, i) => {
    const r = record(newSecret(), { name: `race-${i}` })
    await (i % 2 === 0 ? keys : other).update((records) => ({ records: [...records, r], result: undefined }))
    return r.id
  }))
  const listed = await keys.list()
  t.equal(listed.length, 42)
  t.ok(ids.every((id) => listed.some((r) => r.id === id)), 'every racing write is there')
  t.equal(await store.version(), 43, 'one version per write')

  const stored = `${await admin.get('oaiproxy:keys:records') as string}${await admin.get('oaiproxy:keys:records:previous') as string}`
  for (const s of [alice, bob]) t.notOk(stored.includes(s), 'no secret stored in Redis, only its hash')
  assertNoLeak(t, a.logs.join('') + b.logs.join(''), [...a.secrets, alice, bob], 'logs')

  // A change that throws writes nothing.
  await t.rejects(store.update(() => { throw new Error('no such key') }), { message: 'no such key' })
  t.equal(await store.version(), 43)

  // Quotas of a Redis-kept key are counted in Redis too, shared by both replicas.
  const quota = newSecret()
  await store.update((records) => ({ records: [...records, record(quota, { limits: { requestsPerDay: 3 } })], result: undefined }))
  t.ok(await until(async () => (await a.app.inject({ url: '/v1/proxy/usage', headers: { authorization: `Bearer ${quota}` } })).statusCode === 200 && (await b.app.inject({ url: '/v1/proxy/usage', headers: { authorization: `Bearer ${quota}` } })).statusCode === 200))
  const statuses = await Promise.all([a, b, a, b, a].map(async (h) => (await chat(h, quota)).statusCode))
  t.equal(statuses.filter((s) => s === 200).length, 3, 'three requests a day, between the two replicas')
  for (const r of [await chat(a, quota)]) assertNoLeak(t, seenByClient(r), [...a.secrets, quota], 'answer')
})

t.test('the admin API writes records kept in Redis through the suite\'s own Redis client', async (t) => {
  const server = await startRedis()
  t.teardown(server.stop)
  const adminKey = `admin-${'k'.repeat(40)}`
  const h = await harness({ proxy: { keysStore: 'redis', redisUrl: server.url, admin: { key: adminKey } } })
  t.teardown(h.close)
  const created = await h.app.inject({ method: 'POST', url: '/admin/keys', headers: { authorization: `Bearer ${adminKey}`, 'content-type': 'application/json' }, payload: JSON.stringify({ name: 'via-admin' }) })
  t.equal(created.statusCode, 201, created.body)
  const { secret } = JSON.parse(created.body) as { secret: string }
  t.equal((await chat(h, secret)).statusCode, 200, 'usable at once on the replica that wrote it')
  assertNoLeak(t, h.logs.join(''), [...h.secrets, secret, adminKey], 'logs')
})

t.test('browser tokens minted against a record kept in Redis: usable, and revoked with it', async (t) => {
  const server = await startRedis()
  t.teardown(server.stop)
  const admin = new Redis(server.url)
  t.teardown(() => { admin.disconnect() })
  const store = new RedisRecords(admin)
  t.teardown(() => store.close())
  const app = record(newSecret(), { name: 'web-app' })
  await store.update(() => ({ records: [app], result: undefined }))
  const secret = `tok-secret-${'x'.repeat(40)}`
  const origin = 'https://app.example'
  const h = await harness({ proxy: { keysStore: 'redis', redisUrl: server.url, browserTokens: { secrets: [secret] }, cors: { origins: [origin] } } })
  t.teardown(h.close)
  const token = mintBrowserToken({ sub: 'user-1', key: app.id, origin }, [secret], buildIndex([app]).byId).token
  const call = () => h.app.inject({ method: 'POST', url: '/v1/chat/completions', headers: { 'content-type': 'application/json', authorization: `Bearer ${token}`, origin }, payload: JSON.stringify(chatBody()) })
  t.equal((await call()).statusCode, 200)
  await store.update((records) => ({ records: records.map((r) => ({ ...r, disabled: true })), result: undefined }))
  t.ok(await until(async () => (await call()).statusCode === 401), 'the record disabled in Redis revokes its tokens on this replica within its poll')
  assertNoLeak(t, h.logs.join(''), [...h.secrets, secret, token], 'logs')
})

t.test('a broken value: start-up stops naming the line; while running the last good keys stay and nothing is overwritten', async (t) => {
  const server = await startRedis()
  t.teardown(server.stop)
  const admin = new Redis(server.url)
  t.teardown(() => { admin.disconnect() })
  const good = newSecret()
  await admin.set('oaiproxy:keys:records', `${serializeKeys([record(good)])}{"id":"key_broken"}\n`)
  const failing = Fastify()
  await t.rejects(async () => { await failing.register(oaiProxy, { openaiKeys: ['sk-test'], keysStore: 'redis', redisUrl: server.url }).ready() }, { message: /^oai-proxy: invalid option \/keysStore \(KEYS_STORE=redis\): line 2: / })
  await failing.close()

  await admin.set('oaiproxy:keys:records', serializeKeys([record(good)]))
  const h = await harness({ proxy: { keysStore: 'redis', redisUrl: server.url } })
  t.teardown(h.close)
  t.equal((await chat(h, good)).statusCode, 200)
  const broken = 'not json\n'
  await admin.set('oaiproxy:keys:records', broken)
  await admin.incr('oaiproxy:keys:version')
  t.ok(await until(async () => h.logs.join('').includes('client key records unreadable in redis')), 'logged')
  t.equal((await chat(h, good)).statusCode, 200, 'the last good keys stay in force')
  const store = new RedisRecords(admin)
  t.teardown(() => store.close())
  await t.rejects(store.update((records) => ({ records, result: undefined })), { name: 'KeysFileError', message: 'line 1: not valid JSON' })
  t.equal(await admin.get('oaiproxy:keys:records'), broken, 'never overwritten')
  // A value of another type is an error, never "no keys".
  await admin.del('oaiproxy:keys:records')
  await admin.lpush('oaiproxy:keys:records', 'x')
  await t.rejects(store.read(), { message: /WRONGTYPE/ })
  await admin.del('oaiproxy:keys:records')
  await admin.set('oaiproxy:keys:records', serializeKeys([]))
  await admin.incr('oaiproxy:keys:version')
  t.ok(await until(async () => (await chat(h, good)).statusCode === 401), 'a repaired value is loaded')
  t.ok(h.logs.join('').includes('client key records readable again'))
})

t.test('Redis down at start: the proxy starts, refuses client keys until the records load', async (t) => {
  const server = await startRedis()
  t.teardown(server.stop)
  const key = newSecret()
  const admin = new Redis(server.url)
  await admin.set('oaiproxy:keys:records', serializeKeys([record(key)]))
  admin.disconnect()
  await server.stop()
  const h = await harness({ proxy: { keysStore: 'redis', redisUrl: server.url } })
  t.teardown(h.close)
  t.equal((await chat(h, key)).statusCode, 401, 'no records yet: fail closed')
  t.ok(h.logs.join('').includes('client key records unreadable in redis'))
  await server.start()
  const again = new Redis(server.url)
  t.teardown(() => { again.disconnect() })
  await again.set('oaiproxy:keys:records', serializeKeys([record(key)]))
  t.ok(await until(async () => (await chat(h, key)).statusCode === 200, 8000), 'loaded once Redis is back')
})

t.test('a write that keeps losing its race gives up with a clear error', async (t) => {
  const server = await startRedis()
  t.teardown(server.stop)
  const admin = new Redis(server.url)
  t.teardown(() => { admin.disconnect() })
  const store = new RedisRecords(admin, 'race')
  t.teardown(() => store.close())
  let n = 0
  // The change itself writes the watched key each time: every EXEC fails.
  await t.rejects(store.update((records) => {
    n++
    // Synchronously, from another client (redis-cli comes with redis-server): lands between WATCH and EXEC.
    execFileSync('redis-cli', ['-p', String(server.port), 'SET', 'race:records', ''], { stdio: 'ignore' })
    return { records, result: undefined }
  }).then(() => undefined), { name: 'KeysFileError', message: /kept changing/ })
  t.equal(n, 20)
})
