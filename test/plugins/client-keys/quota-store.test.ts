import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import Fastify from 'fastify'
import { Redis } from 'ioredis'
import t, { type Test } from 'tap'
import { MemoryQuotas, quotaWindows, RedisQuotas } from '../../../plugins/client-keys/quota-store.js'
import { quotaSpent } from '../../../routes/realtime/session.js'
import usageFile, { readUsageFile } from '../../../plugins/client-keys/usage-file.js'
import { writeKeysFile } from '../../../plugins/client-keys/file-io.js'
import { hashSecret, newKeyId, newSecret } from '../../../plugins/client-keys/records.js'
import type { ClientKeyRecord } from '../../../plugins/client-keys/schema.js'
import { chatBody, harness, sleep } from '../../helper.js'
import { hasRedis, startRedis } from '../../redis-helper.js'

/*
 * Quota counters (plugins/client-keys/quota-store.ts): UTC calendar windows, all-or-nothing reservations, settle and
 * refund, in memory and in a real Redis; the usage file that carries memory counts across restarts.
 */

const at = (iso: string) => Date.parse(iso)
const dir = mkdtempSync(join(tmpdir(), 'oai-quota-store-'))
t.teardown(() => rmSync(dir, { recursive: true, force: true }))

t.test('windows are UTC days and months, across a year end', async (t) => {
  const w = quotaWindows(at('2026-12-31T23:59:59.999Z'))
  t.strictSame([w.day, w.month], ['2026-12-31', '2026-12'])
  t.equal(new Date(w.dayReset).toISOString(), '2027-01-01T00:00:00.000Z')
  t.equal(new Date(w.monthReset).toISOString(), '2027-01-01T00:00:00.000Z')
  const feb = quotaWindows(at('2028-02-29T12:00:00Z'))
  t.equal(new Date(feb.monthReset).toISOString(), '2028-03-01T00:00:00.000Z', 'a leap February')
})

/** The same behaviour from both stores. */
async function behaviour (t: Test, store: { reserve: MemoryQuotas['reserve'] | RedisQuotas['reserve'], usage: MemoryQuotas['usage'] | RedisQuotas['usage'] }, account: string): Promise<void> {
  const noon = at('2026-12-05T12:00:00Z')
  const q = { tokensPerDay: 100, tokensPerMonth: 150, requestsPerDay: 3 }
  const a = await store.reserve(account, 60, q, noon)
  t.ok(a.admitted)
  const b = await store.reserve(account, 50, q, noon)
  t.strictSame(b.refused, { quota: 'tokensPerDay', limit: 100, used: 60, resetAt: at('2026-12-06T00:00:00Z') }, 'all or nothing: the day would overflow')
  await b.settle(10)
  await b.refund()
  t.strictSame((await store.usage(account, noon)).day, { start: '2026-12-05T00:00:00.000Z', resetAt: '2026-12-06T00:00:00.000Z', tokens: 60, requests: 1 }, 'a refusal charges nothing, and its settle/refund do nothing')
  await a.settle(20)
  await a.settle(99)
  t.equal((await store.usage(account, noon)).day.tokens, 20, 'settled once, to the real count')
  const c = await store.reserve(account, 30, q, noon)
  await c.refund()
  t.strictSame((await store.usage(account, noon)).day, { start: '2026-12-05T00:00:00.000Z', resetAt: '2026-12-06T00:00:00.000Z', tokens: 20, requests: 1 }, 'a refund gives back the tokens and the request')
  t.ok((await store.reserve(account, 0, q, noon)).admitted)
  t.ok((await store.reserve(account, 0, q, noon)).admitted)
  t.equal((await store.reserve(account, 0, q, noon)).refused?.quota, 'requestsPerDay', 'the fourth request of the day')
  // The next day: a fresh day, the same month.
  const tomorrow = at('2026-12-06T00:00:00Z')
  const d = await store.reserve(account, 100, q, tomorrow)
  t.ok(d.admitted, 'a new day')
  const e = await store.reserve(account, 40, q, tomorrow)
  t.strictSame(e.refused, { quota: 'tokensPerDay', limit: 100, used: 100, resetAt: at('2026-12-07T00:00:00Z') })
  const f = await store.reserve(account, 31, { tokensPerMonth: 150 }, tomorrow)
  t.strictSame(f.refused, { quota: 'tokensPerMonth', limit: 150, used: 120, resetAt: at('2027-01-01T00:00:00Z') }, 'the month remembers yesterday')
  await d.settle(-5)
  t.equal((await store.usage(account, tomorrow)).day.tokens, 0, 'never below zero')
  const session = await store.reserve(account, 0, {}, tomorrow, 0)
  await session.settle(7)
  t.strictSame((await store.usage(account, tomorrow)).day, { start: '2026-12-06T00:00:00.000Z', resetAt: '2026-12-07T00:00:00.000Z', tokens: 7, requests: 1 }, 'a charge of no request')
}

t.test('memory quotas', async (t) => {
  const m = new MemoryQuotas()
  await behaviour(t, m, 'key_a')
  const snap = m.snapshot(at('2026-12-06T08:00:00Z'))
  t.strictSame(Object.keys(snap).sort(), ['key_a|d|2026-12-06', 'key_a|m|2026-12'], 'only the current day and month are kept')
  const fresh = new MemoryQuotas()
  fresh.restore(snap)
  t.strictSame(fresh.usage('key_a', at('2026-12-06T08:00:00Z')), m.usage('key_a', at('2026-12-06T08:00:00Z')))
})

