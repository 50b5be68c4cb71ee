import { connect, type Socket } from 'node:net'
import t, { type Test } from 'tap'
import { Agent, request } from 'undici'
import { assertNoLeak, chatBody, proxyTest, seenByClient, sleep, type Harness } from '../../helper.js'

/*
 * The rate-limit rows docs/security.md listed as partly covered:
 * RL03 which address is the client behind a trusted proxy (a peer outside the trust list, two
 *      X-Forwarded-For headers, `Forwarded: for=`);
 * RL05 IPv6 clients rotating within one /64, and IPv4-mapped addresses;
 * RL07 over-limit requests refused before their (large) bodies are read;
 * RL09 the concurrency cap held by open `stream: true` responses.
 * Which bucket a request lands in is shown by exhausting it (a small requestsPerWindow) and checking
 * who else is refused. Every response a client sees is scanned for the upstream key.
 */

const KiB = 1024
const MiB = 1024 * KiB

/** A chat request from `remoteAddress` (inject's socket address), with extra headers. Scans the answer and returns its status. */
async function from (t: Test, h: Harness, remoteAddress: string, headers: Record<string, string> = {}): Promise<number> {
  const res = await h.app.inject({ method: 'POST', url: '/v1/chat/completions', remoteAddress, headers, payload: chatBody() })
  assertNoLeak(t, seenByClient(res), h.secrets, `the answer to ${remoteAddress}`)
  if (res.statusCode === 429) t.match(res.json(), { error: { type: 'requests', code: 'rate_limit_exceeded', message: /Rate limit reached on requests/ } })
  return res.statusCode
}

// ---------------------------------------------------------------------------------------------------
// RL03: behind a trusted proxy, only the trusted proxy may name the client.

for (const trusted of ['10.0.0.1', '10.0.0.0/8']) {
  proxyTest(t, `RL03: trustProxy ${trusted}: X-Forwarded-For and Forwarded from a peer outside the trust list are ignored, the bucket is the peer's`, {
    fastify: { trustProxy: [trusted] }, proxy: { proxyKeys: [], rateLimit: { requestsPerWindow: 2 } }
  }, async (h, t) => {
    const peer = '198.51.100.7'
    const claims = [0, 1, 2, 3].map((i) => ({ 'x-forwarded-for': `203.0.113.${i}`, forwarded: `for=192.0.2.${i}`, 'x-real-ip': `192.0.2.${i}` }))
    const statuses: number[] = []
    for (const c of claims) statuses.push(await from(t, h, peer, c))
    t.strictSame(statuses, [200, 200, 429, 429], 'four different claimed addresses, one bucket: the untrusted peer\'s own')
    t.equal(await from(t, h, '198.51.100.8'), 200, 'another untrusted peer has its own bucket')
    // The balancer speaks for the clients: the address the untrusted peer claimed was never charged,
    // and the peer's own address is the bucket it exhausted.
    t.equal(await from(t, h, '10.0.0.1', { 'x-forwarded-for': '203.0.113.0' }), 200, 'the claimed 203.0.113.0 was not charged')
    t.equal(await from(t, h, '10.0.0.1', { 'x-forwarded-for': peer }), 429, 'the balancer forwarding the peer lands in the bucket the peer exhausted')
    // A dual-stack listener (HOST=::) reports an IPv4 balancer as ::ffff:10.0.0.1: still the trusted balancer.
    t.equal(await from(t, h, '::ffff:10.0.0.1', { 'x-forwarded-for': peer }), 429, 'the balancer as an IPv4-mapped address is trusted too')
    t.equal(await from(t, h, '::ffff:10.0.0.1', { 'x-forwarded-for': '203.0.113.1' }), 200)
    t.equal(h.upstream.requests.length, 5, 'refused requests never went upstream')
  })
}

