import t from 'tap'
import { request } from 'undici'
import { Registry } from 'prom-client'
import { listen, metricsServer } from '../../../plugins/metrics/exposition.js'
import { fingerprint } from '../../../plugins/upstream/key-pool.js'
import { analyse } from '../../../lib/request-analysis.js'
import { estimatePrompt } from '../../../lib/token-estimate.js'
import { endpoints } from '../../../schemas/endpoints.js'
import Fastify from 'fastify'
import oaiProxy from '../../../app.js'
import type { OaiProxyOptions } from '../../../plugins/config/options.js'
import { assertNoLeak, chatBody, harness, proxyTest, randomToken, rawRequest, sleep, type Harness } from '../../helper.js'

/*
 * Issue 14 point 1: Prometheus metrics. Values after known traffic are exact; /metrics answers only its own
 * key (or its own port); nothing secret is in it; labels stay bounded.
 */

const KEY = `mk-${randomToken(32)}`
const metricsOn = { enabled: true, key: KEY }
const OUTPUT = 500
const chat = endpoints.find((e) => e.id === 'chat.completions') as (typeof endpoints)[number]
const reservation = (body: Record<string, unknown>) => estimatePrompt(analyse(chat, body)) + OUTPUT

interface Line { name: string, labels: Record<string, string>, value: number }
function parse (text: string): Line[] {
  return text.split('\n').filter((l) => l !== '' && !l.startsWith('#')).map((l) => {
    const m = /^([a-zA-Z_:][\w:]*)(?:\{(.*)\})? (\S+)$/.exec(l) as RegExpExecArray
    const labels = Object.fromEntries([...(m[2] ?? '').matchAll(/(\w+)="((?:[^"\\]|\\.)*)"/g)].map((p) => [p[1], p[2]]))
    return { name: m[1] as string, labels, value: Number(m[3]) }
  })
}
/** Lines of `name` whose labels include `labels`. */
const lines = (text: string, name: string, labels: Record<string, string> = {}): Line[] =>
  parse(text).filter((l) => l.name === name && Object.entries(labels).every(([k, v]) => l.labels[k] === v))
const sum = (text: string, name: string, labels: Record<string, string> = {}): number => lines(text, name, labels).reduce((n, l) => n + l.value, 0)

async function scrape (h: Harness): Promise<string> {
  // onResponse runs after the answer is sent: let the last request's record land.
  await sleep(20)
  const res = await h.app.inject({ url: '/metrics', headers: { authorization: `Bearer ${KEY}` } })
  if (res.statusCode !== 200) throw new Error(`scrape: ${res.statusCode}`)
  return res.body
}
/** The metrics listener's port, from its start-up log line (the suite is encapsulated: its decorators stay inside). */
function metricsPort (h: Pick<Harness, 'logs'>): number {
  const line = h.logs.find((l) => l.includes('oai-proxy: metrics listening')) as string
  return (JSON.parse(line) as { port: number }).port
}
const post = (h: Harness, body: Record<string, unknown> = chatBody(), headers = h.auth) => h.app.inject({ method: 'POST', url: '/v1/chat/completions', headers, payload: body })

