import type { JsonScan } from './json-scan.js'

/*
 * The bytes upstream receives. They must mean exactly what was validated and filtered, and cost as little as
 * possible: when the parsed body holds as many members as the text (no duplicate key, see json-scan.ts), the
 * client's own bytes already mean that, integers beyond 2^53 included, so they go as they are; top-level
 * fields the pipeline changed (output caps, `store`, `stream_options`) are spliced in as new members. Only a
 * body with a duplicate key is re-serialised, so upstream sees the value that was checked (the last one),
 * whatever its own parser would pick; json-body.ts refuses such a body when it also holds a number a
 * double cannot carry exactly.
 */

export interface RawBody {
  bytes: Buffer
  scan: JsonScan
}

/** What the forwarder needs of a request's analysis (lib/request-analysis.ts). */
export interface BodyState {
  /** The validated body, changed only through `setField`/`deleteField`. */
  body: Record<string, unknown> | null
  /** Object members in the parsed body. */
  members: number
  /** Top-level fields the pipeline set or removed. */
  patched: Set<string>
}

/** The parsed body repeats a key somewhere (JSON.parse kept the last value). */
export const hasDuplicateKeys = (analysis: BodyState, raw: RawBody): boolean => analysis.members !== raw.scan.members

/** Set a top-level field of the body we forward. */
export function setField (analysis: BodyState, key: string, value: unknown): void {
  (analysis.body as Record<string, unknown>)[key] = value
  analysis.patched.add(key)
}

/** Remove a top-level field from the body we forward. */
export function deleteField (analysis: BodyState, key: string): void {
  delete (analysis.body as Record<string, unknown>)[key]
  analysis.patched.add(key)
}

const OPEN = Buffer.from('{')
const COMMA = Buffer.from(',')
const CLOSE = Buffer.from('}')

/** The body to send upstream: the client's bytes when they can be shown to mean the checked value. */
export function upstreamBody (analysis: BodyState, raw: RawBody | null): Buffer | string {
  const body = analysis.body
  if (raw === null || hasDuplicateKeys(analysis, raw)) return JSON.stringify(body)
  if (analysis.patched.size === 0) return raw.bytes
  const parts: Buffer[] = []
  for (const m of raw.scan.top) {
    // Decoded only when it holds an escape; otherwise its bytes between the quotes are the key.
    const quoted = raw.bytes.subarray(m.start, m.keyEnd)
    const key = quoted.includes(0x5c) ? JSON.parse(quoted.toString('utf8')) as string : quoted.toString('utf8', 1, quoted.length - 1)
    if (!analysis.patched.has(key)) parts.push(raw.bytes.subarray(m.start, m.end))
  }
  for (const key of analysis.patched) {
    const value = (body as Record<string, unknown>)[key]
    if (value !== undefined) parts.push(Buffer.from(`${JSON.stringify(key)}:${JSON.stringify(value)}`))
  }
  const pieces: Buffer[] = [OPEN]
  parts.forEach((p, i) => pieces.push(...(i === 0 ? [p] : [COMMA, p])))
  pieces.push(CLOSE)
  return Buffer.concat(pieces)
}