proxyTest(t, 'RL03: two X-Forwarded-For headers (the client\'s, then the balancer\'s) over a real socket: the right-most untrusted hop is the client', {
  listen: true, fastify: { trustProxy: ['127.0.0.1'] }, proxy: { proxyKeys: [], rateLimit: { requestsPerWindow: 2 } }
}, async (h, t) => {
  const port = Number(new URL(h.url).port)
  const body = JSON.stringify(chatBody())
  /** A raw request: Node joins repeated X-Forwarded-For lines with ", " in order, as Fastify then reads them. */
  const send = async (xffLines: string[]): Promise<number> => {
    const head = ['POST /v1/chat/completions HTTP/1.1', 'Host: x', 'Content-Type: application/json', `Content-Length: ${body.length}`, 'Connection: close', ...xffLines.map((v) => `X-Forwarded-For: ${v}`)]
    const text = await rawExchange(port, `${head.join('\r\n')}\r\n\r\n${body}`)
    assertNoLeak(t, text, h.secrets, 'a raw answer')
    return Number(/^HTTP\/1\.1 (\d{3}) /.exec(text)?.[1] ?? 0)
  }
  const spoofed = [await send(['1.1.1.1', '10.0.0.5']), await send(['2.2.2.2', '10.0.0.5']), await send(['3.3.3.3, 4.4.4.4', '10.0.0.5'])]
  t.strictSame(spoofed, [200, 200, 429], 'whatever the client puts in its own header line, the balancer\'s line decides')
  t.equal(await send(['10.0.0.5']), 429, 'one header with the same client: the same bucket')
  t.equal(await send(['3.3.3.3']), 200, 'an address the client had claimed was never charged')
  t.equal(await send(['10.0.0.6', '10.0.0.5']), 429, 'naming another real client in its own line changes nothing')
  t.equal(await send(['127.0.0.1', '10.0.0.5']), 429, 'nor does naming the trusted balancer itself')
  t.equal(await send(['10.0.0.5', '10.0.0.6']), 200, 'the right-most line is the bucket, whatever the left says')
  t.equal(h.upstream.requests.length, 4, 'refused requests never went upstream')
})

proxyTest(t, 'RL03: Forwarded: for= is not read (Fastify uses X-Forwarded-For only): from the trusted balancer it leaves every client in the balancer\'s bucket', {
  fastify: { trustProxy: ['10.0.0.1'] }, proxy: { proxyKeys: [], rateLimit: { requestsPerWindow: 2 } }
}, async (h, t) => {
  const lb = '10.0.0.1'
  const statuses: number[] = []
  for (const v of ['for=203.0.113.10', 'for=203.0.113.11', 'for="[2001:db8::1]"', 'for=203.0.113.12;proto=https, for=203.0.113.13']) statuses.push(await from(t, h, lb, { forwarded: v }))
  t.strictSame(statuses, [200, 200, 429, 429], 'four Forwarded clients share one bucket')
  t.equal(await from(t, h, lb), 429, 'that bucket is the balancer\'s own address')
  t.equal(await from(t, h, lb, { 'x-forwarded-for': '203.0.113.10' }), 200, 'the client named in Forwarded was never charged')
  t.equal(await from(t, h, lb, { 'x-forwarded-for': '203.0.113.20', forwarded: 'for=203.0.113.10' }), 200, 'with both headers X-Forwarded-For decides')
  t.equal(h.upstream.requests.length, 4)
})

proxyTest(t, 'RL03: a trusted proxy that appends ip:port to X-Forwarded-For: the port is not part of the client\'s identity', {
  fastify: { trustProxy: ['10.0.0.1'] }, proxy: { proxyKeys: [], rateLimit: { requestsPerWindow: 1 } }
}, async (h, t) => {
  const via = (xff: string) => from(t, h, '10.0.0.1', { 'x-forwarded-for': xff })
  t.equal(await via('203.0.113.9:1111'), 200)
  // Each new connection has a new source port: if the port counted, every connection would be a new bucket.
  t.equal(await via('203.0.113.9:2222'), 429, 'another source port of the same client: the same bucket')
  t.equal(await via('203.0.113.9'), 429, 'the bare address: the same bucket')
  t.equal(await via('[2001:db8:1:1::1]:443'), 200)
  t.equal(await via('[2001:db8:1:1::2]:8443'), 429, 'a bracketed IPv6 with a port is grouped by /64 like any IPv6 address')
  // Something that is no address at all shares one bucket rather than minting one per spelling.
  t.equal(await via('not-an-address'), 200)
  t.equal(await via('also-not-one'), 429, 'unparsable values share a bucket')
})

