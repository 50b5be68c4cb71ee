import { mkdtempSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import Fastify from 'fastify'
import t from 'tap'
import oaiProxy, { resolveOptions } from '../../../app.js'
import { ConfigError, parseTrustProxy, readConfig } from '../../../plugins/config/read-config.js'
import { canaryKey } from '../../helper.js'

const secret = canaryKey()

t.test('defaults with only a key', async (t) => {
  const c = readConfig({ OPENAI_KEY: secret })
  t.strictSame(c.server, { host: '127.0.0.1', port: 8080, logLevel: 'info', trustProxy: false, requestTimeoutMs: 60_000, headersTimeoutMs: 10_000, keepAliveTimeoutMs: 72_000, maxRequestsPerSocket: 1000, maxConnections: 10_000, maxConnectionsPerAddress: 1000, shutdownGraceMs: 10_000, production: false })
  t.strictSame(c.proxy, { openaiKeys: [secret], proxyKeys: [], keyHealth: { intervalMs: 300_000 }, rateLimit: {} })
  t.equal(c.demo, false)
})

t.test('every variable maps onto its option', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'oai-proxy-ca-'))
  writeFileSync(join(dir, 'ca.pem'), 'PEM')
  const c = readConfig({
    OPENAI_KEY: `${secret}, sk-second\nsk-third`,
    PROXY_KEY: 'p1,p2',
    UPSTREAM_URL: 'https://gateway.example/v1',
    OPENAI_ORGANIZATION: 'org-abc',
    OPENAI_PROJECT: 'proj_abc',
    UPSTREAM_CA_FILE: join(dir, 'ca.pem'),
    BODY_LIMIT: '2048',
    MAX_JSON_DEPTH: '32',
    MAX_UPLOAD_BYTES: '65536',
    MAX_BODY_BYTES_IN_FLIGHT: '4096',
    HOST: '0.0.0.0',
    PORT: '9000',
    LOG_LEVEL: 'debug',
    TRUST_PROXY: '10.0.0.0/8, 192.168.1.1',
    REQUEST_TIMEOUT_MS: '5000',
    HEADERS_TIMEOUT_MS: '2000',
    KEEP_ALIVE_TIMEOUT_MS: '3000',
    MAX_REQUESTS_PER_SOCKET: '50',
    MAX_CONNECTIONS: '500',
    MAX_CONNECTIONS_PER_ADDRESS: '20',
    UPSTREAM_CONNECT_TIMEOUT_MS: '100',
    KEY_HEALTH_INTERVAL_MS: '0',
    UPSTREAM_HEADERS_TIMEOUT_MS: '200',
    UPSTREAM_IDLE_TIMEOUT_MS: '300',
    STREAM_STALL_TIMEOUT_MS: '0',
    STREAM_MAX_DURATION_MS: '1800000',
    SHUTDOWN_GRACE_MS: '400',
    ENDPOINTS: 'chat.completions,models.list',
    REDIS_URL: 'redis://127.0.0.1:6390',
    RATE_LIMIT_RPM: '30',
    MODEL_RATE_LIMIT: '99',
    RATE_LIMIT_WINDOW_MS: '30000',
    RATE_LIMIT_TPM: '9000',
    MAX_CONCURRENT_REQUESTS: '3',
    RATE_LIMIT_FAILURES_PER_MINUTE: '10',
    RATE_LIMIT_DEFAULT_OUTPUT_TOKENS: '256',
    RATE_LIMIT_ON_STORE_ERROR: 'closed',
    NODE_ENV: 'production'
  })
  t.strictSame(c.proxy, {
    openaiKeys: [secret, 'sk-second', 'sk-third'],
    proxyKeys: ['p1', 'p2'],
    upstreamUrl: 'https://gateway.example/v1',
    organization: 'org-abc',
    project: 'proj_abc',
    upstreamCa: 'PEM',
    bodyLimit: 2048,
    maxJsonDepth: 32,
    maxUploadBytes: 65536,
    maxBodyBytesInFlight: 4096,
    upstreamConnectTimeoutMs: 100,
    keyHealth: { intervalMs: 0 },
    upstreamHeadersTimeoutMs: 200,
    upstreamIdleTimeoutMs: 300,
    streamStallTimeoutMs: 0,
    streamMaxDurationMs: 1_800_000,
    endpoints: ['chat.completions', 'models.list'],
    redisUrl: 'redis://127.0.0.1:6390',
    rateLimit: { requestsPerWindow: 30, windowMs: 30_000, tokensPerMinute: 9000, maxConcurrent: 3, failuresPerMinute: 10, defaultOutputTokens: 256, onStoreError: 'closed' }
  })
  t.strictSame(c.server, { host: '0.0.0.0', port: 9000, logLevel: 'debug', trustProxy: ['10.0.0.0/8', '192.168.1.1'], requestTimeoutMs: 5000, headersTimeoutMs: 2000, keepAliveTimeoutMs: 3000, maxRequestsPerSocket: 50, maxConnections: 500, maxConnectionsPerAddress: 20, shutdownGraceMs: 400, production: true })
})

