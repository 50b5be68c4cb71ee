import OpenAI from 'openai'
import t from 'tap'
import { assertNoLeak, chatBody, proxyTest, type Harness } from '../../helper.js'

/*
 * What a refused client gets, in both reject modes, for every endpoint shape, streamed and not, read by
 * the official SDK (so the objects and streams are well formed, not just JSON), with nothing upstream.
 */

const MESSAGE = 'Sorry, this proxy does not forward that.'
const BLOCKED = 'tell me about the forbidden fruit'
const filter = { phrases: ['forbidden fruit'], message: MESSAGE }
const client = (h: Harness) => new OpenAI({ baseURL: `${h.url}/v1`, apiKey: h.proxyKey, maxRetries: 0 })

proxyTest(t, 'REJECT_MODE=completion: a fake answer in the shape of each endpoint, parsed by the SDK', { listen: true, proxy: { filter: { ...filter, mode: 'completion' } } }, async (h, t) => {
  const openai = client(h)
  const seen: unknown[] = []

  const chat = await openai.chat.completions.create({ model: 'gpt-4o-mini', messages: [{ role: 'user', content: BLOCKED }] })
  t.equal(chat.object, 'chat.completion')
  t.equal(chat.model, 'gpt-4o-mini')
  t.strictSame(chat.choices[0]?.message, { role: 'assistant', content: MESSAGE, refusal: null })
  t.equal(chat.choices[0]?.finish_reason, 'content_filter')

  let streamed = ''
  let usageChunks = 0
  for await (const chunk of await openai.chat.completions.create({ model: 'gpt-4o-mini', messages: [{ role: 'user', content: BLOCKED }], stream: true, stream_options: { include_usage: true } })) {
    streamed += chunk.choices[0]?.delta.content ?? ''
    if (chunk.usage) usageChunks++
    seen.push(chunk)
  }
  t.equal(streamed, MESSAGE)
  t.equal(usageChunks, 1, 'include_usage gets its usage chunk, as from OpenAI')
  const helper = await openai.chat.completions.stream({ model: 'gpt-4o-mini', messages: [{ role: 'user', content: BLOCKED }] }).finalChatCompletion()
  t.equal(helper.choices[0]?.message.content, MESSAGE, 'the SDK stream helper accumulates it')
  t.equal(helper.choices[0]?.finish_reason, 'content_filter')

  const legacy = await openai.completions.create({ model: 'gpt-3.5-turbo-instruct', prompt: BLOCKED })
  t.equal(legacy.object, 'text_completion')
  t.equal(legacy.choices[0]?.text, MESSAGE)
  let legacyText = ''
  for await (const chunk of await openai.completions.create({ model: 'gpt-3.5-turbo-instruct', prompt: BLOCKED, stream: true })) legacyText += chunk.choices[0]?.text ?? ''
  t.equal(legacyText, MESSAGE)
  const legacyChunks: unknown[] = []
  for await (const chunk of await openai.completions.create({ model: 'gpt-3.5-turbo-instruct', prompt: BLOCKED, stream: true, stream_options: { include_usage: true } })) legacyChunks.push(chunk)
  const last = legacyChunks.at(-1) as { object: string, choices: unknown[], usage: unknown }
  t.strictSame([last.object, last.choices, last.usage], ['text_completion', [], { prompt_tokens: 0, completion_tokens: 0, total_tokens: 0 }], 'legacy include_usage ends with a usage chunk too')
  t.equal(legacyChunks.filter((c) => (c as { usage?: unknown }).usage !== undefined).length, 1)

  const response = await openai.responses.create({ model: 'gpt-4o-mini', input: BLOCKED })
  t.equal(response.object, 'response')
  t.equal(response.status, 'completed')
  t.equal(response.output_text, MESSAGE)
  const events: string[] = []
  for await (const ev of await openai.responses.create({ model: 'gpt-4o-mini', input: BLOCKED, stream: true })) events.push(ev.type)
  t.strictSame(events, ['response.created', 'response.in_progress', 'response.output_item.added', 'response.content_part.added', 'response.output_text.delta', 'response.output_text.done', 'response.content_part.done', 'response.output_item.done', 'response.completed'])
  const final = await openai.responses.stream({ model: 'gpt-4o-mini', input: BLOCKED }).finalResponse()
  t.equal(final.output_text, MESSAGE, 'the SDK Responses stream helper accumulates it')

  t.equal(h.upstream.requests.length, 0, 'nothing went upstream')
  assertNoLeak(t, JSON.stringify([chat, seen, helper, legacy, response, final]), h.secrets, 'fake answers')
})

proxyTest(t, 'REJECT_MODE=completion: streams are real SSE with the usual headers', { proxy: { filter: { ...filter, mode: 'completion' } } }, async (h, t) => {
  const res = await h.app.inject({ method: 'POST', url: '/v1/chat/completions', headers: h.auth, payload: chatBody({ stream: true, messages: [{ role: 'user', content: BLOCKED }] }) })
  t.equal(res.statusCode, 200)
  t.match(res.headers['content-type'], /^text\/event-stream/)
  t.equal(res.headers['cache-control'], 'no-cache')
  t.ok(res.body.endsWith('data: [DONE]\n\n'))
  t.match(h.logs.join(''), /"reply":"completion"/)
})

proxyTest(t, 'REJECT_MODE=completion: endpoints without a text answer still get the error', { proxy: { filter: { ...filter, mode: 'completion' } } }, async (h, t) => {
  const res = await h.app.inject({ method: 'POST', url: '/v1/embeddings', headers: h.auth, payload: { model: 'text-embedding-3-small', input: BLOCKED } })
  t.equal(res.statusCode, 400)
  t.match(res.json(), { error: { code: 'content_filter', message: MESSAGE } })
})

proxyTest(t, 'REJECT_MODE=error (default): the SDK raises BadRequestError with code content_filter, streamed or not', { listen: true, proxy: { filter } }, async (h, t) => {
  const openai = client(h)
  const attempts: Array<[string, () => Promise<unknown>, string]> = [
    ['chat', () => openai.chat.completions.create({ model: 'gpt-4o-mini', messages: [{ role: 'user', content: BLOCKED }] }), 'messages[0].content'],
    ['chat stream', () => openai.chat.completions.create({ model: 'gpt-4o-mini', messages: [{ role: 'user', content: BLOCKED }], stream: true }), 'messages[0].content'],
    ['completions', () => openai.completions.create({ model: 'gpt-3.5-turbo-instruct', prompt: BLOCKED }), 'prompt'],
    ['completions stream', () => openai.completions.create({ model: 'gpt-3.5-turbo-instruct', prompt: BLOCKED, stream: true }), 'prompt'],
    ['responses', () => openai.responses.create({ model: 'gpt-4o-mini', input: BLOCKED }), 'input'],
    ['responses stream', () => openai.responses.create({ model: 'gpt-4o-mini', input: BLOCKED, stream: true }), 'input']
  ]
  for (const [what, attempt, param] of attempts) {
    const err = await attempt().catch((e: unknown) => e)
    t.type(err, OpenAI.BadRequestError, what)
    t.match(err, { status: 400, code: 'content_filter', type: 'invalid_request_error', param, error: { message: MESSAGE } }, what)
  }
  t.equal(h.upstream.requests.length, 0)
})
