import t from 'tap'
import { OutputGuard, checkWholeAnswer, outputRules, type OutputRules } from '../../../plugins/prompt-filter/output-guard.js'

/*
 * The guardrail's stage on its own, for the shapes of frames and answers the end-to-end tests
 * (test/plugins/prompt-filter/output-filter.test.ts) do not send: legacy function calls, frames without an index or a delta,
 * JSON that is not an object, a stream without a final blank line, the window's bound.
 */

const rules = outputRules({ phrases: ['purple elephant protocol'] }) as OutputRules
const hits: string[] = []
const run = (guard: OutputGuard, frames: string[]): string => frames.map((f) => guard.feed(Buffer.from(f))).join('') + (guard.ended ? '' : guard.finish())
const chat = (delta: unknown, extra: Record<string, unknown> = {}) => `data: ${JSON.stringify({ id: 'x', object: 'chat.completion.chunk', choices: [{ delta, ...extra }] })}\n\n`

t.test('no rules, no guard', async (t) => {
  t.equal(outputRules(undefined), null)
  t.equal(outputRules({}), null)
  t.equal(outputRules({ phrases: [], patterns: [] }), null)
  t.ok(outputRules({ patterns: ['x{3}'] }), 'patterns alone')
  t.equal(outputRules({ phrases: ['abc'], windowChars: 64 })?.windowChars, 64)
})

t.test('chat frames of every shape', async (t) => {
  const g = () => new OutputGuard('chat.completion', rules, (r) => hits.push(r.id))
  let guard = g()
  let out = run(guard, [chat({ function_call: { name: 'f', arguments: 'purple elephant' } }), chat({ function_call: { arguments: ' protocol' } })])
  t.ok(guard.ended, 'legacy function_call arguments')
  t.match(out, /"index":0,"delta":\{\},"logprobs":null,"finish_reason":"content_filter"/, 'a frame without an index is choice 0')

  guard = g()
  out = run(guard, [chat({ tool_calls: [{ function: { arguments: 'purple elephant' } }, { index: 1 }] }), chat({ tool_calls: [{ function: { arguments: ' protocol' } }] })])
  t.ok(guard.ended, 'a tool call without an index is call 0; one without a function is skipped')

  guard = g()
  const odd = ['data: 42\n\n', 'data: [1,2]\n\n', `data: ${JSON.stringify({ choices: [{ index: 0 }, { index: 1, delta: 'text' }, 7] })}\n\n`, 'data: {"choices":"no"}\n\n']
  t.equal(run(guard, odd), odd.join(''), 'JSON that is not a chunk passes as it is')
  t.notOk(guard.ended)

  guard = g()
  t.equal(run(guard, [chat({ content: 'purple elephant' }), 'data: {"choices":[{"index":0,"delta":{"content":" protocol"}}]}']), chat({ content: 'purple elephant' }) + `data: ${JSON.stringify({ id: undefined, object: undefined, created: undefined, model: undefined, choices: [{ index: 0, delta: {}, logprobs: null, finish_reason: 'content_filter' }] })}\n\ndata: [DONE]\n\n`, 'a last frame without its blank line is checked at the end')
  t.ok(guard.ended)
})

t.test('a frame whose data line is cut by a bare CR is read as the client reads it: two data lines', async (t) => {
  // SSE ends a line at CR, LF or CRLF, so the SDK reads `{...}` and `` here and parses `{...}\n`. Checked
  // the same way on the guardrail's split path (a chunk of two frames), not read as one line that fails to parse.
  const guard = new OutputGuard('chat.completion', rules, () => {})
  const cut = `data: ${JSON.stringify({ choices: [{ index: 0, delta: { content: 'the purple elephant protocol' } }] })}\rdata: \n\n`
  const out = run(guard, [cut + 'data: [DONE]\n\n'])
  t.ok(guard.ended, 'the phrase is caught')
  t.notMatch(out, /purple/, 'and never sent')
})

t.test('the window is bounded: a match longer than it across frames is not seen, within it is', async (t) => {
  const small = outputRules({ phrases: ['purple elephant protocol'], windowChars: 16 }) as OutputRules
  let guard = new OutputGuard('chat.completion', small, () => {})
  run(guard, [chat({ content: 'purple elephant ' }), chat({ content: 'protocol' })])
  t.ok(guard.ended, 'window 16 + the new delta holds the phrase')
  guard = new OutputGuard('chat.completion', small, () => {})
  run(guard, ['purple', ' ', 'elephant', ' ', 'and so on and so forth, ', 'protocol'].map((c) => chat({ content: c })))
  t.notOk(guard.ended, 'text older than the window is forgotten')
  guard = new OutputGuard('chat.completion', small, () => {})
  run(guard, 'purple elephant protocol'.split('').map((c) => chat({ content: c })))
  t.notOk(guard.ended, 'a 24-character phrase one letter at a time does not fit a 16-character window plus one letter')
})

t.test('Responses frames: deltas without a content index, frames without a type', async (t) => {
  const guard = new OutputGuard('response', rules, () => {})
  const ev = (data: Record<string, unknown>) => `data: ${JSON.stringify(data)}\n\n`
  const out = run(guard, [ev({ note: 'no type' }), ev({ type: 'response.function_call_arguments.delta', item_id: 'fc', delta: 'purple elephant' }), ev({ type: 'response.function_call_arguments.delta', item_id: 'fc', delta: ' protocol' })])
  t.ok(guard.ended)
  t.match(out, /"type":"response\.incomplete","sequence_number":1,"response":\{"status":"incomplete"/, 'no response announced: the end still has the shape')
})

t.test('whole answers of odd shapes', async (t) => {
  t.equal(await checkWholeAnswer('chat.completion', Buffer.from('[1]'), rules), null, 'not an object')
  t.equal(await checkWholeAnswer('response', Buffer.from('{"output":[{"type":"message","content":[{"type":"output_text","text":"fine"}]}]}'), rules), null, 'a clean Response')
  const legacy = await checkWholeAnswer('chat.completion', Buffer.from(JSON.stringify({ choices: [{ index: 0, message: { function_call: { arguments: 'purple elephant protocol' }, tool_calls: [{ type: 'x' }] } }, { index: 1 }] })), rules)
  t.equal(legacy?.rule.id, 'phrase:1', 'legacy function_call arguments; a tool call without a function and a choice without a message are skipped')
  const refusal = await checkWholeAnswer('response', Buffer.from(JSON.stringify({ output: [{ type: 'message', content: [{ type: 'refusal', refusal: 'purple elephant protocol' }] }, { type: 'custom_tool_call', input: 'x' }] })), rules)
  t.equal(refusal?.rule.id, 'phrase:1', 'a Responses refusal part')
})
