import { execSync } from 'node:child_process'
import { createServer as createHttpServer } from 'node:http'
import { connect, type Socket } from 'node:net'
import t, { type Test } from 'tap'
import { request } from 'undici'
import type { FastifyBaseLogger } from 'fastify'
import { limitConnections } from '../lib/server-options.js'
import { startServer } from '../server.js'
import { startFakeOpenAI } from '../testing/fake-openai.js'
import { assertNoLeak, canaryKey, chatBody, sleep } from './helper.js'

/*
 * Connection limits and timeouts of the standalone server (threat catalogue LD01-LD03): trickling clients
 * are cut on time while others are served, and floods of connections are closed on accept, counted in the
 * log. Real sockets on loopback; every wait is bounded.
 */

const quiet = { LOG_LEVEL: 'silent', PORT: '0', KEY_HEALTH_INTERVAL_MS: '0' }

/** Open a raw socket to `port`; resolves once connected (or rejects after `ms`). */
function open (port: number, ms = 5000): Promise<Socket> {
  return new Promise((resolve, reject) => {
    const s = connect(port, '127.0.0.1')
    const timer = setTimeout(() => { s.destroy(); reject(new Error('connect timed out')) }, ms)
    s.once('connect', () => { clearTimeout(timer); resolve(s) })
    s.once('error', (err) => { clearTimeout(timer); reject(err) })
  })
}

/** Resolves with what the peer sent once it closes the socket, or null if it is still open after `ms`. */
function closedWithin (s: Socket, ms: number): Promise<string | null> {
  return new Promise((resolve) => {
    let got = ''
    s.on('data', (d: Buffer) => { got += d.toString() })
    s.on('error', () => {})
    const timer = setTimeout(() => resolve(null), ms)
    s.once('close', () => { clearTimeout(timer); resolve(got) })
  })
}

// Thousands where the file-descriptor limit allows (each socket is two descriptors in this process).
const fdLimit = Number(execSync('ulimit -n', { shell: '/bin/sh' }).toString().trim()) || 1024
const TRICKLERS = Math.min(3000, Math.floor((fdLimit - 300) / 2))

/** Time one chat request end to end, in ms. */
async function timed (url: string, proxyKey: string, key: string, t: Test): Promise<number> {
  const t0 = performance.now()
  const res = await request(`${url}/v1/chat/completions`, { method: 'POST', headers: { authorization: `Bearer ${proxyKey}`, 'content-type': 'application/json' }, body: JSON.stringify(chatBody()), headersTimeout: 3000, bodyTimeout: 3000 })
  const text = await res.body.text()
  t.equal(res.statusCode, 200)
  assertNoLeak(t, text, [key], 'normal request')
  return performance.now() - t0
}
const median = (xs: number[]): number => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)] as number

