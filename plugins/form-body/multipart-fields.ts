import sjson from 'secure-json-parse'
import { proxyError } from '../../errors.js'
import type { FieldKind, FileType, FormSpec } from '../../schemas/openai-uploads.js'
import { printable } from './multipart-headers.js'

/*
 * The text side of a form: which field a part's name is (the spec decides; anything else is refused), its
 * value converted to the field's kind, and the fields written back as parts for upstream. Names follow the
 * official SDKs, which write arrays as `name[]` parts and objects as `name[key]` parts (openai-node
 * internal/uploads.ts; openai-python's multipart serialiser uses the same "brackets" format).
 */

export type { FieldKind, FormSpec } from '../../schemas/openai-uploads.js'

export type Slot =
  | { file: false, field: string, kind: FieldKind, member: string | null }
  | { file: true, field: string, multiple: boolean, types: readonly FileType[] }

const BRACKETED = /^([^[\]]+)\[([^[\]]*)\]$/
/** Keys of a `json` object: plain names, never ones that reach an object's prototype. */
const MEMBER = /^[A-Za-z0-9_]{1,64}$/
const FORBIDDEN = new Set(['__proto__', 'constructor', 'prototype'])
const memberName = (key: string): boolean => MEMBER.test(key) && !FORBIDDEN.has(key)

const invalid = (field: string, detail: string): Error => proxyError('MULTIPART_INVALID', [`field '${field}' ${detail}`], { param: field })

/** The field a part's name stands for. `Object.hasOwn`: a name like `__proto__` must not find a prototype's member. */
export function slotOf (spec: FormSpec, name: string): Slot {
  const m = BRACKETED.exec(name)
  const base = m === null ? name : m[1] as string
  const sub = m === null ? null : m[2] as string
  if (Object.hasOwn(spec.fields, base)) {
    const kind = spec.fields[base] as FieldKind
    if (sub === null || (kind === 'strings' && sub === '')) return { file: false, field: base, kind, member: null }
    if (kind === 'json' && memberName(sub)) return { file: false, field: base, kind, member: sub }
  } else if (Object.hasOwn(spec.files, base)) {
    const file = spec.files[base] as FormSpec['files'][string]
    if (sub === null || (file.multiple && sub === '')) return { file: true, field: base, multiple: file.multiple, types: file.types }
  }
  const shown = printable(name)
  throw proxyError('MULTIPART_UNKNOWN_FIELD', [shown], { param: shown })
}

const INTEGER = /^-?(?:0|[1-9][0-9]*)$/
const NUMBER = /^-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?$/

function flatObject (value: unknown): value is Record<string, string | number | boolean> {
  if (typeof value !== 'object' || value === null || Array.isArray(value)) return false
  // An empty object would be sent as no part at all, which means something else upstream.
  const entries = Object.entries(value)
  return entries.length > 0 && entries.every(([k, v]) => memberName(k) && ['string', 'number', 'boolean'].includes(typeof v))
}

/** A text value as its kind (`strings` values and `json` members are handled by the caller). */
function convert (field: string, kind: FieldKind, text: string): unknown {
  switch (kind) {
    case 'integer':
      if (!INTEGER.test(text) || !Number.isSafeInteger(Number(text))) throw invalid(field, 'must be an integer')
      return Number(text)
    case 'number':
      if (!NUMBER.test(text) || !Number.isFinite(Number(text))) throw invalid(field, 'must be a number')
      return Number(text)
    case 'boolean':
      if (text !== 'true' && text !== 'false') throw invalid(field, "must be 'true' or 'false'")
      return text === 'true'
    case 'document': return documentOf(field, text)
    case 'json': {
      if (!text.trimStart().startsWith('{')) return text
      let parsed: unknown
      try { parsed = JSON.parse(text) } catch { parsed = null }
      if (!flatObject(parsed)) throw invalid(field, 'must be a string or a JSON object of strings, numbers and booleans')
      return parsed
    }
    default: return text
  }
}

/** A `document` field: one JSON object, any depth, without the keys that reach a prototype (as JSON bodies). */
function documentOf (field: string, text: string): Record<string, unknown> {
  let parsed: unknown
  try {
    parsed = sjson.parse(text, undefined, { protoAction: 'error', constructorAction: 'error' })
  } catch {
    parsed = null
  }
  if (typeof parsed !== 'object' || parsed === null || Array.isArray(parsed)) throw invalid(field, 'must be a JSON object')
  return parsed as Record<string, unknown>
}

interface OpenField { slot: Slot & { file: false }, chunks: Buffer[], length: number }

