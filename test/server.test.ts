import { createServer, type AddressInfo } from 'node:net'
import t from 'tap'
import { request } from 'undici'
import { startServer } from '../server.js'
import { startFakeOpenAI } from '../testing/fake-openai.js'
import { canaryKey, chatBody, spawnServer } from './helper.js'

// No key health checks: they would call upstream at start-up, and these tests count upstream calls.
const quiet = { LOG_LEVEL: 'silent', PORT: '0', KEY_HEALTH_INTERVAL_MS: '0' }

t.test('no key: demo mode fronts the built-in fake upstream and marks every response', async (t) => {
  const s = await startServer({ ...quiet })
  t.teardown(s.shutdown)
  t.equal(s.config.demo, true)
  const res = await fetch(`${s.url}/v1/chat/completions`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(chatBody()) })
  t.equal(res.status, 200)
  t.equal(res.headers.get('x-oai-proxy-demo'), 'true')
  t.match(await res.json(), { object: 'chat.completion', choices: [{ message: { content: /fake upstream/ } }] })
  const refused = await fetch(`${s.url}/v1/files`)
  t.equal(refused.headers.get('x-oai-proxy-demo'), 'true', 'even on errors')
  t.equal(s.fake?.requests.length, 1)
})

t.test('with a key: no demo header, the configured upstream is used', async (t) => {
  const key = canaryKey()
  const fake = await startFakeOpenAI({ validKeys: [key] })
  t.teardown(fake.close)
  const s = await startServer({ ...quiet, OPENAI_KEY: key, UPSTREAM_URL: fake.url })
  t.teardown(s.shutdown)
  const res = await fetch(`${s.url}/v1/models`)
  t.equal(res.status, 200)
  t.equal(res.headers.get('x-oai-proxy-demo'), null)
  t.equal(fake.requests[0]?.headers.authorization, `Bearer ${key}`)
  t.equal(s.app.server.requestTimeout, 60_000, 'request timeout is on')
  t.equal(s.app.server.headersTimeout, 10_000, 'headers timeout is on')
})

t.test('shutdown with 100 streams in flight: drains for the grace period, then cuts them and aborts upstream', async (t) => {
  const key = canaryKey()
  const fake = await startFakeOpenAI({ validKeys: [key] })
  t.teardown(fake.close)
  fake.script(() => ({ kind: 'sse', frames: Array.from({ length: 200 }, (_, i) => `data: {"i":${i}}\n\n`), delayMs: 50 }))
  const s = await startServer({ ...quiet, OPENAI_KEY: key, UPSTREAM_URL: fake.url, SHUTDOWN_GRACE_MS: '400' })
  // Wait for the 100 responses' headers, but not their bodies (wrapped so Promise.all does not wait for them).
  const readings = await Promise.all(Array.from({ length: 100 }, async () => {
    const res = await request(`${s.url}/v1/chat/completions`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(chatBody({ stream: true })) })
    return { outcome: res.body.text().then(() => 'ended', () => 'cut') }
  }))
  await fake.waitFor(() => fake.requests.length === 100)
  const start = Date.now()
  await s.shutdown()
  const took = Date.now() - start
  t.ok(took >= 350 && took < 3000, `closed after the grace period (${took} ms)`)
  t.strictSame(new Set(await Promise.all(readings.map((r) => r.outcome))), new Set(['cut']), 'every stream was cut, none ended as if complete')
  for (let i = 0; i < 40 && fake.requests.some((r) => r.abortedAt === undefined); i++) await new Promise((resolve) => setTimeout(resolve, 50))
  t.equal(fake.requests.filter((r) => r.abortedAt !== undefined).length, 100, 'all 100 upstream requests aborted')
  await t.rejects(fetch(`${s.url}/health`), 'no longer accepting')
})

t.test('the real process exits 0 on SIGTERM', async (t) => {
  const child = spawnServer({ PORT: '0', LOG_LEVEL: 'info', OPENAI_KEY: '', NODE_ENV: 'development' })
  let out = ''
  let err = ''
  child.stdout.on('data', (c: Buffer) => { out += c.toString() })
  child.stderr.on('data', (c: Buffer) => { err += c.toString() })
  const deadline = Date.now() + 20_000
  while (!out.includes('Server listening') && Date.now() < deadline && child.exitCode === null) await new Promise((resolve) => setTimeout(resolve, 50))
  t.match(out, /Server listening/)
  t.match(err, /DEMO MODE/, 'the demo banner is loud on stderr')
  child.kill('SIGTERM')
  const code = await new Promise<number | null>((resolve) => child.once('exit', resolve))
  t.equal(code, 0)
})

t.test('production without a key refuses to start, naming the variable', async (t) => {
  const child = spawnServer({ NODE_ENV: 'production', OPENAI_KEY: '' })
  let err = ''
  child.stderr.on('data', (c: Buffer) => { err += c.toString() })
  const code = await new Promise<number | null>((resolve) => child.once('exit', resolve))
  t.equal(code, 1)
  t.match(err, /OPENAI_KEY is required when NODE_ENV=production/)
})

t.test('TRUST_PROXY as a hop count: the nearest hop is trusted, the next address is the client', async (t) => {
  const key = canaryKey()
  const fake = await startFakeOpenAI({ validKeys: [key] })
  t.teardown(fake.close)
  const s = await startServer({ ...quiet, OPENAI_KEY: key, UPSTREAM_URL: fake.url, TRUST_PROXY: '1', RATE_LIMIT_RPM: '1' })
  t.teardown(s.shutdown)
  const from = async (xff: string) => (await fetch(`${s.url}/v1/models`, { headers: { 'x-forwarded-for': xff } })).status
  t.equal(await from('203.0.113.1'), 200)
  t.equal(await from('203.0.113.2'), 200, 'another client behind the same proxy has its own bucket')
  t.equal(await from('198.51.100.7, 203.0.113.1'), 429, 'an address the client added itself is not trusted')
})

t.test('a start-up failure other than configuration (port taken) exits 1 and says so', async (t) => {
  const taken = createServer()
  await new Promise<void>((resolve) => taken.listen(0, '127.0.0.1', resolve))
  t.teardown(() => new Promise<void>((resolve) => taken.close(() => resolve())))
  const child = spawnServer({ LOG_LEVEL: 'silent', HOST: '127.0.0.1', PORT: String((taken.address() as AddressInfo).port), OPENAI_KEY: canaryKey(), NODE_ENV: 'development' })
  let err = ''
  child.stderr.on('data', (c: Buffer) => { err += c.toString() })
  const code = await new Promise<number | null>((resolve) => child.once('exit', resolve))
  t.equal(code, 1)
  t.match(err, /^oai-reverse-proxy: start-up failed: listen EADDRINUSE/m)
})
