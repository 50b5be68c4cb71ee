/*
 * One pass over the raw bytes of a JSON body, before it is parsed. It finds what JSON.parse does not tell:
 * - nesting depth, refused in linear time before any recursive code (TypeBox, JSON.stringify) could
 *   overflow the stack on `[[[[…]]]]`;
 * - how many object members the text holds: the parsed value holds fewer exactly when some object repeats a
 *   key (the last one wins), so comparing the two counts detects duplicate keys without a set per object;
 * - where each member of the top-level object starts and ends, so a member the request policy changes can be
 *   spliced into the original bytes instead of re-serialising the whole body;
 * - whether a number has more digits than a double holds exactly (a `seed` or token id beyond 2^53).
 * String contents are skipped with `indexOf` (memchr), so a prompt's text costs almost nothing; only the
 * structure between strings is looked at byte by byte. The result is meaningful only for text that
 * JSON.parse accepts: callers parse afterwards and refuse anything else.
 */

const QUOTE = 0x22
const BACKSLASH = 0x5c
const BACKSLASH_U = Buffer.from('\\u')
const BACKSLASH_B = Buffer.from('\\b')
const DEL = 0x7f

/** A member of the top-level object: `"key": value`, as byte offsets into the body. */
export interface TopMember {
  /** Offset of the key's opening quote. */
  start: number
  /** Offset just past the key's closing quote. */
  keyEnd: number
  /** Offset just past the value's last byte. */
  end: number
}

export interface JsonScan {
  /** Nesting went past the limit: the scan stopped there and the other fields are incomplete. */
  tooDeep: boolean
  /** Object members in the text (one per `:` outside strings). */
  members: number
  /** The members of the top-level object, in order; empty when the body is not an object. */
  top: TopMember[]
  /** Some number has more than 15 digits, so a double may not hold it exactly. */
  longNumber: boolean
  /** Nothing but whitespace. */
  blank: boolean
  /** Some string holds a `\u` escape (or an escaped backslash followed by `u`): text may differ from its bytes. */
  escapes: boolean
  /**
   * Some string may hold a control character that normalisation removes: a `\b` escape (backspace; the
   * other short escapes are whitespace) or a raw DEL. Either only makes text take the full normalisation.
   */
  controls: boolean
}

/** The offset just past the string whose opening quote is at `open`; -1 when it never closes. */
function stringEnd (bytes: Buffer, open: number): number {
  let at = open + 1
  for (;;) {
    const q = bytes.indexOf(QUOTE, at)
    if (q === -1) return -1
    // The quote is escaped when an odd number of backslashes precedes it.
    let k = q - 1
    while (bytes[k] === BACKSLASH) k--
    if ((q - 1 - k) % 2 === 0) return q + 1
    at = q + 1
  }
}

const isSpace = (c: number): boolean => c === 0x20 || c === 0x0a || c === 0x0d || c === 0x09

export function scanJson (bytes: Buffer, maxDepth: number): JsonScan {
  const out: JsonScan = { tooDeep: false, members: 0, top: [], longNumber: false, blank: true, escapes: bytes.indexOf(BACKSLASH_U) !== -1, controls: bytes.indexOf(BACKSLASH_B) !== -1 || bytes.indexOf(DEL) !== -1 }
  let depth = 0
  // True while inside the top-level object and the next string there would be a key.
  let rootIsObject = false
  let expectKey = false
  let member: TopMember | null = null
  // Offset just past the last significant byte: where the current top-level value ends.
  let lastEnd = 0
  const n = bytes.length
  for (let i = 0; i < n;) {
    const c = bytes[i] as number
    if (isSpace(c)) {
      i++
      continue
    }
    out.blank = false
    if (c === QUOTE) {
      const end = stringEnd(bytes, i)
      if (end === -1) return out
      if (depth === 1 && rootIsObject && expectKey) {
        member = { start: i, keyEnd: end, end }
        expectKey = false
      }
      lastEnd = i = end
      continue
    }
    if (c === 0x7b || c === 0x5b) { // { [
      if (++depth > maxDepth) {
        out.tooDeep = true
        return out
      }
      if (depth === 1 && c === 0x7b) {
        rootIsObject = true
        expectKey = true
      }
    } else if (c === 0x7d || c === 0x5d) { // } ]
      if (depth === 1 && member !== null) {
        member.end = lastEnd
        out.top.push(member)
        member = null
      }
      depth--
    } else if (c === 0x2c) { // ,
      if (depth === 1 && member !== null) {
        member.end = lastEnd
        out.top.push(member)
        member = null
        expectKey = true
      }
    } else if (c === 0x3a) { // :
      out.members++
    } else if ((c >= 0x30 && c <= 0x39) || c === 0x2d) {
      // A number: count its digits (a conservative test of whether a double holds it exactly).
      let digits = 0
      let j = i
      for (; j < n; j++) {
        const d = bytes[j] as number
        if (d >= 0x30 && d <= 0x39) digits++
        else if (d !== 0x2d && d !== 0x2b && d !== 0x2e && d !== 0x65 && d !== 0x45) break
      }
      if (digits > 15) out.longNumber = true
      lastEnd = i = j
      continue
    }
    lastEnd = ++i
  }
  return out
}
