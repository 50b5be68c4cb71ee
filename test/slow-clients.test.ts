import { request as httpRequest, type IncomingMessage } from 'node:http'
import t from 'tap'
import { startFakeOpenAI } from '../testing/fake-openai.js'
import { assertNoLeak, canaryKey, chatBody, listeningUrl, proxyTest, sleep, spawnServer } from './helper.js'
import type { Harness } from './helper.js'

/*
 * Threats S08 and S09: clients that stop reading, and streams that last. The proxy never buffers a stream
 * (backpressure pauses upstream), cuts a client that has taken nothing for the stall timeout, and cuts any
 * call at the maximum duration; Node's own server timeouts never cut a healthy stream.
 */

const MB = 1024 * 1024
const FRAME_TEXT = 'x'.repeat(16 * 1024)
const frame = `data: ${JSON.stringify({ id: 'c', object: 'chat.completion.chunk', choices: [{ index: 0, delta: { content: FRAME_TEXT }, finish_reason: null }] })}\n\n`
/** A fast stream of about `mb` MiB of 16 KB frames, ending in [DONE]. */
const bigStream = (mb: number) => [...Array.from({ length: Math.ceil(mb * MB / frame.length) }, () => frame), 'data: [DONE]\n\n']

interface Opened { res: IncomingMessage, closed: Promise<{ bytes: number, at: number, tail: string }> }

/** POST a streaming chat request over a real socket; `closed` resolves with what arrived once the response ends or is cut. */
function openStream (h: Harness): Promise<Opened> {
  const url = new URL('/v1/chat/completions', h.url)
  return new Promise((resolve, reject) => {
    const req = httpRequest(url, { method: 'POST', agent: false, headers: { ...h.auth, 'content-type': 'application/json' } }, (res) => {
      let bytes = 0
      let tail = ''
      const closed = new Promise<{ bytes: number, at: number, tail: string }>((resolve) => {
        res.on('data', (c: Buffer) => {
          bytes += c.length
          tail = (tail + c.toString('latin1')).slice(-200)
        })
        res.on('error', () => {})
        res.once('close', () => resolve({ bytes, at: Date.now(), tail }))
      })
      resolve({ res, closed })
    })
    req.on('error', reject)
    req.end(JSON.stringify(chatBody({ stream: true })))
  })
}

/** Peak RSS while `p` runs, sampled every 50 ms. */
async function peakRss<T> (p: Promise<T>): Promise<{ value: T, peak: number }> {
  let peak = process.memoryUsage.rss()
  const timer = setInterval(() => { peak = Math.max(peak, process.memoryUsage.rss()) }, 50)
  try {
    return { value: await p, peak }
  } finally {
    clearInterval(timer)
  }
}

proxyTest(t, 'S08: a client that stops reading a fast 200 MB stream (four times the catalogue\'s 50): upstream paused, memory bounded, both sides cut after the stall timeout', {
  listen: true,
  proxy: { streamStallTimeoutMs: 1500, rateLimit: { maxConcurrent: 1 } }
}, async (h, t) => {
  h.upstream.script(() => ({ kind: 'sse', frames: bigStream(200) }))
  const before = process.memoryUsage.rss()
  const { res, closed } = await openStream(h)
  t.equal(res.statusCode, 200)
  // Take the first bytes, then never read again.
  await new Promise((resolve) => res.once('data', resolve))
  res.pause()
  const stoppedAt = Date.now()
  // A client that does not read does not see the close either (the FIN waits behind the data in its
  // buffer), so the cut is timed on the proxy's side: when upstream saw its call aborted.
  const { value: record, peak } = await peakRss(h.upstream.waitFor((r) => r.abortedAt !== undefined, 10_000))
  const cutAfter = (record.abortedAt as number) - stoppedAt
  t.comment(`cut ${cutAfter} ms after the client stopped reading; upstream had written ${(record.sseBytes / MB).toFixed(1)} MiB of 200; RSS +${((peak - before) / MB).toFixed(1)} MiB at peak`)
  t.ok(cutAfter >= 1400 && cutAfter < 5000, `cut after the stall timeout (${cutAfter} ms)`)
  // What the kernel's socket buffers hold (a few MiB each on loopback) is all that left upstream.
  t.ok(record.sseBytes < 20 * MB, 'upstream was paused, not drained into memory')
  // The whole test process (client, proxy and fake upstream, garbage included) against a 200 MB stream.
  t.ok(peak - before < 64 * MB, 'RSS stayed bounded (no stream buffered)')
  const open = await new Promise<number>((resolve) => h.app.server.getConnections((_err, n) => resolve(n)))
  t.equal(open, 0, 'the proxy closed the client connection')
  // Reading again, the client gets what was in flight and then a cut-off stream, never a clean end.
  res.resume()
  const end = await closed
  t.notMatch(end.tail, /\[DONE\]/, 'the cut stream does not end as if complete')
  t.ok(end.bytes < 20 * MB, `the client got ${(end.bytes / MB).toFixed(1)} MiB, what was in flight`)
  t.ok(h.logs.some((l) => l.includes('"reason":"stalled"') && l.includes('response cut')), 'the cut is logged with its reason')
  // Its concurrency slot came back: the next request (limit 1) is served.
  h.upstream.script(undefined)
  const next = await fetch(`${h.url}/v1/chat/completions`, { method: 'POST', headers: { ...h.auth, 'content-type': 'application/json' }, body: JSON.stringify(chatBody()) })
  t.equal(next.status, 200, 'the slot was released')
  assertNoLeak(t, await next.text(), h.secrets, 'next response')
})

