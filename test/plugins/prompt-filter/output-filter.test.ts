import t from 'tap'
import Fastify from 'fastify'
import { oaiProxy } from '../../../index.js'
import { assertNoLeak, chatBody, proxyTest, seenByClient } from '../../helper.js'
import type { Harness } from '../../helper.js'

/*
 * Threat F08: the output guardrail. Generated text is checked as it streams, with a window across frames;
 * a match ends the stream the way OpenAI ends a filtered one and aborts upstream; whole answers are checked
 * whole. Nothing is buffered beyond the window, and every other property of the stream holds.
 */

const PHRASE = 'purple elephant protocol'
const outputFilter = { phrases: [PHRASE], patterns: ['launch\\s+codes?\\s*:\\s*\\d{4}'] }

const chunk = (delta: Record<string, unknown>, index = 0, extra: Record<string, unknown> = {}) =>
  `data: ${JSON.stringify({ id: 'chatcmpl-1', object: 'chat.completion.chunk', created: 1700000000, model: 'gpt-4o-mini', choices: [{ index, delta, finish_reason: null }], ...extra })}\n\n`
const chatFrames = (...texts: string[]) => [chunk({ role: 'assistant', content: '' }), ...texts.map((c) => chunk({ content: c })), chunk({}, 0), 'data: [DONE]\n\n']

async function post (h: Harness, path: string, body: unknown) {
  const res = await h.app.inject({ method: 'POST', url: path, headers: { ...h.auth, 'content-type': 'application/json' }, payload: JSON.stringify(body) })
  assertNoLeak(t, seenByClient(res), h.secrets, `${path} response`)
  return res
}

/** The data payloads of an SSE body, parsed where they are JSON. */
const dataOf = (body: string): unknown[] => body.split('\n\n').filter((f) => f.includes('data: ')).map((f) => {
  const d = f.slice(f.indexOf('data: ') + 6)
  return d === '[DONE]' ? d : JSON.parse(d)
})

proxyTest(t, 'chat stream: a phrase cut across frames ends the stream with content_filter, the completing frame never sent, upstream aborted', { proxy: { outputFilter } }, async (h, t) => {
  h.upstream.script(() => ({ kind: 'sse', frames: [...chatFrames('Sure. The purple ', 'eleph', 'ant protocol is ', 'this.'), ...Array.from({ length: 50 }, () => chunk({ content: ' more' }))], delayMs: 5 }))
  const res = await post(h, '/v1/chat/completions', chatBody({ stream: true }))
  t.equal(res.statusCode, 200)
  t.match(res.headers['content-type'], /^text\/event-stream/)
  const data = dataOf(res.body)
  t.strictSame(data.slice(1, 3).map((d) => (d as { choices: Array<{ delta: { content: string } }> }).choices[0]?.delta.content), ['Sure. The purple ', 'eleph'], 'the frames before the match went out')
  t.notMatch(res.body, /ant protocol|this\.|more/, 'the completing frame and everything after it did not')
  t.strictSame(data.at(-2), { id: 'chatcmpl-1', object: 'chat.completion.chunk', created: 1700000000, model: 'gpt-4o-mini', choices: [{ index: 0, delta: {}, logprobs: null, finish_reason: 'content_filter' }] })
  t.equal(data.at(-1), '[DONE]')
  await h.upstream.waitFor((r) => r.abortedAt !== undefined, 3000)
  t.pass('upstream was aborted')
  t.ok(h.logs.some((l) => l.includes('output filtered') && l.includes('"rule":"phrase:1"')), 'logged with the rule id, never the text')
  t.notOk(h.logs.some((l) => l.includes('purple')), 'the generated text is not logged')
})