// ---------------------------------------------------------------------------------------------------
// RL05: addresses are keyed IPv6 by /64; IPv4-mapped IPv6 is the IPv4 address.

proxyTest(t, 'RL05: IPv6 clients rotating within one /64 share one bucket; another /64 has its own; ::ffff:a.b.c.d is a.b.c.d', {
  proxy: { proxyKeys: [], rateLimit: { requestsPerWindow: 2 } }
}, async (h, t) => {
  const rotating = ['2001:db8:1:2::1', '2001:db8:1:2:ffff::9', '2001:db8:1:2:abcd:ef01:2345:6789', '2001:0DB8:0001:0002:0000:0000:0000:0005']
  const statuses: number[] = []
  for (const a of rotating) statuses.push(await from(t, h, a))
  t.strictSame(statuses, [200, 200, 429, 429], 'four interface ids (and spellings) in 2001:db8:1:2::/64: one bucket')
  t.equal(await from(t, h, '2001:db8:1:3::1'), 200, 'the next /64 is another client')
  t.equal(await from(t, h, '2001:db8:1:3::2'), 200)
  t.equal(await from(t, h, '2001:db8:1:3:8000::'), 429, 'and it too is one bucket')
  const mapped = [await from(t, h, '::ffff:192.0.2.4'), await from(t, h, '192.0.2.4'), await from(t, h, '::ffff:c000:204')]
  t.strictSame(mapped, [200, 200, 429], 'an IPv4 client seen as ::ffff:192.0.2.4 (dual-stack listener) and as 192.0.2.4 is one client')
  t.equal(await from(t, h, '192.0.2.5'), 200, 'IPv4 addresses are not grouped: the neighbour has its own bucket')
  t.equal(h.upstream.requests.length, 7, 'refused requests never went upstream')
})

proxyTest(t, 'RL05: behind a trusted proxy, forwarded IPv6 addresses are grouped by /64 too', {
  fastify: { trustProxy: ['10.0.0.1'] }, proxy: { proxyKeys: [], rateLimit: { requestsPerWindow: 1 } }
}, async (h, t) => {
  const via = (xff: string) => from(t, h, '10.0.0.1', { 'x-forwarded-for': xff })
  t.strictSame([await via('2001:db8:9:9::1'), await via('2001:db8:9:9::2'), await via('2001:db8:9:a::1')], [200, 429, 200])
})

proxyTest(t, 'RL05: the concurrency cap (clientId, shared with the token budget) keys anonymous IPv6 callers by /64 as well', {
  proxy: { proxyKeys: [], rateLimit: { maxConcurrent: 1 } }
}, async (h, t) => {
  h.upstream.script((r) => (r.url === '/v1/chat/completions' ? { kind: 'delay', ms: 500, then: { kind: 'json', body: { id: 'c', object: 'chat.completion', choices: [] } } } : undefined))
  const held = h.app.inject({ method: 'POST', url: '/v1/chat/completions', remoteAddress: '2001:db8:5:5::1', payload: chatBody() })
  await h.upstream.waitFor(() => h.upstream.requests.length === 1)
  const sibling = await h.app.inject({ method: 'POST', url: '/v1/chat/completions', remoteAddress: '2001:db8:5:5::2', payload: chatBody() })
  assertNoLeak(t, seenByClient(sibling), h.secrets, 'the sibling\'s 429')
  t.equal(sibling.statusCode, 429, 'another address in the same /64 finds the slot taken')
  t.match(sibling.json(), { error: { message: /Too many concurrent requests: Limit 1/ } })
  const other = await h.app.inject({ method: 'GET', url: '/v1/models', remoteAddress: '2001:db8:5:6::1' })
  assertNoLeak(t, seenByClient(other), h.secrets, 'the other /64\'s answer')
  t.equal(other.statusCode, 200, 'another /64 has its own slot')
  const first = await held
  assertNoLeak(t, seenByClient(first), h.secrets, 'the held answer')
  t.equal(first.statusCode, 200)
})

