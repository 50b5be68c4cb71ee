import { isAscii } from 'node:buffer'
import type { FastifyInstance, FastifyRequest } from 'fastify'
import { proxyError } from '../errors.js'
import type { EndpointDefinition } from '../schemas/endpoints.js'
import { hasDuplicateKeys, type RawBody } from './request-body.js'
import { BINARY_KEYS, BINARY_MIN_LENGTH } from './token-estimate.js'

/*
 * The one pass over a validated request body (ARCHITECTURE §3 step 4b). Driven by the endpoint table, it
 * yields what every later step needs, so none of them walks the body again:
 * - the prompt filter: every piece of prompt text with its parameter path, the first image/audio/file part,
 *   the first token id where a field may hold token ids;
 * - the token budget: the strings and numbers its estimate counts, and binary payloads at a flat cost;
 * - the request policy: the first reference to the key owner's stored data (`file_id`, `item_reference`);
 * - the forwarder: how many object members the parsed body holds (fewer than the text has means a
 *   duplicate key, see lib/json-scan.ts) and which top-level fields the pipeline changed.
 *
 * Prompt text is found by walking whole subtrees under the table's `prompt.text` fields rather than listing
 * known fields: text hides in tool outputs, tool-call arguments, `name` fields, JSON-schema descriptions,
 * Responses items and fields OpenAI has not invented yet, and a filter that reads only the fields it knows
 * has a published bypass list. What is *not* text is the short list below. The walk is iterative and keeps
 * document order (text parts of one content array run together for the filter).
 */

/** String values under these keys are identifiers, enums, URLs or binary data, never prompt text. */
const NOT_TEXT_KEYS = new Set([
  'type', 'role', 'id', 'call_id', 'item_id', 'tool_call_id', 'response_id', 'model', 'status', 'detail',
  'file_id', 'file_ids', 'vector_store_ids', 'url', 'image_url', 'file_url', 'file_data', 'data',
  'mime_type', 'encrypted_content', 'signature', 'version'
])

/** Content parts and items that carry images, audio or files: not text, judged by the non-text rule. */
const MEDIA_TYPES = new Set(['image_url', 'input_image', 'image', 'input_audio', 'audio', 'input_file', 'file', 'computer_screenshot'])
const MEDIA_KEYS = ['image_url', 'input_audio', 'file_data', 'file_url']

/** Deeper than the JSON body guard allows: something is wrong, so fail closed. */
const MAX_DEPTH = 256

export interface PromptSegment {
  /** Where the text sits, as OpenAI names parameters: `messages[2].content[0].text`. */
  path: string
  text: string
  /** A text part following a text part of the same content array: the model reads them as one run of text. */
  joinsPrevious: boolean
}

export interface StoredReference { feature: 'file_id' | 'item_reference', param: string }

export interface RequestAnalysis {
  endpoint: EndpointDefinition
  /** The validated JSON body (POST endpoints), else null. Changed only through `setField`/`deleteField`. */
  body: Record<string, unknown> | null
  /** Prompt text in document order, the prompt fields in the table's order. */
  segments: PromptSegment[]
  /** Path of the first image, audio or file part under the prompt fields, if any. */
  media: string | null
  /** Path of the first number where a field may hold token ids instead of text (threat B12). */
  tokenIds: string | null
  /** What the token estimate reads: every string under the prompt fields (prompt text, roles, types, ids) but binary payloads. */
  estimateText: string[]
  /** Integers under the prompt fields (token-id prompts count one token each). */
  integers: number
  /** Binary payloads (images, audio, files) under the prompt fields. */
  binaryParts: number
  /** Where the body first points at the key owner's stored data, anywhere in the body: at most one per feature. */
  storedRefs: StoredReference[]
  /** Object members in the parsed body (the root's included). */
  members: number
  /** Top-level fields the pipeline set or removed, for the forwarder. */
  patched: Set<string>
  /** Every string in the body is ASCII with no `\u` in it (known from the bytes): its normal form is its lower case. */
  asciiText: boolean
}

/** Per endpoint, resolved once: the table row's prompt fields as the walk wants them. */
interface EndpointPlan {
  promptFields: readonly string[]
  isPrompt: ReadonlySet<string>
  tokenFields: ReadonlySet<string>
}

const plans = new WeakMap<EndpointDefinition, EndpointPlan>()