proxyTest(t, 'S08: a client reading slowly but steadily is never cut, however long it falls behind in total', {
  listen: true,
  proxy: { streamStallTimeoutMs: 300, streamMaxDurationMs: 0 }
}, async (h, t) => {
  h.upstream.script(() => ({ kind: 'sse', frames: bigStream(0.5) }))
  const started = Date.now()
  const { res, closed } = await openStream(h)
  // One chunk (at most 64 KiB) every 60 ms: the proxy is behind the whole time, but the socket drains again
  // and again, and a drain is progress.
  res.on('data', () => {
    res.pause()
    setTimeout(() => res.resume(), 60)
  })
  const end = await closed
  const took = end.at - started
  t.match(end.tail, /data: \[DONE\]\n\n$/, 'the stream completed')
  t.ok(end.bytes > MB / 2, `${end.bytes} bytes arrived`)
  t.ok(took > 3 * 300, `over ${took} ms, several stall timeouts`)
  t.notOk(h.logs.some((l) => l.includes('response cut')), 'nothing was cut')
  assertNoLeak(t, end.tail, h.secrets, 'stream tail')
})

proxyTest(t, 'S09: a stream that lasts longer than the maximum duration is cut there, and upstream is aborted', {
  listen: true,
  proxy: { streamMaxDurationMs: 1200 }
}, async (h, t) => {
  const frames = Array.from({ length: 40 }, (_, i) => `data: ${JSON.stringify({ choices: [{ index: 0, delta: { content: `t${i}` } }] })}\n\n`)
  h.upstream.script(() => ({ kind: 'sse', frames: [...frames, 'data: [DONE]\n\n'], delayMs: 100 }))
  const started = Date.now()
  const { res, closed } = await openStream(h)
  t.equal(res.statusCode, 200)
  const end = await closed
  const took = end.at - started
  t.ok(took >= 1150 && took < 3000, `cut at the cap (${took} ms)`)
  t.notMatch(end.tail, /\[DONE\]/)
  t.match(end.tail, /t\d+/, 'the client had received the stream so far')
  await h.upstream.waitFor((r) => r.abortedAt !== undefined, 3000)
  t.ok(h.logs.some((l) => l.includes('"reason":"too_long"')), 'logged as too long')
  assertNoLeak(t, end.tail, h.secrets, 'stream')
})

proxyTest(t, 'limits of 0 turn the guard off: a paused client is left alone', {
  listen: true,
  proxy: { streamStallTimeoutMs: 0, streamMaxDurationMs: 0 }
}, async (h, t) => {
  h.upstream.script(() => ({ kind: 'sse', frames: bigStream(8) }))
  const { res, closed } = await openStream(h)
  await new Promise((resolve) => res.once('data', resolve))
  res.pause()
  await sleep(800)
  t.notOk(res.destroyed, 'still open while paused')
  res.resume()
  const end = await closed
  t.match(end.tail, /data: \[DONE\]\n\n$/, 'and it completes once read')
})

t.test('S09: the standalone server\'s own timeouts (request, headers, keep-alive: 1 s each) never cut a 4 s healthy stream', async (t) => {
  const key = canaryKey()
  const upstream = await startFakeOpenAI({ validKeys: [key] })
  t.teardown(() => upstream.close())
  const frames = Array.from({ length: 30 }, (_, i) => `data: ${JSON.stringify({ choices: [{ index: 0, delta: { content: `t${i}` } }] })}\n\n`)
  upstream.script(() => ({ kind: 'sse', frames: [...frames, 'data: [DONE]\n\n'], delayMs: 140 }))
  const child = spawnServer({
    PORT: '0', LOG_LEVEL: 'info', NODE_ENV: 'development', OPENAI_KEY: key, UPSTREAM_URL: upstream.url, REQUEST_TIMEOUT_MS: '1000', HEADERS_TIMEOUT_MS: '1000', KEEP_ALIVE_TIMEOUT_MS: '1000'
  })
  let out = ''
  child.stdout?.on('data', (c: Buffer) => { out += c.toString() })
  child.stderr?.on('data', (c: Buffer) => { out += c.toString() })
  t.teardown(() => { child.kill('SIGKILL') })
  const url = await listeningUrl(child)
  const started = Date.now()
  const res = await fetch(`${url}/v1/chat/completions`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(chatBody({ stream: true })) })
  const text = await res.text()
  const took = Date.now() - started
  t.equal(res.status, 200)
  t.ok(took > 4000, `the stream lasted ${took} ms`)
  t.match(text, /t29[\s\S]*data: \[DONE\]\n\n$/, 'every frame arrived, then [DONE]')
  assertNoLeak(t, text + out, [key], 'client and server output')
})
