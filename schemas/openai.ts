import { Type, type Static } from '@sinclair/typebox'

/*
 * Request bodies, checked only for what the proxy relies on. Every object allows unknown properties
 * (OpenAI adds parameters every month) and nothing here has a `default`: validation must never change
 * the body we forward.
 */

const open = { additionalProperties: true } as const

export const ModelName = Type.String({ minLength: 1, maxLength: 256 })
const Stream = Type.Optional(Type.Boolean())

/** A non-empty string, a non-empty array of strings or token ids, or an array of token-id arrays. */
const TextOrTokens = Type.Union([
  Type.String(),
  Type.Array(Type.String(), { minItems: 1 }),
  Type.Array(Type.Integer(), { minItems: 1 }),
  Type.Array(Type.Array(Type.Integer(), { minItems: 1 }), { minItems: 1 })
])

export const ChatMessageSchema = Type.Object({ role: Type.String({ minLength: 1 }) }, open)

export const ChatCompletionBodySchema = Type.Object({
  model: ModelName,
  messages: Type.Array(ChatMessageSchema, { minItems: 1 }),
  stream: Stream
}, open)
export type ChatCompletionBody = Static<typeof ChatCompletionBodySchema>

export const CompletionBodySchema = Type.Object({
  model: ModelName,
  prompt: TextOrTokens,
  stream: Stream
}, open)

export const ResponseBodySchema = Type.Object({
  model: ModelName,
  input: Type.Union([Type.String(), Type.Array(Type.Object({}, open), { minItems: 1 })]),
  stream: Stream
}, open)

export const EmbeddingBodySchema = Type.Object({
  model: ModelName,
  input: TextOrTokens
}, open)

export const ModerationBodySchema = Type.Object({
  model: Type.Optional(ModelName),
  input: Type.Union([Type.String(), Type.Array(Type.Union([Type.String(), Type.Object({}, open)]), { minItems: 1 })])
}, open)

/**
 * A model id as one path segment: starts alphanumeric (so never `.` or `..`) and uses only the
 * characters OpenAI's ids use, fine-tuned ones included (`ft:gpt-4o-mini:org:name:id`).
 */
export const ModelParamsSchema = Type.Object({
  model: Type.String({ pattern: '^[A-Za-z0-9][A-Za-z0-9._:-]{0,255}$' })
})
