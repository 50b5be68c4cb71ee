import { randomBytes } from 'node:crypto'
import sjson from 'secure-json-parse'
import { scanJson } from '../../lib/json-scan.js'
import { redactBytes, redactText } from '../../plugins/upstream/redact.js'

/*
 * Reading Realtime events (JSON text messages). Client events are parsed whole, so what is checked is what
 * upstream reads: a message that is not one JSON object with a string `type`, or that repeats a key (JSON
 * parsers disagree on which copy wins), is refused rather than forwarded. Upstream events are only parsed
 * when a cheap byte search says they may be `response.done` (usage) or `error` (redaction); the rest, most
 * of them audio deltas, get the exact-secret cut that every upstream byte gets.
 */

export type ClientEvent = Record<string, unknown> & { type: string }
export type Parsed = { event: ClientEvent } | { refused: string }

/** Object members in a parsed value, counted like json-scan counts them in the text (depth already bounded). */
function members (v: unknown): number {
  if (Array.isArray(v)) return v.reduce((n: number, x) => n + members(x), 0)
  if (typeof v !== 'object' || v === null) return 0
  return Object.values(v).reduce((n: number, x) => n + 1 + members(x), 0)
}

const PROTO = Buffer.from('__proto__')
const CONSTRUCTOR = Buffer.from('constructor')

export function parseClientEvent (data: Buffer, binary: boolean, maxDepth: number): Parsed {
  if (binary) return { refused: 'Realtime events are JSON text messages; binary messages are not accepted.' }
  const scan = scanJson(data, maxDepth)
  if (scan.tooDeep) return { refused: `The event is nested deeper than ${maxDepth} levels.` }
  let event: unknown
  try {
    event = JSON.parse(data.toString('utf8'))
  } catch {
    return { refused: 'The event is not valid JSON.' }
  }
  // As JSON bodies (threat B06): a `__proto__` or `constructor.prototype` key is refused, not forwarded for
  // an upstream that merges objects to read settings the checks never saw. Only spelled out can they be there.
  if (data.indexOf(PROTO) !== -1 || data.indexOf(CONSTRUCTOR) !== -1 || scan.escapes) {
    try {
      sjson.scan(event as Record<string, unknown>, { protoAction: 'error', constructorAction: 'error' })
    } catch {
      return { refused: 'The event holds a __proto__ or constructor.prototype key.' }
    }
  }
  if (typeof event !== 'object' || event === null || Array.isArray(event) || typeof (event as ClientEvent).type !== 'string') {
    return { refused: 'An event is a JSON object with a string `type`.' }
  }
  if (members(event) !== scan.members) return { refused: 'The event repeats a key; send each key once.' }
  return { event: event as ClientEvent }
}

type Obj = Record<string, unknown>
const obj = (v: unknown): Obj | undefined => (typeof v === 'object' && v !== null && !Array.isArray(v) ? v as Obj : undefined)

/** Where an event carries its session or response settings: `session.update` and `response.create`. */
export function settingsOf (event: ClientEvent): { value: Obj, path: string } | undefined {
  if (event.type === 'session.update' || event.type === 'transcription_session.update') return { value: obj(event.session) ?? {}, path: 'session' }
  if (event.type === 'response.create') return { value: obj(event.response) ?? {}, path: 'response' }
  return undefined
}

/** A piece of text the model reads, with the parameter it came from; `joinsPrevious`: a part of the same message as the one before. */
export interface EventText { text: string, param: string, joinsPrevious: boolean }
/** Content parts the model cannot be checked on as text. */
const NON_TEXT_PARTS = new Set(['input_audio', 'input_image', 'audio', 'input_file'])

/** The text and the non-text inputs of one conversation item (`conversation.item.create`, `response.create`'s `input`). */
function readItem (raw: unknown, at: string, texts: EventText[], media: string[]): void {
  const item = obj(raw)
  if (item === undefined) return
  if (typeof item.output === 'string') texts.push({ text: item.output, param: `${at}.output`, joinsPrevious: false })
  if (typeof item.arguments === 'string') texts.push({ text: item.arguments, param: `${at}.arguments`, joinsPrevious: false })
  const parts = Array.isArray(item.content) ? item.content : []
  parts.forEach((p, j) => {
    const part = obj(p)
    if (part === undefined) return
    const param = `${at}.content[${j}]`
    if (typeof part.type === 'string' && NON_TEXT_PARTS.has(part.type)) media.push(param)
    for (const field of ['text', 'transcript'] as const) {
      const text = part[field]
      if (typeof text === 'string') texts.push({ text, param: `${param}.${field}`, joinsPrevious: j > 0 })
    }
  })
}

