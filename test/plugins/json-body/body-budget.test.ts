import { Readable } from 'node:stream'
import t from 'tap'
import { Pool } from 'undici'
import { resolveOptions } from '../../../app.js'
import { assertNoLeak, chatBody, proxyTest } from '../../helper.js'

/*
 * Threat LD08: many large bodies at once. Body bytes held by the proxy (from the first byte until the
 * response closes) are capped: past the cap a body is refused with 503 `server_busy` and `Retry-After`,
 * before it is read, and nothing goes upstream. Real sockets; the upstream holds each answer so bodies
 * stay in flight.
 */

const MiB = 1024 * 1024
/** A chat body of exactly `bytes` bytes (one shared Buffer: the test sends it many times). */
function bodyOf (bytes: number): Buffer {
  const base = JSON.stringify(chatBody({ messages: [{ role: 'user', content: '' }] }))
  return Buffer.from(base.replace('"content":""', `"content":"${'x'.repeat(bytes - base.length)}"`))
}

async function burst (url: string, auth: Record<string, string>, body: Buffer | (() => Readable), n: number) {
  const pool = new Pool(url, { connections: n, pipelining: 1, headersTimeout: 30_000, bodyTimeout: 30_000 })
  try {
    return await Promise.all(Array.from({ length: n }, async () => {
      try {
        const res = await pool.request({ path: '/v1/chat/completions', method: 'POST', headers: { ...auth, 'content-type': 'application/json' }, body: typeof body === 'function' ? body() : body })
        return { status: res.statusCode, retryAfter: res.headers['retry-after'], text: await res.body.text() }
      } catch (err) {
        // Refused while still sending: the proxy answered and closed before taking the whole body.
        return { status: 0, retryAfter: undefined, text: (err as Error).message }
      }
    }))
  } finally {
    await pool.destroy()
  }
}

proxyTest(t, 'LD08: 1,000 concurrent 1 MiB bodies against a 64 MiB cap: the excess gets 503 server_busy unread, the rest are served, memory stays bounded', {
  listen: true,
  proxy: { maxBodyBytesInFlight: 64 * MiB }
}, async (h, t) => {
  // Answers held 3 s, so bodies pile up in flight (one process cannot send 1,000 MiB much faster).
  h.upstream.script(() => ({ kind: 'delay', ms: 3000, then: { kind: 'json', body: { id: 'c', object: 'chat.completion', choices: [] } } }))
  const body = bodyOf(MiB)
  const before = process.memoryUsage.rss()
  let peak = before
  const sampler = setInterval(() => {
    peak = Math.max(peak, process.memoryUsage.rss())
    // The fake upstream records every body; forget them (the records stay for the allowlist check), or
    // this process would measure the fake's memory, not the proxy's.
    for (const r of h.upstream.requests) {
      r.body = Buffer.alloc(0)
      r.json = undefined
    }
  }, 20)
  const results = await burst(h.url, h.auth, body, 1000)
  clearInterval(sampler)
  const served = results.filter((r) => r.status === 200).length
  const busy = results.filter((r) => r.status === 503)
  const cut = results.filter((r) => r.status === 0).length
  t.comment(`1,000 x 1 MiB: ${served} served, ${busy.length} answered 503, ${cut} cut while sending; RSS +${((peak - before) / MiB).toFixed(0)} MiB at peak (client, proxy and upstream in one process)`)
  t.equal(served + busy.length + cut, 1000, 'every request served, refused or cut: none other')
  t.ok(served >= 64, 'at least a cap\'s worth served')
  t.ok(busy.length + cut > 0, 'the excess refused')
  for (const r of busy.slice(0, 20)) {
    t.match(r.text, /"code":"server_busy"/)
    t.equal(r.retryAfter, '1')
    assertNoLeak(t, r.text, h.secrets, 'a 503')
  }
  t.equal(h.upstream.requests.length, served, 'only the served bodies went upstream')
  t.ok(peak - before < 400 * MiB, 'memory bounded by the cap, not by the burst (1,000 MiB sent)')
  // Every reservation came back: a cap's worth fits again.
  h.upstream.script(undefined)
  const again = await burst(h.url, h.auth, body, 60)
  t.strictSame(again.map((r) => r.status), Array(60).fill(200), 'the budget is whole again')
})

proxyTest(t, 'chunked bodies count as they arrive; GETs and small bodies are never held back', {
  listen: true,
  proxy: { maxBodyBytesInFlight: 3 * MiB, bodyLimit: 2 * MiB }
}, async (h, t) => {
  h.upstream.script((r) => r.method === 'POST' ? { kind: 'delay', ms: 400, then: { kind: 'json', body: { id: 'c', object: 'chat.completion', choices: [] } } } : undefined)
  const piece = bodyOf(MiB + 512 * 1024)
  // Without a length (an async iterable body is sent chunked): 1.5 MiB each, two fit in 3 MiB, the third does not.
  const results = await burst(h.url, h.auth, () => Readable.from([piece.subarray(0, 65536), piece.subarray(65536)]), 3)
  const statuses = results.map((r) => r.status).sort()
  t.strictSame(statuses.filter((s) => s === 200).length, 2, `two served (${statuses.join(', ')})`)
  t.equal(statuses.filter((s) => s === 503 || s === 0).length, 1, 'the third refused while it streamed in')
  t.equal(h.upstream.requests.filter((r) => r.method === 'POST').length, 2)
  const models = await fetch(`${h.url}/v1/models`, { headers: h.auth })
  t.equal(models.status, 200, 'a GET holds nothing')
  await models.text()
})

t.test('the cap must fit the largest body; 0 turns it off', async (t) => {
  t.throws(() => resolveOptions({ openaiKeys: ['sk-x'], bodyLimit: 4 * MiB, maxBodyBytesInFlight: MiB }), /invalid option \/maxBodyBytesInFlight/)
  t.equal(resolveOptions({ openaiKeys: ['sk-x'] }).maxBodyBytesInFlight, 256 * MiB, 'default 256 MiB')
  t.equal(resolveOptions({ openaiKeys: ['sk-x'], maxBodyBytesInFlight: 0 }).maxBodyBytesInFlight, 0)
})

proxyTest(t, 'with the cap off, bodies are never refused for it', { listen: true, proxy: { maxBodyBytesInFlight: 0, bodyLimit: MiB * 2 } }, async (h, t) => {
  const results = await burst(h.url, h.auth, bodyOf(MiB), 20)
  t.strictSame(results.map((r) => r.status), Array(20).fill(200))
})
