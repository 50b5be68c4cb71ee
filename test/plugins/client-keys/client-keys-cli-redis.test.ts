import { mkdtempSync, rmSync } from 'node:fs'
import { createServer } from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { Redis } from 'ioredis'
import t, { type Test } from 'tap'
import { quotaWindows, RedisQuotas } from '../../../plugins/client-keys/quota-store.js'
import { browserTokenVerifier } from '../../../plugins/client-keys/browser-tokens.js'
import { runKeysCli } from '../../../plugins/client-keys/cli.js'
import { redisAddress } from '../../../plugins/client-keys/cli-redis.js'
import { buildIndex, hashSecret } from '../../../plugins/client-keys/records.js'
import { RedisRecords } from '../../../plugins/client-keys/redis-records.js'
import { hasRedis, startRedis, type RedisServer } from '../../redis-helper.js'

/*
 * The keys CLI with the records in Redis (KEYS_STORE=redis / --store redis) and `keys usage` reading the
 * counters there; Redis unreachable, refusing us, or silent. Every output is scanned at the end: no hash,
 * no password, and a secret only in the one output that handed it out.
 */

if (!hasRedis && process.env.CI === undefined) t.plan(0, 'redis-server is not installed (apt-get install redis-server)')

const TOKEN_SECRET = 'a-token-secret-of-at-least-32-characters'
const ORIGIN = 'https://app.example'
const PASSWORD = 'hunter2pass'

const outputs: Array<{ text: string, shows?: string }> = []
const secrets: string[] = []

async function cli (args: string[], env: Record<string, string> = {}) {
  let out = ''
  let err = ''
  const code = await runKeysCli(args, env, { out: (s) => { out += s }, err: (s) => { err += s } })
  outputs.push({ text: out + err })
  return { code, out, err }
}

/** The secret printed by the last output, which only it may show. */
function handedOut (secret: string): string {
  ;(outputs.at(-1) as { shows?: string }).shows = secret
  secrets.push(secret)
  return secret
}

async function redisFor (t: Test): Promise<{ server: RedisServer, admin: Redis, records: RedisRecords }> {
  const server = await startRedis()
  const admin = new Redis(server.url)
  const records = new RedisRecords(admin)
  t.teardown(async () => {
    records.close()
    admin.disconnect()
    await server.stop()
  })
  return { server, admin, records }
}

const closedPort = () => new Promise<number>((resolve) => {
  const s = createServer().listen(0, '127.0.0.1', () => {
    const { port } = s.address() as { port: number }
    s.close(() => resolve(port))
  })
})

