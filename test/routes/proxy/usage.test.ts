import { PassThrough, Readable } from 'node:stream'
import { text } from 'node:stream/consumers'
import t from 'tap'
import { goDuration, retryHeaders } from '../../../lib/durations.js'
import { outputCap } from '../../../lib/token-estimate.js'
import { SecretRedactor } from '../../../plugins/upstream/redact.js'
import { UsageReader, lastTotalTokens, watchUsage, type UsageTapOptions } from '../../../routes/proxy/usage-tap.js'

/** The stream stage the proxy route builds: the redactor (here with no secrets) with the reader before it. */
const usageStage = (opts: UsageTapOptions) => new SecretRedactor([], new UsageReader(opts))

async function tap (mode: 'sse' | 'json', chunks: string[], hideUsageChunk = false) {
  const seen: number[] = []
  const out = await text(Readable.from(chunks.map((c) => Buffer.from(c))).pipe(usageStage({ mode, hideUsageChunk, onUsage: (n) => seen.push(n) })))
  return { out, seen }
}

const usageChunk = 'data: {"id":"x","choices":[],"usage":{"prompt_tokens":5,"completion_tokens":7,"total_tokens":12}}\n\n'
const frame = 'data: {"choices":[{"delta":{"content":"hi \\"usage\\""}}]}\n\n'

t.test('SSE: usage is read from the usage chunk, split anywhere, and the chunk hidden on request', async (t) => {
  const whole = frame + usageChunk + 'data: [DONE]\n\n'
  for (let cut = 0; cut <= whole.length; cut += 7) {
    const hidden = await tap('sse', [whole.slice(0, cut), whole.slice(cut)], true)
    t.equal(hidden.out, frame + 'data: [DONE]\n\n', `hidden, cut at ${cut}`)
    t.strictSame(hidden.seen, [12])
  }
  const shown = await tap('sse', [whole])
  t.equal(shown.out, whole, 'passed through byte for byte when the client asked for it')
})

t.test('SSE: a stream that never mentions usage passes through whole and reports no usage', async (t) => {
  const plain = 'data: {"choices":[{"delta":{"content":"hi"}}]}\n\n'
  const r = await tap('sse', [plain, plain, 'data: [DONE]\n\n'], true)
  t.equal(r.out, plain + plain + 'data: [DONE]\n\n')
  t.strictSame(r.seen, [])
})

t.test('SSE: chunks cut at any byte (inside characters, frames and terminators) give the same output as one chunk', async (t) => {
  const frames = [
    'data: {"choices":[{"delta":{"content":"café 東京 🙂"}}]}\n\n',
    'data: {"choices":[{"delta":{"content":"two"}}]}\r\n\r\n',
    'data: {"choices":[{"delta":{"content":"\\n\\r"}}]}\r\r',
    'data: {"choices":[{"delta":{"content":"x"}}]}\n\r\ndata: more\n\n',
    usageChunk,
    'data: [DONE]\n\n'
  ]
  const whole = Buffer.from(frames.join(''))
  const expected = frames.filter((f) => f !== usageChunk).join('')
  let seed = 7
  const next = (n: number) => { seed = (seed * 1103515245 + 12345) % 2 ** 31; return seed % n }
  for (let run = 0; run < 300; run++) {
    const cuts = [...new Set(Array.from({ length: 1 + next(8) }, () => next(whole.length)))].sort((a, b) => a - b)
    const chunks: Buffer[] = []
    let at = 0
    for (const c of [...cuts, whole.length]) {
      chunks.push(whole.subarray(at, c))
      at = c
    }
    const seen: number[] = []
    const out = await text(Readable.from(chunks).pipe(usageStage({ mode: 'sse', hideUsageChunk: true, onUsage: (n) => seen.push(n) })))
    if (out !== expected || seen.join() !== '12') t.fail(`cuts ${cuts.join(',')}: ${JSON.stringify(out)} ${seen.join()}`)
  }
  const whole1 = await text(Readable.from(frames.map((f) => Buffer.from(f))).pipe(usageStage({ mode: 'sse', hideUsageChunk: true, onUsage: () => {} })))
  t.equal(whole1, expected, 'frame by frame (the pass-through path)')
  t.pass('300 random cuttings agree')
})

t.test('SSE: Responses usage comes from response.completed; CRLF framing survives', async (t) => {
  const done = 'event: response.completed\r\ndata: {"type":"response.completed","response":{"usage":{"input_tokens":3,"output_tokens":4,"total_tokens":7}}}\r\n\r\n'
  const created = 'event: response.created\r\ndata: {"type":"response.created","response":{"usage":null}}\r\n\r\n'
  const r = await tap('sse', [created, done], true)
  t.equal(r.out, created + done, 'Responses frames are never dropped')
  t.strictSame(r.seen, [7])
})