t.test(`${TRICKLERS} sockets trickling their headers are cut at the headers timeout while normal clients keep their latency`, async (t) => {
  const fake = await startFakeOpenAI()
  const key = canaryKey()
  const proxyKey = `pk-${canaryKey().slice(3)}`
  const s = await startServer({ ...quiet, OPENAI_KEY: key, PROXY_KEY: proxyKey, UPSTREAM_URL: fake.url, HEADERS_TIMEOUT_MS: '1000', MAX_CONNECTIONS_PER_ADDRESS: '5000' })
  t.teardown(async () => { await s.shutdown(); await fake.close() })
  const port = Number(new URL(s.url).port)

  const before: number[] = []
  for (let i = 0; i < 20; i++) before.push(await timed(s.url, proxyKey, key, t))
  const rssBefore = process.memoryUsage.rss()

  const slow = await Promise.all(Array.from({ length: TRICKLERS }, () => open(port)))
  const started = Date.now()
  // One header line every 200 ms: never a complete request.
  const trickle = setInterval(() => { for (const c of slow) if (!c.destroyed) c.write('X-Slow: 1\r\n') }, 200)
  t.teardown(() => clearInterval(trickle))
  for (const c of slow) c.write('POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n')
  const closed = slow.map((c) => closedWithin(c, 8000))
  let rssPeak = process.memoryUsage.rss()

  // Meanwhile, normal requests are answered, one after another.
  const during: number[] = []
  for (let i = 0; i < 20; i++) {
    during.push(await timed(s.url, proxyKey, key, t))
    rssPeak = Math.max(rssPeak, process.memoryUsage.rss())
  }

  const answers = await Promise.all(closed)
  const elapsed = Date.now() - started
  const grew = (rssPeak - rssBefore) / 1048576
  t.comment(`${TRICKLERS} tricklers: normal request median ${median(before).toFixed(1)} ms before, ${median(during).toFixed(1)} ms during; RSS +${grew.toFixed(1)} MiB (clients and server in this process); all cut after ${elapsed} ms`)
  t.equal(answers.filter((a) => a === null).length, 0, 'every trickling socket was closed')
  t.ok(elapsed < 6000, `within the timeout plus Node's 1 s check interval and some slack (${elapsed} ms)`)
  // Bounds a noisy 2-core machine keeps: a proxy that stalled behind the tricklers would take seconds.
  t.ok(median(during) < median(before) * 4 + 25, 'normal clients keep their latency')
  t.ok(grew < 8 * TRICKLERS / 1024 + 32, 'memory stays bounded (a few KiB per open socket)')
  const first = answers.find((a) => a !== null && a.length > 0) ?? ''
  t.match(first, /^HTTP\/1\.1 408 /, 'answered 408 before closing')
  t.match(first, /"code":"request_timeout"/, 'in OpenAI\'s envelope')
  t.equal(fake.requests.length, 40, 'only the normal requests reached upstream')
})

t.test('LD02: a body trickled a byte at a time is cut at the request timeout, with nothing upstream', async (t) => {
  const fake = await startFakeOpenAI()
  const key = canaryKey()
  const s = await startServer({ ...quiet, OPENAI_KEY: key, UPSTREAM_URL: fake.url, REQUEST_TIMEOUT_MS: '1500', HEADERS_TIMEOUT_MS: '1000' })
  t.teardown(async () => { await s.shutdown(); await fake.close() })
  const c = await open(Number(new URL(s.url).port))
  const body = JSON.stringify(chatBody())
  c.write(`POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: ${body.length}\r\n\r\n`)
  const started = Date.now()
  let sent = 0
  // A byte every 50 ms: always making progress, never done in time (the body is over 60 bytes).
  const drip = setInterval(() => { if (!c.destroyed && sent < body.length) c.write(body.charAt(sent++)) }, 50)
  t.teardown(() => clearInterval(drip))
  const got = await closedWithin(c, 6000)
  const elapsed = Date.now() - started
  t.not(got, null, 'the connection was closed')
  t.ok(elapsed >= 1400 && elapsed < 4000, `at the request timeout (plus the 1 s check interval): ${elapsed} ms, ${sent} of ${body.length} bytes sent`)
  t.ok(sent < body.length, 'before the body was complete')
  t.match(got ?? '', /^HTTP\/1\.1 408 [\s\S]*"code":"request_timeout"/)
  assertNoLeak(t, got ?? '', [key], 'the 408')
  t.equal(fake.requests.length, 0, 'nothing went upstream')
})

t.test('keep-alive idle time and requests per socket come from the configuration', async (t) => {
  const fake = await startFakeOpenAI()
  const s = await startServer({ ...quiet, OPENAI_KEY: canaryKey(), UPSTREAM_URL: fake.url, KEEP_ALIVE_TIMEOUT_MS: '5000', MAX_REQUESTS_PER_SOCKET: '2' })
  t.teardown(async () => { await s.shutdown(); await fake.close() })
  t.equal(s.app.server.keepAliveTimeout, 5000)
  t.equal(s.app.server.maxRequestsPerSocket, 2)
  const c = await open(Number(new URL(s.url).port))
  t.teardown(() => c.destroy())
  let got = ''
  c.on('data', (d: Buffer) => { got += d.toString() })
  c.write('GET /health HTTP/1.1\r\nHost: x\r\n\r\nGET /health HTTP/1.1\r\nHost: x\r\n\r\n')
  for (let i = 0; i < 100 && (got.match(/HTTP\/1\.1 200 /g)?.length ?? 0) < 2; i++) await sleep(30)
  const [first, second] = got.split(/(?=HTTP\/1\.1 )/)
  t.match(first, /^HTTP\/1\.1 200 [\s\S]*Keep-Alive: timeout=5, max=2/i, 'the first answer keeps the connection, saying for how long and how many')
  t.match(second, /^HTTP\/1\.1 200 [\s\S]*Connection: close/i, 'the second answer closes it')
})