proxyTest(t, 'chat stream: one character a frame, tool-call arguments, a refusal, several choices', { proxy: { outputFilter } }, async (h, t) => {
  h.upstream.script(() => ({ kind: 'sse', frames: chatFrames(...'Say: Purple  Elephant-Protocol!'.split('')) }))
  let data = dataOf((await post(h, '/v1/chat/completions', chatBody({ stream: true }))).body)
  t.equal((data.at(-2) as { choices: Array<{ finish_reason: string }> }).choices[0]?.finish_reason, 'content_filter', 'letters one by one, other case and punctuation')

  const tool = (args: string) => chunk({ tool_calls: [{ index: 0, function: { arguments: args } }] })
  h.upstream.script(() => ({ kind: 'sse', frames: [chunk({ role: 'assistant', tool_calls: [{ index: 0, id: 'call_1', type: 'function', function: { name: 'f', arguments: '' } }] }), tool('{"code":"launch code'), tool('s: 12'), tool('34"}'), 'data: [DONE]\n\n'] }))
  data = dataOf((await post(h, '/v1/chat/completions', chatBody({ stream: true }))).body)
  t.equal((data.at(-2) as { choices: Array<{ finish_reason: string }> }).choices[0]?.finish_reason, 'content_filter', 'a pattern across tool-call argument deltas')

  h.upstream.script(() => ({ kind: 'sse', frames: [chunk({ refusal: 'I will not explain the purple elephant' }), chunk({ refusal: ' protocol.' }), 'data: [DONE]\n\n'] }))
  data = dataOf((await post(h, '/v1/chat/completions', chatBody({ stream: true }))).body)
  t.equal((data.at(-2) as { choices: Array<{ finish_reason: string }> }).choices[0]?.finish_reason, 'content_filter', 'refusal deltas are output too')

  // Two choices interleaved: the window is per choice, so halves in different choices do not combine, and
  // the end names every choice seen.
  h.upstream.script(() => ({ kind: 'sse', frames: [chunk({ content: 'purple elephant' }, 0), chunk({ content: ' protocol' }, 1), chunk({ content: 'fine' }, 1), chunk({ content: ' protocol' }, 0), 'data: [DONE]\n\n'] }))
  const body = (await post(h, '/v1/chat/completions', chatBody({ stream: true, n: 2 }))).body
  data = dataOf(body)
  t.match(body, /fine/, 'halves in different choices are not a match')
  t.strictSame((data.at(-2) as { choices: unknown[] }).choices, [{ index: 0, delta: {}, logprobs: null, finish_reason: 'content_filter' }, { index: 1, delta: {}, logprobs: null, finish_reason: 'content_filter' }])
})

proxyTest(t, 'Responses stream: the match becomes response.incomplete with reason content_filter, next in sequence', { proxy: { outputFilter } }, async (h, t) => {
  const ev = (type: string, data: Record<string, unknown>) => `event: ${type}\ndata: ${JSON.stringify({ type, ...data })}\n\n`
  const response = { id: 'resp_1', object: 'response', created_at: 1700000000, model: 'gpt-4o-mini', status: 'in_progress', output: [] }
  h.upstream.script(() => ({
    kind: 'sse',
    frames: [
      ev('response.created', { sequence_number: 0, response }),
      ev('response.output_text.delta', { sequence_number: 1, item_id: 'msg_1', output_index: 0, content_index: 0, delta: 'The Purple Elephant' }),
      ev('response.output_text.delta', { sequence_number: 2, item_id: 'msg_1', output_index: 0, content_index: 0, delta: ' Protocol says' }),
      ev('response.completed', { sequence_number: 3, response: { ...response, status: 'completed' } })
    ]
  }))
  const res = await post(h, '/v1/responses', { model: 'gpt-4o-mini', input: 'hi', stream: true })
  t.notMatch(res.body, /Protocol says|response\.completed/)
  t.match(res.body, /event: response\.incomplete\ndata: /)
  t.strictSame(dataOf(res.body).at(-1), { type: 'response.incomplete', sequence_number: 2, response: { ...response, status: 'incomplete', incomplete_details: { reason: 'content_filter' }, output: [] } })
  t.notMatch(res.body, /\[DONE\]/, 'no [DONE] invented for Responses')
})