proxyTest(t, 'known traffic gives exact counts: 3 answered, 1 filtered, 2 over the request limit', {
  proxy: { metrics: metricsOn, rateLimit: { requestsPerWindow: 4, tokensPerMinute: 1_000_000, defaultOutputTokens: OUTPUT }, filter: { phrases: ['forbidden fruit'] } }
}, async (h, t) => {
  let tokens = 0
  for (let i = 0; i < 3; i++) {
    const res = await post(h)
    t.equal(res.statusCode, 200)
    tokens += res.json().usage.total_tokens as number
  }
  t.equal((await post(h, chatBody({ messages: [{ role: 'user', content: 'tell me of the forbidden fruit' }] }))).statusCode, 400)
  for (let i = 0; i < 2; i++) t.equal((await post(h)).statusCode, 429)

  const text = await scrape(h)
  const requests = { endpoint: 'chat.completions', client_class: 'proxy-key' }
  t.equal(sum(text, 'oai_proxy_requests_total'), 6, 'six requests, the scrape not yet counted')
  t.equal(sum(text, 'oai_proxy_requests_total', { ...requests, status_class: '2xx' }), 3)
  t.equal(sum(text, 'oai_proxy_requests_total', { ...requests, status_class: '4xx' }), 3)
  t.strictSame(lines(text, 'oai_proxy_limit_rejections_total').map((l) => [l.labels.kind, l.value]), [['requests', 2]])
  t.strictSame(lines(text, 'oai_proxy_filter_refusals_total').map((l) => [l.labels.rule, l.labels.stage, l.value]), [['phrase:1', 'prompt', 1]])
  for (const name of ['oai_proxy_overhead_seconds', 'oai_proxy_upstream_seconds', 'oai_proxy_time_to_first_byte_seconds']) {
    t.equal(sum(text, `${name}_count`, { endpoint: 'chat.completions' }), 3, `${name}: one observation per forwarded request`)
    t.equal(sum(text, `${name}_count`), 3, `${name}: nothing else observed`)
    t.equal(sum(text, `${name}_bucket`, { endpoint: 'chat.completions', le: '+Inf' }), 3)
    t.ok(sum(text, `${name}_sum`) > 0)
  }
  t.equal(sum(text, 'oai_proxy_tokens_reserved_total', { endpoint: 'chat.completions' }), 3 * reservation(chatBody()), 'reserved: 3 x (prompt estimate + output allowance)')
  t.equal(sum(text, 'oai_proxy_tokens_settled_total', { endpoint: 'chat.completions' }), tokens, "settled: upstream's usage")
  t.equal(sum(text, 'oai_proxy_streams_open'), 0)
  t.strictSame(lines(text, 'oai_proxy_upstream_keys').map((l) => [l.labels.state, l.value]), [['active', 1]])
  t.strictSame(lines(text, 'oai_proxy_upstream_key_state').map((l) => [l.labels.key_id, l.labels.state, l.value]), [[fingerprint(h.keys[0] as string), 'active', 1]])
  t.equal(sum(text, 'oai_proxy_rate_limit_store', { state: 'memory' }), 1)
  t.equal(sum(text, 'oai_proxy_redis_errors_total'), 0)
  t.ok(lines(text, 'nodejs_eventloop_lag_p99_seconds').length === 1, 'event-loop delay is exported')
  t.equal(lines(text, 'oai_proxy_client_requests_total').length, 0, 'no per-client series unless asked for')
  assertNoLeak(t, text, [...h.secrets, h.proxyKey, KEY], '/metrics')

  const again = await scrape(h)
  t.equal(sum(again, 'oai_proxy_requests_total', { endpoint: 'metrics', status_class: '2xx', client_class: 'none' }), 1, 'the first scrape is counted too')
})

proxyTest(t, '/metrics needs its own key: missing, wrong or a proxy key is a 401 of its own', { proxy: { metrics: metricsOn } }, async (h, t) => {
  for (const headers of [{}, { authorization: `Bearer ${KEY}x` }, { authorization: `Bearer ${h.proxyKey}` }, { authorization: KEY }, { 'x-api-key': KEY }]) {
    const res = await h.app.inject({ url: '/metrics', headers })
    t.equal(res.statusCode, 401)
    t.equal(res.headers['www-authenticate'], 'Bearer')
    t.strictSame(res.json().error.code, 'invalid_metrics_key')
  }
  const ok = await h.app.inject({ url: '/metrics', headers: { authorization: `bearer  ${KEY} ` } })
  t.equal(ok.statusCode, 200)
  t.match(ok.headers['content-type'], /^text\/plain; version=0\.0\.4/)
  t.equal(ok.headers['cache-control'], 'no-store')
  t.equal(sum(ok.body, 'oai_proxy_requests_total', { endpoint: 'metrics', status_class: '4xx' }), 5)
})

/** Start a suite that must fail to start; closed either way. */
async function startFails (proxy: Partial<OaiProxyOptions>): Promise<Error> {
  const app = Fastify()
  try {
    await app.register(oaiProxy, { upstreamUrl: 'http://127.0.0.1:9', openaiKeys: [`sk-${randomToken(20)}`], ...proxy })
    await app.ready()
  } catch (err) {
    return err as Error
  } finally {
    await app.close()
  }
  throw new Error('started')
}

