import createError, { type FastifyErrorConstructor } from '@fastify/error'
import type { ErrorEnvelope } from './schemas/errors.js'

/**
 * The one catalogue of answers the proxy makes itself. Each entry becomes an `@fastify/error` class
 * (code `OAI_PROXY_<NAME>`) and knows the OpenAI `type`/`code` the official SDKs expect.
 * Status choices follow openai-wire.md §1.1: deterministic failures never use 408/409/500, which the
 * SDK would retry.
 */
const catalogue = {
  UNSUPPORTED_ENDPOINT: { status: 404, type: 'invalid_request_error', code: 'unknown_url', message: 'Unknown request URL: %s %s. This proxy only forwards generation endpoints.' },
  METHOD_NOT_ALLOWED: { status: 405, type: 'invalid_request_error', code: 'method_not_allowed', message: 'Method %s is not allowed on %s.' },
  MISSING_KEY: { status: 401, type: 'invalid_request_error', code: null, message: "You didn't provide an API key. Send your proxy key as 'Authorization: Bearer <key>'." },
  INVALID_KEY: { status: 401, type: 'invalid_request_error', code: 'invalid_api_key', message: 'Incorrect API key provided.' },
  // A browser token good in every other way, presented by a page of another origin (docs/browser.md).
  TOKEN_WRONG_ORIGIN: { status: 401, type: 'invalid_request_error', code: 'invalid_api_key', message: 'This browser token was issued for pages of another origin.' },
  NOT_AUTHENTICATED: { status: 401, type: 'invalid_request_error', code: null, message: 'This request is not authenticated. Sign in to the application that serves this proxy.' },
  INVALID_JSON: { status: 400, type: 'invalid_request_error', code: 'invalid_json', message: 'We could not parse the JSON body of your request.' },
  EMPTY_BODY: { status: 400, type: 'invalid_request_error', code: 'invalid_json', message: 'The request body is empty; a JSON object is required.' },
  FORBIDDEN_KEY: { status: 400, type: 'invalid_request_error', code: 'invalid_json', message: 'The JSON body contains a forbidden key (__proto__ or constructor.prototype).' },
  INVALID_ENCODING: { status: 400, type: 'invalid_request_error', code: 'invalid_json', message: 'The JSON body is not valid UTF-8.' },
  AMBIGUOUS_BODY: { status: 400, type: 'invalid_request_error', code: 'invalid_json', message: 'The JSON body repeats a key and holds a number with more than 15 digits; send each key once so the number can be forwarded exactly.' },
  TOO_DEEP: { status: 400, type: 'invalid_request_error', code: 'invalid_json', message: 'The JSON body is nested deeper than %s levels.' },
  INVALID_BODY: { status: 400, type: 'invalid_request_error', code: 'invalid_request_body', message: 'Invalid request: %s' },
  INVALID_PARAM: { status: 400, type: 'invalid_request_error', code: 'invalid_value', message: 'Invalid path parameter: %s' },
  INVALID_QUERY: { status: 400, type: 'invalid_request_error', code: 'invalid_value', message: 'Invalid query parameter: %s' },
  ORIGIN_NOT_ALLOWED: { status: 403, type: 'invalid_request_error', code: 'origin_not_allowed', message: 'Pages from this origin may not open Realtime sessions on this proxy.' },
  UPGRADE_REQUIRED: { status: 426, type: 'invalid_request_error', code: 'upgrade_required', message: 'This endpoint is a WebSocket: open it with a WebSocket client (the openai SDK: OpenAIRealtimeWS, or OpenAIRealtimeWebSocket in a browser).' },
  BAD_REQUEST: { status: 400, type: 'invalid_request_error', code: 'bad_request', message: 'The request was malformed.' },
  UNSUPPORTED_MEDIA_TYPE: { status: 415, type: 'invalid_request_error', code: 'unsupported_media_type', message: "Unsupported content type or encoding. Send 'Content-Type: application/json' (UTF-8, not compressed)." },
  FORM_REQUIRED: { status: 415, type: 'invalid_request_error', code: 'unsupported_media_type', message: "This endpoint takes an upload: send 'Content-Type: multipart/form-data' with a boundary." },
  BODIES_BUSY: { status: 503, type: 'server_error', code: 'server_busy', message: 'The proxy is receiving too many large request bodies at once; retry shortly.' },
  BODY_TOO_LARGE: { status: 413, type: 'invalid_request_error', code: 'request_too_large', message: 'The request body is larger than this proxy accepts.' },
  CONTENT_FILTER: { status: 400, type: 'invalid_request_error', code: 'content_filter', message: '%s' },
  NON_TEXT_NOT_ALLOWED: { status: 400, type: 'invalid_request_error', code: 'content_filter', message: 'This proxy accepts text only: images, audio and files are refused (rule: non_text).' },
  TOKEN_IDS_NOT_ALLOWED: { status: 400, type: 'invalid_request_error', code: 'token_ids_not_allowed', message: 'This proxy checks prompt text and cannot read token ids: send %s as text (rule: token_ids).' },
  FILTER_UNAVAILABLE: { status: 503, type: 'server_error', code: 'content_filter_unavailable', message: 'The content check could not be completed; try again shortly.' },
  MODEL_NOT_ALLOWED: { status: 403, type: 'invalid_request_error', code: 'model_not_allowed', message: 'This model is not available on this proxy (rule: allowed_models).' },
  ENDPOINT_NOT_IN_SCOPE: { status: 403, type: 'invalid_request_error', code: 'endpoint_not_allowed', message: 'This API key may not call the endpoint %s.' },
  MODEL_NOT_IN_SCOPE: { status: 403, type: 'invalid_request_error', code: 'model_not_allowed', message: 'This API key may not use the model %s.' },
  PARAM_NOT_ALLOWED: { status: 403, type: 'invalid_request_error', code: 'parameter_not_allowed', message: 'Parameter %s is not allowed on this proxy (rule: %s).' },
  INVALID_POLICY_VALUE: { status: 400, type: 'invalid_request_error', code: 'invalid_value', message: 'Parameter %s must be %s (rule: %s).' },
  UPSTREAM_UNREACHABLE: { status: 502, type: 'server_error', code: 'upstream_unreachable', message: 'The proxy could not reach the upstream API.' },
  UPSTREAM_BAD_RESPONSE: { status: 502, type: 'server_error', code: 'upstream_bad_response', message: 'The upstream API sent a response the proxy does not accept.' },
  UPSTREAM_TIMEOUT: { status: 504, type: 'server_error', code: 'upstream_timeout', message: 'The upstream API did not answer in time.' },
  UPSTREAM_KEY_FAILED: { status: 503, type: 'server_error', code: 'upstream_key_failed', message: 'The upstream API refused the key in use; an upload cannot be replayed on another key, so send it again.' },
  NO_UPSTREAM_KEYS: { status: 503, type: 'server_error', code: 'upstream_keys_exhausted', message: 'No upstream API key is currently usable. Contact the operator of this proxy.' },
  REQUESTS_LIMITED: { status: 429, type: 'requests', code: 'rate_limit_exceeded', message: '%s' },
  TOKENS_LIMITED: { status: 429, type: 'tokens', code: 'rate_limit_exceeded', message: '%s' },
  // OpenAI's own answer when an account is out of credit; the SDKs raise RateLimitError and, told so, do not retry.
  QUOTA_EXCEEDED: { status: 429, type: 'insufficient_quota', code: 'insufficient_quota', message: 'You exceeded your quota of %s (limit %s, used %s). It resets at %s.' },
  RATE_LIMIT_UNAVAILABLE: { status: 503, type: 'server_error', code: 'rate_limit_store_unavailable', message: 'The rate limiter cannot reach its store; try again shortly.' },
  MULTIPART_INVALID: { status: 400, type: 'invalid_request_error', code: 'invalid_multipart', message: 'Invalid multipart/form-data body: %s.' },
  MULTIPART_UNKNOWN_FIELD: { status: 400, type: 'invalid_request_error', code: 'unknown_parameter', message: "Unknown parameter: '%s'." },
  MULTIPART_FIELD_ORDER: { status: 400, type: 'invalid_request_error', code: 'multipart_field_order', message: "Field '%s' %s; send the text fields before the file parts." },
  MULTIPART_TOO_MANY_PARTS: { status: 413, type: 'invalid_request_error', code: 'too_many_parts', message: 'The form has more than %s %s.' },
  MULTIPART_FIELD_TOO_LARGE: { status: 413, type: 'invalid_request_error', code: 'field_too_large', message: 'Text fields are too large: %s.' },
  FILE_TOO_LARGE: { status: 413, type: 'invalid_request_error', code: 'file_too_large', message: 'Uploaded files are too large: %s.' },
  FILE_TYPE_NOT_ALLOWED: { status: 400, type: 'invalid_request_error', code: 'invalid_file_format', message: "Invalid file format for '%s'. Supported formats: %s." },
  ADMIN_UNAUTHORIZED: { status: 401, type: 'invalid_request_error', code: 'invalid_admin_key', message: "Missing or incorrect admin key. Send it as 'Authorization: Bearer <ADMIN_KEY>'." },
  ADMIN_KEY_NOT_FOUND: { status: 404, type: 'invalid_request_error', code: 'key_not_found', message: 'No client key %s.' },
  ADMIN_NO_KEYS_STORE: { status: 400, type: 'invalid_request_error', code: 'keys_store_not_configured', message: 'This proxy has no keys store (KEYS_FILE), so there are no client keys to manage.' },
  ADMIN_STORE_FAILED: { status: 503, type: 'server_error', code: 'keys_store_unavailable', message: 'The keys store could not be read or changed: %s' },
  ADMIN_NO_BROWSER_TOKENS: { status: 400, type: 'invalid_request_error', code: 'browser_tokens_not_configured', message: 'This proxy has no browser token secrets (TOKEN_SECRETS), so it cannot mint browser tokens.' },
  ADMIN_TOKEN_REFUSED: { status: 400, type: 'invalid_request_error', code: 'token_not_minted', message: '%s' },
  METRICS_UNAUTHORIZED: { status: 401, type: 'invalid_request_error', code: 'invalid_metrics_key', message: "Missing or incorrect metrics key. Send it as 'Authorization: Bearer <METRICS_KEY>'." },
  INTERNAL: { status: 500, type: 'server_error', code: 'internal_error', message: 'The proxy hit an internal error.' }
} as const

