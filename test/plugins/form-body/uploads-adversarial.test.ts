import { createHash } from 'node:crypto'
import fc from 'fast-check'
import t from 'tap'
import type { Test } from 'tap'
import { assertNoLeak, proxyTest, sleep, type Harness } from '../../helper.js'
import { expectOpenAIError, type Seen } from '../../routing-shared.js'
import { finals, head, oneWholeResponse, pump, rawConn } from '../../adversarial-helper.js'
import { pngBytes, wavBytes } from '../../../testing/fake-uploads.js'

/*
 * Adversarial uploads through the whole proxy over real sockets (raw `net` writes, so every byte and every
 * chunk boundary is ours): hostile part headers, names and boundaries, lying lengths, stalls, clients that
 * keep sending after a refusal, and a property test over valid transcription forms cut anywhere. Each case
 * checks: exactly one answer, a 4xx in OpenAI's envelope with nothing upstream unless the form is valid,
 * upstream sees only our boundary and `upload.<ext>` names, no secret in anything the client saw, no hang.
 */

const KiB = 1024
const MiB = 1024 * KiB
const B = 'adv-B0undary'
const CT = `multipart/form-data; boundary=${B}`
const WAV = wavBytes(0.01)
const PNG = pngBytes(2, 2)
const NOTHING: Seen = { statusCode: 0, headers: {}, body: '' }
// eslint-disable-next-line no-control-regex
const CONTROL = /[\u0000\r\n]/
const sha = (b: Buffer): string => createHash('sha256').update(b).digest('hex')
const port = (h: Harness): number => Number(new URL(h.url).port)

const bytes = (...parts: Array<string | Buffer>): Buffer => Buffer.concat(parts.map((p) => (typeof p === 'string' ? Buffer.from(p, 'utf8') : p)))
const part = (disposition: string, data: string | Buffer, extra = '', boundary = B): Buffer => bytes(`--${boundary}\r\nContent-Disposition: ${disposition}${extra}\r\n\r\n`, data, '\r\n')
const field = (name: string, value: string | Buffer, extra = ''): Buffer => part(`form-data; name="${name}"`, value, extra)
const file = (name: string, data: Buffer, filename = 'a.wav', extra = ''): Buffer => part(`form-data; name="${name}"; filename="${filename}"`, data, extra)
const END = `--${B}--\r\n`
const MODEL = field('model', 'whisper-1')
const FILE = file('file', WAV)
const PHRASE = 'forbidden lighthouse'

interface Sent { responses: Seen[], text: string, ms: number, closedByPeer: boolean, before: number }
interface SendOptions {
  path?: string
  /** Headers over the defaults (auth, content type, content length); null removes one. */
  headers?: Record<string, string | null>
  /** Offsets at which the body is cut into separate writes (with `gapMs` between them). */
  cuts?: readonly number[]
  gapMs?: number
  /** Bytes written after the body in the same write as its last piece. */
  trailer?: Buffer
  hardMs?: number
  version?: string
  /** How long to keep listening after the first whole answer (a second answer would be a smuggled request). */
  settleMs?: number
}

/** One request on a fresh connection; resolves once one whole answer arrived (plus a moment for any extra bytes) or the peer closed. */
async function send (h: Harness, body: Buffer, opts: SendOptions = {}): Promise<Sent> {
  const before = h.upstream.requests.length
  const hardMs = opts.hardMs ?? 5000
  const conn = await rawConn(port(h), hardMs)
  const started = Date.now()
  const all: Record<string, string | null> = { ...h.auth, 'content-type': CT, 'content-length': String(body.length), ...opts.headers }
  const headers = Object.fromEntries(Object.entries(all).filter((e): e is [string, string] => e[1] !== null))
  conn.socket.write(head('POST', opts.path ?? '/v1/audio/transcriptions', headers, opts.version))
  const points = [0, ...(opts.cuts ?? []), body.length]
  for (let i = 1; i < points.length; i++) {
    if (i > 1) await sleep(opts.gapMs ?? 2)
    if (conn.isClosed()) break
    const piece = body.subarray(points[i - 1], points[i])
    conn.socket.write(i === points.length - 1 && opts.trailer !== undefined ? Buffer.concat([piece, opts.trailer]) : piece)
  }
  const deadline = Date.now() + hardMs
  while (!conn.isClosed() && !oneWholeResponse(conn.text()) && Date.now() < deadline) await sleep(5)
  // Anything written after the first answer (a second answer would be a smuggled request) arrives meanwhile.
  await Promise.race([conn.closed, sleep(opts.settleMs ?? 40)])
  const closedByPeer = conn.isClosed() && !conn.timedOut()
  conn.socket.destroy()
  const text = conn.text()
  return { responses: finals(text), text, ms: Date.now() - started, closedByPeer, before }
}

type Expect =
  | { ok: true, fields: Record<string, string[]>, files: Array<[string, string, string]> }
  | { status: number, code: string }