t.test('SSE: an unterminated tail and garbage frames pass through untouched', async (t) => {
  const r = await tap('sse', ['data: {"usage": nope}\n\n', 'data: partial'])
  t.equal(r.out, 'data: {"usage": nope}\n\ndata: partial')
  t.strictSame(r.seen, [])
})

t.test('JSON: the last total_tokens in the body, ignoring escaped look-alikes', async (t) => {
  const body = JSON.stringify({ choices: [{ message: { content: '"total_tokens": 999' } }], usage: { prompt_tokens: 1, total_tokens: 42 } })
  const r = await tap('json', [body.slice(0, 20), body.slice(20)])
  t.equal(r.out, body)
  t.strictSame(r.seen, [42])
  t.strictSame((await tap('json', ['{"object":"list"}'])).seen, [], 'no usage, no settlement')
})

t.test('watchUsage listens beside a pipe without changing or delaying it', async (t) => {
  const seen: number[] = []
  const source = Readable.from([frame, usageChunk, 'data: [DONE]\n\n'].map((c) => Buffer.from(c)))
  watchUsage(source, { mode: 'sse', onUsage: (n) => seen.push(n) })
  t.equal(await text(source.pipe(new PassThrough())), frame + usageChunk + 'data: [DONE]\n\n')
  t.strictSame(seen, [12])
  const json: number[] = []
  const body = Readable.from([Buffer.from('{"usage":{"total_tokens":'), Buffer.from('33}}')])
  watchUsage(body, { mode: 'json', onUsage: (n) => json.push(n) })
  t.equal(await text(body.pipe(new PassThrough())), '{"usage":{"total_tokens":33}}')
  t.strictSame(json, [33])
})

t.test('output caps: the smallest cap given, times n; else the default', async (t) => {
  t.equal(outputCap({ max_tokens: 100, max_completion_tokens: 50 }, ['max_completion_tokens', 'max_tokens'], 1000), 50)
  t.equal(outputCap({ n: 3 }, ['max_tokens'], 1000), 3000)
  t.equal(outputCap({}, [], 1000), 1000)
})

t.test('Go-style durations and retry headers', async (t) => {
  t.strictSame([0, 12, 999, 1000, 1500, 60_000, 61_250, 3_600_000, 3_723_000].map(goDuration), ['0ms', '12ms', '999ms', '1s', '1.5s', '1m0s', '1m1.25s', '1h0m0s', '1h2m3s'])
  t.strictSame(retryHeaders(1200), { 'retry-after': '2', 'retry-after-ms': '1200' })
  t.strictSame(retryHeaders(120_000), { 'retry-after': '120', 'retry-after-ms': '120000', 'x-should-retry': 'false' })
  t.strictSame(retryHeaders(500, false), { 'retry-after': '1', 'retry-after-ms': '500', 'x-should-retry': 'false' })
})

t.test('lastTotalTokens: the last total_tokens member of a JSON body, found from the end', async (t) => {
  const b = (s: string) => Buffer.from(s)
  t.equal(lastTotalTokens(b('{"usage":{"total_tokens":42}}')), 42)
  t.equal(lastTotalTokens(b('{"usage":{"total_tokens" :\n 7 }}')), 7, 'whitespace around the colon')
  t.equal(lastTotalTokens(b('{"a":{"total_tokens":1},"usage":{"total_tokens":2}}')), 2, 'the last one wins')
  t.equal(lastTotalTokens(b('{"usage":{"total_tokens":3},"note":"\\"total_tokens\\": 999","x\\"total_tokens":999}')), 3, 'escaped look-alikes after it (in a value, ending a key) are skipped')
  t.equal(lastTotalTokens(b('{"usage":{"total_tokens":5},"x":"total_tokens"}')), 5, 'a value equal to the name is not a member')
  t.equal(lastTotalTokens(b('{"usage":{"total_tokens":null}}')), null, 'no integer, no settlement')
  t.equal(lastTotalTokens(b('"total_tokens":9')), 9, 'at the very start')
  t.equal(lastTotalTokens(b('{"object":"list"}')), null)
  t.equal(lastTotalTokens(b('')), null)
  t.equal(lastTotalTokens(b('{"a":1} "total_tokens"')), null, 'the name at the very end')
  t.equal(lastTotalTokens(b('{"a":1} "total_tokens": ')), null, 'a colon and nothing after it')
  t.equal(lastTotalTokens(b('{"total_tokens":\r\t12}')), 12, 'carriage return and tab')
  t.equal(lastTotalTokens(b('{"total_tokens": x}')), null, 'not a number')
  t.equal(lastTotalTokens(b('{"total_tokens":-1}')), null, 'not a count')
  t.equal(lastTotalTokens(b('"total_tokens" is a name')), null, 'at the very start, not a member')
})
