import { createServer } from 'node:net'
import t from 'tap'
import { request } from 'undici'
import { assertNoLeak, chatBody, harness, proxyTest, sleep } from '../../helper.js'

const frame = (i: number) => `data: {"i":${i},"choices":[{"delta":{"content":"t${i} "}}]}\n\n`
const frames = (n: number) => [...Array.from({ length: n }, (_, i) => frame(i)), 'data: [DONE]\n\n']

async function openStream (url: string, auth: Record<string, string>, body: unknown = chatBody({ stream: true }), signal?: AbortSignal) {
  return request(`${url}/v1/chat/completions`, { method: 'POST', headers: { ...auth, 'content-type': 'application/json' }, body: JSON.stringify(body), ...(signal === undefined ? {} : { signal }) })
}

proxyTest(t, 'SSE passes through unbuffered, byte for byte, with anti-buffering headers', { listen: true }, async (h, t) => {
  const sent = frames(1)
  h.upstream.script(() => ({ kind: 'sse', frames: sent, delayMs: 1000 }))
  const start = Date.now()
  const res = await openStream(h.url, h.auth)
  t.equal(res.statusCode, 200)
  t.match(res.headers['content-type'], /^text\/event-stream/)
  t.equal(res.headers['cache-control'], 'no-cache')
  t.equal(res.headers['x-accel-buffering'], 'no')
  t.notOk('content-encoding' in res.headers)
  const chunks: Array<{ at: number, text: string }> = []
  for await (const c of res.body) chunks.push({ at: Date.now() - start, text: (c as Buffer).toString() })
  t.ok((chunks[0]?.at ?? Infinity) < 800, `first frame forwarded before upstream's next one (${chunks[0]?.at} ms; upstream waits 1000 ms between frames)`)
  t.equal(chunks.map((c) => c.text).join(''), sent.join(''), 'identical bytes, [DONE] exactly as upstream sent it')
  assertNoLeak(t, JSON.stringify(res.headers) + chunks.map((c) => c.text).join(''), h.secrets, 'stream')
})

proxyTest(t, 'Responses API event frames pass through and no [DONE] is invented', { listen: true }, async (h, t) => {
  const res = await request(`${h.url}/v1/responses`, { method: 'POST', headers: { ...h.auth, 'content-type': 'application/json' }, body: JSON.stringify({ model: 'gpt-4o-mini', input: 'hi', stream: true }) })
  const text = await res.body.text()
  t.match(text, /^event: response\.created\ndata: /)
  t.match(text, /event: response\.completed\ndata: .*\n\n$/)
  t.notMatch(text, /\[DONE\]/)
})

proxyTest(t, 'a client that leaves mid-stream aborts the upstream request within 1 s', { listen: true }, async (h, t) => {
  h.upstream.script(() => ({ kind: 'sse', frames: frames(200), delayMs: 50 }))
  const ac = new AbortController()
  const res = await openStream(h.url, h.auth, undefined, ac.signal)
  // Read two chunks, then leave.
  const reader = res.body[Symbol.asyncIterator]()
  await reader.next()
  await reader.next()
  const leftAt = Date.now()
  ac.abort()
  const seen = await h.upstream.waitFor((r) => r.abortedAt !== undefined, 1500)
  t.ok((seen.abortedAt ?? Infinity) - leftAt <= 1000, `upstream saw the abort ${(seen.abortedAt ?? 0) - leftAt} ms after the client left`)
})

proxyTest(t, 'a client that leaves before upstream answers aborts the upstream request too', { listen: true }, async (h, t) => {
  h.upstream.script(() => ({ kind: 'delay', ms: 10_000, then: { kind: 'json', body: {} } }))
  const ac = new AbortController()
  const pending = openStream(h.url, h.auth, chatBody(), ac.signal).catch((err: Error) => err)
  await h.upstream.waitFor(() => true)
  const leftAt = Date.now()
  ac.abort()
  t.type(await pending, Error)
  const seen = await h.upstream.waitFor((r) => r.abortedAt !== undefined, 1500)
  t.ok((seen.abortedAt ?? Infinity) - leftAt <= 1000, 'upstream aborted within 1 s')
})