t.test('defaults: headers 10 s, keep-alive 72 s, 1000 requests per socket, 10,000 connections, 1000 per address (off behind TRUST_PROXY)', async (t) => {
  const fake = await startFakeOpenAI()
  const s = await startServer({ ...quiet, OPENAI_KEY: canaryKey(), UPSTREAM_URL: fake.url })
  t.teardown(async () => { await s.shutdown(); await fake.close() })
  t.equal(s.app.server.headersTimeout, 10_000)
  t.equal(s.app.server.keepAliveTimeout, 72_000)
  t.equal(s.app.server.maxRequestsPerSocket, 1000)
  t.equal(s.app.server.maxConnections, 10_000)
  t.equal(s.config.server.maxConnectionsPerAddress, 1000)
  const behind = await startServer({ ...quiet, OPENAI_KEY: canaryKey(), UPSTREAM_URL: fake.url, TRUST_PROXY: '1', REQUEST_TIMEOUT_MS: '5000' })
  t.teardown(() => behind.shutdown())
  t.equal(behind.config.server.maxConnectionsPerAddress, 0)
  t.equal(behind.app.server.headersTimeout, 5000, 'never longer than the request timeout')
})

t.test('limitConnections: over the per-address and total caps, connections are closed on accept and counted in the log', async (t) => {
  const warnings: Array<Record<string, unknown>> = []
  const log = { warn: (obj: Record<string, unknown>) => { warnings.push(obj) } } as unknown as FastifyBaseLogger
  const server = createHttpServer((_req, res) => { res.end('ok') })
  limitConnections(server, { maxConnections: 0, maxConnectionsPerAddress: 3 }, log)
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  t.teardown(() => new Promise<void>((resolve) => { server.closeAllConnections(); server.close(() => resolve()) }))
  const port = (server.address() as { port: number }).port

  const kept = await Promise.all([open(port), open(port), open(port)])
  const extra = await Promise.all([open(port), open(port)])
  const extraClosed = await Promise.all(extra.map((c) => closedWithin(c, 3000)))
  t.strictSame(extraClosed, ['', ''], 'the fourth and fifth are closed without a byte')
  t.equal(warnings.length, 1, 'one log line for the burst')
  t.match(warnings[0], { refused: 1, overPerAddress: 1, busiest: '127.0.0.1' })
  // The kept ones still work, and a slot freed is a slot again.
  kept[0]?.write('GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n')
  t.match(await closedWithin(kept[0] as Socket, 3000), /200 OK[\s\S]*ok$/)
  await sleep(50)
  const again = await open(port)
  again.write('GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n')
  t.match(await closedWithin(again, 3000), /200 OK/, 'a freed slot can be used')
  for (const c of kept) c.destroy()

  const total = createHttpServer((_req, res) => { res.end('ok') })
  const warned: Array<Record<string, unknown>> = []
  limitConnections(total, { maxConnections: 2, maxConnectionsPerAddress: 0 }, { warn: (o: Record<string, unknown>) => { warned.push(o) } } as unknown as FastifyBaseLogger)
  await new Promise<void>((resolve) => total.listen(0, '127.0.0.1', resolve))
  t.teardown(() => new Promise<void>((resolve) => { total.closeAllConnections(); total.close(() => resolve()) }))
  const totalPort = (total.address() as { port: number }).port
  const two = await Promise.all([open(totalPort), open(totalPort)])
  const third = await open(totalPort)
  t.equal(await closedWithin(third, 3000), '', 'over the total: closed by Node')
  t.match(warned[0], { refused: 1, overTotal: 1 })
  for (const c of two) c.destroy()
})