/** The invariants of one upload: one answer; a refusal is local, in the envelope, nothing upstream; a success was rebuilt by us. */
function check (t: Test, h: Harness, sent: Sent, expect: Expect, what: string): void {
  assertNoLeak(t, sent.text, h.secrets, `what the client saw: ${what}`)
  t.equal(sent.responses.length, 1, `${what}: exactly one answer`)
  const res = sent.responses[0] ?? NOTHING
  t.notMatch(res.body, CONTROL, `${what}: the answer carries no control characters from the request`)
  if ('ok' in expect) {
    t.equal(res.statusCode, 200, `${what}: 200`)
    t.equal(h.upstream.requests.length, sent.before + 1, `${what}: one upstream request`)
    const rec = h.upstream.requests.at(-1)
    t.match(rec?.headers['content-type'], /^multipart\/form-data; boundary=oai-proxy-[0-9a-f]{32}$/, `${what}: our boundary upstream`)
    t.strictSame(rec?.form?.fields, expect.fields, `${what}: upstream got exactly the checked fields`)
    t.strictSame(rec?.form?.files.map((f) => [f.field, f.filename, f.sha256]), expect.files, `${what}: upstream got the files whole, under our names`)
    for (const block of rec?.form?.rawHeaderBlocks ?? []) {
      t.match(block, /^Content-Disposition: form-data; name="[a-z_]+(\[\])?"(; filename="upload\.(wav|png|jpg|webp|mp3|flac|ogg|webm|mp4|m4a)"\r\nContent-Type: [a-z]+\/[a-z0-9-]+)?$/, `${what}: a clean part header upstream`)
    }
  } else {
    expectOpenAIError(t, res, expect.status, expect.code, what)
    t.equal(h.upstream.requests.length, sent.before, `${what}: nothing upstream`)
    t.equal(res.headers.connection, 'close', `${what}: a refused upload closes its connection`)
  }
}

const WAV_OK: Array<[string, string, string]> = [['file', 'upload.wav', sha(WAV)]]
const ok = (fields: Record<string, string[]> = { model: ['whisper-1'] }, files = WAV_OK): Expect => ({ ok: true, fields, files })
const no = (status: number, code: string): Expect => ({ status, code })

interface Case { what: string, body: Buffer, expect: Expect, path?: string, headers?: Record<string, string | null> }