/** Every string under `value` but `type` values (enums of the wire format), with its parameter path. Depth is bounded by the scan. */
function strings (value: unknown, at: string, texts: EventText[]): void {
  if (typeof value === 'string') texts.push({ text: value, param: at, joinsPrevious: false })
  else if (Array.isArray(value)) value.forEach((v, i) => strings(v, `${at}[${i}]`, texts))
  else if (typeof value === 'object' && value !== null) for (const [k, v] of Object.entries(value)) if (k !== 'type') strings(v, `${at}.${k}`, texts)
}

/** A session's input transcription settings, in the GA shape (`audio.input.transcription`) and the beta one. */
export function transcriptionsOf (settings: Obj, path: string): Array<[string, Obj]> {
  const found: Array<[string, Obj]> = []
  const ga = obj(obj(obj(settings.audio)?.input)?.transcription)
  if (ga !== undefined) found.push([`${path}.audio.input.transcription`, ga])
  const beta = obj(settings.input_audio_transcription)
  if (beta !== undefined) found.push([`${path}.input_audio_transcription`, beta])
  return found
}

/** Everything of a client event the prompt filter reads, and where non-text input is. */
export function contentOf (event: ClientEvent): { texts: EventText[], media: string[] } {
  const texts: EventText[] = []
  const media: string[] = []
  if (event.type === 'input_audio_buffer.append') media.push('audio')
  if (event.type === 'conversation.item.create') readItem(event.item, 'item', texts, media)
  const settings = settingsOf(event)
  if (settings !== undefined) {
    const { value, path } = settings
    if (typeof value.instructions === 'string') texts.push({ text: value.instructions, param: `${path}.instructions`, joinsPrevious: false })
    if (Array.isArray(value.input)) value.input.forEach((item, i) => readItem(item, `${path}.input[${i}]`, texts, media))
    // Tools are read by the model whole (names, descriptions, JSON-schema descriptions and enums), as on HTTP.
    if (Array.isArray(value.tools)) strings(value.tools, `${path}.tools`, texts)
    for (const [at, t] of transcriptionsOf(value, path)) {
      if (typeof t.prompt === 'string') texts.push({ text: t.prompt, param: `${at}.prompt`, joinsPrevious: false })
    }
  }
  return { texts, media }
}

const eventId = (): string => `event_proxy_${randomBytes(9).toString('base64url')}`

/** A Realtime `error` event answering the client event `clientEventId`, shaped as OpenAI shapes its own. */
export function errorEvent (error: { type: string, code: string, message: string, param: string | null }, clientEventId: unknown): string {
  const about = typeof clientEventId === 'string' ? clientEventId : null
  return JSON.stringify({ type: 'error', event_id: eventId(), error: { type: error.type, code: error.code, message: error.message, param: error.param, event_id: about } })
}

const DONE = Buffer.from('"response.done"')
const ERROR = Buffer.from('"error"')

/**
 * An upstream message as the client gets it: exact secrets cut everywhere; in `error` events, key-shaped and
 * account-id-shaped text too (OpenAI quotes the key in auth errors). `usage`: the total tokens a
 * `response.done` reports.
 */
export function upstreamEvent (data: Buffer, secrets: readonly string[]): { out: Buffer | string, usage: number | null } {
  if (data.indexOf(DONE) === -1 && data.indexOf(ERROR) === -1) return { out: redactBytes(data, secrets), usage: null }
  let event: Obj | undefined
  try {
    event = obj(JSON.parse(data.toString('utf8')))
  } catch {}
  if (event?.type === 'error') {
    const error = obj(event.error) ?? {}
    for (const [k, v] of Object.entries(error)) if (typeof v === 'string') error[k] = redactText(v, secrets)
    return { out: JSON.stringify({ ...event, error }), usage: null }
  }
  const total = event?.type === 'response.done' ? obj(obj(event.response)?.usage)?.total_tokens : undefined
  return { out: redactBytes(data, secrets), usage: typeof total === 'number' && Number.isFinite(total) && total >= 0 ? total : null }
}
