import { Readable } from 'node:stream'
import { text } from 'node:stream/consumers'
import t from 'tap'
import { REDACTED, SecretRedactor, filtersInRow, redactText, secretForms } from '../../../plugins/upstream/redact.js'
import { OutputGuard, outputRules, type OutputRules } from '../../../plugins/prompt-filter/output-guard.js'
import { UsageReader } from '../../../routes/proxy/usage-tap.js'
import { canaryKey } from '../../helper.js'

const through = (secrets: string[], chunks: string[]) => text(Readable.from(chunks.map((c) => Buffer.from(c))).pipe(new SecretRedactor(secrets)))

t.test('secrets split across every possible chunk boundary are still cut', async (t) => {
  const key = canaryKey()
  const doc = `before ${key} middle ${key.slice(3)} after`
  const expected = `before ${REDACTED} middle ${REDACTED} after`
  for (let cut = 0; cut <= doc.length; cut++) {
    t.equal(await through([key], [doc.slice(0, cut), doc.slice(cut)]), expected, `cut at ${cut}`)
  }
  t.equal(await through([key], doc.split('')), expected, 'one byte at a time')
})

t.test('a secret ending in its own first character, cut right after it, is still redacted', async (t) => {
  // Found in review: holding back before scrubbing let such a key through whole at a chunk boundary.
  for (const key of [`sk-proj-CANARY${'x'.repeat(20)}s`, `sk-proj-CANARY${'y'.repeat(20)}p`, `org-${'z'.repeat(20)}o`]) {
    const doc = `{"x":"${key}`
    t.equal(await through([key], [doc, '"}']), `{"x":"${REDACTED}"}`, key.slice(-3))
    t.equal(await through([key], [doc.slice(0, 3), doc.slice(3), '"}']), `{"x":"${REDACTED}"}`)
  }
})

t.test('redactText cuts the key without its sk- prefix too', async (t) => {
  const key = canaryKey()
  t.equal(redactText(`quoted ${key.slice(3)} here`, [key]), `quoted ${REDACTED} here`)
})

t.test('bytes that merely look like the start of a secret are released at the end', async (t) => {
  const key = canaryKey()
  t.equal(await through([key], ['data: x\n\n', 'tail sk-pro']), 'data: x\n\ntail sk-pro')
  t.equal(await through([key], ['sk-proj-CAN', 'ARY but not the key']), 'sk-proj-CANARY but not the key')
})

t.test('an SSE frame ending in a blank line is never held back', async (t) => {
  const key = canaryKey()
  const r = new SecretRedactor([key])
  const out: string[] = []
  r.on('data', (c: Buffer) => out.push(c.toString()))
  r.write(Buffer.from('data: {"x":1}\n\n'))
  await new Promise((resolve) => setImmediate(resolve))
  t.strictSame(out, ['data: {"x":1}\n\n'])
  r.end()
})

t.test('multi-byte text around a secret is untouched', async (t) => {
  const key = canaryKey()
  t.equal(await through([key], [`héllo ☃ ${key} 日本語`]), `héllo ☃ ${REDACTED} 日本語`)
})

t.test('secretForms covers the key without sk- and drops empties', async (t) => {
  const key = canaryKey()
  t.strictSame(secretForms([key, '', 'org-abc']), [key, key.slice(3), 'org-abc'])
})

t.test('redactText scrubs keys, masked keys and account ids by shape', async (t) => {
  const out = redactText('Incorrect API key provided: sk-proj-abcd************wxyz. org-AbCdEf123 proj_XyZ12345 sk-abc…wxyz risk-free task-force', [])
  t.equal(out, `Incorrect API key provided: sk-${REDACTED}. org-${REDACTED} proj_${REDACTED} sk-${REDACTED} risk-free task-force`)
})

t.test('with the usage reader before it (one stage): secrets cut across any split, the usage-only chunk dropped', async (t) => {
  const key = `sk-proj-${'k'.repeat(40)}`
  const frames = [
    `data: {"choices":[{"delta":{"content":"echo ${key} done"}}]}\n\n`,
    'data: {"choices":[],"usage":{"total_tokens":21}}\n\n',
    'data: [DONE]\n\n'
  ].join('')
  for (let cut = 1; cut < frames.length; cut += 5) {
    const seen: number[] = []
    const stage = new SecretRedactor([key], new UsageReader({ mode: 'sse', hideUsageChunk: true, onUsage: (n) => seen.push(n) }))
    const out = await text(Readable.from([frames.slice(0, cut), frames.slice(cut)].map((c) => Buffer.from(c))).pipe(stage))
    t.equal(out, `data: {"choices":[{"delta":{"content":"echo ${REDACTED} done"}}]}\n\ndata: [DONE]\n\n`, `cut at ${cut}`)
    t.strictSame(seen, [21])
  }
})

t.test('a filter that ends the body: what it held is scrubbed and released, later input is dropped, the end is clean', async (t) => {
  const key = canaryKey()
  let fed = 0
  // Ends the body on its second chunk, passing that chunk on (a held-back secret prefix included).
  const ender = { ended: false, feed: (c: Buffer) => { if (++fed === 2) ender.ended = true; return c }, finish: () => 'never' }
  const r = new SecretRedactor([key], ender)
  const out = text(r)
  r.write(Buffer.from('one '))
  r.write(Buffer.from(`two ${key} sk-pro`))
  r.write(Buffer.from('j-three'))
  r.end()
  t.equal(await out, `one two ${REDACTED} sk-pro`, 'the tail that looked like a secret is released once the body is over; nothing after the end')
  t.equal(fed, 2, 'nothing is fed after the end')
})

t.test('filters in a row: the second sees what the first passes, including what it releases at the end', async (t) => {
  const rules = outputRules({ phrases: ['purple elephant protocol'] }) as OutputRules
  const seen: string[] = []
  const usage = new UsageReader({ mode: 'sse', hideUsageChunk: true, onUsage: (n) => seen.push(`usage ${n}`) })
  const both = filtersInRow(new OutputGuard('chat.completion', rules, () => {}), usage)
  const frame = 'data: {"choices":[{"index":0,"delta":{"content":"hi"}}]}\n\n'
  t.equal(both.feed(Buffer.from(frame.slice(0, 20))), '', 'half a frame: nothing yet')
  t.equal(both.feed(Buffer.from(frame.slice(20))).toString(), frame, 'the rest: the whole frame')
  t.equal(both.finish(), '', 'nothing held')
  const last = 'data: {"choices":[],"usage":{"total_tokens":7}}'
  const again = filtersInRow(new OutputGuard('chat.completion', rules, () => {}), new UsageReader({ mode: 'sse', hideUsageChunk: true, onUsage: (n) => seen.push(`usage ${n}`) }))
  t.equal(again.feed(Buffer.from(last)), '')
  t.equal(again.finish(), '', 'a usage chunk without its blank line is read at the end, and hidden')
  t.strictSame(seen, ['usage 7'])
  t.notOk(both.ended)
})
