import { execFileSync } from 'node:child_process'
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { createServer, type IncomingHttpHeaders, type IncomingMessage, type Server, type ServerResponse } from 'node:http'
import { createServer as createHttpsServer } from 'node:https'
import type { AddressInfo } from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import type { Test } from 'tap'
import { WebSocket, type ClientOptions } from 'ws'
import { assertNoLeak, harness, type Harness, type HarnessOptions } from './helper.js'
import { attachFakeRealtime, type FakeRealtime, type FakeRealtimeOptions } from '../testing/fake-realtime.js'

/*
 * Realtime tests: a proxy with the Realtime route on, in front of the fake Realtime upstream on its own
 * loopback HTTP server (which answers POST /v1/moderations for the filter tests: flagged for "flagme", a 500 for
 * "failme"; 404 otherwise), and a
 * WebSocket client that records everything it saw.
 */

export interface RtHarness extends Harness {
  fake: FakeRealtime
  /** ws:// URL of the realtime route with `?model=gpt-realtime`. */
  wsUrl: string
  upstreamServer: Server
}

export interface RtOptions extends HarnessOptions {
  realtime?: FakeRealtimeOptions
  /** Serve the fake upstream over HTTPS with this certificate. */
  tls?: { key: string, cert: string }
}

/** Moderation answers: flagged when the text holds "flagme". */
function moderationServer (tls: RtOptions['tls']): Server {
  const handle = (req: IncomingMessage, res: ServerResponse): void => {
    let body = ''
    req.on('data', (c: Buffer) => { body += c.toString() })
    req.on('end', () => {
      if (req.method !== 'POST' || req.url !== '/v1/moderations') {
        res.writeHead(404, { 'content-type': 'application/json' }).end('{"error":{"message":"not found","type":"invalid_request_error","param":null,"code":null}}')
        return
      }
      if (body.includes('failme')) {
        res.writeHead(500, { 'content-type': 'application/json' }).end('{"error":{"message":"overloaded","type":"server_error","param":null,"code":null}}')
        return
      }
      const flagged = body.includes('flagme')
      res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify({ id: 'modr_fake', model: 'omni-moderation-latest', results: [{ flagged, categories: { violence: flagged }, category_scores: { violence: flagged ? 0.9 : 0 } }] }))
    })
  }
  return tls === undefined ? createServer(handle) : createHttpsServer(tls, handle)
}

/** What every client opened with `connect` saw (handshake answers and messages), for the leak scan. */
const seenByClients: Array<() => string> = []

/**
 * A subtest with a realtime harness, closed afterwards, then the invariants: what the clients saw holds no
 * secret (upstream keys, org, project), the logs none and not the proxy key either, the HTTP fake saw
 * nothing, and every upstream handshake was `GET /v1/realtime?model=…` with an injected pool key and none
 * of the client's credentials.
 */
export function rtTest (t: Test, name: string, opts: RtOptions, fn: (h: RtHarness, t: Test) => Promise<void>): Promise<unknown> {
  return t.test(name, async (t) => {
    const upstreamServer = moderationServer(opts.tls)
    await new Promise<void>((resolve) => upstreamServer.listen(0, '127.0.0.1', resolve))
    const fake = attachFakeRealtime(upstreamServer, opts.realtime)
    const { port } = upstreamServer.address() as AddressInfo
    const h = await harness({
      ...opts,
      listen: true,
      proxy: { upstreamUrl: `${opts.tls === undefined ? 'http' : 'https'}://127.0.0.1:${port}`, ...opts.proxy, realtime: { enabled: true, ...opts.proxy?.realtime } }
    })
    fake.setValidKeys(h.keys)
    const firstClient = seenByClients.length
    const rt: RtHarness = { ...h, fake, upstreamServer, wsUrl: `${h.url.replace(/^http/, 'ws')}/v1/realtime?model=gpt-realtime` }
    try {
      await fn(rt, t)
    } finally {
      await h.close()
      fake.close()
      upstreamServer.closeAllConnections()
      await new Promise<void>((resolve) => upstreamServer.close(() => resolve()))
      assertNoLeak(t, h.logs.join(''), [...h.secrets, h.proxyKey], 'logs')
      assertNoLeak(t, seenByClients.slice(firstClient).map((seen) => seen()).join('\n'), h.secrets, 'what the clients saw')
      t.strictSame(h.upstream.requests.map((r) => `${r.method} ${r.url}`), [], 'the HTTP fake saw nothing')
      for (const hs of fake.handshakes) {
        t.match(hs.url, /^\/v1\/realtime\?model=[A-Za-z0-9._:-]+$/, 'upstream saw only GET /v1/realtime?model=')
        t.match(hs.headers.authorization, /^Bearer sk-proj-CANARY/, 'with a pool key')
        t.notOk(JSON.stringify(hs).includes(h.proxyKey), 'and no proxy key in any header or subprotocol')
      }
    }
  })
}

