import { connect } from 'node:net'
import type { Test } from 'tap'
import { assertNoLeak, type Harness } from './helper.js'

/*
 * Shared by the routing, request-header and raw-protocol tests: an independent oracle for "which paths are
 * ours", the OpenAI error-envelope check, and small helpers for requests and responses on a raw socket.
 */

/** What a client saw, from inject() or parsed off a raw socket. */
export interface Seen {
  statusCode: number
  headers: Record<string, string | string[] | number | undefined>
  body: string
}

/**
 * The served routes, written out by hand rather than taken from the endpoint table, so a change to the
 * table that widens the surface fails these tests. Maps a literal request path to the methods allowed.
 */
const SERVED: Array<[RegExp, string]> = [
  [/^(?:\/v1)?\/chat\/completions$/, 'POST'],
  [/^(?:\/v1)?\/completions$/, 'POST'],
  [/^(?:\/v1)?\/responses$/, 'POST'],
  [/^(?:\/v1)?\/embeddings$/, 'POST'],
  [/^(?:\/v1)?\/moderations$/, 'POST'],
  [/^(?:\/v1)?\/models$/, 'GET'],
  [/^(?:\/v1)?\/models\/[^/]+$/, 'GET'],
  [/^(?:\/v1)?\/responses\/compact$/, 'POST'],
  [/^(?:\/v1)?\/responses\/input_tokens$/, 'POST'],
  [/^(?:\/v1)?\/images\/generations$/, 'POST'],
  [/^(?:\/v1)?\/images\/edits$/, 'POST'],
  [/^(?:\/v1)?\/images\/variations$/, 'POST'],
  [/^(?:\/v1)?\/audio\/speech$/, 'POST'],
  [/^(?:\/v1)?\/audio\/transcriptions$/, 'POST'],
  [/^(?:\/v1)?\/audio\/translations$/, 'POST'],
  [/^(?:\/v1)?\/realtime\/calls$/, 'POST']
]

/** The upload routes (multipart bodies: test/plugins/form-body/uploads.test.ts sends them; the JSON route tests skip them). */
export const FORM_ROUTES: Array<{ method: 'POST', path: string }> = [
  { method: 'POST', path: '/audio/transcriptions' },
  { method: 'POST', path: '/audio/translations' },
  { method: 'POST', path: '/images/edits' },
  { method: 'POST', path: '/images/variations' },
  { method: 'POST', path: '/realtime/calls' }
]

/** The methods the proxy serves at this literal path (empty: the path is not ours, so 404). */
export function servedMethods (path: string): string[] {
  return SERVED.filter(([re]) => re.test(path)).map(([, m]) => m)
}

/** The allowlisted pairs as the client may send them (relative to `/v1`), with a valid body. */
export const ALLOWLISTED: Array<{ method: 'GET' | 'POST', path: string, body?: Record<string, unknown> }> = [
  { method: 'POST', path: '/chat/completions', body: { model: 'gpt-4o-mini', messages: [{ role: 'user', content: 'hello' }] } },
  { method: 'POST', path: '/completions', body: { model: 'gpt-4o-mini', prompt: 'hello' } },
  { method: 'POST', path: '/responses', body: { model: 'gpt-4o-mini', input: 'hello' } },
  { method: 'POST', path: '/embeddings', body: { model: 'text-embedding-3-small', input: 'hello' } },
  { method: 'POST', path: '/moderations', body: { input: 'hello' } },
  { method: 'GET', path: '/models' },
  { method: 'GET', path: '/models/gpt-4o-mini' },
  { method: 'POST', path: '/responses/compact', body: { model: 'gpt-4o-mini', input: 'hello' } },
  { method: 'POST', path: '/responses/input_tokens', body: { model: 'gpt-4o-mini', input: 'hello' } },
  { method: 'POST', path: '/images/generations', body: { model: 'gpt-image-1', prompt: 'a cat' } },
  { method: 'POST', path: '/audio/speech', body: { model: 'gpt-4o-mini-tts', input: 'hello', voice: 'alloy' } }
]