const CASES: Case[] = [
  { what: 'baseline: model then file', body: bytes(MODEL, FILE, END), expect: ok() },
  { what: 'file first (the Node SDK order)', body: bytes(FILE, MODEL, END), expect: ok() },
  // Line endings and header syntax.
  { what: 'LF-only line endings everywhere', body: Buffer.from(bytes(MODEL, FILE, END).toString('latin1').replace(/\r\n/g, '\n'), 'latin1'), expect: no(400, 'invalid_multipart') },
  { what: 'LF-only blank line after a part header', body: bytes(`--${B}\r\nContent-Disposition: form-data; name="model"\n\nwhisper-1\r\n`, FILE, END), expect: no(400, 'invalid_multipart') },
  { what: 'obs-fold in Content-Disposition', body: bytes(part('form-data;\r\n name="model"', 'whisper-1'), FILE, END), expect: no(400, 'invalid_multipart') },
  { what: 'two Content-Disposition headers (model, then prompt)', body: bytes(field('model', 'whisper-1', '\r\nContent-Disposition: form-data; name="prompt"'), FILE, END), expect: no(400, 'invalid_multipart') },
  { what: 'repeated name parameter', body: bytes(part('form-data; name="prompt"; name="model"', 'whisper-1'), FILE, END), expect: no(400, 'invalid_multipart') },
  { what: 'a header line without a colon', body: bytes(field('model', 'whisper-1', '\r\nX-Junk'), FILE, END), expect: no(400, 'invalid_multipart') },
  { what: 'a 9 KiB part header block', body: bytes(field('model', 'whisper-1', `\r\nX-Pad: ${'a'.repeat(9 * KiB)}`), FILE, END), expect: no(400, 'invalid_multipart') },
  { what: 'Content-Disposition: attachment', body: bytes(part('attachment; name="model"', 'whisper-1'), FILE, END), expect: no(400, 'invalid_multipart') },
  { what: 'upper-case disposition and parameter names', body: bytes(part('FORM-DATA; NAME="model"', 'whisper-1'), FILE, END), expect: ok() },
  { what: 'unquoted token name and filename', body: bytes(MODEL, part('form-data; name=file; filename=a.wav', WAV), END), expect: ok() },
  { what: 'name* only (RFC 5987 name)', body: bytes(part("form-data; name*=UTF-8''model", 'whisper-1'), FILE, END), expect: no(400, 'invalid_multipart') },
  // File names: never forwarded, whatever they hold.
  { what: "filename*=UTF-8''..%2F..%2Fetc%2Fpasswd", body: bytes(MODEL, part("form-data; name=\"file\"; filename*=UTF-8''..%2F..%2Fetc%2Fpasswd", WAV), END), expect: ok() },
  { what: 'filename and filename* disagreeing', body: bytes(MODEL, part("form-data; name=\"file\"; filename=\"a.wav\"; filename*=UTF-8''..%2F.htaccess", WAV), END), expect: ok() },
  { what: 'filename with NUL, bare CR, bare LF and ../', body: bytes(MODEL, file('file', WAV, '../../x\u0000y\rz\nw.wav'), END), expect: ok() },
  // The CRLF ends the quoted filename and adds a part Content-Type: both are ignored, upstream gets our own.
  { what: 'filename with CRLF header injection', body: bytes(MODEL, file('file', WAV, 'a.wav"\r\nContent-Type: text/html; x="'), END), expect: ok() },
  { what: 'quoted-pair in a filename', body: bytes(MODEL, file('file', WAV, 'a\\".wav'), END), expect: ok() },
  { what: 'declared Content-Type text/html on the file', body: bytes(MODEL, file('file', WAV, 'a.html', '\r\nContent-Type: text/html'), END), expect: ok() },
  // Field names.
  { what: 'NUL in a field name', body: bytes(field('mo\u0000del', 'whisper-1'), FILE, END), expect: no(400, 'unknown_parameter') },
  { what: 'bare CR in a field name', body: bytes(field('mo\rdel', 'whisper-1'), MODEL, FILE, END), expect: no(400, 'unknown_parameter') },
  { what: 'quote games in a name (name="file\\"; filename=\\"x.wav")', body: bytes(MODEL, part('form-data; name="file\\"; filename=\\"x.wav"', WAV), END), expect: no(400, 'unknown_parameter') },
  { what: 'a quoted-pair spelling model (name="mod\\el")', body: bytes(part('form-data; name="mod\\el"', 'whisper-1'), FILE, END), expect: ok() },
  { what: 'a Cyrillic look-alike of model', body: bytes(field('m\u043edel', 'whisper-1'), MODEL, FILE, END), expect: no(400, 'unknown_parameter') },
  { what: 'model[] (array form of a scalar field)', body: bytes(field('model[]', 'whisper-1'), FILE, END), expect: no(400, 'unknown_parameter') },
  { what: '_charset_ (RFC 7578 §4.6)', body: bytes(field('_charset_', 'utf-16'), MODEL, FILE, END), expect: no(400, 'unknown_parameter') },
  { what: 'chunking_strategy[__proto__]', body: bytes(MODEL, field('chunking_strategy[__proto__]', 'x'), FILE, END), expect: no(400, 'unknown_parameter') },
  { what: 'chunking_strategy as JSON with __proto__', body: bytes(MODEL, field('chunking_strategy', '{"__proto__":{"type":"server_vad"}}'), FILE, END), expect: no(400, 'invalid_multipart') },
  // Repeats and slots.
  { what: 'a part named file twice', body: bytes(MODEL, FILE, FILE, END), expect: no(413, 'too_many_parts') },
  { what: 'model repeated (same value)', body: bytes(MODEL, MODEL, FILE, END), expect: no(400, 'invalid_multipart') },
  { what: 'model repeated, the second after the file', body: bytes(MODEL, FILE, field('model', 'gpt-4o-transcribe'), END), expect: no(400, 'invalid_multipart') },
  { what: 'model sent as a file part', body: bytes(file('model', Buffer.from('whisper-1'), 'm.txt'), FILE, END), expect: no(400, 'invalid_multipart') },
  { what: 'file sent as a text part', body: bytes(MODEL, field('file', WAV), END), expect: no(400, 'invalid_multipart') },
  // Transfer encodings and nesting.
  { what: 'Content-Transfer-Encoding: base64 on the file', body: bytes(MODEL, file('file', Buffer.from(WAV.toString('base64')), 'a.wav', '\r\nContent-Transfer-Encoding: base64'), END), expect: no(400, 'invalid_multipart') },
  { what: 'Content-Transfer-Encoding: quoted-printable on model', body: bytes(field('model', 'whisper=2D1', '\r\nContent-Transfer-Encoding: quoted-printable'), FILE, END), expect: no(400, 'invalid_multipart') },
  { what: 'Content-Transfer-Encoding: BINARY (identity)', body: bytes(MODEL, file('file', WAV, 'a.wav', '\r\nContent-Transfer-Encoding: BINARY'), END), expect: ok() },
  { what: 'a multipart/mixed part', body: bytes(MODEL, file('file', WAV, 'a.wav', '\r\nContent-Type: multipart/mixed; boundary=inner'), END), expect: no(400, 'invalid_multipart') },
  // Values.
  { what: 'stream=TRUE', body: bytes(MODEL, field('stream', 'TRUE'), FILE, END), expect: no(400, 'invalid_multipart') },
  { what: 'temperature=1e309', body: bytes(MODEL, field('temperature', '1e309'), FILE, END), expect: no(400, 'invalid_multipart') },
  { what: 'temperature=0x1', body: bytes(MODEL, field('temperature', '0x1'), FILE, END), expect: no(400, 'invalid_multipart') },
  { what: 'invalid UTF-8 in prompt', body: bytes(MODEL, field('prompt', Buffer.from([0x66, 0xc3, 0x28, 0xff])), FILE, END), expect: no(400, 'invalid_multipart') },
  { what: 'an empty model', body: bytes(field('model', ''), FILE, END), expect: no(400, 'invalid_request_body') },
  // Files.
  { what: 'a 0-byte file', body: bytes(MODEL, file('file', Buffer.alloc(0)), END), expect: no(400, 'invalid_multipart') },
  { what: 'a 5-byte file (too short to sniff)', body: bytes(MODEL, file('file', Buffer.from('RIFF\u0000')), END), expect: no(400, 'invalid_file_format') },
  { what: 'a PNG posing as audio', body: bytes(MODEL, file('file', PNG, 'a.wav', '\r\nContent-Type: audio/wav'), END), expect: no(400, 'invalid_file_format') },
  { what: 'HTML posing as audio', body: bytes(MODEL, file('file', Buffer.from('<html><script>alert(1)</script></html>'), 'a.wav'), END), expect: no(400, 'invalid_file_format') },
  // Boundaries.
  { what: 'the client boundary inside file data followed by a smuggled prompt (the filter reads it)', body: bytes(MODEL, file('file', Buffer.concat([WAV, Buffer.from(`\r\n--${B}\r\nContent-Disposition: form-data; name="prompt"\r\n\r\nthe ${PHRASE}`)])), END), expect: no(400, 'content_filter') },
  { what: 'the client boundary inside file data followed by a benign prompt (it is a field: forwarded, checked)', body: bytes(MODEL, file('file', Buffer.concat([WAV, Buffer.from(`\r\n--${B}\r\nContent-Disposition: form-data; name="prompt"\r\n\r\nhello`)])), END), expect: ok({ model: ['whisper-1'], prompt: ['hello'] }) },
  { what: 'a line in file data that starts with the boundary and goes on', body: bytes(MODEL, file('file', Buffer.concat([WAV, Buffer.from(`\r\n--${B}X and more`)])), END), expect: no(400, 'invalid_multipart') },
  { what: 'transport padding after the boundary', body: Buffer.from(bytes(MODEL, FILE, END).toString('latin1').replaceAll(`--${B}\r\n`, `--${B} \t \r\n`), 'latin1'), expect: ok() },
  { what: 'a part after the close delimiter (epilogue) with a blocked prompt', body: bytes(MODEL, FILE, END, field('prompt', PHRASE), END), expect: ok() },
  { what: 'a fake part in the preamble with a blocked prompt', body: bytes(`preamble --${B}\r\nContent-Disposition: form-data; name="prompt"\r\n\r\n${PHRASE}\r\n`, MODEL, FILE, END), expect: ok() },
  { what: 'a 2 KiB preamble', body: bytes('p'.repeat(2 * KiB), '\r\n', MODEL, FILE, END), expect: no(400, 'invalid_multipart') },
  { what: 'a form without its close delimiter', body: bytes(MODEL, FILE), expect: no(400, 'invalid_multipart') },
  { what: 'close delimiter with one dash', body: bytes(MODEL, FILE, `--${B}-\r\n`), expect: no(400, 'invalid_multipart') },
  // The Content-Type header.
  { what: 'boundary quoted, with RFC 2046 specials and a space', body: Buffer.from(bytes(MODEL, FILE, END).toString('latin1').replaceAll(B, "a b'()+_,./:=?"), 'latin1'), headers: { 'content-type': 'multipart/form-data; boundary="a b\'()+_,./:=?"' }, expect: ok() },
  { what: 'Multipart/Form-Data;BOUNDARY=… and a charset', body: bytes(MODEL, FILE, END), headers: { 'content-type': `Multipart/Form-Data;BOUNDARY=${B}; charset=utf-8` }, expect: ok() },
  { what: 'a second boundary parameter', body: bytes(MODEL, FILE, END), headers: { 'content-type': `${CT}; boundary=other` }, expect: no(400, 'invalid_multipart') },
  { what: 'a boundary list smuggled in one parameter', body: bytes(MODEL, FILE, END), headers: { 'content-type': `multipart/form-data; boundary=${B}, multipart/form-data; boundary=x` }, expect: no(400, 'invalid_multipart') },
  { what: 'multipart/form-data with a 71-character boundary', body: bytes(MODEL, FILE, END), headers: { 'content-type': `multipart/form-data; boundary=${'b'.repeat(71)}` }, expect: no(400, 'invalid_multipart') },
  { what: 'Content-Encoding: gzip on an upload', body: bytes(MODEL, FILE, END), headers: { 'content-encoding': 'gzip' }, expect: no(415, 'unsupported_media_type') },
  // Image edits: image[] and image mixed, a mask twice.
  { what: 'image[] and image mixed in one edit', path: '/v1/images/edits', body: bytes(field('prompt', 'a hat'), file('image[]', PNG, 'a.png'), file('image', PNG, 'b.png'), END), expect: ok({ prompt: ['a hat'] }, [['image[]', 'upload.png', sha(PNG)], ['image', 'upload.png', sha(PNG)]]) },
  { what: 'a mask twice', path: '/v1/images/edits', body: bytes(field('prompt', 'a hat'), file('image', PNG, 'a.png'), file('mask', PNG, 'm.png'), file('mask', PNG, 'm.png'), END), expect: no(400, 'invalid_multipart') },
  { what: 'mask[] (a single-file field as an array)', path: '/v1/images/edits', body: bytes(field('prompt', 'a hat'), file('image', PNG, 'a.png'), file('mask[]', PNG, 'm.png'), END), expect: no(400, 'unknown_parameter') },
  { what: 'a blocked edit prompt after the image', path: '/v1/images/edits', body: bytes(file('image', PNG, 'a.png'), field('prompt', `a ${PHRASE.toUpperCase()}`), END), expect: no(400, 'content_filter') },
  { what: '129 parts', body: bytes(MODEL, ...Array.from({ length: 128 }, () => field('include[]', 'logprobs')), FILE, END), expect: no(413, 'too_many_parts') }
]

