import { createHash } from 'node:crypto'
import { connect } from 'node:net'
import { monitorEventLoopDelay } from 'node:perf_hooks'
import { getHeapSpaceStatistics, setFlagsFromString } from 'node:v8'
import { runInNewContext } from 'node:vm'
import t from 'tap'
import { request } from 'undici'
import { analyse } from '../lib/request-analysis.js'
import { estimatePrompt } from '../lib/token-estimate.js'
import { endpoints } from '../schemas/endpoints.js'
import { startFakeOpenAI, type Plan } from '../testing/fake-openai.js'
import { assertNoLeak, canaryKey, chatBody, isAllowlisted, listeningUrl, proxyTest, randomToken, seenByClient, sleep, spawnServer, type Harness } from './helper.js'

/*
 * Edge cases docs/security.md listed as "partly covered": H11 (client Accept-Encoding), L10 (utility
 * URLs), S10 (odd SSE framing end to end), U07 (a very large success body, memory measured), LD06 (heap
 * and handles after many client aborts) and B08 (very wide JSON bodies). Every wait here is bounded and
 * every socket is on loopback. Figures are printed as test comments (`t.comment`).
 */

const MB = 1024 * 1024

// A forced GC for memory baselines (U07, LD06): the flag can be set at run time; the function comes from a fresh context.
setFlagsFromString('--expose_gc')
const gc = runInNewContext('gc') as () => void
const json = { 'content-type': 'application/json' }

/** POST over a real socket; the body as raw bytes (undici never decodes a content-encoding for `request`). */
async function postRaw (h: Harness, path: string, body: unknown, headers: Record<string, string> = {}) {
  const res = await request(`${h.url}${path}`, { method: 'POST', headers: { ...h.auth, ...json, ...headers }, body: JSON.stringify(body), headersTimeout: 10_000, bodyTimeout: 10_000 })
  const chunks: Buffer[] = []
  for await (const c of res.body) chunks.push(c as Buffer)
  return { status: res.statusCode, headers: res.headers, bytes: Buffer.concat(chunks) }
}

const seenRaw = (r: { status: number, headers: Record<string, unknown>, bytes: Buffer }) => `${r.status}\n${JSON.stringify(r.headers)}\n${r.bytes.toString('latin1')}`

/* ------------------------------------------------------------------------------------------------ H11 */

