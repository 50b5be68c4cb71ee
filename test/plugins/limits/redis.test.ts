import Fastify from 'fastify'
import t, { type Test } from 'tap'
import oaiProxy from '../../../app.js'
import { canaryKey, chatBody, harness, listeningUrl, sleep, spawnServer, type Harness } from '../../helper.js'
import { startFakeOpenAI } from '../../../testing/fake-openai.js'
import { hasRedis, startRedis, type RedisServer } from '../../redis-helper.js'

const post = (h: Harness) => h.app.inject({ method: 'POST', url: '/v1/chat/completions', headers: h.auth, payload: chatBody() })

/** Two proxy replicas (each with its own fake upstream) sharing one Redis and one proxy key. */
async function replicas (t: Test, redis: RedisServer, rateLimit: Record<string, unknown>) {
  const a = await harness({ proxy: { redisUrl: redis.url, rateLimit } })
  const b = await harness({ proxy: { redisUrl: redis.url, rateLimit, proxyKeys: [a.proxyKey] } })
  b.auth = a.auth
  t.teardown(async () => { await a.close(); await b.close() })
  return [a, b] as const
}

// CI installs redis-server (.ci/run) and must run these; a developer machine without it skips them loudly.
if (!hasRedis && process.env.CI === undefined) t.plan(0, 'redis-server is not installed (apt-get install redis-server)')