proxyTest(t, 'completions stream, and clean streams pass byte for byte (CRLF framing, comments, [DONE])', { proxy: { outputFilter } }, async (h, t) => {
  const c = (text: string) => `data: ${JSON.stringify({ id: 'cmpl-1', object: 'text_completion', created: 1, model: 'gpt-3.5-turbo-instruct', choices: [{ index: 0, text, finish_reason: null }] })}\n\n`
  h.upstream.script(() => ({ kind: 'sse', frames: [c('a purple elephant'), c(' protocol'), 'data: [DONE]\n\n'] }))
  const data = dataOf((await post(h, '/v1/completions', { model: 'gpt-3.5-turbo-instruct', prompt: 'x', stream: true })).body)
  t.strictSame((data.at(-2) as { choices: unknown[] }).choices, [{ index: 0, text: '', logprobs: null, finish_reason: 'content_filter' }])

  const frames = [': keepalive\r\n\r\n', chunk({ content: 'purple elephants are nice' }).replace(/\n\n$/, '\r\n\r\n'), 'event: x\ndata: not json\n\n', chunk({ content: ' protocols too' }), 'data: [DONE]\n\n']
  h.upstream.script(() => ({ kind: 'sse', frames }))
  const res = await post(h, '/v1/chat/completions', chatBody({ stream: true }))
  t.equal(res.body, frames.join(''), 'a stream without a match is untouched')
})

proxyTest(t, 'whole answers: a matching choice becomes content_filter, the others and usage stay; a clean answer is byte-identical', { proxy: { outputFilter } }, async (h, t) => {
  const answer = {
    id: 'chatcmpl-2',
    object: 'chat.completion',
    created: 1,
    model: 'gpt-4o-mini',
    choices: [
      { index: 0, message: { role: 'assistant', content: 'fine text', refusal: null }, logprobs: null, finish_reason: 'stop' },
      { index: 1, message: { role: 'assistant', content: 'the \u0440urple el\u0435\u200bphant protocol', refusal: null }, logprobs: null, finish_reason: 'stop' },
      { index: 2, message: { role: 'assistant', content: null, tool_calls: [{ id: 'c', type: 'function', function: { name: 'f', arguments: '{"x":"launch codes: 0000"}' } }] }, logprobs: null, finish_reason: 'tool_calls' }
    ],
    usage: { prompt_tokens: 5, completion_tokens: 7, total_tokens: 12 }
  }
  h.upstream.script(() => ({ kind: 'json', body: answer }))
  const res = await post(h, '/v1/chat/completions', chatBody({ n: 3 }))
  const got = res.json() as typeof answer
  t.strictSame(got.choices[0], answer.choices[0], 'a clean choice is untouched')
  for (const i of [1, 2]) t.strictSame(got.choices[i], { index: i, message: { role: 'assistant', content: null, refusal: null }, logprobs: null, finish_reason: 'content_filter' }, `choice ${i} (a disguised phrase; tool arguments)`)
  t.strictSame(got.usage, answer.usage)

  const raw = '{"id":"chatcmpl-3","object":"chat.completion","seed":12345678901234567890,"choices":[{"index":0,"message":{"role":"assistant","content":"ok"},"finish_reason":"stop"}]}'
  h.upstream.script(() => ({ kind: 'raw', headers: { 'content-type': 'application/json' }, body: raw }))
  t.equal((await post(h, '/v1/chat/completions', chatBody())).body, raw, 'byte-identical, big numbers included')

  h.upstream.script(() => ({ kind: 'json', body: { id: 'cmpl', object: 'text_completion', choices: [{ index: 0, text: 'purple elephant protocol', finish_reason: 'stop' }] } }))
  t.strictSame((await post(h, '/v1/completions', { model: 'gpt-3.5-turbo-instruct', prompt: 'x' })).json(), { id: 'cmpl', object: 'text_completion', choices: [{ index: 0, text: '', finish_reason: 'content_filter' }] })

  const resp = { id: 'resp_2', object: 'response', status: 'completed', output: [{ type: 'message', id: 'm', role: 'assistant', content: [{ type: 'output_text', text: 'PURPLE ELEPHANT PROTOCOL', annotations: [] }] }], usage: { input_tokens: 1, output_tokens: 2, total_tokens: 3 } }
  h.upstream.script(() => ({ kind: 'json', body: resp }))
  t.strictSame((await post(h, '/v1/responses', { model: 'gpt-4o-mini', input: 'x' })).json(), { ...resp, status: 'incomplete', output: [], incomplete_details: { reason: 'content_filter' } })

  h.upstream.script(() => ({ kind: 'json', body: { ...resp, output: [{ type: 'function_call', id: 'f', call_id: 'c', name: 'f', arguments: '{"a":"launch code: 9999"}' }] } }))
  t.equal((await post(h, '/v1/responses', { model: 'gpt-4o-mini', input: 'x' })).json().status, 'incomplete', 'function-call arguments')

  h.upstream.script(() => ({ kind: 'raw', headers: { 'content-type': 'application/json' }, body: 'not json' }))
  t.equal((await post(h, '/v1/chat/completions', chatBody())).body, 'not json', 'a body that is not an answer passes as it is')
})

