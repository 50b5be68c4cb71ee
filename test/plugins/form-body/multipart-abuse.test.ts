import t from 'tap'
import { PassThrough } from 'node:stream'
import { pngBytes, wavBytes } from '../../../testing/fake-uploads.js'
import { AUDIO, IMAGES, LIMITS, chunked, cut, forward, open, refusal } from '../../multipart-helper.js'

/*
 * Hostile and broken forms (threat catalogue §6, MP01-MP06, and the parsing rules): each is refused with
 * the catalogue error before anything could go upstream, quickly, and without a hung promise.
 */

const B = 'multipart/form-data; boundary=b'
const part = (headers: string, value: string | Buffer): Buffer => Buffer.concat([Buffer.from(`--b\r\n${headers}\r\n\r\n`), Buffer.from(value), Buffer.from('\r\n')])
const text = (name: string, value: string | Buffer): Buffer => part(`Content-Disposition: form-data; name="${name}"`, value)
const file = (name: string, data: Buffer): Buffer => part(`Content-Disposition: form-data; name="${name}"; filename="f"`, data)
const END = Buffer.from('--b--\r\n')
const body = (...parts: Array<Buffer | string>): Buffer => Buffer.concat(parts.map((p) => Buffer.from(p)))
const refuse = async (b: Buffer, spec = AUDIO, limits = LIMITS, ct = B): ReturnType<typeof refusal> => await refusal(open(b, spec, limits, ct))
const accept = async (b: Buffer, spec = AUDIO, limits = LIMITS, ct = B): Promise<Record<string, unknown>> => (await open(b, spec, limits, ct)).head.fields
const wav = wavBytes(0.01)
const png = pngBytes(1, 1)

t.test('MP01: 10k empty parts and 10k fields are refused at maxParts, in linear time', async (t) => {
  const cases: Array<[string, Buffer, RegExp]> = [
    ['10k empty parts', body('--b\r\n\r\n\r\n'.repeat(10_000), END), /no Content-Disposition/],
    ['10k fields', body(text('include[]', '').toString().repeat(10_000), END), /more than 64 parts/],
    ['10k fields, one byte per chunk from the 60th', body(text('include[]', 'x').toString().repeat(10_000), END), /more than 64 parts/]
  ]
  for (const [name, b, message] of cases) {
    const started = performance.now()
    const err = await refusal(open(name.includes('chunk') ? cut(b, [...Array(20_000).keys()].map((i) => 2000 + i)) : [b], AUDIO, LIMITS, B))
    const ms = performance.now() - started
    t.match(err, { message, statusCode: /^4(00|13)$/ }, name)
    t.ok(ms < 500, `${name}: ${ms.toFixed(1)} ms`)
    t.comment(`${name}: refused in ${ms.toFixed(1)} ms`)
  }
  const many = body(text('include[]', 'x').toString().repeat(10_000), END)
  const started = performance.now()
  const fields = await accept(many, AUDIO, { ...LIMITS, maxParts: 20_000 })
  const ms = performance.now() - started
  t.equal((fields.include as string[]).length, 10_000, 'with maxParts raised, 10k values are read')
  t.ok(ms < 1000, `10k values read in ${ms.toFixed(1)} ms`)
  t.comment(`10k accepted values: ${ms.toFixed(1)} ms`)
})