/** The walk's plan for a table row, built the first time (routes/proxy/index.ts asks when it builds the routes). */
export function planFor (endpoint: EndpointDefinition): EndpointPlan {
  let plan = plans.get(endpoint)
  if (plan === undefined) {
    const text = endpoint.prompt?.text ?? []
    plan = { promptFields: text, isPrompt: new Set(text), tokenFields: new Set(endpoint.prompt?.tokens ?? []) }
    plans.set(endpoint, plan)
  }
  return plan
}

/** A container being walked: its entries are visited one at a time, so siblings keep document order. */
interface Frame {
  container: unknown[] | Record<string, unknown>
  /** Object keys; null for an array. */
  keys: string[] | null
  /** The next entry to visit. */
  at: number
  /** The key this container sits under (for an array item: the array's key). */
  key: string
  path: string
  depth: number
  prompt: boolean
  tokens: boolean
  /** For an object that is an array item: that array's path (its `text` runs on from the previous item's). */
  group: string | null
}

const isContainer = (v: unknown): v is unknown[] | Record<string, unknown> => typeof v === 'object' && v !== null

/** Note the first `item_reference` item and the first `file_id`/`file_ids` (chat `file` parts, Responses inputs, tool resources). */
function storedReferences (obj: Record<string, unknown>, path: string, refs: StoredReference[]): void {
  const at = (k: string): string => (path.length === 0 ? k : `${path}.${k}`)
  const seen = (feature: StoredReference['feature']): boolean => refs.some((r) => r.feature === feature)
  if (obj.type === 'item_reference' && !seen('item_reference')) refs.push({ feature: 'item_reference', param: at('type') })
  if (seen('file_id')) return
  for (const k of ['file_id', 'file_ids']) {
    const v = obj[k]
    if (typeof v === 'string' || (Array.isArray(v) && v.length > 0)) {
      refs.push({ feature: 'file_id', param: at(k) })
      return
    }
  }
}

/** The path of entry `key` (or item `index`) of `parent`, built only when something needs it. */
function childPath (parent: Frame | null, key: string, index: number): string {
  if (parent === null) return key
  if (parent.keys === null) return `${parent.path}[${index}]`
  return `${parent.path}.${key}`
}

export function analyse (endpoint: EndpointDefinition, body: unknown): RequestAnalysis {
  const out: RequestAnalysis = {
    endpoint,
    body: null,
    segments: [],
    media: null,
    tokenIds: null,
    estimateText: [],
    integers: 0,
    binaryParts: 0,
    storedRefs: [],
    members: 0,
    patched: new Set(),
    asciiText: false
  }
  if (!isContainer(body) || Array.isArray(body)) return out
  out.body = body
  const plan = planFor(endpoint)
  const stack: Frame[] = []
  let lastGroup: string | null = null

  /**
   * One entry of `parent` (null: a top-level field). `textGroup`: for a `text` string in an array item, the
   * array's path; `itemOf`: for an array item, the array's path.
   */
  function visit (value: unknown, key: string, index: number, parent: Frame | null, textGroup: string | null, itemOf: string | null): void {
    const prompt = parent === null ? plan.isPrompt.has(key) : parent.prompt
    if (typeof value === 'string') {
      if (!prompt) return
      if (value.length > BINARY_MIN_LENGTH && BINARY_KEYS.has(key)) out.binaryParts++
      else out.estimateText.push(value)
      if (NOT_TEXT_KEYS.has(key) || value.length === 0) return
      out.segments.push({ path: childPath(parent, key, index), text: value, joinsPrevious: textGroup !== null && textGroup === lastGroup })
      lastGroup = textGroup
      return
    }
    const tokens = parent === null ? plan.tokenFields.has(key) : parent.tokens
    if (typeof value === 'number') {
      if (!prompt) return
      if (Number.isInteger(value)) out.integers++
      if (tokens) out.tokenIds ??= childPath(parent, key, index)
      return
    }
    if (!isContainer(value)) return
    const depth = parent === null ? 1 : parent.depth + 1
    if (depth > MAX_DEPTH) throw new Error('request analysis: body nested too deeply to walk')
    const path = childPath(parent, key, index)
    if (Array.isArray(value)) {
      stack.push({ container: value, keys: null, at: 0, key, path, depth, prompt, tokens, group: null })
      return
    }
    const keys = Object.keys(value)
    out.members += keys.length
    if (out.storedRefs.length < 2) storedReferences(value, path, out.storedRefs)
    if (prompt && out.media === null && (MEDIA_TYPES.has(value.type as string) || MEDIA_KEYS.some((k) => Object.hasOwn(value, k)))) out.media = path
    stack.push({ container: value, keys, at: 0, key, path, depth, prompt, tokens, group: itemOf })
  }

  const keys = Object.keys(body)
  out.members = keys.length
  storedReferences(body, '', out.storedRefs)
  // Prompt fields first, in the table's order, then everything else (stored-data references, member count).
  const order = plan.promptFields.filter((k) => Object.hasOwn(body, k)).concat(keys.filter((k) => !plan.isPrompt.has(k)))
  for (const key of order) {
    visit(body[key], key, 0, null, null, null)
    for (let f = stack.at(-1); f !== undefined; f = stack.at(-1)) {
      const i = f.at++
      if (f.keys === null) {
        const items = f.container as unknown[]
        if (i < items.length) visit(items[i], f.key, i, f, null, f.path)
        else stack.pop()
      } else if (i < f.keys.length) {
        const k = f.keys[i] as string
        // `{type: "text", text}` parts of one content array run together; anything else starts a new run.
        visit((f.container as Record<string, unknown>)[k], k, i, f, k === 'text' ? f.group : null, null)
      } else {
        stack.pop()
      }
    }
  }
  return out
}

