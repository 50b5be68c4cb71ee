import t from 'tap'
import { scanJson } from '../../lib/json-scan.js'
import { analyse } from '../../lib/request-analysis.js'
import { WRITTEN_ONCE_BYTES, WrittenOnce, setField, upstreamBody, upstreamPayload } from '../../lib/request-body.js'
import { endpoints } from '../../schemas/endpoints.js'
import { chatBody, proxyTest, type Harness } from '../helper.js'

/*
 * The body upstream receives (threat catalogue B-series): exactly what was validated and filtered, the
 * client's own bytes wherever they mean that, and never a changed value.
 */

const chat = endpoints.find((e) => e.id === 'chat.completions') as (typeof endpoints)[number]
const scanOf = (text: string, depth = 64) => scanJson(Buffer.from(text), depth)
const send = (h: Harness, payload: string | Buffer, url = '/v1/chat/completions') =>
  h.app.inject({ method: 'POST', url, headers: { ...h.auth, 'content-type': 'application/json' }, payload })

t.test('the scan counts members, finds top-level members and long numbers, skipping string contents', async (t) => {
  const text = ' { "a" : 1 , "b\\"q:{[" : { "c": [1, 2, {"d": "x\\\\"}] }, "e": "v:,}" , "f": [ ] } '
  const scan = scanOf(text)
  t.equal(scan.members, 6)
  t.strictSame(scan.top.map((m) => [text.slice(m.start, m.keyEnd), text.slice(m.start, m.end)]), [
    ['"a"', '"a" : 1'],
    ['"b\\"q:{["', '"b\\"q:{[" : { "c": [1, 2, {"d": "x\\\\"}] }'],
    ['"e"', '"e": "v:,}"'],
    ['"f"', '"f": [ ]']
  ])
  t.equal(scan.longNumber, false)
  t.equal(scan.blank, false)
  t.equal(scan.tooDeep, false)
  t.equal(scan.escapes, false)
  t.equal(scanOf('{"a": "caf\\u00e9"}').escapes, true)
  t.equal(scanOf('{"a": "C:\\\\users"}').escapes, true, 'an escaped backslash before u counts: the text holds backslash-u')
  t.equal(scanOf('{"seed": 12345678901234567890}').longNumber, true)
  t.equal(scanOf('{"t": -0.1234567890123456}').longNumber, true, 'sixteen digits after the point')
  t.equal(scanOf('{"t": 123456789012345, "u": 1e300}').longNumber, false)
  t.equal(scanOf(' \n\t\r ').blank, true)
  t.strictSame(scanOf('[1, {"a": 2}]').top, [], 'a top-level array has no members to splice')
  t.equal(scanOf('[1, {"a": 2}]').members, 1)
  t.strictSame(scanOf('{}').top, [])
  t.strictSame(scanOf('{"a": "never closed').top, [], 'an unterminated string ends the scan (JSON.parse refuses it)')
  t.equal(scanOf('[[[1]]]', 3).tooDeep, false)
  t.equal(scanOf('[[[[1]]]]', 3).tooDeep, true)
  t.equal(scanOf('["[[[[[[", {"a": "{{{{"}]', 2).tooDeep, false, 'brackets inside strings do not count')
})

t.test('unchanged bodies go upstream as the client sent them; changed ones are spliced; duplicates re-serialised', async (t) => {
  const raw = (text: string) => ({ bytes: Buffer.from(text), scan: scanOf(text) })
  const text = '{"model":"gpt-4o-mini", "seed": 12345678901234567890, "messages":[{"role":"user","content":"hi"}], "max_tokens": 9000}'
  const a = analyse(chat, JSON.parse(text))
  const r = raw(text)
  t.equal(upstreamBody(a, r), r.bytes, 'the very same buffer')
  setField(a, 'max_tokens', 100)
  setField(a, 'store', false)
  t.equal(upstreamBody(a, r).toString(), '{"model":"gpt-4o-mini","seed": 12345678901234567890,"messages":[{"role":"user","content":"hi"}],"max_tokens":100,"store":false}')

  const dup = '{"model":"gpt-4o-mini","messages":[{"role":"user","content":"first","content":"second"}]}'
  const d = analyse(chat, JSON.parse(dup))
  t.equal(upstreamBody(d, raw(dup)), JSON.stringify({ model: 'gpt-4o-mini', messages: [{ role: 'user', content: 'second' }] }))
  t.equal(upstreamBody(d, null), JSON.stringify(JSON.parse(dup)), 'no raw bytes (another parser): re-serialised')

  const escaped = '{"mod\\u0065l":"gpt-4o-mini","messages":[],"max_tokens":5}'
  const e = analyse(chat, JSON.parse(escaped))
  setField(e, 'model', 'x')
  t.strictSame(JSON.parse(upstreamBody(e, raw(escaped)).toString()), { messages: [], max_tokens: 5, model: 'x' }, 'keys are compared decoded')
})

proxyTest(t, 'integers beyond 2^53 reach upstream exactly, whether or not the policy changes the body', { proxy: { policy: { maxOutputTokens: 100 } } }, async (h, t) => {
  const big = '{"model":"gpt-4o-mini","seed":12345678901234567890,"logit_bias":{"100257":-100},"messages":[{"role":"user","content":"hi"}]}'
  t.equal((await send(h, big)).statusCode, 200)
  const sent = h.upstream.requests[0]?.body.toString() ?? ''
  t.match(sent, /"seed":12345678901234567890[,}]/, 'the seed is the client\'s digits')
  t.match(JSON.parse(sent), { max_completion_tokens: 100 }, 'the cap is spliced in')

  const tokens = '{"model":"gpt-3.5-turbo-instruct","prompt":[9007199254740993, 18014398509481985],"max_tokens":5}'
  t.equal((await send(h, tokens, '/v1/completions')).statusCode, 200)
  t.match(h.upstream.requests[1]?.body.toString() ?? '', /\[9007199254740993, 18014398509481985\]/)
})