t.test('redis quotas', { skip: !hasRedis && 'no redis-server' }, async (t) => {
  const server = await startRedis()
  t.teardown(server.stop)
  const redis = new Redis(server.url)
  t.teardown(() => { redis.disconnect() })
  const store = new RedisQuotas(redis)
  t.ok(new RedisQuotas(redis), 'a second store on the same client reuses its scripts')
  await behaviour(t, store, 'key_r')
  t.strictSame((await store.usage('key_none', at('2026-12-05T12:00:00Z'))).day.tokens, 0, 'an account never seen has used nothing')
  t.ok(await redis.pttl('oaiproxy:quota:{key_r}:m:2026-12') > 300 * 86_400_000, 'months are kept for a year of reporting')
})

const secret = newSecret()
const record: ClientKeyRecord = { id: newKeyId(), name: 'persist', hash: hashSecret(secret), prefix: secret.slice(0, 12), created: new Date().toISOString(), disabled: false, scopes: {}, limits: { tokensPerDay: 1_000_000 }, metadata: {} }

t.test('usage survives a restart through the usage file', async (t) => {
  const keysFile = join(dir, 'keys.jsonl')
  await writeKeysFile(keysFile, [record])
  const chat = (h: Awaited<ReturnType<typeof harness>>) => h.app.inject({ method: 'POST', url: '/v1/chat/completions', headers: { 'content-type': 'application/json', authorization: `Bearer ${secret}` }, payload: chatBody() })
  const used = async (h: Awaited<ReturnType<typeof harness>>) => JSON.parse((await h.app.inject({ url: '/v1/proxy/usage', headers: { authorization: `Bearer ${secret}` } })).body).usage.day
  const first = await harness({ proxy: { keysFile } })
  t.equal((await chat(first)).statusCode, 200)
  const before = await used(first)
  await first.close()
  t.strictSame(Object.values(await readUsageFile(`${keysFile}.usage.json`)).length, 2, 'written at close')
  const second = await harness({ proxy: { keysFile } })
  t.strictSame(await used(second), before, 'read back at start')
  t.equal((await chat(second)).statusCode, 200)
  await second.close()
  const third = await harness({ proxy: { keysFile } })
  t.equal((await used(third)).requests, 2)
  await third.close()
})

t.test('the usage file: written when counts change, an unreadable one set aside, a failed write retried', async (t) => {
  const file = join(dir, 'u.json')
  const quotas = new MemoryQuotas()
  const logs: string[] = []
  const app = Fastify({ logger: { level: 'warn', stream: { write: (s: string) => { logs.push(s) } } } })
  await app.register(usageFile, { file, quotas, flushMs: 20 })
  await app.ready()
  await sleep(60)
  t.notOk(existsSync(file), 'nothing counted, nothing written')
  quotas.reserve('key_x', 5, {}, Date.now())
  await sleep(80)
  t.equal(Object.keys(await readUsageFile(file)).length, 2, 'written by the timer')
  // A directory where the file goes: the rename fails (even for root, which CI runs as).
  rmSync(file)
  mkdirSync(file)
  quotas.reserve('key_x', 5, {}, Date.now())
  await sleep(80)
  t.ok(logs.some((l) => l.includes('usage file not written')), 'a failed write is logged')
  rmSync(file, { recursive: true })
  await sleep(80)
  const day = Object.entries(await readUsageFile(file)).find(([k]) => k.startsWith('key_x|d|'))
  t.strictSame(day?.[1], [10, 2], 'and retried')
  await app.close()
  t.strictSame(readdirSync(dir).filter((n) => n.endsWith('.tmp')), [], 'no temp file left by the failed writes')

  writeFileSync(file, '{"version":2}')
  const again = Fastify({ logger: { level: 'warn', stream: { write: (s: string) => { logs.push(s) } } } })
  await again.register(usageFile, { file, quotas: new MemoryQuotas() })
  await again.ready()
  await again.close()
  t.ok(logs.some((l) => l.includes('usage file unreadable')))
  t.ok(readdirSync(dir).some((n) => n.startsWith('u.json.unreadable-')), 'kept aside, not overwritten')
  t.equal(readFileSync(readdirSync(dir).map((n) => join(dir, n)).find((n) => n.includes('unreadable')) as string, 'utf8'), '{"version":2}')
  await t.rejects(readUsageFile(dir), 'a directory is not a usage file')
})

t.test('a Realtime session stops at whichever token quota is used up first', async (t) => {
  const m = new MemoryQuotas()
  const noon = at('2026-12-05T12:00:00Z')
  m.reserve('key_rt', 120, {}, noon, 0)
  t.equal(quotaSpent({ tokensPerDay: 200, tokensPerMonth: 500 }, m.usage('key_rt', noon)), null, 'some left of both')
  const month = quotaSpent({ tokensPerDay: 200, tokensPerMonth: 100 }, m.usage('key_rt', noon))
  t.match(month, { refusal: { code: 'insufficient_quota', message: /tokens per month \(limit 100, used 120\)/ }, resetAt: at('2027-01-01T00:00:00Z') })
  t.match(quotaSpent({ tokensPerDay: 120 }, m.usage('key_rt', noon)), { resetAt: at('2026-12-06T00:00:00Z') })
})