proxyTest(t, 'hostile forms over a raw socket: each is one clear answer, refusals reach nothing upstream', { listen: true, proxy: { filter: { phrases: [PHRASE] } } }, async (h, t) => {
  for (const c of CASES) {
    const sent = await send(h, c.body, { ...(c.path === undefined ? {} : { path: c.path }), ...(c.headers === undefined ? {} : { headers: c.headers }) })
    check(t, h, sent, c.expect, c.what)
    t.ok(sent.ms < 3000, `${c.what}: answered in ${sent.ms} ms`)
  }
})

proxyTest(t, 'a valid form cut in two at every byte, and sent byte by byte, always arrives whole', { listen: true }, async (h, t) => {
  const wav = wavBytes(0.002)
  const body = bytes(MODEL, field('prompt', 'Zoë, names'), file('file', wav), END)
  const fields = { model: ['whisper-1'], prompt: ['Zoë, names'] }
  const expect = ok(fields, [['file', 'upload.wav', sha(wav)]])
  let failures = 0
  for (let at = 1; at < body.length; at++) {
    const sent = await send(h, body, { cuts: [at], gapMs: 1, settleMs: 0 })
    const rec = h.upstream.requests.at(-1)
    const good = sent.responses.length === 1 && sent.responses[0]?.statusCode === 200 && h.upstream.requests.length === sent.before + 1 &&
      JSON.stringify(rec?.form?.fields) === JSON.stringify(fields) && rec?.form?.files[0]?.sha256 === sha(wav)
    if (!good) {
      failures++
      t.fail(`cut at ${at}: ${sent.responses[0]?.statusCode} ${sent.responses[0]?.body ?? ''}`)
    }
    assertNoLeak(t, sent.text, h.secrets, `cut at ${at}`)
  }
  t.equal(failures, 0, `all ${body.length - 1} two-piece cuts arrived whole`)
  const byteByByte = await send(h, body, { cuts: [...Array(body.length).keys()].slice(1), gapMs: 0, hardMs: 10_000 })
  check(t, h, byteByByte, expect, 'byte by byte')
})

