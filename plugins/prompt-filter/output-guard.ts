import { StringDecoder } from 'node:string_decoder'
import { normalise, normaliseLong } from './normalise.js'
import { ruleSetFor, type RuleError, type RuleMatch, type RuleSet } from './filter-rules.js'
import type { ChunkFilter } from '../upstream/redact.js'
import { yieldTurn } from '../../lib/loop-budget.js'
import type { ReplyShape } from '../../schemas/endpoints.js'
import { FrameSplitter, endsFrame } from '../../lib/sse-frames.js'
import { OutputWindow } from './output-window.js'

/*
 * The output guardrail (threat F08): the operator's rules applied to generated text.
 * - Streams: each SSE frame's text delta is checked together with the last `windowChars` of the same output
 *   (a choice's content, a tool call's arguments, a Responses part), so a phrase cut across frames is
 *   caught, with bounded memory and no frame held back. The frame that completes a match is never sent:
 *   in its place the stream ends the way OpenAI ends a filtered one (`finish_reason: "content_filter"` for
 *   chat and completions, then `[DONE]`; `response.incomplete` with reason `content_filter` for Responses),
 *   and the upstream call is aborted. The text before it in earlier frames has gone out: at most the first
 *   part of the matched words.
 * - Whole answers: every output text is checked whole; a match replaces that choice's output (chat,
 *   completions) or the whole output (Responses) with OpenAI's filtered form.
 * The text is normalised as prompts are (plugins/prompt-filter/normalise.ts), so disguises are caught the same way.
 */

/** The largest frame of a stream the guard parses; a stream with a larger one is ended as filtered. */
const OUTPUT_FRAME_LIMIT = 4 * 1024 * 1024
const TOO_LARGE: RuleMatch = { id: 'frame_too_large', index: -1 }

/** The largest non-streamed answer the guard reads whole; a larger one is refused (it cannot be checked). */
export const OUTPUT_WHOLE_LIMIT = 16 * 1024 * 1024

export interface OutputRules {
  rules: RuleSet
  /** Characters of earlier text of the same output that a match may span. */
  windowChars: number
}

export interface OutputFilterOptions {
  phrases?: readonly string[] | undefined
  patterns?: readonly string[] | undefined
  windowChars?: number | undefined
}

/** Compile the rules once at start-up; throws naming the option entry that cannot be used. */
export function outputRules (opts: OutputFilterOptions | undefined): OutputRules | null {
  if (opts === undefined || ((opts.phrases?.length ?? 0) + (opts.patterns?.length ?? 0)) === 0) return null
  let rules: RuleSet
  try {
    rules = ruleSetFor(opts.phrases, opts.patterns)
  } catch (err) {
    const e = err as RuleError
    throw new Error(`oai-proxy: invalid option /outputFilter/${e.option}/${e.index}: ${e.message}`)
  }
  rules.warm()
  return { rules, windowChars: opts.windowChars ?? 1024 }
}

type Json = Record<string, unknown>
const isObject = (v: unknown): v is Json => typeof v === 'object' && v !== null && !Array.isArray(v)
const list = (v: unknown): Json[] => Array.isArray(v) ? v.filter(isObject) : []
const str = (v: unknown): string | null => typeof v === 'string' && v.length > 0 ? v : null

/** The text deltas of one stream frame (`choices`: its choices), each with the output it belongs to. */
function deltas (shape: ReplyShape, obj: Json, choices: Json[]): Array<[string, string]> {
  const out: Array<[string, string]> = []
  const add = (key: string, text: unknown): void => {
    const s = str(text)
    if (s !== null) out.push([key, s])
  }
  if (shape === 'response') {
    if (typeof obj.type === 'string' && obj.type.endsWith('.delta')) add(`${obj.type}:${String(obj.item_id)}:${String(obj.content_index ?? 0)}`, obj.delta)
    return out
  }
  for (const c of choices) {
    const i = String(c.index ?? 0)
    if (shape === 'text_completion') {
      add(`x${i}`, c.text)
      continue
    }
    const d = isObject(c.delta) ? c.delta : {}
    add(`c${i}`, d.content)
    add(`r${i}`, d.refusal)
    if (isObject(d.function_call)) add(`f${i}`, d.function_call.arguments)
    for (const tc of list(d.tool_calls)) if (isObject(tc.function)) add(`t${i}.${String(tc.index ?? 0)}`, tc.function.arguments)
  }
  return out
}

