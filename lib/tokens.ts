/*
 * Prompt token estimates for admission (tokens per minute). The real count arrives with the response's
 * `usage` and settles the reservation; this only has to be close, cheap and safe on hostile input:
 * - BPE merges go quadratic on long runs without spaces, so runs are broken every 64 characters
 *   (a small overcount; linear time);
 * - special-token text such as `<|endoftext|>` is counted as plain text instead of throwing.
 */

const TEXT_AS_TEXT = { disallowedSpecial: new Set<string>() }
const MAX_RUN = /\S{64}/g
/** Images, audio and files are billed by OpenAI's own rules, not by their base64 length: count a flat cost. */
const BINARY_TOKENS = 1000
const BINARY_KEYS = new Set(['image_url', 'url', 'file_data', 'data', 'input_audio', 'audio'])
/** Per-message framing OpenAI adds (role, separators). */
const PER_MESSAGE = 4

type Count = (text: string, options: typeof TEXT_AS_TEXT) => number
let encodings: { o200k: Count, cl100k: Count } | undefined

/**
 * Load the BPE tables (about 75 MB of RSS and a quarter second), only when a token budget is on. Until
 * then estimates fall back to one token per three characters, an overcount.
 */
export async function loadTokenizers (): Promise<void> {
  if (encodings !== undefined) return
  const [o200k, cl100k] = await Promise.all([import('gpt-tokenizer/encoding/o200k_base'), import('gpt-tokenizer/encoding/cl100k_base')])
  encodings = { o200k: o200k.countTokens, cl100k: cl100k.countTokens }
}

/** Models before gpt-4o use cl100k_base; everything newer (gpt-4o, 4.1, o-series, 5) uses o200k_base. */
function counterFor (model: unknown): (text: string) => number {
  if (encodings === undefined) return (text) => Math.ceil(text.length / 3)
  const legacy = /^(gpt-4(?!o|\.\d)|gpt-3\.5|text-embedding|davinci|babbage)/.test(String(model).replace(/^ft:/, ''))
  const count = legacy ? encodings.cl100k : encodings.o200k
  return (text) => count(text.replace(MAX_RUN, '$& '), TEXT_AS_TEXT)
}

/**
 * Tokens in every string under the endpoint's prompt fields (the endpoint table's `prompt.text`), binary
 * payloads at a flat cost, walking iteratively (bodies are depth-capped already, but a walker must never
 * recurse on client data).
 */
export function estimatePromptTokens (body: Record<string, unknown>, fields: readonly string[]): number {
  const count = counterFor(body.model)
  const messages = body.messages
  let total = Array.isArray(messages) ? messages.length * PER_MESSAGE : 0
  let text = ''
  const stack: unknown[] = fields.map((f) => body[f])
  while (stack.length > 0) {
    const node = stack.pop()
    if (typeof node === 'string') {
      text += node + '\n'
    } else if (Array.isArray(node)) {
      for (const item of node) stack.push(item)
    } else if (typeof node === 'object' && node !== null) {
      for (const [key, value] of Object.entries(node)) {
        if (BINARY_KEYS.has(key) && typeof value === 'string' && value.length > 256) total += BINARY_TOKENS
        else stack.push(value)
      }
    } else if (typeof node === 'number' && Number.isInteger(node)) {
      // Token-id prompts (`prompt: [1, 2, 3]`) are one token per id.
      total += 1
    }
  }
  return total + (text.length > 0 ? count(text) : 0)
}

/** The output the request may produce: its own cap if it sets one, else `fallback`. */
export function outputCap (body: unknown, fields: readonly string[], fallback: number): number {
  const b = body as Record<string, unknown>
  const caps = fields.map((f) => b[f]).filter((v): v is number => typeof v === 'number' && v > 0)
  const n = typeof b.n === 'number' && b.n > 1 ? Math.floor(b.n) : 1
  return (caps.length > 0 ? Math.min(...caps) : fallback) * n
}
