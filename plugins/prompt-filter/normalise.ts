import { createRequire } from 'node:module'
import { yieldTurn } from '../../lib/loop-budget.js'

/*
 * The form prompt text is matched in. Both the text and every phrase go through the same steps, so a
 * phrase matches whatever looks or reads the same:
 *   0. `\uXXXX` escapes left in the text are decoded.
 *   1. NFKD: fullwidth, math-alphanumeric, circled and ligature forms become their plain letters, and
 *      accented letters split into letter + combining mark.
 *   2. Case folding: lower-casing, plus ß/ss and final sigma/sigma, which full case folding adds (ſ/s and
 *      ı/i come from steps 1 and 4).
 *   3. Removal of combining marks (diacritics, variation selectors, the combining grapheme joiner),
 *      default-ignorable code points (zero-width spaces and joiners, word joiner, BOM, soft hyphen,
 *      Hangul fillers, tag characters), format characters (bidi controls), control characters other than
 *      the whitespace ones (NUL, backspace, ESC, DEL, C1 controls but NEL) and unpaired surrogates: the
 *      model reads `ign<NUL>ore` as `ignore`, so the filter must too. Tab, line breaks, VT, FF and NEL stay:
 *      they separate words.
 *   4. Homoglyphs: every non-ASCII character that Unicode's confusables table (UTS #39, shipped by the
 *      maintained `unhomoglyph` package) maps to printable ASCII is replaced by that ASCII, so Cyrillic
 *      `іgnоrе` reads `ignore`. ASCII itself is left alone: the full skeleton would also turn `m` into
 *      `rn` and `0` into `o`, which makes ordinary words collide and regexes mean something else.
 */

const confusables = createRequire(import.meta.url)('unhomoglyph/data.json') as Record<string, string>

/**
 * Steps 3 and 4 as one table, by UTF-16 code unit (BMP) or code point (astral): a lookup per non-ASCII
 * character is several times cheaper than regexes with thousand-character classes and a callback per match.
 */
const BMP: Array<string | undefined> = new Array<string | undefined>(0x10000).fill(undefined)
const ASTRAL = new Map<number, string>()
function replace (cp: number, to: string): void {
  if (cp > 0xffff) ASTRAL.set(cp, to)
  else BMP[cp] = to
}
for (const [from, to] of Object.entries(confusables)) {
  // The table's keys are single, non-empty characters.
  const cp = from.codePointAt(0) as number
  if (cp < 0x80) continue
  const ascii = to.normalize('NFKD').toLowerCase()
  if (/^[\x20-\x7e]+$/.test(ascii)) replace(cp, ascii)
}
// Full case folding where it differs from lower-casing (JS has no NFKC_Casefold): ß/ss, and final sigma
// read as the sigma the table knows (`o`; test/plugins/prompt-filter/normalise.test.ts checks they stay the same).
replace(0xdf, 'ss')
replace(0x3c2, BMP[0x3c3] as string)
// Marks, default-ignorables and format characters live in planes 0, 1 and 14 (tags, variation selectors).
const INVISIBLE = /[\p{M}\p{Default_Ignorable_Code_Point}\p{Cf}]/u
for (const [start, end] of [[0x80, 0x1ffff], [0xe0000, 0xeffff]] as const) {
  for (let cp = start; cp <= end; cp++) {
    if ((cp < 0xd800 || cp > 0xdfff) && INVISIBLE.test(String.fromCodePoint(cp))) replace(cp, '')
  }
}

// C1 controls except NEL, and every surrogate code unit: a valid pair is looked up whole (ASTRAL), so only
// an unpaired one is ever looked up here.
for (let cp = 0x80; cp <= 0x9f; cp++) if (cp !== 0x85) replace(cp, '')
for (let cp = 0xd800; cp <= 0xdfff; cp++) replace(cp, '')

const NON_ASCII = /\P{ASCII}/u
/** C0 controls that are not whitespace, and DEL: matching them is the point. */
// eslint-disable-next-line no-control-regex
const CONTROLS = /[\x00-\x08\x0e-\x1f\x7f]/g
const JSON_ESCAPE_RE = /\\u([0-9a-fA-F]{4})/g

function mapCharacters (text: string): string {
  // Pieces joined once: `+=` would build a rope of one node per replacement (a third of all letters in
  // Cyrillic text), whose later flattening stalls the event loop.
  const out: string[] = []
  let last = 0
  for (let i = 0; i < text.length; i++) {
    const c = text.charCodeAt(i)
    if (c < 0x80) continue
    const next = text.charCodeAt(i + 1)
    const astral = c >= 0xd800 && c < 0xdc00 && next >= 0xdc00 && next < 0xe000
    const to = astral ? ASTRAL.get(text.codePointAt(i) as number) : BMP[c]
    if (to !== undefined) {
      if (i > last) out.push(text.slice(last, i))
      out.push(to)
      last = i + (astral ? 2 : 1)
    }
    if (astral) i++
  }
  if (last === 0) return text
  out.push(text.slice(last))
  return out.join('')
}

/** The matching form of a short string (see above). Pure and synchronous. */
export function normalise (text: string): string {
  // `\u0069gnore` inside a string that is itself JSON (tool-call arguments, tool outputs) or typed by hand
  // reads as `ignore` to the model: decode such escapes first.
  const unescaped = text.includes('\\u') ? text.replace(JSON_ESCAPE_RE, (_, hex: string) => String.fromCharCode(parseInt(hex, 16))) : text
  const decoded = unescaped.replace(CONTROLS, '')
  // Plain ASCII (most prompts) only needs lower-casing.
  if (!NON_ASCII.test(decoded)) return decoded.toLowerCase()
  return mapCharacters(decoded.normalize('NFKD').toLowerCase())
}

/** Characters normalised in one synchronous step. */
const SLICE_CHARS = 32 * 1024

/**
 * Where a long string may be cut without changing its normal form: just before an ASCII character, which
 * has combining class 0, so no decomposition or canonical reordering crosses it; the one context-sensitive
 * case mapping (final sigma) ends up as the same homoglyph either way. Falls back to any non-mark
 * character, then to a hard cut.
 */
function cutPoint (text: string, from: number, to: number): number {
  if (to >= text.length) return text.length
  for (let i = to; i > from + SLICE_CHARS / 2; i--) {
    // ...but not inside a `\uXXXX` escape, which must be decoded whole.
    if (text.charCodeAt(i) < 0x80 && !text.slice(i - 5, i).includes('\\')) return i
  }
  for (let i = to; i > from + SLICE_CHARS / 2; i--) {
    const c = text.charCodeAt(i)
    const lowSurrogate = c >= 0xdc00 && c < 0xe000
    if (!lowSurrogate && !/\p{M}/u.test(text.charAt(i))) return i
  }
  // A run of marks this long (Zalgo text) normalises to nothing anyway. It cannot end inside a surrogate
  // pair: the loop above stops at any high surrogate, so only a lone low surrogate can sit at `to`.
  return to
}

/** `normalise` for text of any length, in slices, yielding to the event loop between them. */
export async function normaliseLong (text: string): Promise<string> {
  if (text.length <= SLICE_CHARS) return normalise(text)
  const parts: string[] = []
  for (let at = 0; at < text.length;) {
    const end = cutPoint(text, at, at + SLICE_CHARS)
    parts.push(normalise(text.slice(at, end)))
    at = end
    await yieldTurn(SLICE_CHARS)
  }
  return parts.join('')
}
