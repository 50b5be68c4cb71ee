import { randomBytes } from 'node:crypto'
import type { ReplyShape } from '../../schemas/endpoints.js'

/*
 * Reject mode `completion`: the refusal message dressed as the model's answer, in the exact shape of the
 * endpoint that was called, streamed when the client asked for a stream. Many chat front ends show an
 * assistant message but swallow error bodies; these objects parse with the official SDK (chat completion,
 * legacy completion, Responses, each streamed or not) and carry `finish_reason: "content_filter"` so a
 * client that looks can tell.
 */

export interface RefusalReplyInput {
  shape: ReplyShape
  model: string
  message: string
  stream: boolean
  /** The client asked for `stream_options.include_usage`: end with a usage chunk as OpenAI does. */
  includeUsage: boolean
}

export interface RefusalReply { contentType: string, body: string }

type Json = Record<string, unknown>

const sse = (data: unknown, event?: string): string => `${event === undefined ? '' : `event: ${event}\n`}data: ${JSON.stringify(data)}\n\n`
const id = (prefix: string): string => `${prefix}${randomBytes(12).toString('hex')}`
const now = (): number => Math.floor(Date.now() / 1000)

function chat (r: RefusalReplyInput): RefusalReply {
  const base = { id: id('chatcmpl-'), created: now(), model: r.model, system_fingerprint: null }
  const usage = { prompt_tokens: 0, completion_tokens: 0, total_tokens: 0 }
  if (!r.stream) {
    const message = { role: 'assistant', content: r.message, refusal: null }
    return json({ ...base, object: 'chat.completion', choices: [{ index: 0, message, logprobs: null, finish_reason: 'content_filter' }], usage })
  }
  const chunk = (choices: unknown[], extra: Json = {}) => sse({ ...base, object: 'chat.completion.chunk', choices, ...extra })
  const frames = [
    chunk([{ index: 0, delta: { role: 'assistant', content: '' }, logprobs: null, finish_reason: null }]),
    chunk([{ index: 0, delta: { content: r.message }, logprobs: null, finish_reason: null }]),
    chunk([{ index: 0, delta: {}, logprobs: null, finish_reason: 'content_filter' }])
  ]
  if (r.includeUsage) frames.push(chunk([], { usage }))
  return events([...frames, 'data: [DONE]\n\n'])
}

function completion (r: RefusalReplyInput): RefusalReply {
  const base = { id: id('cmpl-'), object: 'text_completion', created: now(), model: r.model }
  const usage = { prompt_tokens: 0, completion_tokens: 0, total_tokens: 0 }
  if (!r.stream) return json({ ...base, choices: [{ index: 0, text: r.message, logprobs: null, finish_reason: 'content_filter' }], usage })
  const frames = [
    sse({ ...base, choices: [{ index: 0, text: r.message, logprobs: null, finish_reason: null }] }),
    sse({ ...base, choices: [{ index: 0, text: '', logprobs: null, finish_reason: 'content_filter' }] })
  ]
  if (r.includeUsage) frames.push(sse({ ...base, choices: [], usage }))
  return events([...frames, 'data: [DONE]\n\n'])
}

function response (r: RefusalReplyInput): RefusalReply {
  const messageId = id('msg_')
  const part = { type: 'output_text', text: r.message, annotations: [], logprobs: [] }
  const item = { type: 'message', id: messageId, status: 'completed', role: 'assistant', content: [part] }
  const object = (status: string, output: unknown[], usage: unknown): Json => ({
    id: id('resp_'),
    object: 'response',
    created_at: now(),
    status,
    error: null,
    incomplete_details: null,
    instructions: null,
    model: r.model,
    output,
    parallel_tool_calls: true,
    temperature: null,
    tool_choice: 'auto',
    tools: [],
    top_p: null,
    store: false,
    usage
  })
  const usage = { input_tokens: 0, input_tokens_details: { cached_tokens: 0 }, output_tokens: 0, output_tokens_details: { reasoning_tokens: 0 }, total_tokens: 0 }
  const done = object('completed', [item], usage)
  if (!r.stream) return json(done)
  let n = 0
  const ev = (type: string, data: Json): string => sse({ type, sequence_number: n++, ...data }, type)
  const start = { ...object('in_progress', [], null), id: done.id, created_at: done.created_at }
  const at = { item_id: messageId, output_index: 0, content_index: 0 }
  return events([
    ev('response.created', { response: start }),
    ev('response.in_progress', { response: start }),
    ev('response.output_item.added', { output_index: 0, item: { ...item, status: 'in_progress', content: [] } }),
    ev('response.content_part.added', { ...at, part: { ...part, text: '' } }),
    ev('response.output_text.delta', { ...at, delta: r.message, logprobs: [] }),
    ev('response.output_text.done', { ...at, text: r.message, logprobs: [] }),
    ev('response.content_part.done', { ...at, part }),
    ev('response.output_item.done', { output_index: 0, item }),
    ev('response.completed', { response: done })
  ])
}

const json = (value: unknown): RefusalReply => ({ contentType: 'application/json', body: JSON.stringify(value) })
const events = (frames: string[]): RefusalReply => ({ contentType: 'text/event-stream; charset=utf-8', body: frames.join('') })

export function refusalReply (input: RefusalReplyInput): RefusalReply {
  switch (input.shape) {
    case 'chat.completion': return chat(input)
    case 'text_completion': return completion(input)
    case 'response': return response(input)
  }
}