export interface Client {
  ws: WebSocket
  /** Every message received, parsed. */
  events: Array<Record<string, unknown>>
  /** Every message received, as text. */
  raw: string[]
  /** The 101 answer's headers. */
  headers: IncomingHttpHeaders
  closed: Promise<{ code: number, reason: string, at: number }>
  /** Resolve with the first event of this type received from now on or already received. */
  next: (type: string, timeoutMs?: number) => Promise<Record<string, unknown>>
  send: (event: unknown) => void
  /** Everything the client saw, for leak scans. */
  seen: () => string
}

export type Refused = { status: number, headers: IncomingHttpHeaders, body: string }

/** Open a WebSocket to the proxy: the client once open, or the HTTP answer that refused the handshake. */
export function connect (url: string, opts: { protocols?: string[], headers?: Record<string, string>, options?: ClientOptions } = {}): Promise<Client | Refused> {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(url, opts.protocols ?? [], { headers: opts.headers, ...opts.options })
    const events: Array<Record<string, unknown>> = []
    const raw: string[] = []
    let headers: IncomingHttpHeaders = {}
    const waiters: Array<{ type: string, resolve: (e: Record<string, unknown>) => void }> = []
    const closed = new Promise<{ code: number, reason: string, at: number }>((resolve) => ws.on('close', (code, reason) => resolve({ code, reason: reason.toString(), at: Date.now() })))
    ws.on('upgrade', (res) => { headers = res.headers })
    ws.on('message', (data: Buffer) => {
      const text = data.toString()
      raw.push(text)
      let event: Record<string, unknown>
      try {
        event = JSON.parse(text) as Record<string, unknown>
      } catch {
        event = { type: '(not JSON)', text }
      }
      events.push(event)
      for (const w of waiters.splice(0)) {
        if (w.type === event.type) w.resolve(event)
        else waiters.push(w)
      }
    })
    ws.on('error', (err) => reject(err))
    ws.on('unexpected-response', (_req, res) => {
      let body = ''
      res.on('data', (c: Buffer) => { body += c.toString() })
      res.on('end', () => {
        const answer = { status: res.statusCode as number, headers: res.headers, body }
        seenByClients.push(() => JSON.stringify(answer))
        resolve(answer)
      })
    })
    const seen = (): string => JSON.stringify(headers) + raw.join('\n')
    seenByClients.push(seen)
    ws.on('open', () => resolve({
      ws,
      events,
      raw,
      headers,
      closed,
      send: (event) => ws.send(typeof event === 'string' ? event : JSON.stringify(event)),
      seen,
      next: (type, timeoutMs = 3000) => {
        const seen = events.find((e) => e.type === type)
        if (seen !== undefined) {
          events.splice(events.indexOf(seen), 1)
          return Promise.resolve(seen)
        }
        return new Promise((resolve, reject) => {
          const timer = setTimeout(() => reject(new Error(`no ${type} event within ${timeoutMs} ms`)), timeoutMs)
          waiters.push({ type, resolve: (e) => { clearTimeout(timer); events.splice(events.indexOf(e), 1); resolve(e) } })
        })
      }
    }))
  })
}

/** `connect` that must open. */
export async function open (t: Test, url: string, opts: Parameters<typeof connect>[1] = {}): Promise<Client> {
  const c = await connect(url, opts)
  if (!('ws' in c)) throw new Error(`handshake refused: ${c.status} ${c.body}`)
  t.teardown(() => c.ws.terminate())
  return c
}

/** `connect` that must be refused. */
export async function refused (url: string, opts: Parameters<typeof connect>[1] = {}): Promise<Refused> {
  const c = await connect(url, opts)
  if ('ws' in c) {
    c.ws.terminate()
    throw new Error('handshake was accepted')
  }
  return c
}

/** A throwaway CA and a certificate it signed for 127.0.0.1 (as test/plugins/upstream/tls.test.ts makes them). */
export function makeCerts (): { ca: string, loopback: { key: string, cert: string } } {
  const dir = mkdtempSync(join(tmpdir(), 'oai-proxy-rt-tls-'))
  const run = (...args: string[]) => execFileSync('openssl', args, { cwd: dir, stdio: 'pipe' })
  run('req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-keyout', 'ca.key', '-out', 'ca.pem', '-days', '2', '-subj', '/CN=oai-proxy realtime test CA')
  writeFileSync(join(dir, 'leaf.ext'), 'subjectAltName=IP:127.0.0.1\n')
  run('req', '-newkey', 'rsa:2048', '-nodes', '-keyout', 'leaf.key', '-out', 'leaf.csr', '-subj', '/CN=loopback')
  run('x509', '-req', '-in', 'leaf.csr', '-CA', 'ca.pem', '-CAkey', 'ca.key', '-CAcreateserial', '-out', 'leaf.pem', '-days', '2', '-extfile', 'leaf.ext')
  const certs = { ca: readFileSync(join(dir, 'ca.pem'), 'utf8'), loopback: { key: readFileSync(join(dir, 'leaf.key'), 'utf8'), cert: readFileSync(join(dir, 'leaf.pem'), 'utf8') } }
  rmSync(dir, { recursive: true, force: true })
  return certs
}

export const bearer = (h: Harness): Record<string, string> => ({ authorization: `Bearer ${h.proxyKey}` })
