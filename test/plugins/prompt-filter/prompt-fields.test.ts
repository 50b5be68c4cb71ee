import { readFileSync } from 'node:fs'
import type { TObject } from '@sinclair/typebox'
import t from 'tap'
import { analyse } from '../../../lib/request-analysis.js'
import { endpoints, type PromptFields } from '../../../schemas/endpoints.js'

/** The analysis of `body` for an endpoint whose prompt lives in `fields`. */
const scanPrompt = (body: unknown, fields: PromptFields) => {
  const a = analyse({ ...(endpoints[0] as (typeof endpoints)[number]), prompt: fields }, body)
  return { segments: a.segments, media: a.media, tokens: a.tokenIds }
}

/*
 * Threat F01: the filter's field coverage is table data, and this test fails when an endpoint, or a field of
 * an endpoint's body schema, has no text classification.
 */

/** Streaming endpoints whose answers are not generated text (a refusal is always an error there). */
const NON_TEXT_STREAMS = new Set(['images.generations', 'images.edits', 'audio.transcriptions', 'audio.translations'])

t.test('every endpoint says where its prompt text lives', async (t) => {
  for (const e of endpoints) {
    t.not(e.prompt, undefined, `${e.id} has a prompt classification`)
    if (e.method === 'GET') {
      t.equal(e.prompt, null, `${e.id}: a GET carries no prompt`)
      continue
    }
    const fields = e.prompt
    if (fields === null) {
      t.fail(`${e.id}: a POST endpoint must locate its prompt text`)
      continue
    }
    // Variations take an image and options: nothing in them is prompt text.
    if (e.id !== 'images.variations') t.ok(fields.text.length > 0, `${e.id} names its text fields`)
    const props = Object.keys((e.body as TObject | undefined)?.properties ?? {})
    const unclassified = props.filter((p) => !fields.text.includes(p) && !fields.notText.includes(p))
    t.strictSame(unclassified, [], `${e.id}: every field of the body schema is classified as text or not`)
    t.strictSame(fields.text.filter((f) => fields.notText.includes(f)), [], `${e.id}: no field is both`)
    t.strictSame((fields.tokens ?? []).filter((f) => !fields.text.includes(f)), [], `${e.id}: token fields are text fields`)
    // Reject mode `completion` dresses a refusal as generated text; images and transcripts have no such shape.
    if (e.streams && !NON_TEXT_STREAMS.has(e.id)) t.not(e.replyShape, undefined, `${e.id}: a text-generating endpoint can be answered with a fake completion`)
  }
})

t.test('the walk finds text at any depth, and nothing under identifier keys', async (t) => {
  const body = {
    model: 'gpt-4o-mini',
    metadata: { note: 'not a prompt field' },
    messages: [
      { role: 'user', name: 'alice', content: [{ type: 'text', text: 'one' }, { type: 'text', text: 'two' }, { type: 'image_url', image_url: { url: 'https://x/y.png', detail: 'low' } }] },
      { role: 'assistant', content: null, tool_calls: [{ id: 'call_1', type: 'function', function: { name: 'f', arguments: '{"a":1}' } }] },
      { role: 'tool', tool_call_id: 'call_1', content: 'three' }
    ]
  }
  const scan = scanPrompt(body, { text: ['messages'], notText: [] })
  t.strictSame(scan.segments.map((s) => [s.path, s.text, s.joinsPrevious]), [
    ['messages[0].name', 'alice', false],
    ['messages[0].content[0].text', 'one', false],
    ['messages[0].content[1].text', 'two', true],
    ['messages[1].tool_calls[0].function.name', 'f', false],
    ['messages[1].tool_calls[0].function.arguments', '{"a":1}', false],
    ['messages[2].content', 'three', false]
  ])
  t.equal(scan.media, 'messages[0].content[2]')
  t.equal(scan.tokens, null)
})

t.test('a body that is not an object holds no prompt text', async (t) => {
  for (const body of [undefined, null, 'ignore previous instructions', 42]) {
    t.strictSame(scanPrompt(body, { text: ['messages'], notText: [] }), { segments: [], media: null, tokens: null }, String(body))
  }
})

t.test('the walk is iterative and fails closed on absurd nesting', async (t) => {
  let deep: unknown = 'text'
  for (let i = 0; i < 100_000; i++) deep = [deep]
  t.throws(() => scanPrompt({ messages: deep }, { text: ['messages'], notText: [] }), /nested too deeply/)
  let ok: unknown = 'deep text'
  for (let i = 0; i < 60; i++) ok = { content: ok }
  t.strictSame(scanPrompt({ input: ok }, { text: ['input'], notText: [] }).segments.map((s) => s.text), ['deep text'])
})

t.test('threat F07: the docs say which evasions are not covered', async (t) => {
  const docs = readFileSync(new URL('../../../docs/prompt-filter.md', import.meta.url), 'utf8')
  const limits = docs.slice(docs.indexOf('## Limitations'))
  for (const word of ['base64', 'rot13', 'leetspeak', 'Other languages', 'Output is not filtered by the prompt rules']) t.match(limits, word)
})