/** The reply is a local OpenAI-shaped error: exact status, `{error:{message,type,param,code}}` and nothing else. */
export function expectOpenAIError (t: Test, res: Seen, status: number, code: string, what: string): void {
  t.equal(res.statusCode, status, `${what}: status ${status}`)
  let body: unknown
  try {
    body = JSON.parse(res.body)
  } catch {
    body = res.body
  }
  t.match(body, { error: { message: String, type: 'invalid_request_error', code } }, `${what}: OpenAI error envelope with code ${code}`)
  const error = (body as { error?: Record<string, unknown> } | null)?.error ?? {}
  t.strictSame(Object.keys(error).sort(), ['code', 'message', 'param', 'type'], `${what}: exactly the four envelope fields`)
  t.ok(error.param === null || typeof error.param === 'string', `${what}: param is null or a string`)
}

/** Decode a `Transfer-Encoding: chunked` body (enough for our own replies; no trailers, no extensions). */
function dechunk (text: string): string {
  let out = ''
  let rest = text
  for (;;) {
    const eol = rest.indexOf('\r\n')
    if (eol === -1) return out
    const size = parseInt(rest.slice(0, eol), 16)
    if (!Number.isFinite(size) || size === 0) return out
    out += rest.slice(eol + 2, eol + 2 + size)
    rest = rest.slice(eol + 2 + size + 2)
  }
}

/** Parse the first HTTP/1.1 response in `text` (as returned by `rawRequest`). Status 0: nothing came back. */
export function parseRaw (text: string): Seen {
  const end = text.indexOf('\r\n\r\n')
  if (end === -1) return { statusCode: 0, headers: {}, body: text }
  const [statusLine = '', ...lines] = text.slice(0, end).split('\r\n')
  const headers: Record<string, string> = {}
  for (const line of lines) {
    const i = line.indexOf(':')
    if (i > 0) headers[line.slice(0, i).trim().toLowerCase()] = line.slice(i + 1).trim()
  }
  const raw = text.slice(end + 4)
  const body = headers['transfer-encoding'] === 'chunked' ? dechunk(raw) : raw.slice(0, Number(headers['content-length'] ?? raw.length))
  return { statusCode: Number(statusLine.split(' ')[1] ?? 0), headers, body }
}

/** Every HTTP/1.x response in `text`, in order (1xx have no body; chunked bodies decoded), at most 20. */
export function parseResponses (text: string): Seen[] {
  const out: Seen[] = []
  let rest = text
  while (out.length < 20 && rest.startsWith('HTTP/1.')) {
    const end = rest.indexOf('\r\n\r\n')
    if (end === -1) break
    const [statusLine = '', ...lines] = rest.slice(0, end).split('\r\n')
    const headers: Record<string, string> = {}
    for (const line of lines) {
      const i = line.indexOf(':')
      if (i > 0) headers[line.slice(0, i).trim().toLowerCase()] = line.slice(i + 1).trim()
    }
    const statusCode = Number(statusLine.split(' ')[1] ?? 0)
    let after = rest.slice(end + 4)
    let body = ''
    if (statusCode >= 200) {
      if (headers['transfer-encoding'] === 'chunked') {
        for (let eol = after.indexOf('\r\n'); eol !== -1; eol = after.indexOf('\r\n')) {
          const size = parseInt(after.slice(0, eol), 16)
          if (!(size > 0)) {
            after = after.slice(eol + 4)
            break
          }
          body += after.slice(eol + 2, eol + 2 + size)
          after = after.slice(eol + 4 + size)
        }
      } else {
        const n = Number(headers['content-length'] ?? after.length)
        body = after.slice(0, n)
        after = after.slice(n)
      }
    }
    out.push({ statusCode, headers, body })
    rest = after
  }
  return out
}

export interface Exchange {
  /** Everything received, as latin1. */
  text: string
  responses: Seen[]
  /** The proxy ended the connection (FIN or RST), rather than our hard timeout. */
  closedByPeer: boolean
}

/** Write `payload` on a fresh connection and read until the proxy closes it, or `hardMs` pass (then we close it). */
export function exchange (port: number, payload: string | Buffer, hardMs = 3000): Promise<Exchange> {
  return new Promise((resolve) => {
    const socket = connect(port, '127.0.0.1')
    const chunks: Buffer[] = []
    let closedByPeer = false
    const timer = setTimeout(() => socket.destroy(), hardMs)
    socket.on('data', (c: Buffer) => chunks.push(c))
    socket.on('end', () => { closedByPeer = true })
    // A reset is the proxy closing on us too (it may come while we are still writing a large payload).
    socket.on('error', () => { closedByPeer = true })
    socket.on('close', () => {
      clearTimeout(timer)
      const text = Buffer.concat(chunks).toString('latin1')
      resolve({ text, responses: parseResponses(text), closedByPeer })
    })
    socket.write(payload)
  })
}