/**
 * A frame of one `data: ` line, the way OpenAI sends them: its data needs no splitting into lines. No other
 * line break may be in it (the blank line ends it; a CR anywhere would end a line too).
 */
const oneDataLine = (text: string): boolean => text.startsWith('data: ') && text.indexOf('\n') === text.length - 2 && !text.includes('\r')

/** A frame's data: one `data: ` line (OpenAI's frames, read without splitting), else every data line joined. */
function dataOf (frame: string): string {
  if (oneDataLine(frame)) return frame.slice(6, -2)
  return frame.split(/\r\n|\n|\r/).filter((l) => l.startsWith('data:')).map((l) => l.slice(5).trimStart()).join('\n')
}

const sse = (data: unknown): string => `data: ${JSON.stringify(data)}\n\n`

/** A stream stage (the redactor's `before` filter, plugins/upstream/redact.ts) that ends the stream at the first match. */
export class OutputGuard implements ChunkFilter {
  readonly #shape: ReplyShape
  readonly #rules: OutputRules
  readonly #onMatch: (rule: RuleMatch) => void
  readonly #windows = new Map<string, OutputWindow>()
  readonly #choices = new Set<number>()
  // Made for the first chunk that is not one whole frame: most streams never need them.
  #decoder: StringDecoder | null = null
  #frames: FrameSplitter | null = null
  /** Nothing is held from earlier chunks (in the decoder or the splitter): the last one ended a frame. */
  #clean = true
  /** Responses: the response object as last announced, and the last sequence number. */
  #response: Json = {}
  #sequence = 0
  ended = false

  constructor (shape: ReplyShape, rules: OutputRules, onMatch: (rule: RuleMatch) => void) {
    this.#shape = shape
    this.#rules = rules
    this.#onMatch = onMatch
  }

  // Never fed once ended: the redactor's stage drops the rest (plugins/upstream/redact.ts).
  feed (chunk: Buffer): Buffer | string {
    const whole = endsFrame(chunk)
    // After a chunk that ended a frame the decoder holds nothing, and a chunk that ends one too has no
    // character cut at its end: it is its own text.
    const fresh = this.#clean && whole
    const text = fresh ? chunk.toString('utf8') : (this.#decoder ??= new StringDecoder('utf8')).write(chunk)
    // Most chunks are one frame: no splitting needed.
    if (fresh && text.length <= OUTPUT_FRAME_LIMIT && oneDataLine(text)) return this.#data(text.slice(6, -2)) ?? chunk
    let out = ''
    const frames = (this.#frames ??= new FrameSplitter())
    frames.push(text, (frame) => {
      out += this.#frame(frame)
      return !this.ended
    })
    // A frame this large cannot be checked in one go without stalling every other stream: fail closed.
    if (!this.ended && frames.held > OUTPUT_FRAME_LIMIT) out += this.#stop(TOO_LARGE, {})
    // Most chunks are whole frames after whole frames: when none matched, the chunk itself goes on (the
    // text is exactly its bytes), not the text re-encoded.
    const same = this.#clean && whole && !this.ended
    this.#clean = whole && frames.held === 0
    return same ? chunk : out
  }

  finish (): string {
    const rest = (this.#frames?.end() ?? '') + (this.#decoder?.end() ?? '')
    return rest.length > 0 ? this.#frame(rest) : ''
  }

  #frame (frame: string): string {
    if (frame.length > OUTPUT_FRAME_LIMIT) return this.#stop(TOO_LARGE, {})
    return this.#data(dataOf(frame)) ?? frame
  }

  /** Check a frame's data: null when it may go out, else the frames that end the stream in its place. */
  #data (data: string): string | null {
    let obj: unknown
    try {
      obj = JSON.parse(data)
    } catch {
      return null
    }
    if (!isObject(obj)) return null
    const choices = list(obj.choices)
    for (const c of choices) if (typeof c.index === 'number') this.#choices.add(c.index)
    for (const [key, text] of deltas(this.#shape, obj, choices)) {
      const hit = this.#check(key, text)
      if (hit !== null) return this.#stop(hit, obj)
    }
    // Only frames that go out count: the end follows the last one the client saw.
    if (isObject(obj.response)) this.#response = obj.response
    if (typeof obj.sequence_number === 'number') this.#sequence = obj.sequence_number
    return null
  }

  /**
   * Each output's window is kept normalised: only the new delta is normalised (per character, so the pieces
   * join to the normal form of the whole), and plugins/prompt-filter/output-window.ts decides how much of it to match.
   */
  #check (key: string, delta: string): RuleMatch | null {
    let window = this.#windows.get(key)
    if (window === undefined) this.#windows.set(key, window = new OutputWindow(this.#rules.rules, this.#rules.windowChars))
    return window.check(normalise(delta))
  }

  #stop (rule: RuleMatch, obj: Json): string {
    this.ended = true
    this.#onMatch(rule)
    return this.#end(obj)
  }

