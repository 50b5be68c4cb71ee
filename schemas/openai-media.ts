import { Type } from '@sinclair/typebox'
import { ModelName } from './openai.js'

/*
 * Request bodies of the image, audio and Responses helper endpoints that take JSON. Like schemas/openai.ts:
 * only what the proxy relies on, unknown properties pass (OpenAI adds parameters), no `default` anywhere.
 */

const open = { additionalProperties: true } as const
const Count = Type.Integer({ minimum: 1 })

/** `POST /images/generations`: `stream: true` answers with partial images as SSE (GPT image models). */
export const ImageGenerationBodySchema = Type.Object({
  prompt: Type.String({ minLength: 1 }),
  model: Type.Optional(ModelName),
  n: Type.Optional(Count),
  stream: Type.Optional(Type.Boolean()),
  partial_images: Type.Optional(Type.Integer({ minimum: 0 }))
}, open)

/** `POST /audio/speech`: audio bytes out, or SSE with `stream_format: "sse"`. */
export const SpeechBodySchema = Type.Object({
  model: ModelName,
  input: Type.String({ minLength: 1 }),
  instructions: Type.Optional(Type.String()),
  stream_format: Type.Optional(Type.Union([Type.Literal('audio'), Type.Literal('sse')]))
}, open)

/** Text, or Responses input items. */
const ResponseInput = Type.Union([Type.String(), Type.Array(Type.Object({}, open))])

/** `POST /responses/input_tokens`: counts a Responses request's input, generates nothing. */
export const InputTokensBodySchema = Type.Object({
  model: Type.Optional(Type.Union([ModelName, Type.Null()])),
  input: Type.Optional(Type.Union([ResponseInput, Type.Null()]))
}, open)

/** `POST /responses/compact`: a conversation compacted into one (encrypted) item, billed as a model call. */
export const CompactBodySchema = Type.Object({
  model: ModelName,
  input: Type.Optional(Type.Union([ResponseInput, Type.Null()]))
}, open)