t.test('shared limits across replicas on a real redis-server', async (t) => {
  const redis = await startRedis()
  t.teardown(redis.stop)

  await t.test('requests per window: two replicas admit the limit in total, even racing', async (t) => {
    const [a, b] = await replicas(t, redis, { requestsPerWindow: 20 })
    const results = await Promise.all(Array.from({ length: 100 }, (_, i) => post(i % 2 === 0 ? a : b)))
    t.equal(results.filter((r) => r.statusCode === 200).length, 20)
    t.equal(a.upstream.requests.length + b.upstream.requests.length, 20, 'upstreams saw exactly the limit between them')
    t.strictSame((await a.app.inject({ url: '/health' })).json(), { status: 'ok', upstream_keys: 'available', rate_limit_store: 'redis' })
  })

  await t.test('two proxy processes (server.ts) on one Redis admit the limit in total', async (t) => {
    const key = canaryKey()
    const fake = await startFakeOpenAI({ validKeys: [key] })
    t.teardown(fake.close)
    const env = { OPENAI_KEY: key, UPSTREAM_URL: fake.url, PROXY_KEY: 'pk-two-processes-0123456789', RATE_LIMIT_RPM: '12', REDIS_URL: redis.url, PORT: '0', LOG_LEVEL: 'info', NODE_ENV: 'development' }
    const children = [spawnServer(env), spawnServer(env)]
    t.teardown(() => { for (const c of children) c.kill('SIGKILL') })
    const urls = await Promise.all(children.map((c) => listeningUrl(c)))
    const statuses = await Promise.all(Array.from({ length: 40 }, async (_, i) => {
      const res = await fetch(`${urls[i % 2] as string}/v1/chat/completions`, { method: 'POST', headers: { authorization: 'Bearer pk-two-processes-0123456789', 'content-type': 'application/json' }, body: JSON.stringify(chatBody()) })
      await res.arrayBuffer()
      return res.status
    }))
    t.equal(statuses.filter((s) => s === 200).length, 12, 'exactly the limit, though each process saw about half the requests')
    t.equal(statuses.filter((s) => s === 429).length, 28)
    t.equal(fake.requests.length, 12)
  })

  await t.test('tokens per minute are shared and settled in Redis', async (t) => {
    const [a, b] = await replicas(t, redis, { tokensPerMinute: 3000, defaultOutputTokens: 1000 })
    const first = await post(a)
    t.equal(first.statusCode, 200)
    const reserved = 3000 - Number(first.headers['x-ratelimit-remaining-tokens'])
    await sleep(50)
    const second = await post(b)
    t.equal(Number(second.headers['x-ratelimit-remaining-tokens']), 3000 - first.json().usage.total_tokens - reserved, 'replica b sees replica a\'s settled usage')
    a.upstream.script(() => ({ kind: 'json', body: { object: 'chat.completion', choices: [], usage: { total_tokens: 2900 } } }))
    t.equal((await post(a)).statusCode, 200)
    await sleep(50)
    const refused = await post(b)
    t.equal(refused.statusCode, 429, 'replica b refuses: replica a\'s big answer spent the shared window')
    t.match(refused.json(), { error: { type: 'tokens', code: 'rate_limit_exceeded' } })
    t.equal(b.upstream.requests.length, 1, 'the refused request never went upstream')
  })

  await t.test('concurrency slots are shared', async (t) => {
    const [a, b] = await replicas(t, redis, { maxConcurrent: 1 })
    a.upstream.script(() => ({ kind: 'delay', ms: 400, then: { kind: 'json', body: { ok: true } } }))
    const slow = post(a)
    await a.upstream.waitFor(() => true)
    t.equal((await post(b)).statusCode, 429, 'the other replica sees the slot taken')
    t.equal((await slow).statusCode, 200)
    await sleep(50)
    t.equal((await post(b)).statusCode, 200, 'and free again')
  })

  await t.test('Redis dies mid-run, policy open: per-replica memory limits, answers within 1 s', async (t) => {
    const h = await harness({ proxy: { redisUrl: redis.url, rateLimit: { requestsPerWindow: 3, onStoreError: 'open' } } })
    t.teardown(h.close)
    t.equal((await post(h)).statusCode, 200)
    await redis.stop()
    const times: number[] = []
    const statuses: number[] = []
    for (let i = 0; i < 5; i++) {
      const start = Date.now()
      statuses.push((await post(h)).statusCode)
      times.push(Date.now() - start)
    }
    t.strictSame(statuses, [200, 200, 200, 429, 429], 'the memory fallback enforces the same limit')
    t.ok(Math.max(...times) < 1000, `no request waited on the dead store (max ${Math.max(...times)} ms)`)
    t.match(h.logs.join(''), /rate-limit store unavailable/)
    t.equal((await h.app.inject({ url: '/health' })).json().rate_limit_store, 'redis-unavailable')
    await redis.start()
    // The first request that reaches Redis again brings the limits back to it.
    for (let i = 0; i < 40 && (await h.app.inject({ url: '/health' })).json().rate_limit_store !== 'redis'; i++) {
      await sleep(100)
      await post(h)
    }
    t.equal((await h.app.inject({ url: '/health' })).json().rate_limit_store, 'redis', 'back on Redis once it returns')
  })

  await t.test('Redis hangs (SIGSTOP), policy closed: a fast 503, not a hang', async (t) => {
    const h = await harness({ proxy: { redisUrl: redis.url, rateLimit: { requestsPerWindow: 100, onStoreError: 'closed' } } })
    t.teardown(h.close)
    t.equal((await post(h)).statusCode, 200)
    redis.pause()
    t.teardown(redis.resume)
    const start = Date.now()
    const res = await post(h)
    t.equal(res.statusCode, 503)
    t.strictSame(res.json(), { error: { message: 'The rate limiter cannot reach its store; try again shortly.', type: 'server_error', param: null, code: 'rate_limit_store_unavailable' } })
    t.ok(Date.now() - start < 1000, `answered in ${Date.now() - start} ms`)
    t.equal(h.upstream.requests.length, 1, 'nothing went upstream without a limit check')
    redis.resume()
    await redis.stop()
    const killedAt = Date.now()
    t.equal((await post(h)).statusCode, 503, 'killed: 503 as well')
    t.ok(Date.now() - killedAt < 1000, `answered in ${Date.now() - killedAt} ms`)
    await redis.start()
  })

  await t.test('a failure that cannot be counted (Redis gone mid-request, policy closed) is logged, not thrown', async (t) => {
    const h = await harness({ proxy: { redisUrl: redis.url, rateLimit: { failuresPerMinute: 50, onStoreError: 'closed' } } })
    t.teardown(h.close)
    h.upstream.script(() => ({ kind: 'delay', ms: 300, then: { kind: 'json', status: 404, body: { error: { message: 'The model does not exist', type: 'invalid_request_error', param: null, code: 'model_not_found' } } } }))
    const pending = post(h)
    await h.upstream.waitFor(() => true)
    await redis.stop()
    t.equal((await pending).statusCode, 404, 'the answer still reaches the client')
    await sleep(50)
    t.match(h.logs.join(''), /could not count a failed request/)
    await redis.start()
  })

  await t.test('start-up with an unreachable Redis follows the policy', async (t) => {
    await redis.stop()
    const closed = Fastify()
    await t.rejects(async () => { await closed.register(oaiProxy, { openaiKeys: [canaryKey()], redisUrl: redis.url, rateLimit: { onStoreError: 'closed' } }).ready() }, /REDIS_URL is unreachable/)
    const open = Fastify({ logger: false })
    await open.register(oaiProxy, { openaiKeys: [canaryKey()], redisUrl: redis.url, rateLimit: { onStoreError: 'open' } })
    await open.ready()
    t.equal((await open.inject({ url: '/health' })).json().rate_limit_store, 'redis-unavailable')
    await open.close()
    await redis.start()
  })
})