t.test('metrics options are checked at start-up', async (t) => {
  t.match((await startFails({ metrics: { enabled: true } })).message, /invalid option \/metrics: give key \(METRICS_KEY\) or port/)
  const proxyKey = `sk-oaip-${randomToken(32)}`
  t.match((await startFails({ proxyKeys: [proxyKey], metrics: { enabled: true, key: proxyKey } })).message, /METRICS_KEY\) is one of the proxy keys/)
  t.match((await startFails({ metrics: { enabled: true, key: 'short' } })).message, /invalid option \/metrics\/key/)
  await t.rejects(startFails({}), /started/)
  await t.rejects(startFails({ metrics: { enabled: true, key: KEY } }), /started/, 'no proxy keys at all')
})

proxyTest(t, 'off by default: /metrics is an unknown path and the proxy route keeps no times', {}, async (h, t) => {
  const res = await h.app.inject({ url: '/metrics', headers: { authorization: `Bearer ${KEY}` } })
  t.equal(res.statusCode, 404)
  t.equal(res.json().error.code, 'unknown_url')
  t.equal((await post(h)).statusCode, 200)
})

proxyTest(t, 'each limit kind is counted: tokens, concurrency, ban (and quotas in test/plugins/metrics/metrics-clients.test.ts)', {
  proxy: { metrics: metricsOn, rateLimit: { tokensPerMinute: 100, maxConcurrent: 1, failuresPerMinute: 3, defaultOutputTokens: 20 } }
}, async (h, t) => {
  t.equal((await post(h, chatBody({ max_tokens: 5000 }))).statusCode, 429, 'too large for the tokens per minute')
  h.upstream.script(() => ({ kind: 'delay', ms: 300, then: { kind: 'json', body: { id: 'x', choices: [], usage: { total_tokens: 7 } } } }))
  const slow = post(h)
  await h.upstream.waitFor(() => true)
  const second = await post(h)
  t.equal(second.statusCode, 429)
  t.match(second.json().error.message, /^Too many concurrent/)
  t.equal((await slow).statusCode, 200)
  h.upstream.script(undefined)
  for (let i = 0; i < 3; i++) t.equal((await h.app.inject({ url: '/nope' })).statusCode, 404)
  const banned = await h.app.inject({ url: '/nope' })
  t.equal(banned.statusCode, 429)
  t.match(banned.json().error.message, /^Too many failed/)
  // The ban does not reach /metrics: a scraper may share the address.
  const text = await scrape(h)
  t.strictSame(Object.fromEntries(lines(text, 'oai_proxy_limit_rejections_total').map((l) => [l.labels.kind, l.value])), { tokens: 1, concurrency: 1, ban: 1 })
  t.equal(sum(text, 'oai_proxy_requests_total', { endpoint: 'unmatched', status_class: '4xx', client_class: 'none' }), 4)
  t.equal((await h.app.inject({ url: '/metrics' })).statusCode, 401, 'a wrong key is still refused')
  t.equal(sum(text, 'oai_proxy_tokens_settled_total'), 7, 'the slow answer settled at its usage')
})

proxyTest(t, 'streams: open while sent, then closed; a client that leaves is counted as aborted', {
  listen: true, proxy: { metrics: metricsOn, rateLimit: { tokensPerMinute: 1_000_000, defaultOutputTokens: OUTPUT } }, fake: { chunkDelayMs: 40 }
}, async (h, t) => {
  const open = async () => request(`${h.url}/v1/chat/completions`, { method: 'POST', headers: { ...h.auth, 'content-type': 'application/json' }, body: JSON.stringify(chatBody({ stream: true, messages: [{ role: 'user', content: 'a '.repeat(60) }] })) })
  const full = await open()
  const reading = full.body.text()
  await sleep(100)
  t.equal(sum(await scrape(h), 'oai_proxy_streams_open'), 1, 'one stream open')
  t.match(await reading, /data: \[DONE\]/)
  let text = await scrape(h)
  t.equal(sum(text, 'oai_proxy_streams_open'), 0)
  t.equal(sum(text, 'oai_proxy_upstream_seconds_count', { endpoint: 'chat.completions' }), 1)
  t.ok(sum(text, 'oai_proxy_upstream_seconds_sum') >= 0.04 * 60, 'upstream time spans the whole stream')
  t.ok(sum(text, 'oai_proxy_overhead_seconds_sum') < sum(text, 'oai_proxy_upstream_seconds_sum'), 'the stream is not overhead')

  const left = await open()
  await new Promise((resolve) => left.body.once('data', resolve))
  left.body.destroy()
  await sleep(150)
  text = await scrape(h)
  t.equal(sum(text, 'oai_proxy_streams_open'), 0, 'the stream the client left is closed')
  t.equal(sum(text, 'oai_proxy_requests_total', { endpoint: 'chat.completions', status_class: 'aborted' }), 1)
  t.equal(sum(text, 'oai_proxy_requests_total', { endpoint: 'chat.completions', status_class: '2xx' }), 1)
  t.equal(sum(text, 'oai_proxy_upstream_seconds_count'), 1, 'aborted requests are not in the histograms')
  const reserved = sum(text, 'oai_proxy_tokens_reserved_total')
  const aborted = reservation(chatBody({ stream: true, messages: [{ role: 'user', content: 'a '.repeat(60) }] }))
  t.ok(reserved >= 2 * aborted - 1, 'both streams reserved')
  t.ok(sum(text, 'oai_proxy_tokens_settled_total') >= aborted, "the aborted stream's reservation stands")
})

