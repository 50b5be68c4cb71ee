import type { TSchema } from '@sinclair/typebox'
import {
  ChatCompletionBodySchema, CompletionBodySchema, EmbeddingBodySchema, ModelParamsSchema,
  ModerationBodySchema, ResponseBodySchema
} from './openai.js'
import { CompactBodySchema, ImageGenerationBodySchema, InputTokensBodySchema, SpeechBodySchema } from './openai-media.js'
import {
  AUDIO_CAPS, IMAGE_EDIT_CAPS, IMAGE_VARIATION_CAPS, ImageEditFieldsSchema, ImageEditForm, ImageVariationFieldsSchema,
  ImageVariationForm, NO_FILES, RealtimeCallFieldsSchema, RealtimeCallForm, TranscriptionFieldsSchema, TranscriptionForm,
  TranslationFieldsSchema, TranslationForm, type FormSpec, type UploadCaps
} from './openai-uploads.js'

/** The shape of an endpoint's answer: what the prompt filter dresses a refusal as, and what the output guardrail reads. */
export type ReplyShape = 'chat.completion' | 'text_completion' | 'response'

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
  /** Body fields that cap output tokens (request policy, token budgets). The first is set when none is sent. */
  outputCapFields: readonly string[]
  /** Where the prompt text lives (prompt filter, token counting); `null` when the request carries none. */
  prompt: PromptFields | null
  /**
   * Where the request names its model (request policy: model allowlist). `required`: under an allowlist a
   * request that names no model is refused, because upstream's default is not known to be allowed (for
   * images it even depends on other parameters). Not required: an absent model passes (moderations).
   */
  model?: { in: 'body' | 'params', required: boolean, under?: string }
  /**
   * The endpoint takes `multipart/form-data` instead of JSON: the parts it accepts and its file caps. `body`
   * is then the schema of the text fields, read and typed (schemas/openai-uploads.ts).
   */
  form?: { spec: FormSpec, caps: UploadCaps }
  /** Tokens reserved per MiB of upload (audio is billed by its length; token budgets settle from `usage`). */
  uploadTokensPerMiB?: number
  /**
   * Output tokens reserved per output (times `n`) when the endpoint has no output-cap field (token budgets):
   * images are reserved at the most one GPT image costs (6,240 output tokens, high quality 1024x1536) and
   * settled from `usage` when upstream reports it. Absent: the suite's `defaultOutputTokens`.
   */
  outputAllowance?: number
  /** Body fields that ask for several completions at once (request policy: capped). */
  choiceFields?: readonly string[]
  /** Upstream `store` default: `on` (Responses stores unless told not to) or `off` (chat). Request policy forces it off. */
  storeDefault?: 'on' | 'off'
  /** The answer's shape, so a refusal can be dressed as one (prompt filter, reject mode `completion`). */
  replyShape?: ReplyShape
  /** A small JSON 2xx answer the proxy may buffer and a plugin rewrite: `model-list` (policy hides disallowed models). */
  rewritableResponse?: 'model-list'
  /**
   * How upstream reports token use, for token budgets: `stream-option` (in the body, or in a final chunk
   * when `stream_options.include_usage` is set), `always` (body or terminal event). Absent: not metered.
   */
  usage?: 'stream-option' | 'always'
}

/**
 * Where a request keeps its prompt text. Every string beneath these top-level fields is text unless it sits
 * under a known identifier/enum/data key (`lib/request-analysis.ts`), so new OpenAI fields are covered too.
 */
export interface PromptFields {
  /** Top-level body fields holding prompt text (walked to any depth). */
  text: readonly string[]
  /** Of those, the fields that may hold token ids instead of text (threat B12: refused while filtering). */
  tokens?: readonly string[]
  /** Fields of `body`'s schema that are deliberately not prompt text (the coverage test checks every field is classified). */
  notText: readonly string[]
  /** Filtered only when the operator opts in (`filter.optInEndpoints`). */
  optIn?: boolean
}

const inBody = { in: 'body', required: true } as const
/** gpt-image-1 at high quality, 1024x1536 or 1536x1024: the most output tokens one image is billed. */
const IMAGE_OUTPUT_TOKENS = 6240
/** Audio input: ~1,000 tokens a minute, about a MiB of 128 kbit/s MP3 (denser codecs are settled from usage). */
const AUDIO_TOKENS_PER_MIB = 1000

