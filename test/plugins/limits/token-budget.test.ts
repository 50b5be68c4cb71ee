import { connect } from 'node:net'
import t from 'tap'
import { request } from 'undici'
import { analyse } from '../../../lib/request-analysis.js'
import { estimatePrompt } from '../../../lib/token-estimate.js'
import { endpoints } from '../../../schemas/endpoints.js'
import { chatBody, proxyTest, sleep, type Harness } from '../../helper.js'

const LIMIT = 10_000
const OUTPUT = 500
const chat = endpoints.find((e) => e.id === 'chat.completions') as (typeof endpoints)[number]
const reservation = (body: Record<string, unknown>) => estimatePrompt(analyse(chat, body)) + (typeof body.max_tokens === 'number' ? body.max_tokens : OUTPUT)
const budget = { rateLimit: { tokensPerMinute: LIMIT, defaultOutputTokens: OUTPUT } }

const post = (h: Harness, body: Record<string, unknown> = chatBody()) => h.app.inject({ method: 'POST', url: '/v1/chat/completions', headers: h.auth, payload: body })
const remaining = (res: { headers: Record<string, unknown> }) => Number(res.headers['x-ratelimit-remaining-tokens'])
/** Settlement runs when the response closes; give it a turn of the event loop. */
const settled = () => sleep(20)

proxyTest(t, 'tokens are reserved at admission and settled with the real usage', { proxy: budget }, async (h, t) => {
  const first = await post(h)
  t.equal(first.statusCode, 200)
  t.equal(first.headers['x-ratelimit-limit-tokens'], String(LIMIT))
  t.equal(remaining(first), LIMIT - reservation(chatBody()), 'prompt estimate + default output cap reserved')
  t.match(first.headers['x-ratelimit-reset-tokens'], /^\d+(\.\d+)?s$|^\d+ms$/)
  const actual = first.json().usage.total_tokens as number
  await settled()
  const capped = chatBody({ max_tokens: 50 })
  const second = await post(h, capped)
  t.equal(remaining(second), LIMIT - actual - reservation(capped), 'the first request now costs what upstream said; the cap sets the reservation')
})

proxyTest(t, 'a JSON answer too large to read whole is settled from its stream', { proxy: budget }, async (h, t) => {
  const content = 'x'.repeat(400_000)
  h.upstream.script(() => ({ kind: 'json', body: { id: 'chatcmpl-1', choices: [{ message: { role: 'assistant', content } }], usage: { total_tokens: 777 } } }))
  const first = await post(h)
  t.equal(first.statusCode, 200)
  t.equal(first.headers['transfer-encoding'], 'chunked', 'streamed, not read whole')
  t.equal(first.json().choices[0].message.content, content)
  await settled()
  const capped = chatBody({ max_tokens: 50 })
  const second = await post(h, capped)
  t.equal(remaining(second), LIMIT - 777 - reservation(capped), 'the streamed answer cost what its usage said')
})

proxyTest(t, 'streams: usage is requested upstream, hidden from a client that did not ask, and settled', { listen: true, proxy: budget }, async (h, t) => {
  const plain = await post(h)
  const actual = plain.json().usage.total_tokens as number
  await settled()
  const res = await request(`${h.url}/v1/chat/completions`, { method: 'POST', headers: { ...h.auth, 'content-type': 'application/json' }, body: JSON.stringify(chatBody({ stream: true })) })
  const text = await res.body.text()
  t.strictSame((h.upstream.requests[1]?.json as Record<string, unknown>).stream_options, { include_usage: true }, 'upstream was asked for usage')
  t.notMatch(text, /"choices":\[\]/, 'the usage-only chunk was removed')
  t.notMatch(text, /"usage"/)
  t.match(text, /data: \[DONE\]\n\n$/, 'the stream still ends as upstream ended it')
  await settled()
  const after = await post(h)
  t.equal(remaining(after), LIMIT - actual - actual - reservation(chatBody()), 'the stream was charged its real usage')
})

