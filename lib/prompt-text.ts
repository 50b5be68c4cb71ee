import type { PromptFields } from '../schemas/endpoints.js'

/*
 * Finds every piece of prompt text in a request body, guided by the endpoint table (`prompt.text` names the
 * top-level fields; everything beneath them is walked). Walking whole subtrees rather than listing known
 * fields is deliberate: text hides in tool outputs, tool-call arguments, `name` fields, JSON-schema
 * descriptions, Responses items and fields OpenAI has not invented yet, and a filter that only reads the
 * fields it knows about is a filter with a published bypass list. What is *not* text is the short list
 * below. The walk is iterative (no recursion, whatever the nesting).
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

export interface PromptSegment {
  /** Where the text sits, as OpenAI names parameters: `messages[2].content[0].text`. */
  path: string
  text: string
  /** A text part following a text part of the same content array: the model reads them as one run of text. */
  joinsPrevious: boolean
}

export interface PromptScan {
  segments: PromptSegment[]
  /** The first image, audio or file found, if any. */
  media: string | null
  /** The first token id found where a field may hold token ids instead of text (threat B12). */
  tokens: string | null
}

/** Deeper than the JSON body guard allows: something is wrong, so fail closed. */
const MAX_DEPTH = 256

interface Frame { value: unknown, path: string, key: string, depth: number, tokens: boolean, group: string | null }

export function scanPrompt (body: unknown, fields: PromptFields): PromptScan {
  const out: PromptScan = { segments: [], media: null, tokens: null }
  if (typeof body !== 'object' || body === null) return out
  const record = body as Record<string, unknown>
  const tokenFields = new Set(fields.tokens ?? [])
  const stack: Frame[] = []
  for (const key of [...fields.text].reverse()) {
    if (Object.hasOwn(record, key)) stack.push({ value: record[key], path: key, key, depth: 1, tokens: tokenFields.has(key), group: null })
  }
  let lastGroup: string | null = null
  for (let frame = stack.pop(); frame !== undefined; frame = stack.pop()) {
    const { value, path, key, depth } = frame
    if (depth > MAX_DEPTH) throw new Error('prompt filter: body nested too deeply to scan')
    if (typeof value === 'string') {
      if (NOT_TEXT_KEYS.has(key) || value.length === 0) continue
      out.segments.push({ path, text: value, joinsPrevious: frame.group !== null && frame.group === lastGroup })
      lastGroup = frame.group
    } else if (typeof value === 'number') {
      if (frame.tokens) out.tokens ??= path
    } else if (Array.isArray(value)) {
      for (let i = value.length - 1; i >= 0; i--) {
        stack.push({ value: value[i], path: `${path}[${i}]`, key, depth: depth + 1, tokens: frame.tokens, group: null })
      }
    } else if (typeof value === 'object' && value !== null) {
      const obj = value as Record<string, unknown>
      if (out.media === null && (MEDIA_TYPES.has(obj.type as string) || MEDIA_KEYS.some((k) => Object.hasOwn(obj, k)))) out.media = path
      // `{type: "text", text}` parts of one content array run together; anything else starts a new run.
      const group = path.endsWith(']') ? path.replace(/\[\d+\]$/, '') : null
      const keys = Object.keys(obj)
      for (let i = keys.length - 1; i >= 0; i--) {
        const k = keys[i] as string
        stack.push({ value: obj[k], path: `${path}.${k}`, key: k, depth: depth + 1, tokens: frame.tokens, group: k === 'text' ? group : null })
      }
    }
  }
  return out
}

/** The top-level part of a parameter path: `messages[2].content` -> `messages`. */
export const topField = (path: string): string => path.slice(0, path.search(/[.[]|$/))