proxyTest(t, 'framing: chunked uploads, Expect: 100-continue, lying lengths, HTTP/1.0, pipelining behind a refusal', { listen: true }, async (h, t) => {
  const body = bytes(MODEL, FILE, END)
  const chunkedBody = (b: Buffer, size: number): Buffer => {
    const out: Buffer[] = []
    for (let i = 0; i < b.length; i += size) {
      const c = b.subarray(i, i + size)
      out.push(Buffer.from(`${c.length.toString(16)}\r\n`), c, Buffer.from('\r\n'))
    }
    return Buffer.concat([...out, Buffer.from('0\r\n\r\n')])
  }
  check(t, h, await send(h, chunkedBody(body, 7), { headers: { 'content-length': null, 'transfer-encoding': 'chunked' }, cuts: [5, 50, 51, 300] }), ok(), 'chunked, 7-byte chunks')

  const expectSent = await send(h, body, { headers: { expect: '100-continue' } })
  t.match(expectSent.text, /^HTTP\/1\.1 100 Continue\r\n\r\nHTTP\/1\.1 200 /, 'Expect: 100-continue gets a 100, then the answer')
  check(t, h, expectSent, ok(), 'Expect: 100-continue')

  // Bytes beyond the declared length are the next request; after a refused upload the connection closes,
  // so a pipelined request behind it is never served (and never reaches upstream).
  const next = Buffer.from(head('POST', '/v1/audio/transcriptions', { ...h.auth, 'content-type': CT, 'content-length': String(body.length) }) + body.toString('latin1'), 'latin1')
  const cutShort = await send(h, body, { headers: { 'content-length': String(body.length - 12) } })
  t.ok(cutShort.responses.length >= 1, 'Content-Length shorter than the form: answered')
  for (const r of cutShort.responses) t.ok(r.statusCode >= 400 && r.statusCode < 500, `Content-Length shorter than the form: ${r.statusCode}`)
  t.equal(h.upstream.requests.length, cutShort.before, 'Content-Length shorter than the form: nothing upstream')
  const behindRefusal = await send(h, bytes(field('purpose', 'fine-tune'), MODEL, FILE, END), { trailer: next })
  t.equal(behindRefusal.responses.length, 1, 'a refused upload with a valid upload pipelined behind it: one answer')
  expectOpenAIError(t, behindRefusal.responses[0] ?? NOTHING, 400, 'unknown_parameter', 'the refused upload')
  t.ok(behindRefusal.closedByPeer, 'the connection was closed after the refusal')
  // The answer to the pipelined request can never be delivered (the connection closes after the refusal),
  // yet the drain that follows a refusal feeds it to the HTTP parser and it may be served: an upstream call
  // (and its cost) whose answer is thrown away. Racy: depends on whether the parser reaches it before the close.
  await sleep(200)
  t.equal(h.upstream.requests.length, behindRefusal.before, 'a request pipelined behind a refused upload is not forwarded',
    { todo: 'BUG (minor, racy): plugins/form-body/index.ts `release` resumes the socket into the HTTP parser, so a request pipelined behind a refused upload can be forwarded upstream although its answer is discarded' })

  const both = await send(h, body, { headers: { 'transfer-encoding': 'chunked' } })
  t.match(both.responses.map((r) => r.statusCode), [400], 'Content-Length and Transfer-Encoding together: 400 at the parser')
  t.equal(h.upstream.requests.length, both.before, 'CL+TE: nothing upstream')
  const badChunk = await send(h, Buffer.from(`zz\r\n${body.toString('latin1')}\r\n0\r\n\r\n`, 'latin1'), { headers: { 'content-length': null, 'transfer-encoding': 'chunked' } })
  t.match(badChunk.responses.map((r) => r.statusCode), [400], 'a bad chunk size: 400')
  t.equal(h.upstream.requests.length, badChunk.before, 'bad chunk: nothing upstream')

  const http10 = await send(h, body, { headers: { 'content-length': null }, version: 'HTTP/1.0' })
  t.ok(http10.responses.every((r) => r.statusCode >= 400 && r.statusCode < 500) && http10.responses.length === 1, 'HTTP/1.0 without a length: the body is empty, one 4xx')
  t.equal(h.upstream.requests.length, http10.before, 'HTTP/1.0: nothing upstream')

  const ok2 = await send(h, body)
  check(t, h, ok2, ok(), 'a normal upload afterwards')
})

