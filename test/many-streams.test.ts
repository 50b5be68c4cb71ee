import { execSync } from 'node:child_process'
import { readdirSync } from 'node:fs'
import t from 'tap'
import { Pool } from 'undici'
import { assertNoLeak, chatBody, proxyTest, sleep } from './helper.js'

/*
 * S11: thousands of concurrent `stream: true` chat requests through a listening proxy, against the fake
 * upstream answering each with 20 frames 10 ms apart. All must complete with [DONE]; the undici pool to
 * upstream must neither starve nor deadlock. Reported: how many were held at once, the delay added to a
 * stream under that load, RSS and descriptors. Client, proxy and fake upstream share this process (and its
 * one event loop), so the delays measure the whole machine's saturation, not the proxy alone.
 *
 * Sent all at once, 2,000 streams of ~0.2 s would not all be open together: one process on two cores gets
 * through a few hundred a second. So upstream holds each answer's headers until a common start (GATE_MS
 * after the first request), by which time every request has reached it: the proxy then has all of them in
 * flight upstream at once, and all stream at once.
 */

// Each stream holds four descriptors here: both ends of the client connection and of the upstream one.
const fdLimit = Number(execSync('ulimit -n', { shell: '/bin/sh' }).toString().trim()) || 1024
const STREAMS = Math.min(2000, Math.floor((fdLimit - 400) / 4))
const FRAMES = 20
const DELAY_MS = 10
/** The fake sleeps DELAY_MS after every frame, [DONE] included: first byte to last byte, unloaded. */
const NOMINAL_SPAN = FRAMES * DELAY_MS
/** Upstream starts every answer this long after the burst's first request (if it came before). */
const GATE_MS = 6000

const frame = (i: number) => `data: {"id":"chatcmpl-s11","object":"chat.completion.chunk","choices":[{"index":0,"delta":{"content":"t${i} "}}]}\n\n`
const frames = [...Array.from({ length: FRAMES }, (_, i) => frame(i)), 'data: [DONE]\n\n']
const expected = frames.join('')

const fds = (): number => {
  try { return readdirSync('/proc/self/fd').length } catch { return -1 }
}
const mib = (bytes: number) => (bytes / 1024 / 1024).toFixed(0)
const quantile = (xs: number[], q: number): number => {
  const sorted = [...xs].sort((a, b) => a - b)
  return sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))] ?? NaN
}

interface Outcome { status: number, text: string, ttfb: number, span: number, error?: string }