proxyTest(t, 'a client that asked for stream usage still gets its usage chunk', { listen: true, proxy: budget }, async (h, t) => {
  const body = chatBody({ stream: true, stream_options: { include_usage: true } })
  const res = await request(`${h.url}/v1/chat/completions`, { method: 'POST', headers: { ...h.auth, 'content-type': 'application/json' }, body: JSON.stringify(body) })
  const text = await res.body.text()
  t.match(text, /"choices":\[\],"usage":\{"prompt_tokens"/)
  t.strictSame(h.upstream.requests[0]?.json, body, 'forwarded unchanged')
})

proxyTest(t, 'endpoints without token usage are not metered', { proxy: budget }, async (h, t) => {
  const res = await h.app.inject({ method: 'GET', url: '/v1/models', headers: h.auth })
  t.equal(res.statusCode, 200)
  t.notOk('x-ratelimit-limit-tokens' in res.headers)
  const mod = await h.app.inject({ method: 'POST', url: '/v1/moderations', headers: h.auth, payload: { input: 'hello' } })
  t.equal(mod.statusCode, 200)
  t.notOk('x-ratelimit-limit-tokens' in mod.headers)
})

proxyTest(t, 'an upstream that cannot be reached costs no tokens', { proxy: { ...budget, upstreamUrl: 'http://127.0.0.1:1' } }, async (h, t) => {
  const failed = await post(h)
  t.equal(failed.statusCode, 502)
  await settled()
  t.equal(remaining(await post(h)), LIMIT - reservation(chatBody()), 'the refused connection was refunded')
})

proxyTest(t, 'a request larger than the whole budget is refused for good, before upstream', { proxy: budget }, async (h, t) => {
  const res = await post(h, chatBody({ max_tokens: LIMIT }))
  t.equal(res.statusCode, 429)
  t.match(res.json(), { error: { type: 'tokens', code: 'rate_limit_exceeded', message: /Request too large on tokens per min \(TPM\): Limit 10000, Requested \d+/ } })
  t.equal(res.headers['x-should-retry'], 'false', 'retrying cannot help')
  t.equal(h.upstream.requests.length, 0)
})

proxyTest(t, 'an exhausted budget answers 429 tokens with Retry-After until the window resets', { proxy: budget }, async (h, t) => {
  h.upstream.script(() => ({ kind: 'json', body: { object: 'chat.completion', choices: [], usage: { prompt_tokens: LIMIT - 100, completion_tokens: 100, total_tokens: LIMIT } } }))
  t.equal((await post(h)).statusCode, 200)
  await settled()
  const res = await post(h)
  t.equal(res.statusCode, 429)
  t.match(res.json(), { error: { type: 'tokens', code: 'rate_limit_exceeded', message: /Used 10000/ } })
  t.ok(Number(res.headers['retry-after']) >= 1 && Number(res.headers['retry-after']) <= 60)
  t.equal(res.headers['x-ratelimit-remaining-tokens'], '0')
  t.equal(h.upstream.requests.length, 1)
})

proxyTest(t, 'an upstream refusal refunds the reservation; an abort keeps it', { listen: true, proxy: budget }, async (h, t) => {
  h.upstream.script(() => ({ kind: 'json', status: 400, body: { error: { message: 'bad', type: 'invalid_request_error', param: null, code: null } } }))
  t.equal((await post(h)).statusCode, 400)
  await settled()
  h.upstream.script(() => ({ kind: 'sse', frames: Array.from({ length: 100 }, (_, i) => `data: {"i":${i}}\n\n`), delayMs: 50 }))
  const ac = new AbortController()
  const res = await request(`${h.url}/v1/chat/completions`, { method: 'POST', headers: { ...h.auth, 'content-type': 'application/json' }, body: JSON.stringify(chatBody({ stream: true })), signal: ac.signal })
  await res.body[Symbol.asyncIterator]().next()
  ac.abort()
  await h.upstream.waitFor((r) => r.abortedAt !== undefined)
  await settled()
  h.upstream.script(undefined)
  const next = await post(h)
  t.equal(remaining(next), LIMIT - reservation(chatBody({ stream: true })) - reservation(chatBody()), 'refused call free, aborted stream charged its estimate')
})

proxyTest(t, 'concurrency: the k+1th simultaneous request gets 429, and slots come back', { listen: true, proxy: { rateLimit: { maxConcurrent: 2 } } }, async (h, t) => {
  h.upstream.script(() => ({ kind: 'delay', ms: 60_000, then: { kind: 'json', body: {} } }))
  const open = [new AbortController(), new AbortController()]
  const pending = open.map((ac) => request(`${h.url}/v1/chat/completions`, { method: 'POST', headers: { ...h.auth, 'content-type': 'application/json' }, body: JSON.stringify(chatBody()), signal: ac.signal }).catch(() => 'aborted'))
  await h.upstream.waitFor(() => h.upstream.requests.length === 2)
  const third = await post(h)
  t.equal(third.statusCode, 429)
  t.match(third.json(), { error: { type: 'requests', code: 'rate_limit_exceeded', message: /Too many concurrent requests: Limit 2/ } })
  open[0]?.abort()
  t.equal(await pending[0], 'aborted')
  await settled()
  h.upstream.script(undefined)
  t.equal((await post(h)).statusCode, 200, 'the aborted request gave its slot back')
  open[1]?.abort()
  await pending[1]
})

proxyTest(t, 'no slot leaks after 1,000 client aborts at every stage', { listen: true, proxy: { rateLimit: { maxConcurrent: 2 } } }, async (h, t) => {
  h.upstream.script(() => ({ kind: 'delay', ms: 200, then: { kind: 'json', body: {} } }))
  const port = Number(new URL(h.url).port)
  const body = JSON.stringify(chatBody())
  const raw = `POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer ${h.proxyKey}\r\nContent-Type: application/json\r\nContent-Length: ${body.length}\r\n\r\n${body}`
  const abortAfter = (ms: number) => new Promise<void>((resolve) => {
    const s = connect(port, '127.0.0.1', () => {
      s.write(raw)
      setTimeout(() => { s.destroy(); resolve() }, ms)
    })
    s.on('error', () => resolve())
  })
  for (let i = 0; i < 1000; i += 10) await Promise.all(Array.from({ length: 10 }, (_, j) => abortAfter((i + j) % 7)))
  h.upstream.script(undefined)
  // Requests whose abort went unnoticed still end when upstream answers (200 ms); a leaked slot never does.
  let statuses: number[] = []
  for (const deadline = Date.now() + 3000; Date.now() < deadline;) {
    statuses = (await Promise.all([post(h), post(h)])).map((r) => r.statusCode)
    if (statuses.every((s) => s === 200)) break
    await sleep(100)
  }
  t.strictSame(statuses, [200, 200], 'both slots free again')
})