/** A raw HTTP/1.1 request with `Connection: close`; adds Content-Length and a JSON content type when given a body. */
export function rawHttp (method: string, target: string, headers: Record<string, string>, body?: string, version = 'HTTP/1.1'): string {
  const lines = [`${method} ${target} ${version}`]
  const all: Record<string, string> = { host: 'proxy.test', connection: 'close', ...headers }
  if (body !== undefined) {
    all['content-type'] ??= 'application/json'
    all['content-length'] = String(Buffer.byteLength(body))
  }
  for (const [k, v] of Object.entries(all)) lines.push(`${k}: ${v}`)
  return lines.join('\r\n') + '\r\n\r\n' + (body ?? '')
}

/** What one transport should see for a path trick. */
export type Expect =
  /** A local OpenAI-shaped refusal. */
  | { status: number, code: string, allow?: string }
  /** Forwarded, to exactly this upstream path (status as the fake upstream answered). */
  | { status: number, forwardedTo: string }
  /** Refused by Fastify's router before our handlers run (FST_ERR_BAD_URL, FST_ERR_MAX_PARAM_LENGTH). */
  | { status: number, framework: true }
  /** Refused by Node's HTTP parser (raw sockets only). */
  | { status: number, parser: true }

export interface PathCase { method: 'GET' | 'POST', path: string, inject: Expect, raw: Expect }

const notFound: Expect = { status: 404, code: 'unknown_url' }
const badParam: Expect = { status: 400, code: 'invalid_value' }
const badUrl: Expect = { status: 400, framework: true }
const chat: Expect = { status: 200, forwardedTo: '/v1/chat/completions' }
const both = (method: 'GET' | 'POST', path: string, e: Expect): PathCase => ({ method, path, inject: e, raw: e })

/**
 * Path tricks from threat catalogue R04-R12 and R15. `inject` and `raw` differ where light-my-request
 * normalises the URL with WHATWG `new URL()` (dot segments, `%2e`, backslashes) before Fastify sees it;
 * Node's real parser hands the router the bytes as sent.
 */