proxyTest(t, 'a body the proxy does not change is forwarded byte for byte (whitespace, escapes, key order)', {}, async (h, t) => {
  const text = '{ "messages" : [ {"role":"user","content":"caf\\u00e9 \\ud83d\\ude00 \\"q\\""} ],\n  "model":"gpt-4o-mini", "temperature": 1.0 }'
  t.equal((await send(h, text)).statusCode, 200)
  t.equal(h.upstream.requests[0]?.body.toString(), text)
})

proxyTest(t, 'bad bytes and ambiguous bodies get a clear 400 and nothing goes upstream', {}, async (h, t) => {
  const invalidUtf8 = Buffer.concat([Buffer.from('{"model":"gpt-4o-mini","messages":[{"role":"user","content":"'), Buffer.from([0xc1, 0x81, 0xff]), Buffer.from('"}]}')])
  const bad = await send(h, invalidUtf8)
  t.equal(bad.statusCode, 400)
  t.match(bad.json(), { error: { code: 'invalid_json', message: /not valid UTF-8/ } })
  const ambiguous = await send(h, '{"model":"gpt-4o-mini","seed":12345678901234567890,"messages":[{"role":"user","content":"a"}],"messages":[{"role":"user","content":"b"}]}')
  t.equal(ambiguous.statusCode, 400)
  t.match(ambiguous.json(), { error: { code: 'invalid_json', message: /repeats a key/ } })
  t.equal(h.upstream.requests.length, 0)
  t.equal((await send(h, JSON.stringify(chatBody()))).statusCode, 200, 'the same harness still forwards good bodies')
})

t.test('upstreamPayload: a large body reaches undici as bytes it can let go of, once per attempt, with its length', async (t) => {
  const headers: Record<string, string> = {}
  const small = Buffer.from('{"model":"gpt-4o-mini"}')
  t.equal(upstreamPayload(small, headers), small, 'a small body goes as it is')
  t.equal(upstreamPayload(undefined, headers), undefined)
  t.equal(upstreamPayload('{"a":1}', headers), '{"a":1}', 'a short re-serialised body too')
  const mid = `{"a":"${'é'.repeat(20_000)}"}`
  const midOut = upstreamPayload(mid, headers)
  t.ok(Buffer.isBuffer(midOut) && midOut.equals(Buffer.from(mid)), 'a longer string under the size: its bytes')
  t.strictSame(headers, {}, 'no length set for those: undici sets it')

  const big = Buffer.alloc(WRITTEN_ONCE_BYTES, 0x61)
  const once = upstreamPayload(big, headers)
  t.ok(once instanceof WrittenOnce)
  t.equal(headers['content-length'], String(WRITTEN_ONCE_BYTES))
  const read = async (body: AsyncIterable<Buffer>) => {
    const out: Buffer[] = []
    for await (const chunk of body) out.push(chunk)
    return out
  }
  const first = await read(once as WrittenOnce)
  t.equal(first.length, 1)
  t.equal(first[0], big, 'the very bytes, not a copy')
  t.strictSame(await read(once as WrittenOnce), [], 'read once: nothing left to hold')
  const h2: Record<string, string> = {}
  const fromString = upstreamPayload(`"${'x'.repeat(WRITTEN_ONCE_BYTES)}"`, h2)
  t.ok(fromString instanceof WrittenOnce, 'a large re-serialised body too')
  t.equal(h2['content-length'], String(WRITTEN_ONCE_BYTES + 2))
})

t.test('a large spliced body stays in pieces: the prompt as a view of the client bytes, the small members between joined', async (t) => {
  const prompt = 'lorem ipsum '.repeat(Math.ceil(WRITTEN_ONCE_BYTES / 12))
  const text = `{"model":"gpt-4o-mini","messages":[{"role":"user","content":"${prompt}"}],"max_tokens":9000,"user":"u1"}`
  const raw = { bytes: Buffer.from(text), scan: scanOf(text) }
  const a = analyse(chat, JSON.parse(text))
  setField(a, 'max_tokens', 100)
  const spliced = upstreamBody(a, raw)
  t.notOk(Buffer.isBuffer(spliced) || typeof spliced === 'string', 'not copied into one buffer')
  const headers: Record<string, string> = {}
  const once = upstreamPayload(spliced, headers)
  t.ok(once instanceof WrittenOnce)
  const pieces: Buffer[] = []
  for await (const piece of once as WrittenOnce) pieces.push(piece)
  const sent = Buffer.concat(pieces)
  t.equal(headers['content-length'], String(sent.length), 'its length is declared')
  t.strictSame(JSON.parse(sent.toString()), { ...JSON.parse(text), max_tokens: 100 }, 'the same value as one spliced buffer would carry')
  t.equal(pieces.length, 3, '`{"model":…,`, the messages member, `,"user":…,"max_tokens":100}`')
  t.equal(pieces[1]?.buffer, raw.bytes.buffer, 'the large member is the client\'s own bytes, not a copy')
  const again: Buffer[] = []
  for await (const piece of upstreamPayload(spliced, {}) as WrittenOnce) again.push(piece)
  t.ok(Buffer.concat(again).equals(sent), 'a retry on the next key sends the same bytes again')

  const short = '{"model":"m","messages":[],"max_tokens":9}'
  const small = analyse(chat, JSON.parse(short))
  setField(small, 'max_tokens', 5)
  t.ok(Buffer.isBuffer(upstreamBody(small, { bytes: Buffer.from(short), scan: scanOf(short) })), 'a small spliced body is one buffer')
})