t.test('every command on records kept in Redis', async (t) => {
  const { server, admin, records } = await redisFor(t)
  const env = { KEYS_STORE: 'redis', REDIS_URL: server.url }
  const where = `Redis at 127.0.0.1:${server.port} (oaiproxy:keys)`

  const created = await cli(['create', '--name', 'alice', '--models', 'gpt-4o-mini', '--tokens-per-day', '1000'], env)
  t.equal(created.code, 0, created.err)
  const [, id, first] = /^Created (key_[a-z2-7]{12}) \(alice\)\. The secret is shown only now; store it safely:\n(oarp-\S{43})\n$/.exec(created.out) as unknown as [string, string, string]
  handedOut(first)
  t.match((await records.read()).records, [{ id, name: 'alice', hash: hashSecret(first), limits: { tokensPerDay: 1000 } }], 'written to Redis')
  const bob = JSON.parse((await cli(['create', '--name', 'bob', '--json', '--store', 'redis', '--redis-url', server.url])).out) as { id: string, secret: string }
  handedOut(bob.secret)

  t.match((await cli(['list'], env)).out, new RegExp(`^${id}  ${first.slice(0, 12)}…  enabled .*  alice\n${bob.id} .*  bob\n$`))
  t.match(JSON.parse((await cli(['list', '--json'], env)).out), [{ id, name: 'alice' }, { id: bob.id }])
  t.strictSame(await cli(['revoke', id], env), { code: 0, out: `${id} revoked (disabled)\n`, err: '' })
  t.equal((await records.read()).records[0]?.disabled, true)
  t.strictSame(await cli(['enable', id], env), { code: 0, out: `${id} enabled\n`, err: '' })
  t.equal((await records.read()).records[0]?.disabled, false)
  const rotated = JSON.parse((await cli(['rotate', id, '--json'], env)).out) as { id: string, secret: string }
  handedOut(rotated.secret)
  const index = buildIndex((await records.read()).records)
  t.equal(index.lookup(first), null, 'the old secret is gone')
  t.equal(index.lookup(rotated.secret)?.id, id, 'the new one is the same key')

  // A browser token minted against the record in Redis, which the proxy would accept.
  const token = await cli(['token', '--key', id, '--sub', 'user-1', '--origin', ORIGIN], { ...env, TOKEN_SECRETS: TOKEN_SECRET })
  t.equal(token.code, 0, token.err)
  t.match(browserTokenVerifier([TOKEN_SECRET], index.byId).verify(token.out.split('\n')[0] as string, ORIGIN), { ok: true, entry: { id } })
  t.match(await cli(['token', '--key', 'key_aaaaaaaaaaaa', '--sub', 'u', '--origin', ORIGIN], { ...env, TOKEN_SECRETS: TOKEN_SECRET }), { code: 1, err: /key must name an enabled/ })

  // Usage: counted by the proxy's RedisQuotas, read by the CLI.
  const quotas = new RedisQuotas(admin)
  const grant = await quotas.reserve(id, 250, { tokensPerDay: 1000 }, Date.now())
  t.ok(grant.admitted)
  const usage = await cli(['usage'], env)
  const w = quotaWindows(Date.now())
  t.equal(usage.code, 0, usage.err)
  t.equal(usage.out, `Counts from Redis at 127.0.0.1:${server.port}.\n` +
    `UTC day ${w.day} resets ${new Date(w.dayReset).toISOString()}; month ${w.month} resets ${new Date(w.monthReset).toISOString()}.\n` +
    `${id}  alice\n  today:      250 tokens of 1000 a day, 1 requests (no quota)\n  this month: 250 tokens (no quota)\n` +
    `${bob.id}  bob\n  today:      0 tokens (no quota), 0 requests (no quota)\n  this month: 0 tokens (no quota)\n`)
  t.match(JSON.parse((await cli(['usage', id, '--json'], env)).out), { source: { kind: 'redis', at: `127.0.0.1:${server.port}` }, keys: [{ id, day: { tokens: 250, requests: 1 }, month: { tokens: 250 } }] })

  t.strictSame(await cli(['delete', bob.id], env), { code: 0, out: `${bob.id} deleted\n`, err: '' })
  t.strictSame(await cli(['delete', id], env), { code: 0, out: `${id} deleted\n`, err: '' })
  t.strictSame(await cli(['list'], env), { code: 0, out: 'No keys.\n', err: '' })
  t.strictSame(await cli(['revoke', id], env), { code: 1, out: '', err: `oai-reverse-proxy keys: ${where}: no key ${id}\n` })
  t.strictSame(await cli(['usage', id], env), { code: 1, out: '', err: `oai-reverse-proxy keys: ${where}: no key ${id}\n` })
})

t.test('usage from Redis beside a keys file (REDIS_URL or --redis-url)', async (t) => {
  const { server, admin } = await redisFor(t)
  const dir = mkdtempSync(join(tmpdir(), 'oai-keys-cli-'))
  t.teardown(() => rmSync(dir, { recursive: true, force: true }))
  const file = join(dir, 'keys.jsonl')
  const made = JSON.parse((await cli(['create', '--name', 'carol', '--requests-per-day', '5', '--json', '--file', file])).out) as { id: string, secret: string }
  handedOut(made.secret)
  const quotas = new RedisQuotas(admin)
  for (const tokens of [10, 20]) await quotas.reserve(made.id, tokens, {}, Date.now())
  const viaEnv = await cli(['usage'], { KEYS_FILE: file, REDIS_URL: server.url })
  t.equal(viaEnv.code, 0, viaEnv.err)
  t.match(viaEnv.out, `Counts from Redis at 127.0.0.1:${server.port}.\n`)
  t.match(viaEnv.out, `${made.id}  carol\n  today:      30 tokens (no quota), 2 requests of 5 a day\n  this month: 30 tokens (no quota)\n`)
  t.match(JSON.parse((await cli(['usage', '--json', '--file', file, '--redis-url', server.url])).out), { source: { kind: 'redis' }, keys: [{ day: { tokens: 30, requests: 2 } }] })
  const port = await closedPort()
  const down = await cli(['usage', '--file', file, '--redis-url', `redis://:${PASSWORD}@127.0.0.1:${port}`])
  t.strictSame(down, { code: 1, out: '', err: `oai-reverse-proxy keys: cannot reach Redis at 127.0.0.1:${port} (ECONNREFUSED)\n` })
})