t.test(`S11: ${STREAMS} concurrent streams complete, with nothing starved`, async (t) => {
  const fdsBefore = fds()
  const rssBefore = process.memoryUsage.rss()
  let rssPeak = rssBefore
  let fdsPeak = fdsBefore
  const sampler = setInterval(() => {
    rssPeak = Math.max(rssPeak, process.memoryUsage.rss())
    fdsPeak = Math.max(fdsPeak, fds())
  }, 50)
  t.teardown(() => clearInterval(sampler))

  await proxyTest(t, 'every stream ends with [DONE], byte for byte; none fails', { listen: true }, async (h, t) => {
    let gateAt = 0
    h.upstream.script(() => ({ kind: 'sse', frames, delayMs: DELAY_MS, firstByteDelayMs: Math.max(0, gateAt - Date.now()) }))
    const pool = new Pool(h.url, { connections: STREAMS, pipelining: 1, headersTimeout: 20_000, bodyTimeout: 20_000 })
    t.teardown(() => pool.destroy())
    const body = JSON.stringify(chatBody({ stream: true }))
    let inFlight = 0
    let maxInFlight = 0
    let streaming = 0
    let maxStreaming = 0

    const one = async (): Promise<Outcome> => {
      const start = performance.now()
      inFlight++
      maxInFlight = Math.max(maxInFlight, inFlight)
      try {
        const res = await pool.request({ path: '/v1/chat/completions', method: 'POST', headers: { ...h.auth, 'content-type': 'application/json' }, body })
        streaming++
        maxStreaming = Math.max(maxStreaming, streaming)
        let text = ''
        let first = 0
        let last = 0
        try {
          for await (const c of res.body) {
            last = performance.now()
            if (first === 0) first = last
            text += (c as Buffer).toString()
          }
        } finally {
          streaming--
        }
        return { status: res.statusCode, text, ttfb: first - start, span: last - first }
      } catch (err) {
        return { status: 0, text: '', ttfb: NaN, span: NaN, error: (err as Error).message }
      } finally {
        inFlight--
      }
    }

    // Unloaded: a few streams one after another, for the span the machine gives without contention.
    const baseline: number[] = []
    for (let i = 0; i < 10; i++) baseline.push((await one()).span)

    const sentAt = Date.now()
    gateAt = sentAt + GATE_MS
    const started = performance.now()
    const outcomes = await Promise.all(Array.from({ length: STREAMS }, one))
    const wall = performance.now() - started
    const arrivals = h.upstream.requests.slice(baseline.length).map((r) => r.receivedAt - sentAt)
    const lastArrival = Math.max(...arrivals)
    const heldUpstream = arrivals.filter((a) => a < GATE_MS).length
    const rssDone = process.memoryUsage.rss()

    const failed = outcomes.filter((o) => o.error !== undefined || o.status !== 200 || o.text !== expected)
    const serverErrors = outcomes.filter((o) => o.status >= 500).length
    t.equal(failed.length, 0, `all ${STREAMS} complete with [DONE], byte for byte${failed.length > 0 ? `; first failure: ${JSON.stringify(failed[0]).slice(0, 300)}` : ''}`)
    t.equal(serverErrors, 0, 'no 5xx')
    t.equal(h.upstream.requests.length, STREAMS + baseline.length, 'each request reached upstream once')
    t.equal(h.upstream.requests.filter((r) => r.abortedAt !== undefined).length, 0, 'no upstream stream was aborted')
    assertNoLeak(t, outcomes.map((o) => o.text).join(''), h.secrets, 'the streams')

    const spans = outcomes.map((o) => o.span)
    const ttfbs = outcomes.map((o) => o.ttfb)
    const base = quantile(baseline, 0.5)
    const p99Added = quantile(spans, 0.99) - base
    t.comment(`S11: ${STREAMS} streams (fd limit ${fdLimit}) of ${FRAMES} frames ${DELAY_MS} ms apart, all done ${wall.toFixed(0)} ms after sending (${(wall - GATE_MS).toFixed(0)} ms after the common start)`)
    t.comment(`held at once: ${heldUpstream} upstream calls waiting for their headers together (the last request reached upstream ${lastArrival} ms in, the common start at ${GATE_MS} ms); client side ${maxInFlight} requests in flight, ${maxStreaming} streaming (headers received, body not done)`)
    t.comment(`first to last byte: unloaded median ${base.toFixed(0)} ms (nominal ${NOMINAL_SPAN}); loaded p50 ${quantile(spans, 0.5).toFixed(0)}, p99 ${quantile(spans, 0.99).toFixed(0)}, max ${Math.max(...spans).toFixed(0)} ms: p99 added ${p99Added.toFixed(0)} ms per stream, ${(p99Added / FRAMES).toFixed(1)} ms per chunk`)
    t.comment(`time to first byte after the common start: p50 ${(quantile(ttfbs, 0.5) - GATE_MS).toFixed(0)}, p99 ${(quantile(ttfbs, 0.99) - GATE_MS).toFixed(0)}, max ${(Math.max(...ttfbs) - GATE_MS).toFixed(0)} ms`)
    t.comment(`RSS before ${mib(rssBefore)} MiB, peak ${mib(rssPeak)} MiB, when all were done ${mib(rssDone)} MiB; descriptors before ${fdsBefore}, peak ${fdsPeak}`)

    // Here every request reaches upstream ~2.5 s in; a much slower machine may let a few arrive after the
    // common start, which only makes them stream a little later.
    t.ok(heldUpstream >= STREAMS * 0.9, `nearly every request was in flight upstream at once, before the first answer started (${heldUpstream})`)
    t.ok(maxStreaming >= STREAMS * 0.9, `nearly all streams were open at once (${maxStreaming})`)
    t.ok(Math.max(...spans) < 15_000, 'no stream was starved for long (every span under 15 s)')
    t.ok(rssPeak - rssBefore < 1024 * 1024 * 1024, 'memory bounded (under +1 GiB for client, proxy and upstream together)')
    await pool.close()
  })

  // The proxy and the fake are closed: their sockets must all be gone.
  await sleep(200)
  const fdsAfter = fds()
  t.comment(`after close: RSS ${mib(process.memoryUsage.rss())} MiB, descriptors ${fdsAfter} (before ${fdsBefore})`)
  if (fdsBefore >= 0) t.ok(fdsAfter <= fdsBefore + 20, 'descriptors back to the baseline')
})