t.test('MP01: near-delimiters everywhere (a 70-character boundary) are searched in linear time, even byte by byte', async (t) => {
  const boundary = 'x'.repeat(70)
  const fake = Buffer.from(`\r\n--${'x'.repeat(69)}y`.repeat(100_000)) // 7.5 MB of almost-delimiters
  const b = body(`--${boundary}\r\nContent-Disposition: form-data; name="model"\r\n\r\nm\r\n`, `--${boundary}\r\nContent-Disposition: form-data; name="file"; filename="f"\r\n\r\n`, wav, fake, `\r\n--${boundary}--`)
  let started = performance.now()
  const opened = await open(cut(b, [...Array(Math.floor(b.length / 65536)).keys()].map((i) => (i + 1) * 65536)), AUDIO, { ...LIMITS, maxFileBytes: 8e6, holdBytes: 8e6 }, `multipart/form-data; boundary=${boundary}`)
  const seen = await forward(opened)
  let ms = performance.now() - started
  t.equal(seen.files[0]?.bytes, wav.length + fake.length)
  t.ok(ms < 3000, `7.5 MB of near-delimiters: ${ms.toFixed(0)} ms`)
  t.comment(`7.5 MB of near-delimiters in 64 KiB chunks: ${ms.toFixed(0)} ms`)
  const small = b.subarray(0, 200_000)
  started = performance.now()
  // Nothing decided before the end, so every byte goes through openForm's own reading.
  const whole = { ...LIMITS, streamAfterBytes: 1e9, holdBytes: 1e9 }
  t.match(await refusal(open(cut(small, [...Array(small.length).keys()].slice(1)), AUDIO, whole, `multipart/form-data; boundary=${boundary}`)), { message: /ends before its closing boundary/ })
  ms = performance.now() - started
  t.ok(ms < 3000, `200 KB byte by byte: ${ms.toFixed(0)} ms`)
  t.comment(`200 KB of near-delimiters byte by byte: ${ms.toFixed(0)} ms`)
})

t.test('MP02 and MP06: the Content-Type must be multipart/form-data with an RFC 2046 boundary', async (t) => {
  const form = body(text('model', 'm'), END)
  const refused: Array<[string, RegExp]> = [
    [`multipart/form-data; boundary=${'a'.repeat(252)}`, /1 to 70 characters/],
    [`multipart/form-data; boundary=${'a'.repeat(71)}`, /1 to 70 characters/],
    ['multipart/form-data; boundary=""', /1 to 70 characters/],
    ['multipart/form-data; boundary="ab "', /1 to 70 characters/],
    ['multipart/form-data; boundary=a*b', /1 to 70 characters/],
    ['multipart/form-data', /no boundary/],
    ['multipart/form-data; charset=utf-8', /no boundary/],
    ['multipart/form-data;', /parameters cannot be read/],
    ['multipart/form-data; boundary="b', /parameters cannot be read/],
    ['multipart/form-data; boundary=b; boundary=c', /repeats its "boundary" parameter/],
    ['multipart/mixed; boundary=b', /must be multipart\/form-data/],
    ['application/json', /must be multipart\/form-data/],
    ['', /must be multipart\/form-data/]
  ]
  for (const [ct, message] of refused) {
    const source = chunked([form])
    t.match(await refusal(open(source, AUDIO, LIMITS, ct)), { code: 'OAI_PROXY_MULTIPART_INVALID', statusCode: 400, message }, ct.slice(0, 60))
    t.equal(source.listenerCount('readable'), 0, 'the body is not read')
  }
  const b70 = 'a'.repeat(70)
  t.strictSame(await accept(body(`--${b70}\r\nContent-Disposition: form-data; name="model"\r\n\r\nm\r\n--${b70}--`), AUDIO, LIMITS, `multipart/form-data; boundary=${b70}`), { model: 'm' })
  const odd = "a b'()+_,-./:=?"
  t.strictSame(await accept(body(`--${odd}\r\nContent-Disposition: form-data; name="model"\r\n\r\nm\r\n--${odd}--`), AUDIO, LIMITS, `Multipart/Form-Data ; charset=utf-8;BOUNDARY = "${odd}" `), { model: 'm' })
})