// What server.ts configures (REQUEST_TIMEOUT_MS, HEADERS_TIMEOUT_MS), shortened.
const timeoutServer = { requestTimeout: 1000, http: { headersTimeout: 1000, connectionsCheckingInterval: 100 } }

proxyTest(t, 'a client that stops sending mid-file is cut within the request timeout, before or after streaming began', { listen: true, fastify: timeoutServer }, async (h, t) => {
  const big = Buffer.concat([wavBytes(0), Buffer.alloc(2 * MiB)])
  const cases: Array<[string, Buffer, number]> = [
    ['mid-file, before the decision (small form, never ended)', bytes(MODEL, file('file', WAV)), 10 * KiB],
    ['mid-file, after 1.5 MiB streamed upstream', bytes(MODEL, file('file', big), END), 1.5 * MiB],
    ['inside a part header', bytes(MODEL, FILE, END), MODEL.length + 20]
  ]
  for (const [what, body, stopAt] of cases) {
    const before = h.upstream.requests.length
    const conn = await rawConn(port(h), 8000)
    const started = Date.now()
    conn.socket.write(head('POST', '/v1/audio/transcriptions', { ...h.auth, 'content-type': CT, 'content-length': String(body.length) }))
    await pump(conn, [body.subarray(0, Math.min(stopAt, body.length))], 3000)
    await conn.closed
    const ms = Date.now() - started
    t.notOk(conn.timedOut(), `${what}: the proxy closed the connection itself (${ms} ms)`)
    t.ok(ms < 5000, `${what}: within the request timeout and a margin (${ms} ms)`)
    const seen = finals(conn.text())
    t.ok(seen.length <= 1, `${what}: at most one answer`)
    if (seen[0] !== undefined) t.ok(seen[0].statusCode >= 400 && seen[0].statusCode < 500, `${what}: a 4xx (${seen[0].statusCode})`)
    assertNoLeak(t, conn.text(), h.secrets, what)
    t.equal(h.upstream.requests.length, before, `${what}: upstream never received a whole form`)
  }
  const after = await send(h, bytes(MODEL, FILE, END))
  check(t, h, after, ok(), 'the proxy still serves uploads')
})