// ---------------------------------------------------------------------------------------------------
// RL07: an over-limit request is refused in onRequest, before its body is read.

/** Send `payload` and collect everything received until the peer closes (bounded: 3 s). */
function rawExchange (port: number, payload: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const socket = connect(port, '127.0.0.1')
    const chunks: Buffer[] = []
    const timer = setTimeout(() => socket.destroy(), 3000)
    socket.on('data', (c: Buffer) => chunks.push(c))
    socket.on('error', (err) => { if ((err as NodeJS.ErrnoException).code !== 'ECONNRESET') reject(err) })
    socket.on('close', () => {
      clearTimeout(timer)
      resolve(Buffer.concat(chunks).toString('latin1'))
    })
    socket.write(payload)
  })
}

/** A chat body of exactly `bytes` bytes: a small request padded with JSON whitespace (cheap to parse if it ever were). */
function paddedBody (bytes: number): Buffer {
  const json = JSON.stringify(chatBody())
  return Buffer.from(`{${' '.repeat(bytes - json.length)}${json.slice(1)}`)
}

interface Upload {
  /** Status of the answer, 0 if none arrived. */
  status: number
  head: string
  body: string
  /** Body bytes handed to the socket before the answer arrived (an upper bound of what the proxy could have read). */
  sentBeforeAnswer: number
  /** Body bytes handed to the socket in all (the kernel buffers several MiB on loopback). */
  sent: number
  answeredMs: number
  /** The client's socket saw the proxy end the connection (FIN or reset). */
  ended: boolean
  error: string | undefined
  localPort: number
}

/**
 * POST `body` on a fresh connection: headers first, then the body in 64 KiB writes as fast as the socket
 * takes them (or, with `waitAfter`, only that many bytes until the answer has come). Reads at the same
 * time, like a client that streams its upload. Bounded by `timeoutMs`.
 */
function upload (port: number, auth: Record<string, string>, body: Buffer, opts: { waitAfter?: number, timeoutMs?: number } = {}): Promise<Upload> {
  return new Promise((resolve) => {
    const started = Date.now()
    const socket: Socket = connect(port, '127.0.0.1')
    const out: Upload = { status: 0, head: '', body: '', sentBeforeAnswer: -1, sent: 0, answeredMs: -1, ended: false, error: undefined, localPort: 0 }
    let received = Buffer.alloc(0)
    let answered: () => void = () => {}
    const answer = new Promise<void>((resolve) => { answered = resolve })
    const timer = setTimeout(() => socket.destroy(), opts.timeoutMs ?? 5000)
    socket.on('data', (c: Buffer) => {
      received = Buffer.concat([received, c])
      const text = received.toString('latin1')
      const end = text.indexOf('\r\n\r\n')
      if (out.status !== 0 || end === -1) return
      const length = Number(/\r\ncontent-length: *(\d+)/i.exec(text.slice(0, end))?.[1] ?? NaN)
      if (text.length - end - 4 < length) return
      out.status = Number(/^HTTP\/1\.1 (\d{3})/.exec(text)?.[1] ?? 0)
      out.head = text.slice(0, end)
      out.body = text.slice(end + 4, end + 4 + length)
      out.sentBeforeAnswer = out.sent
      out.answeredMs = Date.now() - started
      answered()
    })
    socket.on('end', () => { out.ended = true })
    socket.on('error', (err) => {
      out.ended = true
      out.error = (err as NodeJS.ErrnoException).code ?? err.message
    })
    socket.on('close', () => {
      clearTimeout(timer)
      answered()
      resolve(out)
    })
    socket.on('connect', () => {
      out.localPort = socket.localPort ?? 0
      const head = ['POST /v1/chat/completions HTTP/1.1', 'Host: x', 'Content-Type: application/json', `Content-Length: ${body.length}`, ...Object.entries(auth).map(([k, v]) => `${k}: ${v}`)]
      socket.write(`${head.join('\r\n')}\r\n\r\n`)
      const pump = async () => {
        for (let at = 0; at < body.length && !socket.destroyed && socket.writable; at += 64 * KiB) {
          if (opts.waitAfter !== undefined && at === opts.waitAfter) await Promise.race([answer, sleep(3000)])
          if (socket.destroyed || !socket.writable) break
          const piece = body.subarray(at, at + 64 * KiB)
          out.sent += piece.length
          if (!socket.write(piece)) await new Promise<void>((resolve) => { socket.once('drain', resolve); socket.once('close', resolve) })
        }
      }
      pump().catch(() => socket.destroy())
    })
  })
}