/** Text values by field, capped per field and in total while they arrive. */
export class FieldValues {
  readonly #values = new Map<string, unknown>()
  /** `json` fields built from `name[key]` parts, which may take more keys. */
  readonly #membered = new Set<string>()
  readonly #limits: { maxFieldBytes: number, maxFieldsBytes: number }
  readonly #decoder = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true })
  #open: OpenField | null = null
  #bytes = 0

  constructor (limits: { maxFieldBytes: number, maxFieldsBytes: number }) {
    this.#limits = limits
  }

  /** Bytes of text received (all of it is held). */
  get bytes (): number {
    return this.#bytes
  }

  has (field: string): boolean {
    return this.#values.has(field)
  }

  /** A text part has begun and not yet ended. */
  get receiving (): boolean {
    return this.#open !== null
  }

  open (slot: Slot & { file: false }): void {
    this.#open = { slot, chunks: [], length: 0 }
  }

  data (bytes: Buffer): void {
    const open = this.#open as OpenField
    open.length += bytes.length
    this.#bytes += bytes.length
    const field = open.slot.field
    if (open.length > this.#limits.maxFieldBytes) throw proxyError('MULTIPART_FIELD_TOO_LARGE', [`'${field}' is over ${this.#limits.maxFieldBytes} bytes`], { param: field })
    if (this.#bytes > this.#limits.maxFieldsBytes) throw proxyError('MULTIPART_FIELD_TOO_LARGE', [`all text fields together are over ${this.#limits.maxFieldsBytes} bytes`], { param: field })
    open.chunks.push(bytes)
  }

  /** The open field is complete: decode, convert and store it. */
  close (): void {
    const { slot, chunks } = this.#open as OpenField
    this.#open = null
    let text: string
    try { text = this.#decoder.decode(Buffer.concat(chunks)) } catch { throw invalid(slot.field, 'is not valid UTF-8') }
    const prior = this.#values.get(slot.field)
    if (slot.kind === 'strings') {
      // In place: a copy per value would make many values quadratic.
      if (prior === undefined) this.#values.set(slot.field, [text])
      else (prior as string[]).push(text)
    } else if (slot.member !== null && (prior === undefined || (this.#membered.has(slot.field) && !Object.hasOwn(prior as object, slot.member)))) {
      this.#values.set(slot.field, { ...prior as object, [slot.member]: text })
      this.#membered.add(slot.field)
    } else if (prior !== undefined) {
      throw invalid(slot.field, 'is given more than once')
    } else {
      this.#values.set(slot.field, convert(slot.field, slot.kind, text))
    }
  }

  toObject (): Record<string, unknown> {
    return Object.fromEntries(this.#values)
  }
}

const quoteName = (name: string): string => name.replace(/["\r\n]/g, encodeURIComponent)

/** A part header for upstream; the field names are the spec's, quoted the way browsers do (RFC 7578 §2). */
export function partHeader (boundary: string, name: string, file?: { name: string, type: string }): string {
  const disposition = `--${boundary}\r\nContent-Disposition: form-data; name="${quoteName(name)}"`
  return file === undefined ? `${disposition}\r\n\r\n` : `${disposition}; filename="${file.name}"\r\nContent-Type: ${file.type}\r\n\r\n`
}

function scalar (name: string, value: unknown): string {
  if (typeof value === 'string') return value
  if ((typeof value === 'number' && Number.isFinite(value)) || typeof value === 'boolean') return String(value)
  throw new TypeError(`form field ${name} cannot be sent as ${typeof value}`)
}

/**
 * The text fields as parts, in the given order: arrays as repeated `name[]` parts and objects as
 * `name[key]` parts, as the official SDKs send them (so a `json` object that arrived in either form goes
 * upstream in the one form OpenAI is known to take from its own SDKs). Undefined values are left out.
 */
export function fieldParts (boundary: string, fields: Record<string, unknown>, spec: FormSpec): Buffer {
  const parts: string[] = []
  const add = (name: string, value: unknown): void => { parts.push(partHeader(boundary, name), scalar(name, value), '\r\n') }
  for (const [name, value] of Object.entries(fields)) {
    // A document goes as the JSON text of what was checked (a WebRTC session: nested, as OpenAI's docs send it).
    if (spec.fields[name] === 'document') add(name, JSON.stringify(value))
    else if (Array.isArray(value)) for (const v of value) add(`${name}[]`, v)
    else if (typeof value === 'object' && value !== null) for (const [k, v] of Object.entries(value)) add(`${name}[${k}]`, v)
    else if (value !== undefined) add(name, value)
  }
  return Buffer.from(parts.join(''), 'utf8')
}
