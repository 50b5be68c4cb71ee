/*
 * Default answers of the fake upstream, shaped like OpenAI's (chat completions, legacy completions,
 * Responses, embeddings, moderations, models). Stream frames are returned as raw SSE strings.
 */

export const FAKE_MODELS = ['gpt-4o-mini', 'gpt-4o', 'gpt-4.1-nano', 'text-embedding-3-small', 'omni-moderation-latest', 'gpt-3.5-turbo-instruct']

type Json = Record<string, unknown>
const created = () => Math.floor(Date.now() / 1000)
const sse = (data: unknown, event?: string): string => `${event === undefined ? '' : `event: ${event}\n`}data: ${JSON.stringify(data)}\n\n`

/** The text the fake model "generates": an echo of the last user text, so tests can see what arrived. */
export function replyText (body: Json): string {
  let last = ''
  const messages = Array.isArray(body.messages) ? body.messages as Json[] : []
  for (const m of messages) {
    if (m.role !== 'user') continue
    if (typeof m.content === 'string') last = m.content
    else if (Array.isArray(m.content)) last = (m.content as Json[]).map((p) => (typeof p.text === 'string' ? p.text : '')).join(' ')
  }
  if (typeof body.input === 'string') last = body.input
  if (typeof body.prompt === 'string') last = body.prompt
  return `Hello from the fake upstream! You said: ${last.slice(0, 200)}`
}

const words = (text: string): string[] => [...text.matchAll(/\S+\s*/g)].map((m) => m[0])
const usage = (text: string) => ({ prompt_tokens: 9, completion_tokens: words(text).length, total_tokens: 9 + words(text).length })

export function chatCompletion (body: Json): Json {
  const text = replyText(body)
  return {
    id: 'chatcmpl-fake',
    object: 'chat.completion',
    created: created(),
    model: body.model,
    choices: [{ index: 0, message: { role: 'assistant', content: text, refusal: null }, logprobs: null, finish_reason: 'stop' }],
    usage: usage(text)
  }
}

export function chatCompletionFrames (body: Json): string[] {
  const text = replyText(body)
  const base = { id: 'chatcmpl-fake', object: 'chat.completion.chunk', created: created(), model: body.model }
  const includeUsage = (body.stream_options as Json | undefined)?.include_usage === true
  const frames = [sse({ ...base, choices: [{ index: 0, delta: { role: 'assistant', content: '' }, finish_reason: null }] })]
  for (const w of words(text)) frames.push(sse({ ...base, choices: [{ index: 0, delta: { content: w }, finish_reason: null }] }))
  frames.push(sse({ ...base, choices: [{ index: 0, delta: {}, finish_reason: 'stop' }] }))
  if (includeUsage) frames.push(sse({ ...base, choices: [], usage: usage(text) }))
  frames.push('data: [DONE]\n\n')
  return frames
}

export function completion (body: Json): Json {
  const text = replyText(body)
  return { id: 'cmpl-fake', object: 'text_completion', created: created(), model: body.model, choices: [{ index: 0, text, logprobs: null, finish_reason: 'stop' }], usage: usage(text) }
}

export function completionFrames (body: Json): string[] {
  const text = replyText(body)
  const base = { id: 'cmpl-fake', object: 'text_completion', created: created(), model: body.model }
  const frames = words(text).map((w) => sse({ ...base, choices: [{ index: 0, text: w, logprobs: null, finish_reason: null }] }))
  frames.push(sse({ ...base, choices: [{ index: 0, text: '', logprobs: null, finish_reason: 'stop' }] }))
  frames.push('data: [DONE]\n\n')
  return frames
}

function responseObject (body: Json, text: string, status: string): Json {
  return {
    id: 'resp_fake',
    object: 'response',
    created_at: created(),
    status,
    model: body.model,
    output: status === 'completed'
      ? [{ type: 'message', id: 'msg_fake', status: 'completed', role: 'assistant', content: [{ type: 'output_text', text, annotations: [] }] }]
      : [],
    usage: status === 'completed' ? { input_tokens: 9, output_tokens: words(text).length, total_tokens: 9 + words(text).length } : null
  }
}

export function response (body: Json): Json {
  return responseObject(body, replyText(body), 'completed')
}

export function responseFrames (body: Json): string[] {
  const text = replyText(body)
  let n = 0
  const ev = (type: string, data: Json) => sse({ type, sequence_number: n++, ...data }, type)
  const frames = [ev('response.created', { response: responseObject(body, '', 'in_progress') })]
  for (const w of words(text)) frames.push(ev('response.output_text.delta', { item_id: 'msg_fake', output_index: 0, content_index: 0, delta: w }))
  frames.push(ev('response.output_text.done', { item_id: 'msg_fake', output_index: 0, content_index: 0, text }))
  frames.push(ev('response.completed', { response: responseObject(body, text, 'completed') }))
  return frames
}

export function embeddings (body: Json): Json {
  const inputs = Array.isArray(body.input) ? body.input : [body.input]
  return {
    object: 'list',
    data: inputs.map((_, index) => ({ object: 'embedding', index, embedding: Array.from({ length: 8 }, (_, i) => Math.round(Math.sin(index + i) * 1000) / 1000) })),
    model: body.model,
    usage: { prompt_tokens: inputs.length, total_tokens: inputs.length }
  }
}

export function moderation (body: Json): Json {
  const inputs = Array.isArray(body.input) ? body.input : [body.input]
  return { id: 'modr-fake', model: body.model ?? 'omni-moderation-latest', results: inputs.map(() => ({ flagged: false, categories: {}, category_scores: {} })) }
}

export const model = (id: string): Json => ({ id, object: 'model', created: 1700000000, owned_by: 'fake-openai' })
export const modelList = (): Json => ({ object: 'list', data: FAKE_MODELS.map(model) })

export const errorBody = (message: string, type: string, code: string | null, param: string | null = null): Json => ({ error: { message, type, param, code } })