/** What the proxy's own sockets read: bytes pulled off the wire, per client port, once each closes. */
function watchServerSockets (h: Harness): Map<number, { bytesRead: number, closed: boolean }> {
  const seen = new Map<number, { bytesRead: number, closed: boolean }>()
  h.app.server.on('connection', (s: Socket) => {
    const rec = { bytesRead: 0, closed: false }
    seen.set(s.remotePort ?? 0, rec)
    s.once('close', () => {
      rec.bytesRead = s.bytesRead
      rec.closed = true
    })
  })
  return seen
}

/** Wait (bounded) until the proxy's socket for `port` has closed. */
async function serverClosed (seen: Map<number, { closed: boolean }>, port: number, ms = 3000): Promise<boolean> {
  for (const deadline = Date.now() + ms; Date.now() < deadline; await sleep(10)) if (seen.get(port)?.closed === true) return true
  return false
}

proxyTest(t, 'RL07: over the request limit, a 5 MiB body gets 429 at once and the connection is closed, not drained; nothing goes upstream', {
  listen: true, proxy: { rateLimit: { requestsPerWindow: 1 } }
}, async (h, t) => {
  const port = Number(new URL(h.url).port)
  const seen = watchServerSockets(h)
  const body = paddedBody(5 * MiB)

  // Control: the one allowed request. Its 5 MiB are read whole and forwarded.
  const control = await upload(port, { ...h.auth, connection: 'close' }, body)
  t.equal(control.status, 200, 'under the limit the same body is served')
  t.ok(await serverClosed(seen, control.localPort), 'the control connection closed (it asked to)')
  assertNoLeak(t, `${control.head}\n${control.body}`, h.secrets, 'the control answer')
  t.equal(h.upstream.requests.length, 1)
  t.equal(h.upstream.requests[0]?.body.length, 5 * MiB, 'the control body went upstream whole')

  // Over the limit, headers and 64 KiB, then wait: the answer needs none of the rest.
  const paused = await upload(port, h.auth, body, { waitAfter: 64 * KiB })
  t.equal(paused.status, 429)
  t.equal(paused.sentBeforeAnswer, 64 * KiB, 'the 429 came while 5 MiB - 64 KiB were still unsent')
  t.match(paused.head, /\r\nconnection: close/i, 'Connection: close')
  t.match(paused.head, /\r\nretry-after: \d+/i)
  t.match(paused.head, /\r\nx-ratelimit-remaining-requests: 0/i)
  t.match(JSON.parse(paused.body), { error: { type: 'requests', code: 'rate_limit_exceeded', param: null, message: /Rate limit reached on requests per 1m0s: Limit 1\./ } })
  assertNoLeak(t, `${paused.head}\n${paused.body}`, h.secrets, 'the paused 429')
  t.ok(await serverClosed(seen, paused.localPort), 'the proxy closed that connection')
  t.ok(paused.ended, `the client saw it end (${paused.error ?? 'FIN'}); it had handed ${(paused.sent / MiB).toFixed(2)} MiB to its socket`)

  // Over the limit, the whole 5 MiB as fast as the socket takes it.
  const fast = await upload(port, h.auth, body)
  t.equal(fast.status, 429)
  t.match(fast.head, /\r\nconnection: close/i)
  assertNoLeak(t, `${fast.head}\n${fast.body}`, h.secrets, 'the fast 429')
  t.ok(await serverClosed(seen, fast.localPort), 'the proxy closed that connection')
  const readByProxy = { control: seen.get(control.localPort)?.bytesRead ?? -1, paused: seen.get(paused.localPort)?.bytesRead ?? -1, fast: seen.get(fast.localPort)?.bytesRead ?? -1 }
  t.comment(`5 MiB bodies: control read ${(readByProxy.control / MiB).toFixed(2)} MiB; over the limit the proxy read ${(readByProxy.paused / KiB).toFixed(0)} KiB (paused client) and ${(readByProxy.fast / KiB).toFixed(0)} KiB (fast client, 429 after ${fast.answeredMs} ms, ${(fast.sentBeforeAnswer / KiB).toFixed(0)} KiB handed to the socket by then, ${(fast.sent / MiB).toFixed(2)} MiB in all, ${fast.error ?? 'no error'})`)
  t.ok(readByProxy.control >= 5 * MiB, 'the control body was read whole')
  t.ok(readByProxy.paused >= 0 && readByProxy.paused < 256 * KiB, 'the paused upload: the proxy read under 256 KiB of 5 MiB')
  t.ok(readByProxy.fast >= 0 && readByProxy.fast < 1 * MiB, 'the fast upload: the proxy read under 1 MiB of 5 MiB')
  // Over the limit with Expect: 100-continue, the body never sent: the answer needs only the headers.
  const asked = Date.now()
  const expecting = await rawExchange(port, `POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: ${h.auth.authorization}\r\nContent-Type: application/json\r\nContent-Length: ${5 * MiB}\r\nExpect: 100-continue\r\n\r\n`)
  const waited = Date.now() - asked
  assertNoLeak(t, expecting, h.secrets, 'the 100-continue answer')
  t.match(expecting, /^(HTTP\/1\.1 100 Continue\r\n\r\n)?HTTP\/1\.1 429 /, `Expect: 100-continue: 429 without the body (${expecting.startsWith('HTTP/1.1 100') ? 'after a 100 Continue' : 'no 100 Continue sent'}), closed after ${waited} ms`)
  t.match(expecting, /\r\nconnection: close\r\n/i)
  t.ok(waited < 2500, 'the proxy closed the connection itself (the client would have waited 3 s)')
  t.equal(h.upstream.requests.length, 1, 'nothing over the limit went upstream')
})