export const PATH_CASES: PathCase[] = [
  ...['/', '/v1', '/v1/', '/v2/chat/completions', '/api/v1/chat/completions', '/v1/foo', '/v1/chat/completions.json'].map((p) => both('POST', p, notFound)),
  // Dot segments (R05): the router never resolves them; inject's URL parser does (and lands on a 404 here).
  ...[
    '/v1/chat/completions/../../organization/users', '/v1/./organization/users',
    '/v1/chat/completions/%2e%2e/%2e%2e/organization/users', '/v1/chat/completions/%2E%2E/%2E%2E/organization/users',
    '/v1/chat/completions/.%2e/.%2e/organization/users', '/v1/chat/completions/%2e./%2e./organization/users',
    '/v1/chat/completions/%252e%252e/%252e%252e/organization/users', '/v1/chat/completions/..', '/v1/chat/completions/.'
  ].map((p) => both('POST', p, notFound)),
  { method: 'POST', path: '/v1/./chat/completions', inject: chat, raw: notFound },
  { method: 'POST', path: '/v1/models/../chat/completions', inject: chat, raw: notFound },
  { method: 'POST', path: '/v1/chat/completions/%2e%2e/completions', inject: chat, raw: notFound },
  both('POST', '/v1/chat/completions/%c0%ae%c0%ae/%c0%ae%c0%ae/organization/users', badUrl),
  // Backslashes (R06) and encoded slashes (R07): never separators.
  ...[
    '/v1/chat/completions\\..\\..\\organization/users', '/v1/chat/completions%5c..%5c..%5corganization/users',
    '/v1/chat%2Fcompletions', '/v1/chat%2fcompletions', '/v1/organization%2Fusers', '/v1%2Forganization%2Fusers', '/v1%2Fchat%2Fcompletions'
  ].map((p) => both('POST', p, notFound)),
  // Encoded prefix characters (R08): decoded by the router to the canonical route, which forwards to the constant path.
  both('POST', '/%76%31/chat/completions', chat),
  both('POST', '/v1/%63hat/completions', chat),
  both('GET', '/%76%31/models', { status: 200, forwardedTo: '/v1/models' }),
  both('POST', '/v%31/organization/users', notFound),
  // Double and leading slashes (R09), semicolons (R10), case and trailing slash (R11).
  ...['//v1/chat/completions', '/v1//chat/completions', '/v1/chat//completions'].map((p) => both('POST', p, notFound)),
  ...['//evil.example/v1/models', '///api.openai.com/v1/models'].map((p) => both('GET', p, notFound)),
  ...[
    '/v1/chat/completions;/../organization/users', '/v1/organization;x=1/users', '/v1/chat/completions;jsessionid=1', '/v1/chat/completions%3Bx',
    '/V1/Chat/Completions', '/v1/CHAT/completions', '/v1/chat/completions/', '/v1/Organization/users'
  ].map((p) => both('POST', p, notFound)),
  both('GET', '/v1/Models', notFound),
  both('GET', '/v1/models/gpt-4o/', notFound),
  // Bad escapes (R12): Fastify's router refuses undecodable paths itself.
  ...['/v1/chat/completions%', '/v1/chat/completions%zz', '/v1/%zz/completions'].map((p) => both('POST', p, badUrl)),
  ...['/v1/chat/completions%00', '/v1/chat/completions%0d%0a', '/v1/chat/completions%23', '/v1/chat/completions%2e', '/v1/' + 'a'.repeat(10 * 1024)].map((p) => both('POST', p, notFound)),
  // Model parameter injection (R15): the schema refuses anything but one plain id segment.
  ...['/v1/models/..%2Forganization', '/v1/models/gpt-4o%2F..%2F..%2Forganization%2Fusers', '/v1/models/a%3Fb%23c', '/v1/models/a%2fb', '/v1/models/gpt-4o;x', '/v1/models/x%00', '/v1/models/%2E', '/v1/models/'].map((p) => both('GET', p, badParam)),
  { method: 'GET', path: '/v1/models/%2e%2e', inject: notFound, raw: badParam },
  { method: 'GET', path: '/models/%2e%2e', inject: notFound, raw: badParam },
  both('GET', '/v1/models/%zz', badUrl),
  both('GET', '/v1/models/ft:gpt-4o-mini:org:custom:abc', { status: 404, forwardedTo: '/v1/models/ft%3Agpt-4o-mini%3Aorg%3Acustom%3Aabc' }),
  both('GET', '/v1/models/' + 'a'.repeat(100), { status: 404, forwardedTo: '/v1/models/' + 'a'.repeat(100) }),
  // Fastify's default maxParamLength (100) refuses longer ids before our schema (which allows 256) runs.
  both('GET', '/v1/models/' + 'a'.repeat(101), { status: 404, forwardedTo: '/v1/models/' + 'a'.repeat(101) }),
  both('GET', '/v1/models/' + 'a'.repeat(300), { status: 414, framework: true })
]

/** Check what a transport saw for `method` against `expect`; `before` is the upstream request count before sending. */
export function checkExpect (t: Test, h: Harness, method: string, seen: Seen, expect: Expect, before: number, what: string): void {
  const sent = h.upstream.requests.slice(before)
  assertNoLeak(t, `${seen.statusCode}\n${JSON.stringify(seen.headers)}\n${seen.body}`, h.secrets, `response to ${what}`)
  if ('forwardedTo' in expect) {
    t.equal(seen.statusCode, expect.status, `${what}: status ${expect.status}`)
    t.strictSame(sent.map((r) => `${r.method} ${r.url}`), [`${method} ${expect.forwardedTo}`], `${what}: one upstream request, to ${expect.forwardedTo.slice(0, 60)}`)
    return
  }
  t.equal(sent.length, 0, `${what}: never reaches upstream`)
  if ('code' in expect) {
    expectOpenAIError(t, seen, expect.status, expect.code, what)
    if (expect.allow !== undefined) t.equal(seen.headers.allow, expect.allow, `${what}: Allow header`)
  } else {
    t.equal(seen.statusCode, expect.status, `${what}: status ${expect.status}`)
    t.match(safeJson(seen.body), { error: { type: 'invalid_request_error' } }, `${what}: OpenAI envelope`)
  }
}

function safeJson (text: string): unknown {
  try {
    return JSON.parse(text)
  } catch {
    return text
  }
}