t.test('bad values stop start-up naming the variable and never printing a secret', async (t) => {
  const cases: Array<[Record<string, string>, RegExp]> = [
    [{ OPENAI_KEY: secret, PORT: '70000' }, /PORT/],
    [{ OPENAI_KEY: secret, PORT: 'eighty' }, /PORT/],
    [{ OPENAI_KEY: secret, LOG_LEVEL: 'loud' }, /LOG_LEVEL/],
    [{ OPENAI_KEY: secret, RATE_LIMIT_ON_STORE_ERROR: 'maybe' }, /RATE_LIMIT_ON_STORE_ERROR/],
    [{ OPENAI_KEY: secret, RATE_LIMIT_RPM: '-1' }, /RATE_LIMIT_RPM/],
    [{ OPENAI_KEY: secret, BODY_LIMIT: '10' }, /BODY_LIMIT/],
    [{ OPENAI_KEY: `${secret},bad key with spaces` }, /OPENAI_KEY: entry 2/],
    [{ OPENAI_KEY: secret, PROXY_KEY: `ok,${secret}\u0000` }, /PROXY_KEY: entry 2/],
    [{ NODE_ENV: 'production' }, /OPENAI_KEY is required/],
    [{ OPENAI_KEY: secret, NODE_TLS_REJECT_UNAUTHORIZED: '0' }, /NODE_TLS_REJECT_UNAUTHORIZED/],
    [{ OPENAI_KEY: secret, UPSTREAM_CA_FILE: '/nonexistent/ca.pem' }, /UPSTREAM_CA_FILE/],
    [{ OPENAI_KEY: secret, TRUST_PROXY: 'true' }, /TRUST_PROXY/],
    [{ OPENAI_KEY: secret, UPSTREAM_URL: '' }, /UPSTREAM_URL must be an absolute/],
    [{ OPENAI_KEY: secret, UPSTREAM_URL: `https://u:${secret}@x.example` }, /UPSTREAM_URL must be an http\(s\) URL without credentials/]
  ]
  for (const [env, pattern] of cases) {
    const err = t.throws(() => readConfig(env)) as Error
    t.type(err, ConfigError)
    t.match(err.message, pattern)
    t.notMatch(err.message, /CANARY/, 'no secret in the message')
  }
})

t.test('the original MODEL_RATE_LIMIT is accepted as requests per minute', async (t) => {
  t.strictSame(readConfig({ OPENAI_KEY: secret, MODEL_RATE_LIMIT: '4' }).proxy.rateLimit, { requestsPerWindow: 4 })
})

t.test('no key outside production means demo mode', async (t) => {
  t.equal(readConfig({}).demo, true)
  t.equal(readConfig({ NODE_ENV: 'development' }).demo, true)
})

t.test('TRUST_PROXY accepts hop counts and address lists, refuses mapped IPv4 ranges', async (t) => {
  t.equal(parseTrustProxy(undefined), false)
  t.equal(parseTrustProxy('false'), false)
  t.equal(parseTrustProxy('2'), 2)
  t.strictSame(parseTrustProxy('::1, fd00::/8'), ['::1', 'fd00::/8'])
  for (const bad of ['::ffff:10.0.0.0/8', '10.0.0.0/33', 'lb.internal', '10.0.0.1/8/2']) t.throws(() => parseTrustProxy(bad), bad)
})

t.test('plugin options are validated at registration, naming the option', async (t) => {
  const cases: Array<[Record<string, unknown>, RegExp]> = [
    [{ openaiKeys: [] }, /openaiKeys/],
    [{ openaiKeys: ['has space'] }, /openaiKeys/],
    [{ openaiKeys: [secret], upstreamUrl: 'ftp://x' }, /upstreamUrl/],
    [{ openaiKeys: [secret], upstreamUrl: `https://user:${secret}@api.example` }, /upstreamUrl/],
    [{ openaiKeys: [secret], endpoints: ['files.list'] }, /unknown endpoint id files\.list/],
    [{ openaiKeys: [secret], unknownOption: true }, /invalid option/]
  ]
  for (const [opts, pattern] of cases) {
    const err = t.throws(() => resolveOptions(opts as never)) as Error
    t.match(err.message, pattern)
    t.notMatch(err.message, /CANARY/)
  }
  const app = Fastify()
  await t.rejects(async () => { await app.register(oaiProxy, { openaiKeys: [] }).ready() }, /openaiKeys/)
})

t.test('a trailing /v1 in the upstream URL is tolerated, not doubled', async (t) => {
  for (const url of ['https://api.openai.com', 'https://api.openai.com/', 'https://api.openai.com/v1', 'https://api.openai.com/v1/']) {
    t.equal(resolveOptions({ openaiKeys: [secret], upstreamUrl: url }).upstreamUrl, 'https://api.openai.com')
  }
  t.equal(resolveOptions({ openaiKeys: [secret], upstreamUrl: 'https://gw.example/openai/v1' }).upstreamUrl, 'https://gw.example/openai')
})