proxyTest(t, 'an upstream that dies mid-stream ends the client stream abnormally, never with [DONE]', { listen: true }, async (h, t) => {
  h.upstream.script(() => ({ kind: 'sse', frames: frames(10), delayMs: 20, resetAfter: 3 }))
  const res = await openStream(h.url, h.auth)
  t.equal(res.statusCode, 200)
  let text = ''
  const err = await (async () => {
    try {
      for await (const c of res.body) text += (c as Buffer).toString()
    } catch (e) {
      return e as Error
    }
  })()
  t.type(err, Error, 'the response body errors instead of ending cleanly')
  t.equal(text, frames(10).slice(0, 3).join(''), 'the frames that did arrive are intact')
  t.notMatch(text, /\[DONE\]/)
})

proxyTest(t, 'upstream silence mid-stream beyond the idle timeout cuts both sides', { listen: true, proxy: { upstreamIdleTimeoutMs: 300 } }, async (h, t) => {
  h.upstream.script(() => ({ kind: 'sse', frames: frames(3), delayMs: 5000 }))
  const start = Date.now()
  const res = await openStream(h.url, h.auth)
  const err = await res.body.text().then(() => undefined, (e: Error) => e)
  t.type(err, Error)
  t.ok(Date.now() - start < 3000, 'cut after the idle timeout, not after upstream finished')
  const seen = await h.upstream.waitFor((r) => r.abortedAt !== undefined, 2000)
  t.ok(seen.abortedAt !== undefined, 'upstream request aborted')
})

proxyTest(t, 'stream:true with an upstream JSON error returns that status and body promptly', { listen: true }, async (h, t) => {
  h.upstream.script(() => ({ kind: 'json', status: 500, body: { error: { message: 'The server had an error while processing your request.', type: 'server_error', param: null, code: null } } }))
  const res = await openStream(h.url, h.auth)
  t.equal(res.statusCode, 500)
  t.strictSame(await res.body.json(), { error: { message: 'The server had an error while processing your request.', type: 'server_error', param: null, code: null } })
})

proxyTest(t, 'a secret inside an in-stream error event is redacted and framing kept', { listen: true }, async (h, t) => {
  const key = h.keys[0] as string
  const errorFrame = `data: ${JSON.stringify({ error: { message: `Incorrect API key provided: ${key}`, type: 'invalid_request_error', code: 'invalid_api_key' } })}\n\n`
  h.upstream.script(() => ({ kind: 'sse', frames: [frame(0), errorFrame], delayMs: 5 }))
  const res = await openStream(h.url, h.auth)
  const text = await res.body.text()
  assertNoLeak(t, text, h.secrets, 'stream')
  t.match(text, /^data: .*\n\ndata: \{"error":\{"message":"Incorrect API key provided: \[redacted\]"/)
  t.match(text, /\n\n$/)
})

t.test('an unreachable upstream gives a generic 502 quickly', async (t) => {
  const port = await new Promise<number>((resolve) => {
    const s = createServer().listen(0, '127.0.0.1', () => {
      const p = (s.address() as { port: number }).port
      s.close(() => resolve(p))
    })
  })
  const h = await harness({ proxy: { upstreamUrl: `http://127.0.0.1:${port}` } })
  t.teardown(h.close)
  const start = Date.now()
  const res = await h.app.inject({ method: 'POST', url: '/v1/chat/completions', headers: h.auth, payload: chatBody() })
  t.equal(res.statusCode, 502)
  t.strictSame(res.json(), { error: { message: 'The proxy could not reach the upstream API.', type: 'server_error', param: null, code: 'upstream_unreachable' } })
  t.notMatch(res.body, /127\.0\.0\.1|ECONNREFUSED/, 'no address or error detail')
  t.ok(Date.now() - start < 1000)
})

proxyTest(t, 'an upstream slower than the headers timeout gives 504', { proxy: { upstreamHeadersTimeoutMs: 300 } }, async (h, t) => {
  h.upstream.script(() => ({ kind: 'stall' }))
  const res = await h.app.inject({ method: 'POST', url: '/v1/chat/completions', headers: h.auth, payload: chatBody() })
  t.equal(res.statusCode, 504)
  t.equal(res.json().error.code, 'upstream_timeout')
})

proxyTest(t, 'an upstream reset before headers gives 502 and the POST is not retried', {}, async (h, t) => {
  h.upstream.script(() => ({ kind: 'reset' }))
  const res = await h.app.inject({ method: 'POST', url: '/v1/chat/completions', headers: h.auth, payload: chatBody() })
  t.equal(res.statusCode, 502)
  await sleep(100)
  t.equal(h.upstream.requests.length, 1, 'exactly one upstream attempt (no double billing)')
})