proxyTest(t, 'RL07: a flood of 20 concurrent 1 MiB bodies over the limit: all refused unread, no upstream call', {
  listen: true, proxy: { rateLimit: { requestsPerWindow: 1 } }
}, async (h, t) => {
  const port = Number(new URL(h.url).port)
  const seen = watchServerSockets(h)
  const first = await h.app.inject({ method: 'POST', url: '/v1/chat/completions', headers: h.auth, payload: chatBody() })
  t.equal(first.statusCode, 200)
  const body = paddedBody(MiB)
  const started = Date.now()
  const flood = await Promise.all(Array.from({ length: 20 }, () => upload(port, h.auth, body)))
  const elapsed = Date.now() - started
  for (const u of flood) assertNoLeak(t, `${u.head}\n${u.body}`, h.secrets, 'a flood answer')
  const statuses = flood.map((u) => u.status)
  t.strictSame(statuses.filter((s) => s !== 429 && s !== 0), [], 'every upload refused (429) or cut')
  t.ok(statuses.filter((s) => s === 429).length >= 15, `most saw their 429 (${statuses.filter((s) => s === 429).length}/20)`)
  for (const u of flood) t.ok(await serverClosed(seen, u.localPort), 'the proxy closed the connection')
  const read = flood.map((u) => seen.get(u.localPort)?.bytesRead ?? -1)
  const total = read.reduce((a, b) => a + b, 0)
  t.comment(`20 x 1 MiB over the limit in ${elapsed} ms, ${statuses.filter((s) => s === 429).length} answered 429 and ${statuses.filter((s) => s === 0).length} cut before the answer was read: the proxy read ${(total / KiB).toFixed(0)} KiB of 20,480 KiB (max ${(Math.max(...read) / KiB).toFixed(0)} KiB on one connection); clients handed ${(flood.reduce((a, u) => a + u.sent, 0) / MiB).toFixed(1)} MiB to their sockets`)
  t.ok(read.every((b) => b >= 0), 'every connection accounted for')
  t.ok(Math.max(...read) < 512 * KiB, 'no connection had even half its body read')
  t.ok(total < 5 * MiB, 'the proxy read under a quarter of the bytes sent')
  t.equal(h.upstream.requests.length, 1, 'only the allowed request went upstream')
})