proxyTest(t, 'answers the guardrail cannot check are refused, not passed unchecked: too large, or neither JSON nor SSE', { proxy: { outputFilter } }, async (h, t) => {
  h.upstream.script(() => ({ kind: 'raw', headers: { 'content-type': 'application/json' }, body: `{"choices":[],"pad":"${'x'.repeat(17 * 1024 * 1024)}"}` }))
  let res = await post(h, '/v1/chat/completions', chatBody())
  t.equal(res.statusCode, 502)
  t.equal(res.json().error.code, 'upstream_bad_response')
  h.upstream.script(() => ({ kind: 'raw', headers: { 'content-type': 'text/plain' }, body: 'purple elephant protocol' }))
  res = await post(h, '/v1/chat/completions', chatBody())
  t.equal(res.statusCode, 502)
  t.notMatch(res.body, /purple/)
  // Endpoints that generate no text are not guarded.
  h.upstream.script(() => ({ kind: 'json', body: { object: 'list', data: [{ object: 'embedding', index: 0, embedding: [0.1] }], note: 'purple elephant protocol' } }))
  t.equal((await post(h, '/v1/embeddings', { model: 'text-embedding-3-small', input: 'x' })).statusCode, 200)
})

proxyTest(t, 'with a token budget the usage chunk the proxy asked for is still hidden behind the guardrail', { proxy: { outputFilter, rateLimit: { tokensPerMinute: 1_000_000 } } }, async (h, t) => {
  const res = await post(h, '/v1/chat/completions', chatBody({ stream: true, messages: [{ role: 'user', content: 'a b c' }] }))
  const body = res.body
  t.match(body, /data: \[DONE\]\n\n$/)
  t.notMatch(body, /"usage"/, 'the usage chunk the client did not ask for is hidden')
  const sent = h.upstream.requests.at(-1)?.json as { stream_options?: { include_usage?: boolean } }
  t.equal(sent.stream_options?.include_usage, true, 'the proxy asked for it')
})

t.test('a rule that cannot be compiled stops start-up naming it', async (t) => {
  const app = Fastify()
  t.teardown(() => app.close())
  await t.rejects(async () => { await app.register(oaiProxy, { openaiKeys: ['sk-test-0000000000000000000000'], outputFilter: { patterns: ['(a)\\1'] } }) }, /^oai-proxy: invalid option \/outputFilter\/patterns\/0: is not a pattern/)
})

proxyTest(t, 'without outputFilter the text passes untouched', {}, async (h, t) => {
  const frames = chatFrames('purple elephant ', 'protocol')
  h.upstream.script(() => ({ kind: 'sse', frames }))
  t.equal((await post(h, '/v1/chat/completions', chatBody({ stream: true }))).body, frames.join(''))
})