proxyTest(t, 'a client that keeps sending after its refusal is cut off, and little of it is read', { listen: true }, async (h, t) => {
  for (const [what, first] of [['an unknown field', field('purpose', 'batch')], ['a text file', bytes(MODEL, file('file', Buffer.from('just text, not audio')))]] as const) {
    const conn = await rawConn(port(h), 10_000)
    const started = Date.now()
    conn.socket.write(head('POST', '/v1/audio/transcriptions', { ...h.auth, 'content-type': CT, 'transfer-encoding': 'chunked' }))
    conn.socket.write(`${first.length.toString(16)}\r\n`)
    conn.socket.write(first)
    conn.socket.write('\r\n')
    const junk = Buffer.alloc(256 * KiB, 0x61)
    const frame = Buffer.concat([Buffer.from(`${junk.length.toString(16)}\r\n`), junk, Buffer.from('\r\n')])
    const sent = await pump(conn, (function * () { for (let i = 0; i < 4096; i++) yield frame })(), 6000)
    await Promise.race([conn.closed, sleep(2000)])
    const ms = Date.now() - started
    t.ok(conn.isClosed() && !conn.timedOut(), `${what}: the proxy closed the connection (${ms} ms)`)
    t.ok(sent < 64 * MiB, `${what}: the proxy stopped taking bytes (${(sent / MiB).toFixed(1)} MiB accepted of up to 1 GiB)`)
    const seen = finals(conn.text())
    t.ok(seen.length <= 1, `${what}: at most one answer`)
    if (seen[0] !== undefined) t.equal(seen[0].statusCode, 400, `${what}: the refusal`)
    assertNoLeak(t, conn.text(), h.secrets, what)
  }
  t.equal(h.upstream.requests.length, 0)
})

proxyTest(t, 'field order around the streaming decision: a field read only in part when streaming starts is never silently dropped', { listen: true }, async (h, t) => {
  // The file (> 1 MiB: the rest streams once model is in) comes first; model and prompt follow in one write
  // that ends in the middle of prompt's value. Either prompt is forwarded (it was checked) or the client
  // is told to move it; a 200 without it would drop a field the client sent, unnoticed.
  const big = Buffer.concat([wavBytes(0), Buffer.alloc(MiB + 64 * KiB, 1)])
  const body = bytes(file('file', big), MODEL, field('prompt', 'spelling: Zoë Łukasz'), END)
  const cut = body.indexOf('spelling') + 4
  const sent = await send(h, body, { cuts: [cut - 2000, cut], gapMs: 30, hardMs: 8000 })
  const status = sent.responses[0]?.statusCode
  t.equal(sent.responses.length, 1, 'one answer')
  if (status === 200) {
    t.strictSame(h.upstream.requests.at(-1)?.form?.fields, { model: ['whisper-1'], prompt: ['spelling: Zoë Łukasz'] }, 'a 200 forwarded every field the client sent')
  } else {
    expectOpenAIError(t, sent.responses[0] ?? NOTHING, 400, 'multipart_field_order', 'the late field')
  }
  assertNoLeak(t, sent.text, h.secrets, 'the answer')
})

// ---------------------------------------------------------------------------------------------------------
// Property: random valid transcription forms, in any order, cut anywhere.

const seed = Number(process.env.FUZZ_SEED ?? Date.now() % 2 ** 31)
const runs = Number(process.env.FUZZ_UPLOAD_RUNS ?? 200)

interface FormCase {
  parts: Array<{ name: string, value: string } | { file: Buffer }>
  cuts: number[]
}

const textValue = fc.string({ unit: 'grapheme', maxLength: 30 }).filter((s) => !s.includes('\r\n--'))
const optional = <T>(arb: fc.Arbitrary<T>): fc.Arbitrary<T | null> => fc.option(arb, { nil: null, freq: 2 })
const formCase: fc.Arbitrary<FormCase> = fc.record({
  model: fc.constantFrom('whisper-1', 'gpt-4o-transcribe', 'gpt-4o-mini-transcribe'),
  prompt: optional(textValue),
  language: optional(fc.constantFrom('en', 'fr', 'zh')),
  response_format: optional(fc.constantFrom('json', 'verbose_json')),
  temperature: optional(fc.constantFrom('0', '0.2', '1')),
  granularities: optional(fc.subarray(['word', 'segment'], { minLength: 1 })),
  bracketed: fc.boolean(),
  include: optional(fc.constant('logprobs')),
  chunking: optional(fc.constant('auto')),
  fileBytes: fc.oneof({ arbitrary: fc.integer({ min: 12, max: 4096 }), weight: 9 }, { arbitrary: fc.integer({ min: MiB + 1, max: MiB + 200 * KiB }), weight: 1 }),
  order: fc.array(fc.nat(), { minLength: 12, maxLength: 12 }),
  cutFractions: fc.array(fc.double({ min: 0, max: 1, noNaN: true }), { maxLength: 4 })
}).map((r) => {
  const parts: FormCase['parts'] = [{ name: 'model', value: r.model }]
  if (r.prompt !== null) parts.push({ name: 'prompt', value: r.prompt })
  if (r.language !== null) parts.push({ name: 'language', value: r.language })
  if (r.response_format !== null) parts.push({ name: 'response_format', value: r.response_format })
  if (r.temperature !== null) parts.push({ name: 'temperature', value: r.temperature })
  for (const g of r.granularities ?? []) parts.push({ name: r.bracketed ? 'timestamp_granularities[]' : 'timestamp_granularities', value: g })
  if (r.include !== null) parts.push({ name: 'include[]', value: r.include })
  if (r.chunking !== null) parts.push({ name: 'chunking_strategy', value: r.chunking })
  const audio = Buffer.concat([wavBytes(0), Buffer.alloc(r.fileBytes, 7)])
  audio.writeUInt32LE(36 + r.fileBytes, 4)
  audio.writeUInt32LE(r.fileBytes, 40)
  parts.push({ file: audio })
  // A random permutation (the weights decide the order; stable on ties).
  const keyed = parts.map((p, i) => ({ p, k: r.order[i % r.order.length] ?? 0, i }))
  keyed.sort((a, b) => a.k - b.k || a.i - b.i)
  return { parts: keyed.map((x) => x.p), cuts: r.cutFractions }
})