export type ProxyErrorName = keyof typeof catalogue

/** OpenAI-envelope metadata keyed by `OAI_PROXY_*` code; the error handler reads it. */
export const openaiShapeByCode = new Map<string, { type: string, code: string | null }>()

function define (name: ProxyErrorName): FastifyErrorConstructor {
  const entry = catalogue[name]
  const code = `OAI_PROXY_${name}`
  openaiShapeByCode.set(code, { type: entry.type, code: entry.code })
  return createError(code, entry.message, entry.status)
}

/** Error classes, e.g. `throw new ProxyErrors.INVALID_KEY()`. */
export const ProxyErrors = Object.fromEntries(
  (Object.keys(catalogue) as ProxyErrorName[]).map((name) => [name, define(name)])
) as Record<ProxyErrorName, FastifyErrorConstructor>

/** An error may carry the offending parameter (OpenAI's `param`) and extra response headers. */
export interface ProxyErrorExtras { param?: string | null, headers?: Record<string, string> }

export function proxyError (name: ProxyErrorName, args: unknown[] = [], extras: ProxyErrorExtras = {}): Error {
  const err = new ProxyErrors[name](...args)
  return Object.assign(err, extras)
}

export function envelope (message: string, type: string, code: string | null, param: string | null = null): ErrorEnvelope {
  return { error: { message, type, param, code } }
}