proxyTest(t, 'a key upstream refuses shows as out of rotation, by state and by key id', { keyCount: 2, proxy: { metrics: metricsOn } }, async (h, t) => {
  const [dead, alive] = h.keys as [string, string]
  h.upstream.script((req) => req.headers.authorization === `Bearer ${dead}` ? { kind: 'json', status: 401, body: { error: { message: 'Incorrect API key provided', type: 'invalid_request_error', param: null, code: 'invalid_api_key' } } } : undefined)
  for (let i = 0; i < 2; i++) t.equal((await post(h)).statusCode, 200)
  const text = await scrape(h)
  t.strictSame(Object.fromEntries(lines(text, 'oai_proxy_upstream_keys').map((l) => [l.labels.state, l.value])), { active: 1, invalid_api_key: 1 })
  t.strictSame(Object.fromEntries(lines(text, 'oai_proxy_upstream_key_state').map((l) => [l.labels.key_id, l.labels.state])), { [fingerprint(dead)]: 'invalid_api_key', [fingerprint(alive)]: 'active' })
  t.equal(sum(text, 'oai_proxy_upstream_seconds_count'), 2, 'a retry on the next key is one upstream time')
  assertNoLeak(t, text, [...h.secrets, h.proxyKey, KEY], '/metrics')
})

proxyTest(t, 'an unreachable upstream: upstream time until the failure, no first byte', {
  proxy: { metrics: metricsOn, upstreamUrl: 'http://127.0.0.1:9' }
}, async (h, t) => {
  t.equal((await post(h)).statusCode, 502)
  const text = await scrape(h)
  t.equal(sum(text, 'oai_proxy_requests_total', { endpoint: 'chat.completions', status_class: '5xx' }), 1)
  t.equal(sum(text, 'oai_proxy_upstream_seconds_count'), 1)
  t.equal(sum(text, 'oai_proxy_overhead_seconds_count'), 1)
  t.equal(lines(text, 'oai_proxy_time_to_first_byte_seconds_count').length, 0, 'upstream never answered')
})

proxyTest(t, 'bytes in and out are the bytes on the wire', { listen: true, proxy: { metrics: metricsOn } }, async (h, t) => {
  const body = JSON.stringify(chatBody())
  const head = `POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer ${h.proxyKey}\r\nContent-Type: application/json\r\nContent-Length: ${body.length}\r\nConnection: close\r\n\r\n`
  const answer = await rawRequest(Number(new URL(h.url).port), head + body)
  t.match(answer, /^HTTP\/1\.1 200/)
  const text = await scrape(h)
  t.equal(sum(text, 'oai_proxy_received_bytes_total', { endpoint: 'chat.completions' }), Buffer.byteLength(head + body))
  t.equal(sum(text, 'oai_proxy_sent_bytes_total', { endpoint: 'chat.completions' }), Buffer.byteLength(answer, 'latin1'))
})