function buildForm (c: FormCase): { body: Buffer, cuts: number[], expected: Record<string, string[]>, file: Buffer, lateField: boolean } {
  const pieces: Buffer[] = []
  const expected: Record<string, string[]> = {}
  let file: Buffer = Buffer.alloc(0)
  let seenFile = false
  let seenModel = false
  let lateField = false
  for (const p of c.parts) {
    if ('file' in p) {
      file = p.file
      pieces.push(bytes(`--${B}\r\nContent-Disposition: form-data; name="file"; filename="rec.wav"\r\nContent-Type: audio/wav\r\n\r\n`, p.file, '\r\n'))
      seenFile = true
      continue
    }
    if (seenFile && seenModel && p.name !== 'model') lateField = true
    if (p.name === 'model') seenModel = true
    pieces.push(field(p.name, p.value))
    const upstreamName = ['timestamp_granularities', 'include'].includes(p.name.replace('[]', '')) ? `${p.name.replace('[]', '')}[]` : p.name
    ;(expected[upstreamName] ??= []).push(p.value)
  }
  // A model after the file but before other fields: they come after the decision too.
  const body = bytes(...pieces, END)
  const cuts = [...new Set(c.cuts.map((f) => Math.floor(f * body.length)).filter((x) => x > 0 && x < body.length))].sort((a, b) => a - b)
  return { body, cuts, expected, file, lateField }
}

proxyTest(t, `property: random valid transcription forms, any field order, cut anywhere (seed ${seed}, ${runs} runs)`, { listen: true }, async (h, t) => {
  t.comment(`upload property seed ${seed}; replay with FUZZ_SEED=${seed}`)
  let served = 0
  let fieldOrder = 0
  const dropped: string[] = []
  await fc.assert(fc.asyncProperty(formCase, async (c) => {
    const { body, cuts, expected, file, lateField } = buildForm(c)
    const sent = await send(h, body, { cuts, gapMs: 1, hardMs: 8000, settleMs: 5 })
    const res = sent.responses[0]
    if (sent.responses.length !== 1 || res === undefined) throw new Error(`expected one answer, got ${sent.responses.length} (${sent.text.slice(0, 200)})`)
    for (const s of h.secrets) if (sent.text.includes(s)) throw new Error('a secret reached the client')
    if (res.statusCode === 200) {
      const rec = h.upstream.requests.at(-1)
      if (h.upstream.requests.length !== sent.before + 1) throw new Error('a 200 without exactly one upstream request')
      if (!/^multipart\/form-data; boundary=oai-proxy-[0-9a-f]{32}$/.test(rec?.headers['content-type'] ?? '')) throw new Error('not our boundary upstream')
      const files = rec?.form?.files ?? []
      if (files.length !== 1 || files[0]?.filename !== 'upload.wav' || files[0]?.sha256 !== sha(file)) throw new Error(`the file did not arrive whole under our name: ${JSON.stringify(files)}`)
      const got = JSON.stringify(Object.entries(rec?.form?.fields ?? {}).sort())
      const want = JSON.stringify(Object.entries(expected).sort())
      if (got !== want) {
        // Only the streaming-decision case above may lose a field; anything else is a plain failure.
        if (!(file.length > MiB && lateField)) throw new Error(`upstream fields ${got} != ${want}`)
        dropped.push(`${got} != ${want}`)
      }
      served++
      return
    }
    if (h.upstream.requests.length !== sent.before) throw new Error(`a ${res.statusCode} after something went upstream`)
    if (res.statusCode === 400 && JSON.parse(res.body).error?.code === 'multipart_field_order' && file.length > MiB && lateField) {
      fieldOrder++
      return
    }
    throw new Error(`unexpected ${res.statusCode}: ${res.body}`)
  }), { seed, numRuns: runs, endOnFailure: true })
  t.comment(`${served} served, ${fieldOrder} refused as multipart_field_order, ${dropped.length} served with a field silently dropped`)
  t.ok(served > runs / 2, `most forms were served (${served} of ${runs})`)
  t.strictSame(dropped, [], 'no 200 dropped a field the client sent')
})