  /** The frames that end a filtered stream, shaped after the frame that matched. */
  #end (obj: Json): string {
    if (this.#shape === 'response') {
      const response = { ...this.#response, status: 'incomplete', incomplete_details: { reason: 'content_filter' }, output: [] }
      return `event: response.incomplete\n${sse({ type: 'response.incomplete', sequence_number: this.#sequence + 1, response })}`
    }
    const indexes = this.#choices.size === 0 ? [0] : [...this.#choices].sort((a, b) => a - b)
    const choices = indexes.map((index) => this.#shape === 'text_completion'
      ? { index, text: '', logprobs: null, finish_reason: 'content_filter' }
      : { index, delta: {}, logprobs: null, finish_reason: 'content_filter' })
    return sse({ id: obj.id, object: obj.object, created: obj.created, model: obj.model, choices }) + 'data: [DONE]\n\n'
  }
}

/** The first rule any of `texts` matches, each checked whole (normalised in slices, yielding between). */
async function firstHit (rules: RuleSet, texts: Array<unknown>): Promise<RuleMatch | null> {
  for (const t of texts) {
    const s = str(t)
    if (s === null) continue
    await yieldTurn(s.length)
    const hit = rules.first(await normaliseLong(s))
    if (hit !== null) return hit
  }
  return null
}

/**
 * Check a whole JSON answer. Returns the answer to send instead (the filtered form) and the rule, or null
 * when nothing matched (then the original bytes go out untouched) or the body is not an answer.
 */
export async function checkWholeAnswer (shape: ReplyShape, bytes: Buffer, rules: OutputRules): Promise<{ body: Buffer, rule: RuleMatch } | null> {
  let obj: unknown
  try {
    obj = JSON.parse(bytes.toString('utf8'))
  } catch {
    return null
  }
  if (!isObject(obj)) return null
  let first: RuleMatch | null = null
  if (shape === 'response') {
    const texts = list(obj.output).flatMap((item) => [
      item.arguments, item.input,
      ...list(item.content).flatMap((part) => [part.text, part.refusal])
    ])
    first = await firstHit(rules.rules, texts)
    if (first === null) return null
    Object.assign(obj, { status: 'incomplete', incomplete_details: { reason: 'content_filter' }, output: [] })
  } else {
    for (const c of list(obj.choices)) {
      const m = isObject(c.message) ? c.message : {}
      const texts = shape === 'text_completion'
        ? [c.text]
        : [m.content, m.refusal, isObject(m.function_call) ? m.function_call.arguments : null, ...list(m.tool_calls).map((tc) => isObject(tc.function) ? tc.function.arguments : null)]
      const hit = await firstHit(rules.rules, texts)
      if (hit === null) continue
      first ??= hit
      if (shape === 'text_completion') Object.assign(c, { text: '', finish_reason: 'content_filter' })
      else Object.assign(c, { message: { role: 'assistant', content: null, refusal: null }, finish_reason: 'content_filter' })
    }
    if (first === null) return null
  }
  return { body: Buffer.from(JSON.stringify(obj)), rule: first }
}