t.test('Redis unreachable, refusing us, silent, or holding something else: exit 1, never the password', async (t) => {
  const port = await closedPort()
  const env = { KEYS_STORE: 'redis', REDIS_URL: `redis://:${PASSWORD}@127.0.0.1:${port}`, TOKEN_SECRETS: TOKEN_SECRET }
  const refused = `cannot reach Redis at 127.0.0.1:${port} (ECONNREFUSED)\n`
  for (const args of [['list'], ['create', '--name', 'x'], ['revoke', 'key_aaaaaaaaaaaa'], ['usage']]) {
    t.strictSame(await cli(args, env), { code: 1, out: '', err: `oai-reverse-proxy keys: ${refused}` }, args.join(' '))
  }
  t.strictSame(await cli(['token', '--key', 'key_aaaaaaaaaaaa', '--sub', 'u', '--origin', ORIGIN], env), { code: 1, out: '', err: `oai-reverse-proxy keys token: ${refused}` })

  const { server, admin } = await redisFor(t)
  const at = `127.0.0.1:${server.port}`
  // Something else under our key: Redis refuses the command, and says so.
  await admin.hset('oaiproxy:keys:records', 'x', 'y')
  t.match(await cli(['revoke', 'key_aaaaaaaaaaaa', '--store', 'redis', '--redis-url', server.url]), { code: 1, err: new RegExp(`^oai-reverse-proxy keys: Redis at ${at}: WRONGTYPE `) })
  // A broken value is named by its line, and left as it was.
  await admin.set('oaiproxy:keys:records', 'not json\n')
  t.strictSame(await cli(['list', '--store', 'redis', '--redis-url', server.url]), { code: 1, out: '', err: `oai-reverse-proxy keys: Redis at ${at} (oaiproxy:keys): line 1: not valid JSON\n` })
  t.match(await cli(['create', '--name', 'x', '--store', 'redis', '--redis-url', server.url]), { code: 1, err: /line 1: not valid JSON/ })
  t.equal(await admin.get('oaiproxy:keys:records'), 'not json\n', 'never overwritten')

  // A password Redis wants and was not given, or not this one.
  await admin.config('SET', 'requirepass', 'the-right-password')
  t.teardown(() => admin.config('SET', 'requirepass', ''))
  await admin.auth('the-right-password')
  t.strictSame(await cli(['list', '--store', 'redis', '--redis-url', server.url]), { code: 1, out: '', err: `oai-reverse-proxy keys: cannot reach Redis at ${at} (NOAUTH Authentication required.)\n` })
  t.match(await cli(['list', '--store', 'redis', '--redis-url', `redis://:${PASSWORD}@127.0.0.1:${server.port}/0`]), { code: 1, err: new RegExp(`cannot reach Redis at ${at} \\(WRONGPASS `) })
  t.match(await cli(['list', '--store', 'redis', '--redis-url', `redis://:the-right-password@127.0.0.1:${server.port}`]), { code: 1, err: /line 1: not valid JSON/ }, 'the right one gets in')

  // A server that accepts and never answers: given up after 3 s.
  server.pause()
  const silent = await cli(['list', '--store', 'redis', '--redis-url', server.url])
  server.resume()
  t.strictSame(silent, { code: 1, out: '', err: `oai-reverse-proxy keys: cannot reach Redis at ${at} (no answer within 3 s)\n` })
})

t.test('the address said in messages: host:port, the defaults filled in, never the rest of the URL', async (t) => {
  t.equal(redisAddress(`redis://user:${PASSWORD}@cache.internal:6380/2`), 'cache.internal:6380')
  t.equal(redisAddress('rediss://cache.internal'), 'cache.internal:6379')
  t.equal(redisAddress('redis:///1'), 'localhost:6379')
})

t.test('no output showed a hash or a password, nor a secret other than where it was handed out', async (t) => {
  t.ok(outputs.length > 25)
  const hashes = secrets.map(hashSecret)
  const leaks = outputs.filter(({ text, shows }) => text.includes(PASSWORD) || text.includes('the-right-password') || hashes.some((h) => text.includes(h)) || secrets.some((s) => s !== shows && text.includes(s)))
  t.strictSame(leaks, [])
})
