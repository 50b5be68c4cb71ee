import type { TSchema } from '@sinclair/typebox'
import {
  ChatCompletionBodySchema, CompletionBodySchema, EmbeddingBodySchema, ModelParamsSchema,
  ModerationBodySchema, ResponseBodySchema
} from './openai.js'

/**
 * The allowlist. One row per endpoint the proxy forwards; routes are generated from this table, and
 * nothing else ever reaches upstream. `path` is relative to `/v1`; `:name` marks a path parameter that
 * is re-encoded as exactly one segment upstream.
 */
export interface EndpointDefinition {
  /** Stable id, used in options (`endpoints`) and logs. */
  id: string
  method: 'GET' | 'POST'
  path: string
  body?: TSchema
  params?: TSchema
  /** Whether the client may ask for `stream: true`. */
  streams: boolean
  /** Body fields that cap output tokens (request policy, token budgets). */
  outputCapFields: readonly string[]
}

export const endpoints: readonly EndpointDefinition[] = [
  { id: 'chat.completions', method: 'POST', path: '/chat/completions', body: ChatCompletionBodySchema, streams: true, outputCapFields: ['max_tokens', 'max_completion_tokens'] },
  { id: 'completions', method: 'POST', path: '/completions', body: CompletionBodySchema, streams: true, outputCapFields: ['max_tokens'] },
  { id: 'responses', method: 'POST', path: '/responses', body: ResponseBodySchema, streams: true, outputCapFields: ['max_output_tokens'] },
  { id: 'embeddings', method: 'POST', path: '/embeddings', body: EmbeddingBodySchema, streams: false, outputCapFields: [] },
  { id: 'moderations', method: 'POST', path: '/moderations', body: ModerationBodySchema, streams: false, outputCapFields: [] },
  { id: 'models.list', method: 'GET', path: '/models', streams: false, outputCapFields: [] },
  { id: 'models.retrieve', method: 'GET', path: '/models/:model', params: ModelParamsSchema, streams: false, outputCapFields: [] }
]

export type EndpointId = string

/** The upstream path for a matched route: constant, with each parameter encoded as one segment. */
export function upstreamPath (endpoint: EndpointDefinition, params: Record<string, string>): string {
  return '/v1' + endpoint.path.replace(/:([a-z_]+)/g, (_, name: string) => encodeURIComponent(params[name] ?? ''))
}