// ---------------------------------------------------------------------------------------------------
// RL09: the concurrency cap counts open streams.

const sseChunk = (i: number) => `data: ${JSON.stringify({ id: 'chatcmpl-rl09', object: 'chat.completion.chunk', created: 1, model: 'gpt-4o-mini', choices: [{ index: 0, delta: { content: `w${i} ` }, finish_reason: null }] })}\n\n`
const sseFrames = (n: number) => [...Array.from({ length: n }, (_, i) => sseChunk(i)), 'data: [DONE]\n\n']

proxyTest(t, 'RL09: maxConcurrent 2 with open stream:true responses: the third gets 429, a finished stream and an aborted one give their slots back', {
  listen: true, proxy: { rateLimit: { maxConcurrent: 2 } }
}, async (h, t) => {
  // The prompt picks the pace: 'short' streams for about a second, 'long' for 15 s (always cut first), 'quick' at once.
  h.upstream.script((r) => {
    const content = ((r.json as { messages?: Array<{ content?: string }> } | undefined)?.messages?.[0]?.content) ?? ''
    if (content === 'short') return { kind: 'sse', frames: sseFrames(10), delayMs: 100 }
    if (content === 'long') return { kind: 'sse', frames: sseFrames(300), delayMs: 50 }
    return { kind: 'sse', frames: sseFrames(3) }
  })
  // A private agent, destroyed at the end: undici may leave a connection open that never sent a request,
  // which the harness's Fastify (default timeouts) would wait a minute for on close.
  const dispatcher = new Agent()
  const open = (content: string, signal?: AbortSignal) => request(`${h.url}/v1/chat/completions`, {
    dispatcher,
    method: 'POST',
    headers: { ...h.auth, 'content-type': 'application/json' },
    body: JSON.stringify(chatBody({ stream: true, messages: [{ role: 'user', content }] })),
    signal
  })
  /** A stream that must be refused: its status, headers and body, scanned. */
  const refused = async (content: string) => {
    const res = await open(content)
    const text = await res.body.text()
    assertNoLeak(t, `${res.statusCode}\n${JSON.stringify(res.headers)}\n${text}`, h.secrets, 'a refused stream')
    return { status: res.statusCode, headers: res.headers, text }
  }
  type Res = Awaited<ReturnType<typeof open>>
  const readAll = async (res: Res, it: AsyncIterator<unknown> = res.body[Symbol.asyncIterator](), first = '') => {
    let text = first
    for (let r = await it.next(); r.done !== true; r = await it.next()) text += String(r.value)
    assertNoLeak(t, `${res.statusCode}\n${JSON.stringify(res.headers)}\n${text}`, h.secrets, 'a stream')
    return text
  }
  // A slot comes back when the server sees the response close, a moment after the client read its end:
  // ask again for up to `ms`, counting the attempts.
  const servedWithin = async (ms: number) => {
    let last = { status: 0, text: '', tries: 0 }
    for (const deadline = Date.now() + ms; Date.now() < deadline;) {
      const res = await open('quick')
      last = { status: res.statusCode, text: await readAll(res), tries: last.tries + 1 }
      if (last.status === 200) break
      await sleep(25)
    }
    return last
  }

  try {
    const short = await open('short')
    const longAbort = new AbortController()
    const long = await open('long', longAbort.signal)
    const shortIt = short.body[Symbol.asyncIterator]()
    const longIt = long.body[Symbol.asyncIterator]()
    t.equal(short.statusCode, 200)
    t.equal(long.statusCode, 200)
    t.match(short.headers['content-type'], /^text\/event-stream/)
    const shortFirst = String((await shortIt.next()).value)
    const longFirst = String((await longIt.next()).value)
    t.match(shortFirst, /^data: /, 'both streams are open and delivering')
    t.match(longFirst, /^data: /)

    const third = await refused('quick')
    t.equal(third.status, 429, 'the third simultaneous stream is refused')
    t.match(JSON.parse(third.text), { error: { type: 'requests', code: 'rate_limit_exceeded', param: null, message: /^Too many concurrent requests: Limit 2\. Please try again when one finishes\.$/ } })
    t.match(third.headers['content-type'], /^application\/json/, 'a JSON error, not a stream')
    t.equal(third.headers['retry-after'], '1')
    t.equal(third.headers['retry-after-ms'], '1000')
    t.notOk('x-should-retry' in third.headers, 'worth retrying')
    t.ok(typeof third.headers['x-proxy-request-id'] === 'string')
    t.equal(h.upstream.requests.length, 2, 'the refused stream never went upstream')
    t.ok(h.upstream.requests.every((r) => r.abortedAt === undefined), 'both streams still open upstream when the third was refused')

    // The short stream ends on its own: its slot comes back.
    const shortText = await readAll(short, shortIt, shortFirst)
    t.match(shortText, /data: \[DONE\]\n\n$/, 'the short stream ran to its end')
    t.equal((shortText.match(/^data: \{/gm) ?? []).length, 10)
    const fourth = await servedWithin(1000)
    t.equal(fourth.status, 200, `after the short stream ended a new stream is served (attempt ${fourth.tries})`)
    t.match(fourth.text, /data: \[DONE\]\n\n$/)

    // The long stream is still open: fill the other slot, show the cap again, then abort the long one.
    const filler = new AbortController()
    const second = await open('long', filler.signal)
    const secondIt = second.body[Symbol.asyncIterator]()
    t.match(String((await secondIt.next()).value), /^data: /)
    t.equal((await refused('quick')).status, 429, 'two streams open again: refused again')
    const upstreamBefore = h.upstream.requests.length
    longAbort.abort()
    await longIt.next().catch(() => undefined)
    const cut = await h.upstream.waitFor((r) => r.abortedAt !== undefined, 3000)
    t.ok(cut.sseBytes < sseFrames(300).join('').length, `the aborted stream was cut upstream after ${cut.sseBytes} bytes`)
    const fifth = await servedWithin(1000)
    t.equal(fifth.status, 200, `the client that aborted mid-stream gave its slot back (attempt ${fifth.tries})`)
    t.equal(h.upstream.requests.length, upstreamBefore + 1, 'only the served stream went upstream')
    filler.abort()
    await secondIt.next().catch(() => undefined)
    await h.upstream.waitFor((r) => r.abortedAt !== undefined && r !== cut, 3000)
  } finally {
    await dispatcher.destroy()
  }
})