t.test('MP06: nested multipart/mixed parts and transfer encodings are refused', async (t) => {
  const nested = part('Content-Disposition: form-data; name="file"; filename="f"\r\nContent-Type: multipart/mixed; boundary=c', '--c\r\n\r\nx\r\n--c--')
  t.match(await refuse(body(text('model', 'm'), nested, END)), { statusCode: 400, message: /nested multipart/ })
  t.match(await refuse(body(part('Content-Disposition: form-data; name="model"\r\nContent-Transfer-Encoding: base64', 'bQ=='), END)), { message: /Content-Transfer-Encoding/ })
  t.strictSame(await accept(body(part('Content-Disposition: form-data; name="model"\r\nContent-Transfer-Encoding: 8BIT\r\nContent-Type: text/plain', 'm'), END)), { model: 'm' })
})

t.test('MP03: __proto__, constructor and prototype are unknown fields and pollute nothing', async (t) => {
  for (const name of ['__proto__', 'constructor', 'prototype', 'toString', 'hasOwnProperty', 'constructor[]', '__proto__[x]', 'chunking_strategy[__proto__]', 'chunking_strategy[constructor]', 'chunking_strategy[a-b]', 'file[]', 'include[x]']) {
    t.match(await refuse(body(text(name, '{"polluted":1}'), END)), { code: 'OAI_PROXY_MULTIPART_UNKNOWN_FIELD', statusCode: 400, param: name, message: `Unknown parameter: '${name}'.` }, name)
    t.match(await refuse(body(file(name, png), END)), { code: 'OAI_PROXY_MULTIPART_UNKNOWN_FIELD', param: name })
  }
  for (const json of ['{"__proto__":{"polluted":1}}', '{"constructor":"x"}', '{"prototype":"x"}']) {
    t.match(await refuse(body(text('chunking_strategy', json), END)), { code: 'OAI_PROXY_MULTIPART_INVALID', param: 'chunking_strategy' }, json)
  }
  t.equal(({} as Record<string, unknown>).polluted, undefined)
})

t.test('unknown names are shown without control characters and cut to 64 characters', async (t) => {
  const hostile = `\u0001\u001b[31m${'a'.repeat(200)}\u0085`
  const err = await refuse(body(text(hostile, 'x'), END))
  t.equal(err.param, `[31m${'a'.repeat(60)}…`)
  t.equal(err.message, `Unknown parameter: '[31m${'a'.repeat(60)}…'.`)
})

t.test('MP04: files over the caps are 413 and a client abort or a cut form ends with an error, never a hung promise', async (t) => {
  const big = wavBytes(1) // 32 KB
  t.match(await refuse(body(file('file', big), text('model', 'm'), END), AUDIO, { ...LIMITS, maxFileBytes: 20_000 }), { code: 'OAI_PROXY_FILE_TOO_LARGE', statusCode: 413, param: 'file' })
  const images = body(text('model', 'm'), text('prompt', 'p'), file('image[]', Buffer.concat([png, Buffer.alloc(15_000)])), file('image[]', Buffer.concat([png, Buffer.alloc(15_000)])), END)
  t.match(await refuse(images, IMAGES, { ...LIMITS, maxTotalFileBytes: 20_000 }), { code: 'OAI_PROXY_FILE_TOO_LARGE', message: /the files together are over 20000 bytes/ })
  t.match(await refuse(images, IMAGES, { ...LIMITS, maxFiles: 1 }), { code: 'OAI_PROXY_MULTIPART_TOO_MANY_PARTS', statusCode: 413, param: 'image', message: 'The form has more than 1 files.' })

  const aborted = new PassThrough()
  aborted.write(body(text('model', 'm'), file('file', big).subarray(0, 5000)))
  const opening = open(aborted, AUDIO, LIMITS, B)
  setTimeout(() => aborted.destroy(new Error('aborted')), 5)
  t.match(await refusal(opening), { message: 'aborted' })
  t.equal(aborted.listenerCount('readable') + aborted.listenerCount('end') + aborted.listenerCount('close'), 0, 'no listener left')

  const closed = new PassThrough()
  closed.write(body(text('model', 'm')))
  const closing = open(closed, AUDIO, LIMITS, B)
  setTimeout(() => closed.destroy(), 5)
  t.match(await refusal(closing), { code: 'OAI_PROXY_MULTIPART_INVALID', message: /closed the connection/ })

  for (const cutAt of [3, 30, 60, 80]) {
    const truncated = body(text('model', 'm'), file('file', wav)).subarray(0, cutAt)
    t.match(await refuse(truncated), { code: 'OAI_PROXY_MULTIPART_INVALID', message: /ends before its closing boundary|first boundary/ }, `cut at ${cutAt}`)
  }
  t.match(await refuse(body(text('model', 'm'), file('file', wav))), { message: /ends before its closing boundary/ })
  const read = chunked([body(text('model', 'm'), END)])
  read.resume()
  await new Promise((resolve) => read.on('end', resolve))
  t.match(await refusal(open(read, AUDIO, LIMITS, B)), { message: /already read/ })
})