proxyTest(t, 'H11: a client Accept-Encoding never reaches upstream and every reply is plain identity bytes', { listen: true }, async (h, t) => {
  const gzipMagic = Buffer.from([0x1f, 0x8b])
  const big = 'x'.repeat(400_000)
  const cases: Array<{ what: string, path: string, body: unknown, plan?: () => Plan, status: number, sse?: boolean, upstream: boolean }> = [
    { what: 'small JSON answer (sent whole)', path: '/v1/chat/completions', body: chatBody(), status: 200, upstream: true },
    { what: 'large JSON answer (streamed)', path: '/v1/chat/completions', body: chatBody(), plan: () => ({ kind: 'json', body: { id: 'chatcmpl-1', choices: [{ message: { content: big } }] } }), status: 200, upstream: true },
    { what: 'SSE stream', path: '/v1/chat/completions', body: chatBody({ stream: true }), status: 200, sse: true, upstream: true },
    { what: 'upstream error answer', path: '/v1/chat/completions', body: chatBody(), plan: () => ({ kind: 'json', status: 400, body: { error: { message: 'Invalid value for messages.', type: 'invalid_request_error', param: 'messages', code: null } } }), status: 400, upstream: true },
    { what: 'the proxy\'s own refusal (bad body)', path: '/v1/chat/completions', body: { model: 'gpt-4o-mini' }, status: 400, upstream: false },
    { what: 'the proxy\'s own 404', path: '/v1/files', body: {}, status: 404, upstream: false }
  ]
  for (const acceptEncoding of ['br, gzip, deflate', 'gzip;q=1.0, identity;q=0, *;q=0']) {
    for (const c of cases) {
      h.upstream.script(c.plan)
      const before = h.upstream.requests.length
      const res = await postRaw(h, c.path, c.body, { 'accept-encoding': acceptEncoding })
      const label = `${c.what} (Accept-Encoding: ${acceptEncoding})`
      t.equal(res.status, c.status, `${label}: status`)
      const sent = h.upstream.requests.slice(before)
      if (c.upstream) {
        t.strictSame(sent.map((r) => r.headers['accept-encoding']), ['identity'], `${label}: upstream got accept-encoding: identity`)
      } else {
        t.equal(sent.length, 0, `${label}: nothing went upstream`)
      }
      const encoding = res.headers['content-encoding']
      t.ok(encoding === undefined || encoding === 'identity', `${label}: no content-encoding on the reply (${String(encoding)})`)
      t.notOk(res.bytes.subarray(0, 2).equals(gzipMagic), `${label}: not gzip bytes`)
      const text = res.bytes.toString('utf8')
      t.ok(Buffer.from(text, 'utf8').equals(res.bytes), `${label}: valid UTF-8 text`)
      if (c.sse === true) {
        t.match(text, /^data: \{.*\n\n[\s\S]*data: \[DONE\]\n\n$/, `${label}: readable SSE`)
      } else {
        t.doesNotThrow(() => JSON.parse(text), `${label}: readable JSON`)
      }
      assertNoLeak(t, seenRaw(res), h.secrets, label)
    }
  }
})

/* ------------------------------------------------------------------------------------------------ L10 */

const UTILITY_PATHS = ['/metrics', '/debug', '/docs', '/routes', '/swagger', '/documentation', '/.env', '/status', '/admin',
  '/debug/vars', '/debug/pprof', '/docs/json', '/documentation/json', '/swagger.json', '/openapi.json', '/_routes', '/server-status',
  '/v1/metrics', '/v1/debug', '/v1/routes', '/v1/health', '/health/details', '/config', '/env', '/info', '/version', '/keys']

proxyTest(t, 'L10: utility URLs are 404 in OpenAI\'s envelope and expose nothing; /health says only what it says', {}, async (h, t) => {
  const upstreamHost = new URL(h.upstream.url).host
  const routeNames = ['/chat/completions', '/embeddings', '/moderations', '/responses', '/completions', '/v1/models']
  const callers: Array<[string, Record<string, string>]> = [['no key', {}], ['a valid key', h.auth], ['a wrong key', { authorization: 'Bearer sk-oaip-not-a-key' }]]
  for (const path of UTILITY_PATHS) {
    for (const [who, headers] of callers) {
      const res = await h.app.inject({ method: 'GET', url: path, headers })
      const label = `GET ${path} with ${who}`
      t.equal(res.statusCode, 404, `${label}: 404`)
      t.strictSame(res.json(), { error: { message: `Unknown request URL: GET ${path}. This proxy only forwards generation endpoints.`, type: 'invalid_request_error', param: null, code: 'unknown_url' } }, `${label}: OpenAI's envelope, the request line only`)
      const seen = seenByClient(res)
      t.notOk(seen.includes(upstreamHost) || seen.includes('127.0.0.1') || /openai\.com/.test(seen), `${label}: no upstream URL`)
      t.strictSame(routeNames.filter((r) => res.body.includes(r)), [], `${label}: no route list`)
      t.notOk('allow' in res.headers, `${label}: no Allow header listing methods`)
      assertNoLeak(t, seen, h.secrets, label)
      t.notOk(seen.includes(h.proxyKey), `${label}: the client's key is not echoed`)
    }
  }
  t.equal(h.upstream.requests.length, 0, 'nothing went upstream')

  for (const [who, headers] of callers) {
    for (const url of ['/health', '/health?verbose=1&debug=true']) {
      const res = await h.app.inject({ method: 'GET', url, headers })
      t.equal(res.statusCode, 200, `GET ${url} with ${who}`)
      t.match(res.headers['content-type'], /^application\/json/)
      // The same shape test/plugins/upstream/key-injection.test.ts checks exactly, with the pool healthy.
      t.strictSame(res.json(), { status: 'ok', upstream_keys: 'available', rate_limit_store: 'memory' }, `GET ${url} with ${who}: exactly the three fields`)
      const names = Object.keys(res.headers).filter((n) => !['date', 'connection', 'keep-alive', 'content-length'].includes(n)).sort()
      t.strictSame(names, ['content-type', 'x-proxy-request-id'], `GET ${url} with ${who}: no other headers`)
      assertNoLeak(t, seenByClient(res), h.secrets, `GET ${url} with ${who}`)
    }
  }
  const head = await h.app.inject({ method: 'HEAD', url: '/health' })
  t.equal(head.statusCode, 200)
  t.equal(head.body, '', 'HEAD /health: no body')
})

/* ------------------------------------------------------------------------------------------------ S10 */

const chat = endpoints.find((e) => e.id === 'chat.completions') as (typeof endpoints)[number]
const DEFAULT_OUTPUT = 1024
const reservation = (body: Record<string, unknown>) => estimatePrompt(analyse(chat, body)) + DEFAULT_OUTPUT

/** A 10 MB single `data:` line whose text mixes 1-, 2- and 3-byte characters, so chunk cuts split characters. */
const tenMbLine = (() => {
  const unit = 'Zé東a'
  const head = 'data: {"choices":[{"delta":{"content":"'
  const tail = '"}}]}\n\n'
  const body = unit.repeat(Math.ceil((10 * MB) / Buffer.byteLength(unit)))
  return head + body + tail
})()

const USAGE_FRAME = 'data: {"id":"c","object":"chat.completion.chunk","choices":[],\r\ndata: "usage":{"prompt_tokens":3,"completion_tokens":4,"total_tokens":7}}\r\n\r\n'

const ODD_FRAMES = [
  ': keepalive\n\n',
  ':\n\n',
  'event: message\nid: 1\nretry: 3000\ndata: {"choices":[{"delta":{"content":"a"}}]}\n\n',
  'data: {"choices":\ndata: [{"delta":{"content":"multi-line"}}]}\n\n',
  'data:no-space\ndata\ndata:  two spaces\nunknown-field: x\n\n',
  'id: 2\r\nevent: crlf\r\ndata: {"x":1}\r\n\r\n',
  ': keepalive\r\n\r\n',
  'data: cr-only\rid: 3\rretry: 10\r\r',
  ': keepalive\r\r',
  tenMbLine,
  'event: a\nid:\nretry: not-a-number\ndata: {"choices":[{"delta":{"content":"after the big line"}}]}\n\n',
  USAGE_FRAME,
  'data: [DONE]\n\n'
]

async function streamOdd (h: Harness, body: Record<string, unknown>, frames: string[] = ODD_FRAMES) {
  h.upstream.script(() => ({ kind: 'sse', frames, delayMs: 1 }))
  const started = performance.now()
  const res = await postRaw(h, '/v1/chat/completions', body)
  return { ...res, ms: performance.now() - started }
}

proxyTest(t, 'S10: odd SSE framing and a 10 MB data line arrive byte for byte (no token budget)', { listen: true }, async (h, t) => {
  const res = await streamOdd(h, chatBody({ stream: true }))
  t.equal(res.status, 200)
  const expected = Buffer.from(ODD_FRAMES.join(''))
  t.equal(res.bytes.length, expected.length, `${res.bytes.length} bytes, as sent`)
  t.ok(res.bytes.equals(expected), 'identical bytes: comments, CRLF and CR endings, multi-line data, field mix, the 10 MB line, the usage chunk')
  t.comment(`S10 no budget: ${(res.bytes.length / MB).toFixed(1)} MB in ${res.ms.toFixed(0)} ms`)
  assertNoLeak(t, seenRaw(res), h.secrets, 'stream')
})

/** The odd frames without the 10 MB line: a token budget's usage reader cannot take that one (next test). */
const ODD_SMALL = ODD_FRAMES.filter((f) => f !== tenMbLine)

proxyTest(t, 'S10: with a token budget the usage reader keeps every byte but the usage chunk the proxy asked for', { listen: true, proxy: { rateLimit: { tokensPerMinute: 1_000_000 } } }, async (h, t) => {
  // The client did not ask for usage: the proxy adds stream_options.include_usage and drops the usage-only
  // chunk again (a reader in the stream stage that splits frames at any of the three blank-line forms).
  // Upstream writes the frames one by one, all at once, and cut every 7 bytes (inside CRLF pairs and characters).
  const joined = ODD_SMALL.join('')
  const ways: Array<[string, string[]]> = [
    ['frame by frame', ODD_SMALL],
    ['in one write', [joined]],
    ['cut every 7 bytes', Array.from({ length: Math.ceil(joined.length / 7) }, (_, i) => joined.slice(i * 7, i * 7 + 7))]
  ]
  const expected = ODD_SMALL.filter((f) => f !== USAGE_FRAME).join('')
  for (const [how, frames] of ways) {
    const hidden = await streamOdd(h, chatBody({ stream: true }), frames)
    t.equal(hidden.status, 200, `${how}: 200`)
    t.strictSame((h.upstream.requests.at(-1)?.json as Record<string, unknown>).stream_options, { include_usage: true }, `${how}: usage was asked for upstream`)
    t.equal(hidden.bytes.toString(), expected, `${how}: identical bytes but for the CRLF, two-line usage chunk, which is dropped whole`)
    assertNoLeak(t, seenRaw(hidden), h.secrets, `${how}: stream`)
  }
  // The reader parsed that usage chunk each time (two data lines, CRLF): each stream is charged its 7
  // tokens, not its reservation. Each probe settles at 1 token.
  h.upstream.script(() => ({ kind: 'json', body: { id: 'chatcmpl-x', choices: [], usage: { total_tokens: 1 } } }))
  const next = chatBody()
  const expectRemaining = () => 1_000_000 - 7 * ways.length - (h.upstream.requests.length - ways.length - 1) - reservation(next)
  let remaining = Number.NaN
  for (const deadline = Date.now() + 2000; Date.now() < deadline; await sleep(20)) {
    const r = await h.app.inject({ method: 'POST', url: '/v1/chat/completions', headers: h.auth, payload: next })
    remaining = Number(r.headers['x-ratelimit-remaining-tokens'])
    if (remaining === expectRemaining()) break
  }
  t.equal(remaining, expectRemaining(), 'each stream was settled at the 7 tokens of its usage chunk')

  // The client asked for usage itself: the reader only listens; nothing is dropped.
  const shown = await streamOdd(h, chatBody({ stream: true, stream_options: { include_usage: true } }), ODD_SMALL)
  t.equal(shown.bytes.toString(), joined, 'identical bytes, usage chunk included, when the client asked for usage')
  assertNoLeak(t, seenRaw(shown), h.secrets, 'stream')
})

/** Known bug (see the test below): with a token budget, SSE frames are split by a regex that is quadratic in an unterminated tail. */
// This test found the splitter quadratic in an unfinished frame (a 10 MB line blocked the proxy); fixed in
// lib/sse-frames.ts.
t.test('S10: with a token budget a 10 MB data line arrives byte for byte and the proxy stays responsive', async (t) => {
  // The proxy runs in a child process: the event loop it blocks is not this one, and it can be killed.
  const key = canaryKey()
  const proxyKey = `sk-oaip-${randomToken(32)}`
  const fake = await startFakeOpenAI({ validKeys: [key] })
  t.teardown(fake.close)
  fake.script(() => ({ kind: 'sse', frames: ODD_FRAMES, delayMs: 1 }))
  const bootStarted = performance.now()
  const child = spawnServer({ PORT: '0', LOG_LEVEL: 'info', NODE_ENV: 'development', OPENAI_KEY: key, PROXY_KEY: proxyKey, UPSTREAM_URL: fake.url, RATE_LIMIT_TPM: '1000000' })
  t.teardown(() => { child.kill('SIGKILL') })
  let childOutput = ''
  child.stdout?.on('data', (c: Buffer) => { childOutput += c.toString() })
  child.stderr?.on('data', (c: Buffer) => { childOutput += c.toString() })
  const url = await listeningUrl(child, 20_000)
  const bootMs = performance.now() - bootStarted
  // The client did not ask for usage: the reader sits in the stream stage and drops the usage chunk.
  const expected = Buffer.from(ODD_FRAMES.filter((f) => f !== USAGE_FRAME).join(''))
  const started = performance.now()
  let received = 0
  const chunks: Buffer[] = []
  const stream = (async () => {
    const res = await request(`${url}/v1/chat/completions`, { method: 'POST', headers: { authorization: `Bearer ${proxyKey}`, ...json }, body: JSON.stringify(chatBody({ stream: true })), signal: AbortSignal.timeout(3000) })
    for await (const c of res.body) {
      chunks.push(c as Buffer)
      received += (c as Buffer).length
    }
  })().then(() => 'done', (err: Error) => err.name)
  // While the big line goes through, does the proxy still answer anyone? (bounded: 1.5 s)
  await fake.waitFor(() => true, 3000)
  await sleep(200)
  const probeStarted = performance.now()
  const probe = await request(`${url}/health`, { signal: AbortSignal.timeout(1500) }).then(async (r) => { await r.body.text(); return String(r.statusCode) }, (err: Error) => err.name)
  const probeMs = performance.now() - probeStarted
  const outcome = await stream
  const ms = performance.now() - started
  t.comment(`S10 budget, 10 MB line (proxy in a child, up in ${bootMs.toFixed(0)} ms): ${outcome} after ${ms.toFixed(0)} ms, ${(received / MB).toFixed(2)} of ${(expected.length / MB).toFixed(2)} MB received; /health meanwhile: ${probe} after ${probeMs.toFixed(0)} ms`)
  const got = Buffer.concat(chunks)
  assertNoLeak(t, got.toString('latin1'), [key], 'stream')
  assertNoLeak(t, childOutput, [key], 'the proxy\'s logs')
  t.equal(outcome, 'done', 'the stream completes within 3 s')
  t.ok(got.equals(expected), 'identical bytes but for the usage chunk')
  t.equal(probe, '200', '/health answers within 1.5 s while the line goes through')
})

/* ------------------------------------------------------------------------------------------------ U07 */

interface Memory { rss: number, heap: number, buffers: number }

const memoryNow = (): Memory => { const m = process.memoryUsage(); return { rss: m.rss, heap: m.heapUsed, buffers: m.arrayBuffers } }
const minus = (a: Memory, b: Memory): Memory => ({ rss: a.rss - b.rss, heap: a.heap - b.heap, buffers: a.buffers - b.buffers })
const mb = (n: number) => `${n >= 0 ? '+' : ''}${(n / MB).toFixed(1)} MB`

/**
 * Read a 200 answer's body without keeping it (its length and SHA-256) and measure memory: the peaks of RSS,
 * V8's heap and Buffer memory (arrayBuffers) over a baseline taken after a forced GC, sampled every few ms;
 * and what is still held halfway, once the client has stopped reading for `pauseMs` (backpressure) and a GC
 * has run. The peaks include garbage V8 has not collected yet (it collects Buffers only after tens of MB of
 * them, by its external-memory heuristic); the halfway figure is what the pipeline holds at once.
 */
async function readMeasured (res: { body: AsyncIterable<unknown> }, size: number, pauseMs: number) {
  const hash = createHash('sha256')
  let bytes = 0
  let held: Memory | undefined
  for await (const c of res.body) {
    hash.update(c as Buffer)
    bytes += (c as Buffer).length
    if (held === undefined && bytes >= size / 2) {
      await sleep(pauseMs)
      gc()
      await sleep(10)
      gc()
      held = memoryNow()
    }
  }
  return { bytes, sha: hash.digest('hex'), held }
}

async function measured<T extends { held: Memory | undefined }> (fn: () => Promise<T>) {
  // Twice, a turn apart: Buffers of earlier tests are freed by callbacks the first GC queues.
  gc()
  await sleep(20)
  gc()
  const before = memoryNow()
  const peak = { ...before }
  const timer = setInterval(() => {
    const m = memoryNow()
    peak.rss = Math.max(peak.rss, m.rss)
    peak.heap = Math.max(peak.heap, m.heap)
    peak.buffers = Math.max(peak.buffers, m.buffers)
  }, 5)
  try {
    const result = await fn()
    return { result, before, peak: minus(peak, before), held: result.held === undefined ? undefined : minus(result.held, before) }
  } finally {
    clearInterval(timer)
  }
}

const U07_SIZE = 50 * MB

proxyTest(t, 'U07: a 50 MB JSON answer and a 50 MB stream pass whole with memory far below their size', { listen: true }, async (h, t) => {
  // One shared Buffer: the fake answers from it without copying, so memory growth is the proxy's (and the client's).
  const head = '{"id":"chatcmpl-big","object":"chat.completion","choices":[{"index":0,"message":{"role":"assistant","content":"'
  const tail = '"},"finish_reason":"stop"}],"usage":{"total_tokens":1}}'
  const jsonBody = Buffer.alloc(U07_SIZE, 'y')
  jsonBody.write(head, 0)
  jsonBody.write(tail, U07_SIZE - tail.length)
  const jsonSha = createHash('sha256').update(jsonBody).digest('hex')
  // 50 MB of SSE: the same 4 KiB frame string 12,800 times (one string, shared).
  const frame = `data: {"choices":[{"delta":{"content":"${'z'.repeat(4096 - 45)}"}}]}\n\n`
  const frameCount = Math.round(U07_SIZE / Buffer.byteLength(frame))
  const frames = [...Array<string>(frameCount).fill(frame), 'data: [DONE]\n\n']
  const sse = createHash('sha256')
  for (const f of frames) sse.update(f)
  const sseSha = sse.digest('hex')
  const sseBytes = frames.reduce((n, f) => n + Buffer.byteLength(f), 0)

  const measure = (stream: boolean) => {
    h.upstream.script(() => stream ? { kind: 'sse', frames } : { kind: 'raw', headers: json, body: jsonBody })
    return measured(async () => {
      const started = performance.now()
      const res = await request(`${h.url}/v1/chat/completions`, { method: 'POST', headers: { ...h.auth, ...json }, body: JSON.stringify(chatBody({ stream })), headersTimeout: 10_000, bodyTimeout: 10_000 })
      const got = await readMeasured(res, stream ? sseBytes : U07_SIZE, 300)
      return { status: res.statusCode, headers: res.headers, ...got, ms: performance.now() - started }
    })
  }
  // Each twice: the first run in this process grows RSS by the garbage V8 lets pile up before collecting
  // it; the second reuses that memory, so a body held whole (or any growth with the body) would show there.
  for (const stream of [false, true]) {
    const what = stream ? 'SSE' : 'JSON'
    const size = stream ? sseBytes : U07_SIZE
    for (const run of ['first', 'second'] as const) {
      const m = await measure(stream)
      const label = `${what}, ${run} run`
      t.equal(m.result.status, 200, `${label}: 200`)
      t.equal(m.result.bytes, size, `${label}: every byte`)
      t.equal(m.result.sha, stream ? sseSha : jsonSha, `${label}: the same bytes`)
      if (!stream) t.equal(m.result.headers['transfer-encoding'], 'chunked', `${label}: streamed, not read whole`)
      assertNoLeak(t, JSON.stringify(m.result.headers), h.secrets, `${label}: headers`)
      const held = m.held as Memory
      t.comment(`U07 ${what} ${(size / MB).toFixed(0)} MB${stream ? ` (${frameCount} frames)` : ''}, ${run} run: ${m.result.ms.toFixed(0)} ms (300 of them a client pause); RSS ${(m.before.rss / MB).toFixed(0)} MB before, peak ${mb(m.peak.rss)}; peaks with garbage: heap ${mb(m.peak.heap)}, Buffers ${mb(m.peak.buffers)}; held halfway after GC: heap ${mb(held.heap)}, Buffers ${mb(held.buffers)}`)
      t.ok(held.buffers < size / 20, `${label}: Buffers held halfway ${mb(held.buffers)} (bound: a twentieth of the body)`)
      t.ok(held.heap < size / 20, `${label}: heap held halfway ${mb(held.heap)} (bound: a twentieth of the body)`)
      // RSS counts Buffer garbage V8 has not collected yet, and what the allocator hands back to it: in 20
      // CI logs the second runs peaked +0 to +12.3 MB, and once each +17.4 MB (JSON) and +25.5 MB (SSE),
      // failing a quarter and then half the body. The halfway figures above pin what the pipeline holds; this
      // one only has to tell a body held whole (its 50 MB on top of that noise) from one streamed.
      if (run === 'second') t.ok(m.peak.rss < size, `${label}: RSS peaked ${mb(m.peak.rss)} over its start (bound: the body's size)`)
    }
  }
})

/* ----------------------------------------------------------------------------------------------- LD06 */

function resourceCounts (): Record<string, number> {
  const counts: Record<string, number> = {}
  for (const r of process.getActiveResourcesInfo()) counts[r] = (counts[r] ?? 0) + 1
  return counts
}

proxyTest(t, 'LD06: 1,800 client aborts at three stages leave no handles and no heap behind', { listen: true }, async (h, t) => {
  const port = Number(new URL(h.url).port)
  const seen = new Map<string, () => void>()
  // The stage is in x-client-request-id, which the proxy passes upstream.
  h.upstream.script((r) => {
    const id = String(r.headers['x-client-request-id'])
    seen.get(id)?.()
    if (id.startsWith('stream-')) return { kind: 'sse', frames: Array<string>(2000).fill('data: {"choices":[{"delta":{"content":"tick "}}]}\n\n'), delayMs: 10 }
    return { kind: 'stall' }
  })
  const body = JSON.stringify(chatBody({ stream: true }))
  const stages = ['early', 'headers', 'stream'] as const
  let timeouts = 0
  const abortOne = (i: number) => new Promise<void>((resolve) => {
    const stage = stages[i % stages.length] as (typeof stages)[number]
    const id = `${stage}-${i}`
    const raw = `POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer ${h.proxyKey}\r\nContent-Type: application/json\r\nX-Client-Request-Id: ${id}\r\nContent-Length: ${body.length}\r\n\r\n${body}`
    const s = connect(port, '127.0.0.1')
    const leave = () => {
      clearTimeout(timer)
      seen.delete(id)
      s.destroy()
      resolve()
    }
    const timer = setTimeout(() => { timeouts++; leave() }, 3000)
    s.on('error', leave)
    s.once('connect', () => {
      s.write(raw)
      // early: gone right after sending (the proxy has usually read the request by then and calls upstream
      // all the same: that call must be aborted too); headers: upstream has the call and has not answered;
      // stream: the first SSE bytes have reached the client.
      if (stage === 'early') setImmediate(leave)
      else if (stage === 'headers') seen.set(id, () => setImmediate(leave))
      else s.on('data', (c: Buffer) => { if (c.includes('data: ')) leave() })
    })
  })
  const run = async (from: number, to: number) => {
    for (let i = from; i < to; i += 10) await Promise.all(Array.from({ length: Math.min(10, to - i) }, (_, j) => abortOne(i + j)))
  }
  const connections = () => new Promise<number>((resolve) => { h.app.server.getConnections((_err, n) => resolve(n)) })
  // What upstream saw, tallied (the records themselves are dropped: the heap compared must be the proxy's).
  const upstreamByStage: Record<string, number> = { early: 0, headers: 0, stream: 0 }
  const notAborted: string[] = []
  const notAllowed: string[] = []
  /** Wait (bounded) until every upstream call has ended and the proxy holds no client connection; then measure. */
  const quiet = async () => {
    for (const deadline = Date.now() + 5000; Date.now() < deadline; await sleep(20)) {
      if (h.upstream.requests.every((r) => r.abortedAt !== undefined) && await connections() === 0) break
    }
    for (const r of h.upstream.requests.splice(0)) {
      const id = String(r.headers['x-client-request-id'])
      const stage = id.slice(0, id.indexOf('-'))
      upstreamByStage[stage] = (upstreamByStage[stage] ?? 0) + 1
      if (r.abortedAt === undefined) notAborted.push(id)
      if (!isAllowlisted(r)) notAllowed.push(`${r.method} ${r.url}`)
    }
    assertNoLeak(t, h.logs.splice(0).join(''), h.secrets, 'logs so far')
    await sleep(100)
    gc()
    gc()
    // Heap used by objects: all spaces but code (JIT output keeps growing for a while as code warms up).
    const objects = getHeapSpaceStatistics().filter((sp) => !sp.space_name.startsWith('code')).reduce((n, sp) => n + sp.space_used_size, 0)
    return { heap: process.memoryUsage().heapUsed, objects, resources: resourceCounts(), connections: await connections() }
  }
  const idle = await quiet()
  // 200 aborts to warm up, then two rounds of 800 (1,800 in all). The first round still carries one-off
  // growth (JIT code, inline caches); a leak of even one small object per abort would grow the second
  // round as much as the first.
  const started = performance.now()
  await run(0, 200)
  const warm = await quiet()
  await run(200, 1000)
  const mid = await quiet()
  await run(1000, 1800)
  const last = await quiet()
  const ms = performance.now() - started
  t.equal(timeouts, 0, 'every abort happened at its stage (none timed out)')
  t.strictSame(notAllowed, [], 'upstream saw only allowlisted calls')
  t.strictSame(notAborted, [], 'every call upstream got was aborted')
  t.equal(upstreamByStage.headers, 600, 'every before-headers abort came after upstream had the call')
  t.equal(upstreamByStage.stream, 600, 'every mid-stream abort came after upstream had the call')
  t.equal(last.connections, 0, 'no client connection left')
  const kib = (n: number) => `${n >= 0 ? '+' : ''}${(n / 1024).toFixed(0)} KiB`
  const growth = (a: typeof mid, b: typeof mid) => ({ heap: b.heap - a.heap, objects: b.objects - a.objects })
  const [first, second] = [growth(warm, mid), growth(mid, last)]
  t.comment(`LD06: 1,800 aborts in ${ms.toFixed(0)} ms; upstream got ${JSON.stringify(upstreamByStage)} by stage (600 each tried), all aborted; after GC, heap used ${(warm.heap / MB).toFixed(1)} MB after 200 aborts, ${kib(first.heap)} over the next 800 (objects ${kib(first.objects)}), ${kib(second.heap)} over the 800 after (objects ${kib(second.objects)}); active resources before any ${JSON.stringify(idle.resources)}, after 200 ${JSON.stringify(warm.resources)}, after 1,000 ${JSON.stringify(mid.resources)}, after 1,800 ${JSON.stringify(last.resources)}`)
  // A request's objects (its IncomingMessage, reply, socket, streams) weigh tens of KiB: a leak of them, or
  // of anything per abort, would be megabytes here.
  t.ok(second.objects < MB, `heap objects after a forced GC grew ${kib(second.objects)} over the last 800 aborts (bound 1 MiB, 1.3 KiB an abort)`)
  t.ok(second.heap < 2 * MB, `heap used (code included) grew ${kib(second.heap)} over the last 800 aborts (bound 2 MiB)`)
  // Sockets here: the fake upstream's side of the proxy's kept-alive upstream connections (undici unrefs its
  // own idle ones, so they are not counted); the clients' are all gone (connections: 0 above).
  for (const [type, n] of Object.entries(last.resources)) {
    t.ok(n <= (warm.resources[type] ?? 0), `${type}: ${n} active after 1,800 aborts, ${warm.resources[type] ?? 0} after 200`)
  }
  t.ok((last.resources.TCPSocketWrap ?? 0) <= 10, `${last.resources.TCPSocketWrap ?? 0} upstream connections kept alive (at most the 10 aborts run at once)`)
})

/* ------------------------------------------------------------------------------------------------ B08 */

proxyTest(t, 'B08: very wide bodies get a clear answer in bounded time while small requests stay fast', { listen: true, proxy: { filter: { phrases: ['ignore previous instructions', 'forbidden fruit'], patterns: ['jail\\s*break'] } } }, async (h, t) => {
  const part = { type: 'text', text: 'a' }
  const wideKeys = (n: number) => Object.fromEntries(Array.from({ length: n }, (_, i) => [`k${i}`, i]))
  const bodies: Array<[string, string, unknown]> = [
    ['100k content parts', '/v1/chat/completions', chatBody({ messages: [{ role: 'user', content: Array(100_000).fill(part) }] })],
    ['100k-item array in an unknown field', '/v1/chat/completions', chatBody({ x_wide: Array.from({ length: 100_000 }, (_, i) => i) })],
    ['100k strings in an unknown field', '/v1/chat/completions', chatBody({ x_wide: Array(100_000).fill('word') })],
    ['10k messages', '/v1/chat/completions', chatBody({ messages: Array.from({ length: 10_000 }, (_, i) => ({ role: i % 2 === 0 ? 'user' : 'assistant', content: `turn ${i}` })) })],
    ['100k keys in an unknown field', '/v1/chat/completions', chatBody({ x_wide: wideKeys(100_000) })],
    ['100k keys in logit_bias', '/v1/chat/completions', chatBody({ logit_bias: wideKeys(100_000) })],
    ['100k embedding inputs', '/v1/embeddings', { model: 'text-embedding-3-small', input: Array(100_000).fill('hi') }],
    ['100k Responses input items', '/v1/responses', { model: 'gpt-4o-mini', input: Array(100_000).fill({ role: 'user', content: 'x' }) }],
    // As wide as the default 10 MiB body limit allows.
    ['4.5M-item array in an unknown field', '/v1/chat/completions', chatBody({ x_wide: Array(4_500_000).fill(0) })],
    ['600k keys in an unknown field', '/v1/chat/completions', chatBody({ x_wide: wideKeys(600_000) })],
    ['330k content parts', '/v1/chat/completions', chatBody({ messages: [{ role: 'user', content: Array(330_000).fill(part) }] })]
  ]
  // The fake answers at once with a tiny body: the time measured is the proxy's work on the request.
  h.upstream.script(() => ({ kind: 'json', body: { id: 'x', object: 'ok', usage: { total_tokens: 1 } } }))
  const small = JSON.stringify(chatBody())
  const smallOnce = async () => {
    const started = performance.now()
    const res = await request(`${h.url}/v1/chat/completions`, { method: 'POST', headers: { ...h.auth, ...json }, body: small, headersTimeout: 10_000, bodyTimeout: 10_000 })
    await res.body.text()
    t.equal(res.statusCode, 200)
    return performance.now() - started
  }
  const idle: number[] = []
  for (let i = 0; i < 10; i++) idle.push(await smallOnce())
  const idleMedian = [...idle].sort((a, b) => a - b)[5] as number
  t.comment(`B08: a small request alone takes ${idleMedian.toFixed(1)} ms (median of 10)`)
  for (const [what, path, body] of bodies) {
    const payload = JSON.stringify(body)
    // For scale: one JSON.parse of the body (the fake upstream, in this process too, does one when it receives it).
    const parseStarted = performance.now()
    JSON.parse(payload)
    const parseMs = performance.now() - parseStarted
    const delay = monitorEventLoopDelay({ resolution: 5 })
    delay.enable()
    const state = { done: false }
    const latencies: number[] = []
    const probe = (async () => {
      while (!state.done) {
        latencies.push(await smallOnce())
        await sleep(5)
      }
    })()
    const started = performance.now()
    const res = await request(`${h.url}${path}`, { method: 'POST', headers: { ...h.auth, ...json }, body: payload, headersTimeout: 20_000, bodyTimeout: 20_000 })
    const text = await res.body.text()
    const ms = performance.now() - started
    state.done = true
    await probe
    delay.disable()
    const status = res.statusCode
    t.ok(status === 200 || (status >= 400 && status < 500), `${what}: a clear answer (${status})`)
    if (status !== 200) t.match(JSON.parse(text), { error: { message: String, type: String } }, `${what}: OpenAI's envelope`)
    assertNoLeak(t, `${status}\n${JSON.stringify(res.headers)}\n${text}`, h.secrets, what)
    const worst = Math.max(...latencies)
    t.comment(`B08 ${what} (${(payload.length / MB).toFixed(2)} MB, one JSON.parse ${parseMs.toFixed(0)} ms): ${status} in ${ms.toFixed(0)} ms; ${latencies.length} small requests meanwhile, worst ${worst.toFixed(0)} ms; event-loop delay p99 ${(delay.percentile(99) / 1e6).toFixed(0)} ms, max ${(delay.max / 1e6).toFixed(0)} ms${status === 200 ? '' : `; ${text.slice(0, 160)}`}`)
    // Guards against gross stalls only: this machine runs other work, and the fake upstream shares the process.
    t.ok(ms < 5000, `${what}: answered in ${ms.toFixed(0)} ms (bound 5 s)`)
    t.ok(worst < 2000, `${what}: a small request took at most ${worst.toFixed(0)} ms meanwhile (bound 2 s)`)
    // The loop's own delay includes the fake upstream parsing the same body and the GC of millions of items in
    // this one process, on 2 cores shared with the other test file tap runs beside it (2.7 s seen in CI when
    // the file order put a heavy one beside it, 0.3-0.8 s otherwise): a stall bound, as the answer's.
    t.ok(delay.max / 1e6 < 5000, `${what}: event-loop delay max ${(delay.max / 1e6).toFixed(0)} ms (bound 5 s)`)
  }
})
