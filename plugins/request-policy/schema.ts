import { Type, type Static } from '@sinclair/typebox'

/*
 * Options of the request policy (`policy` in the suite's options; ALLOWED_MODELS, MAX_OUTPUT_TOKENS, MAX_N,
 * ALLOWED_TOOLS, ALLOWED_SERVICE_TIERS, ALLOW_STORED_STATE in the environment). Defaults live in
 * `plugins/request-policy/index.ts`.
 */

/** Features that read or write the key owner's stored data, refused unless listed in `allowStoredState`. */
export const STORED_STATE = ['store', 'previous_response_id', 'conversation', 'prompt', 'background', 'file_id', 'item_reference'] as const
export type StoredStateFeature = typeof STORED_STATE[number]

const Name = Type.String({ minLength: 1, maxLength: 256, pattern: '^[\\x21-\\x7e]+$' })

export const RequestPolicyOptionsSchema = Type.Object({
  /** Models clients may use: exact ids and `*` globs (`gpt-4o*`). `/v1/models` lists only these. Absent: every model. */
  allowedModels: Type.Optional(Type.Array(Name)),
  /** Largest output-token budget (`max_tokens`, `max_completion_tokens`, `max_output_tokens`): set when absent, clamped when larger. Absent: no cap. */
  maxOutputTokens: Type.Optional(Type.Integer({ minimum: 1, maximum: 100_000_000 })),
  /** Largest `n` (and `best_of`); larger values are clamped. Default 1. */
  maxN: Type.Optional(Type.Integer({ minimum: 1, maximum: 128 })),
  /** Hosted tool types allowed besides `function` and `custom` (`web_search*`, `file_search`, `code_interpreter`, `mcp`, ...; `*` globs). Default none: they bill separately or reach stored data. */
  allowedTools: Type.Optional(Type.Array(Name)),
  /** `service_tier` values clients may ask for. Default `auto`, `default`, `flex` (`priority` bills extra). */
  allowedServiceTiers: Type.Optional(Type.Array(Name)),
  /** Stored-data features to allow: `store` (else forced to false), `previous_response_id`, `conversation`, `prompt` (stored prompt templates), `background`, `file_id`, `item_reference`. Default none. */
  allowStoredState: Type.Optional(Type.Array(Type.Union(STORED_STATE.map((s) => Type.Literal(s)))))
}, { additionalProperties: false })

export type RequestPolicyConfig = Static<typeof RequestPolicyOptionsSchema>