/**
 * The model a request names, where its table row says (the body, the path, or inside a body field: a
 * WebRTC call's `session`); undefined when it names none. The policy and a client key's scopes both judge it.
 */
export function requestedModel (analysis: RequestAnalysis, params: unknown): unknown {
  // Asked only for endpoints whose row says where the model is.
  const at = analysis.endpoint.model as NonNullable<EndpointDefinition['model']>
  let source = (at.in === 'body' ? analysis.body : params) as Record<string, unknown> | null | undefined
  if (at.under !== undefined) source = source?.[at.under] as Record<string, unknown> | null | undefined
  return source?.model
}

/** The top-level part of a parameter path: `messages[2].content` -> `messages`. */
export const topField = (path: string): string => path.slice(0, path.search(/[.[]|$/))

declare module 'fastify' {
  interface FastifyRequest {
    /** The client's body bytes and their scan (set by the json-body parser), for the forwarder. */
    oaiProxyRawBody: RawBody | null
    /** The one analysis of this request, made by the first pipeline step that asks (`analysisOf`). */
    oaiProxyAnalysis: RequestAnalysis | null
  }
}

/** Declare the request properties above on `app` (each plugin that uses them calls this; the first one wins). */
export function decorateAnalysis (app: FastifyInstance): void {
  if (!app.hasRequestDecorator('oaiProxyRawBody')) app.decorateRequest('oaiProxyRawBody', null)
  if (!app.hasRequestDecorator('oaiProxyAnalysis')) app.decorateRequest('oaiProxyAnalysis', null)
}

/**
 * The request's analysis: made once, by whichever step asks first (the policy, the filter, the budget or the
 * forwarder, whichever of them is registered), then shared. Null outside the proxy routes.
 */
export function analysisOf (request: FastifyRequest): RequestAnalysis | null {
  const known = request.oaiProxyAnalysis
  if (known !== null && known !== undefined) return known
  const endpoint = request.routeOptions.config.oaiProxyEndpoint
  if (endpoint === undefined) return null
  const analysis = analyse(endpoint, endpoint.method === 'POST' ? request.body : null)
  const raw = request.oaiProxyRawBody
  // A duplicate key means the body is re-serialised (request-body.ts); a long number would then change.
  if (raw !== null && raw !== undefined && raw.scan.longNumber && analysis.body !== null && hasDuplicateKeys(analysis, raw)) {
    throw proxyError('AMBIGUOUS_BODY')
  }
  // ASCII bytes without a `\u` escape (nor an escaped backslash followed by `u`) decode to ASCII strings
  // that hold no `\u` text either; without a `\b` or DEL, none holds a control that normalising removes.
  analysis.asciiText = raw !== null && raw !== undefined && !raw.scan.escapes && !raw.scan.controls && isAscii(raw.bytes)
  request.oaiProxyAnalysis = analysis
  return analysis
}

/**
 * Let go of the client's body once the forwarder has built what goes upstream (it keeps that alone, for a
 * retry on the next key). An answer can stream for minutes, and each one in flight held its prompt in the
 * bytes, the parsed body and the analysis' strings (docs/performance.md, "Large prompts in flight";
 * test/request-release.test.ts). Every reader runs before the forwarder, which is the last.
 */
export function releaseBody (request: FastifyRequest): void {
  request.oaiProxyRawBody = null
  request.oaiProxyAnalysis = null
  request.body = undefined
}