t.test('part headers: read case-insensitively and quoted as RFC 7578 allows; malformed ones are refused', async (t) => {
  t.strictSame(await accept(body(part('content-DISPOSITION:FORM-DATA ;  NAME = "mo\\del"', 'a'), part('Content-Disposition: form-data; name=prompt', 'b'), END)), { model: 'a', prompt: 'b' })
  t.strictSame(await accept(body(part(`Content-Disposition: form-data; name="model"${'\r\nX-Pad: y'.repeat(100)}`, 'm'), END)), { model: 'm' })
  const refused: Array<[string, RegExp]> = [
    ['', /no Content-Disposition/],
    ['X-Other: 1', /no Content-Disposition/],
    ['Bad Header', /header line cannot be read/],
    [' Content-Disposition: form-data; name="model"', /header line cannot be read/],
    ['Content-Disposition: form-data; name="model"\r\nContent-Disposition: form-data; name="model"', /two Content-Disposition/],
    ['Content-Disposition: attachment; name="model"', /not form-data/],
    ['Content-Disposition: form-data', /no field name/],
    ['Content-Disposition: form-data; name=""', /no field name/],
    ['Content-Disposition: form-data; name="model"; name="prompt"', /repeats its "name" parameter/],
    ['Content-Disposition: form-data; name="a"b"', /parameters cannot be read/],
    [`Content-Disposition: form-data; name="model"\r\nX-Pad: ${'a'.repeat(9000)}`, /header block is over 8192 bytes/]
  ]
  for (const [headers, message] of refused) t.match(await refuse(body(part(headers, 'm'), END)), { code: 'OAI_PROXY_MULTIPART_INVALID', statusCode: 400, message }, headers.slice(0, 50))
})

t.test('boundary lines: padding is ignored, anything else after the boundary is refused; preamble capped, epilogue ignored', async (t) => {
  const model = 'Content-Disposition: form-data; name="model"\r\n\r\nm\r\n'
  t.strictSame(await accept(body('preamble\r\n', `--b \t\r\n${model}--b--`, 'x'.repeat(100_000))), { model: 'm' })
  t.strictSame(await accept(body('x'.repeat(1024), `\r\n--b\r\n${model}--b--`)), { model: 'm' })
  const refused: Array<[string, RegExp]> = [
    [`${'x'.repeat(1025)}\r\n--b\r\n${model}--b--`, /more than 1024 bytes before the first boundary/],
    [`--b${' '.repeat(300)}\r\n${model}--b--`, /holds more than the boundary/],
    [`--bx\r\n${model}--b--`, /holds more than the boundary/],
    [`--b -\r\n${model}--b--`, /holds more than the boundary/],
    [`--b-x\r\n${model}--b--`, /single "-"/],
    [`--b\rx${model}--b--`, /does not end with CRLF/],
    [`--b\r\n${model}--b`, /ends before its closing boundary/]
  ]
  for (const [b, message] of refused) t.match(await refuse(Buffer.from(b)), { code: 'OAI_PROXY_MULTIPART_INVALID', message }, b.slice(0, 30))
})