proxyTest(t, 'with METRICS_PORT, /metrics is on its own listener and not on the proxy port', {
  listen: true, proxy: { metrics: { enabled: true, port: 0 } }
}, async (h, t) => {
  const base = `http://127.0.0.1:${metricsPort(h)}`
  const onProxy = await request(`${h.url}/metrics`)
  t.equal(onProxy.statusCode, 404)
  t.equal((await onProxy.body.json() as { error: { code: string } }).error.code, 'unknown_url')
  t.equal((await post(h)).statusCode, 200)
  const res = await request(`${base}/metrics`)
  t.equal(res.statusCode, 200)
  const text = await res.body.text()
  t.equal(sum(text, 'oai_proxy_requests_total', { endpoint: 'chat.completions', status_class: '2xx' }), 1)
  t.equal(sum(text, 'oai_proxy_requests_total', { endpoint: 'unmatched' }), 1, 'the /metrics try on the proxy port')
  const head = await request(`${base}/metrics`, { method: 'HEAD' })
  t.equal(head.statusCode, 200)
  t.equal(await head.body.text(), '')
  for (const [method, path] of [['GET', '/'], ['POST', '/metrics'], ['GET', '/metrics/x']] as const) {
    const other = await request(`${base}${path}`, { method })
    t.equal(other.statusCode, 404, `${method} ${path}`)
    await other.body.dump()
  }
})

t.test('the metrics listener answers 500, without details, when a metric cannot be collected', async (t) => {
  const registry = new Registry()
  registry.registerMetric({ name: 'broken', get: async () => { throw new Error('boom') } } as never)
  const server = metricsServer(registry, () => true)
  t.teardown(() => { server.close() })
  const address = await listen(server, 0, '127.0.0.1')
  const broken = await request(`http://127.0.0.1:${address.port}/metrics`)
  t.equal(broken.statusCode, 500)
  t.equal(await broken.body.text(), 'metrics unavailable\n')
})

proxyTest(t, 'with METRICS_PORT and a key, the listener checks the key too', {
  listen: true, proxy: { metrics: { enabled: true, port: 0, key: KEY } }
}, async (h, t) => {
  const base = `http://127.0.0.1:${metricsPort(h)}`
  const bare = await request(`${base}/metrics`)
  t.equal(bare.statusCode, 401)
  t.equal(bare.headers['www-authenticate'], 'Bearer')
  await bare.body.dump()
  const keyed = await request(`${base}/metrics`, { headers: { authorization: `Bearer ${KEY}` } })
  t.equal(keyed.statusCode, 200)
  await keyed.body.dump()
})

t.test('a metrics port that is taken stops start-up', async (t) => {
  const first = await harness({ proxy: { metrics: { enabled: true, port: 0 } } })
  t.teardown(first.close)
  t.match((await startFails({ metrics: { enabled: true, port: metricsPort(first) } })).message, /EADDRINUSE/)
})

proxyTest(t, "the output guardrail's cuts are counted by rule, stage output; a rewritten model list is timed", {
  proxy: { metrics: metricsOn, outputFilter: { phrases: ['purple elephant'] }, policy: { allowedModels: ['gpt-4o*'] } }
}, async (h, t) => {
  const res = await post(h, chatBody({ messages: [{ role: 'user', content: 'say purple elephant please' }] }))
  t.equal(res.statusCode, 200)
  t.equal((await h.app.inject({ url: '/v1/models', headers: h.auth })).statusCode, 200)
  const text = await scrape(h)
  t.equal(sum(text, 'oai_proxy_upstream_seconds_count', { endpoint: 'models.list' }), 1)
  t.equal(sum(text, 'oai_proxy_overhead_seconds_count', { endpoint: 'models.list' }), 1)
  t.strictSame(lines(text, 'oai_proxy_filter_refusals_total').map((l) => [l.labels.rule, l.labels.stage, l.value]), [['phrase:1', 'output', 1]])
})

proxyTest(t, 'an unreachable Redis is counted as Redis errors and shown as the store state', {
  proxy: { metrics: metricsOn, redisUrl: 'redis://127.0.0.1:1', rateLimit: { requestsPerWindow: 100, onStoreError: 'open' } }
}, async (h, t) => {
  for (let i = 0; i < 3; i++) t.equal((await post(h)).statusCode, 200)
  const text = await scrape(h)
  t.ok(sum(text, 'oai_proxy_redis_errors_total') >= 3, 'each request could not use Redis')
  t.equal(sum(text, 'oai_proxy_rate_limit_store', { state: 'redis-unavailable' }), 1)
})