export const endpoints: readonly EndpointDefinition[] = [
  { id: 'chat.completions', method: 'POST', path: '/chat/completions', body: ChatCompletionBodySchema, streams: true, outputCapFields: ['max_completion_tokens', 'max_tokens'], choiceFields: ['n'], model: inBody, storeDefault: 'off', replyShape: 'chat.completion', usage: 'stream-option', prompt: { text: ['messages', 'tools', 'functions', 'response_format', 'prediction'], notText: ['model', 'stream'] } },
  { id: 'completions', method: 'POST', path: '/completions', body: CompletionBodySchema, streams: true, outputCapFields: ['max_tokens'], choiceFields: ['n', 'best_of'], model: inBody, replyShape: 'text_completion', usage: 'stream-option', prompt: { text: ['prompt', 'suffix'], tokens: ['prompt'], notText: ['model', 'stream'] } },
  { id: 'responses', method: 'POST', path: '/responses', body: ResponseBodySchema, streams: true, outputCapFields: ['max_output_tokens'], model: inBody, storeDefault: 'on', replyShape: 'response', usage: 'always', prompt: { text: ['input', 'instructions', 'tools', 'text', 'prompt'], notText: ['model', 'stream'] } },
  { id: 'embeddings', method: 'POST', path: '/embeddings', body: EmbeddingBodySchema, streams: false, outputCapFields: [], model: inBody, usage: 'always', prompt: { text: ['input'], tokens: ['input'], notText: ['model'] } },
  // Moderations input is what someone wants classified, so filtering it is the operator's choice.
  { id: 'moderations', method: 'POST', path: '/moderations', body: ModerationBodySchema, streams: false, outputCapFields: [], model: { in: 'body', required: false }, prompt: { text: ['input'], notText: ['model'], optIn: true } },
  { id: 'responses.compact', method: 'POST', path: '/responses/compact', body: CompactBodySchema, streams: false, outputCapFields: [], model: inBody, usage: 'always', prompt: { text: ['input', 'instructions'], notText: ['model'] } },
  // Counting tokens generates nothing and costs nothing: filtering it is the operator's choice.
  { id: 'responses.input_tokens', method: 'POST', path: '/responses/input_tokens', body: InputTokensBodySchema, streams: false, outputCapFields: [], model: { in: 'body', required: false }, prompt: { text: ['input', 'instructions', 'tools', 'text', 'prompt'], notText: ['model'], optIn: true } },
  { id: 'images.generations', method: 'POST', path: '/images/generations', body: ImageGenerationBodySchema, streams: true, outputCapFields: [], outputAllowance: IMAGE_OUTPUT_TOKENS, choiceFields: ['n'], model: inBody, usage: 'always', prompt: { text: ['prompt'], notText: ['model', 'n', 'stream', 'partial_images'] } },
  // Binary audio out (streamed through as it comes), or SSE with `stream_format: "sse"` (usage in its last event).
  { id: 'audio.speech', method: 'POST', path: '/audio/speech', body: SpeechBodySchema, streams: false, outputCapFields: [], model: inBody, usage: 'always', prompt: { text: ['input', 'instructions'], notText: ['model', 'stream_format'] } },
  { id: 'audio.transcriptions', method: 'POST', path: '/audio/transcriptions', body: TranscriptionFieldsSchema, form: { spec: TranscriptionForm, caps: AUDIO_CAPS }, streams: true, outputCapFields: [], model: inBody, usage: 'always', uploadTokensPerMiB: AUDIO_TOKENS_PER_MIB, prompt: { text: ['prompt', 'known_speaker_names'], notText: ['model', 'language', 'response_format', 'temperature', 'stream', 'timestamp_granularities', 'include', 'chunking_strategy', 'known_speaker_references'] } },
  { id: 'audio.translations', method: 'POST', path: '/audio/translations', body: TranslationFieldsSchema, form: { spec: TranslationForm, caps: AUDIO_CAPS }, streams: false, outputCapFields: [], model: inBody, usage: 'always', uploadTokensPerMiB: AUDIO_TOKENS_PER_MIB, prompt: { text: ['prompt'], notText: ['model', 'response_format', 'temperature'] } },
  { id: 'images.edits', method: 'POST', path: '/images/edits', body: ImageEditFieldsSchema, form: { spec: ImageEditForm, caps: IMAGE_EDIT_CAPS }, streams: true, outputCapFields: [], outputAllowance: IMAGE_OUTPUT_TOKENS, choiceFields: ['n'], model: inBody, usage: 'always', prompt: { text: ['prompt'], notText: ['model', 'n', 'size', 'quality', 'response_format', 'output_format', 'output_compression', 'background', 'input_fidelity', 'partial_images', 'stream', 'user'] } },
  { id: 'images.variations', method: 'POST', path: '/images/variations', body: ImageVariationFieldsSchema, form: { spec: ImageVariationForm, caps: IMAGE_VARIATION_CAPS }, streams: false, outputCapFields: [], outputAllowance: IMAGE_OUTPUT_TOKENS, choiceFields: ['n'], model: inBody, usage: 'always', prompt: { text: [], notText: ['model', 'n', 'response_format', 'size', 'user'] } },
  // WebRTC: the SDP answer comes back and media then flows between the browser and OpenAI, past the proxy.
  { id: 'realtime.calls', method: 'POST', path: '/realtime/calls', body: RealtimeCallFieldsSchema, form: { spec: RealtimeCallForm, caps: NO_FILES }, streams: false, outputCapFields: [], model: { in: 'body', required: true, under: 'session' }, prompt: { text: ['session'], notText: ['sdp'] } },
  { id: 'models.list', method: 'GET', path: '/models', streams: false, outputCapFields: [], prompt: null, rewritableResponse: 'model-list' },
  { id: 'models.retrieve', method: 'GET', path: '/models/:model', params: ModelParamsSchema, streams: false, outputCapFields: [], model: { in: 'params', required: true }, prompt: null }
]

/**
 * The upstream path for a matched route: constant, with each parameter encoded as one segment. The router
 * matched this row's path, so every parameter it names is in `params`.
 */
export function upstreamPath (endpoint: EndpointDefinition, params: Record<string, string>): string {
  return '/v1' + endpoint.path.replace(/:([a-z_]+)/g, (_, name: string) => encodeURIComponent(params[name] as string))
}
