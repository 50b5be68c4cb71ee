/*
 * Prompt-token estimates for admission (tokens per minute) without a tokenizer. The reservation is
 * settled with upstream's real `usage`, so an estimate only has to be cheap and not under the truth.
 * One estimate serves both encodings (o200k_base and cl100k_base): every weight below is the larger of
 * the two. Measured against gpt-tokenizer in test/lib/token-estimate.test.ts; see docs/rate-limiting.md.
 *
 * The scan walks a simplified copy of the tokenizers' pre-split (words, 1-3 digit groups, punctuation
 * runs, whitespace runs) and charges each piece. A word costs one token plus extra for what BPE cannot
 * merge: letter pairs with no vowel that are not common English clusters (random text, ~45% of pairs,
 * ~1% in English), case flips, accents, and length past LONG_WORD letters.
 */

/** Images, audio and files are billed by OpenAI's own rules, not by their base64 length: count a flat cost. */
export const BINARY_TOKENS = 1000
/** Object keys whose long string values are binary payloads (base64, data URLs). */
export const BINARY_KEYS: ReadonlySet<string> = new Set(['image_url', 'url', 'file_data', 'data', 'input_audio', 'audio'])
/** A string under a binary key counts as binary past this length (shorter ones are ids or http URLs). */
export const BINARY_MIN_LENGTH = 256
/** Per-message framing OpenAI adds (role, separators). */
export const PER_MESSAGE = 4
/**
 * Every estimate is at least UTF-8 bytes / WORST_CASE_FACTOR, and a byte-level BPE token covers at least
 * one byte, so no text can use more than WORST_CASE_FACTOR times its estimate.
 */
export const WORST_CASE_FACTOR = 4

/** Up to this many UTF-16 units the whole text is scanned; longer text is sampled in WINDOWS windows. */
const FULL_SCAN = 16_384
const WINDOWS = 64
/** Safety margin over the scan's sum (calibration error on text unlike the corpus, sampling error). */
const MARGIN = 1.05

const LONG_WORD = 7 // letters a common word covers in one token
const LONG_WORD_COST = 0.5 // per letter past that
const RARE_PAIR = 1.2 // a letter pair BPE rarely merges
const SWITCH = 1.25 // letters next to digits (hex, base64, ids) split more than a piece each
const PUNCT_FREE = 2 // punctuation runs such as `();` or `=>` are one token
const PUNCT_COST = 0.7 // per character past that (random punctuation: 0.66)
const PUNCT_REPEAT = 0.25 // `-----`, `=====` merge into long tokens
const SPECIAL = 3 // `<|`: gpt-tokenizer splits special-token text (`<|endoftext|>`) into 6-7 tokens
const WS_SAME = 1 / 16 // runs of one whitespace character merge (up to 16-128 per token)
const WS_MIXED = 0.65 // mixed whitespace such as ` \t\n\r`
const LATIN = 2 // an accented letter: at least one token, and the word restarts after it
const ACCENT = -1 // marks accented Latin letters in WIDE_COST

const LOWER = 1; const UPPER = 2; const DIGIT = 3; const SPACE = 4; const BLANK = 5; const PUNCT = 6
const CONTROL = 7; const ACCENTED = 8; const WIDE = 9

const ASCII = new Uint8Array(128).map((_, c) => {
  if (c >= 97 && c <= 122) return LOWER
  if (c >= 65 && c <= 90) return UPPER
  if (c >= 48 && c <= 57) return DIGIT
  if (c === 32) return SPACE
  if (c === 9 || c === 10 || c === 13) return BLANK
  return c < 32 || c === 127 ? CONTROL : PUNCT
})

/** 26x26 letter pairs, 1 when English merges it: any pair with a vowel, or a common consonant cluster. */
const COMMON_PAIR = new Uint8Array(26 * 26)
const CLUSTERS = ('th sh ch wh ph gh ck ng nd nt nc nk ns st sp sc sk sm sn sl sw tr pr br cr dr fr gr wr pl bl cl fl ' +
  'gl rt rd rn rm rs rk rl rc rg rv rp rb rf rh rw lt ld lk lm lp ls lf lv ll ss tt ff pp mm nn rr dd cc bb gg zz ' +
  'mp mb ct pt ft xt wn ws ts ds ks ps ms gs bs cs nf hr hn ht hl hm sq tw dw').split(' ')
for (let a = 0; a < 26; a++) {
  for (let b = 0; b < 26; b++) {
    const pair = String.fromCharCode(97 + a, 97 + b)
    COMMON_PAIR[a * 26 + b] = /[aeiouy]/.test(pair) || CLUSTERS.includes(pair) ? 1 : 0
  }
}

/**
 * Tokens per UTF-16 unit outside ASCII, by block: [first unit, weight]; each runs to the next entry.
 * The weights cover cl100k_base, which needs 2-3x the tokens of o200k_base on most scripts.
 */
const WIDE_RANGES: ReadonlyArray<readonly [number, number]> = [
  [0x80, 2], // C1 controls: one token per byte
  [0xa0, ACCENT], // Latin-1 and Latin Extended: accented letters
  [0x250, 1.5], // IPA, modifier letters, combining marks
  [0x370, 1.1], // Greek
  [0x400, 0.7], // Cyrillic (Russian 0.41, Ukrainian 0.61 per character in cl100k)
  [0x530, 1.25], // Armenian, Hebrew
  [0x600, 0.95], // Arabic
  [0x700, 1.35], // other alphabets: Syriac, Indic, Thai, Georgian, Ethiopic...
  [0x1e00, ACCENT], // Latin Extended Additional (Vietnamese)
  [0x1f00, 1.35], // Greek Extended
  [0x2000, 2], // zero-width and bidi controls: up to 2 tokens each in cl100k
  [0x2010, 1], // dashes, quotes, ellipsis: common in prose, single tokens
  [0x2028, 2], // symbols, arrows, dingbats (✨ ✅ ❤): often 2 tokens each in cl100k
  [0x2e80, 1.35], // CJK, kana, Hangul (0.96-1.14 per character in cl100k)
  [0xd800, 1.5], // surrogate halves: an emoji or other astral character costs 3 (flags: 3 per letter)
  [0xe000, 2], // private use, variation selectors, BOM
  [0xff00, 1.35], // fullwidth forms (CJK punctuation)
  [0xfff0, 2],
]
const WIDE_COST = new Float32Array(0x10000 - 0x80)
for (const [i, [from, weight]] of WIDE_RANGES.entries()) WIDE_COST.fill(weight, from - 0x80, (WIDE_RANGES[i + 1]?.[0] ?? 0x10000) - 0x80)

/** A space joins the word or punctuation after it; before a digit, whitespace, a control or the end it is a token. */
function standsAlone (text: string, next: number): boolean {
  if (next === text.length) return true
  const kind = ASCII[text.charCodeAt(next)]
  return kind === DIGIT || kind === SPACE || kind === BLANK || kind === CONTROL
}

/** The scan's cost of text[start, end): one pass, no allocation. */
function scan (text: string, start: number, end: number): number {
  let cost = 0
  let prev = 0 // class of the previous unit
  let prevCode = -1
  let run = 0 // letters in the current word piece, or digits in the current number, or punctuation
  let upper = 0 // uppercase letters in a row
  let letter = 0 // previous letter, 0-25
  for (let i = start; i < end; i++) {
    const c = text.charCodeAt(i)
    if (c >= 97 && c <= 122 && prev === LOWER) {
      // The commonest unit, a lower-case letter inside a lower-case word, first (~20% faster on English);
      // the general branch below charges it the same. After a lower-case letter `upper` is already 0.
      const l = c - 97
      if (COMMON_PAIR[letter * 26 + l] === 0) {
        cost += RARE_PAIR
        run = 1
      } else if (++run > LONG_WORD) {
        cost += LONG_WORD_COST
      }
      letter = l
      prevCode = c
      continue
    }
    const kind = c < 128 ? ASCII[c] as number : WIDE_COST[c - 0x80] === ACCENT ? ACCENTED : WIDE
    if (kind === LOWER || kind === UPPER) {
      const l = (c | 0x20) - 97
      if (prev !== LOWER && prev !== UPPER) {
        cost += prev === DIGIT ? SWITCH : 1
        run = 1
      } else if ((kind === UPPER && prev === LOWER) || (kind === LOWER && upper >= 2)) {
        cost += 1 // a case flip starts a piece: `camelCase`, `HTTPServer`
        run = 1
      } else if (COMMON_PAIR[letter * 26 + l] === 0) {
        cost += RARE_PAIR
        run = 1
      } else if (++run > LONG_WORD) {
        cost += LONG_WORD_COST
      }
      letter = l
      upper = kind === UPPER ? upper + 1 : 0
    } else {
      upper = 0
      if (kind === DIGIT) {
        if (prev !== DIGIT) {
          cost += prev === LOWER || prev === UPPER || prev === ACCENTED ? SWITCH : 1
          run = 1
        } else if (++run % 3 === 1) {
          cost += 1
        }
      } else if (kind === SPACE || kind === BLANK) {
        if (prev === SPACE || prev === BLANK) {
          cost += c === prevCode ? WS_SAME : WS_MIXED
        } else if (kind === BLANK || standsAlone(text, i + 1)) {
          cost += 1
        }
      } else if (kind === PUNCT) {
        if (c === 124) {
          cost += prevCode === 60 ? SPECIAL : 1
        } else if (prev !== PUNCT || prevCode === 124) {
          cost += 1
          run = 1
        } else if (c === prevCode) {
          cost += PUNCT_REPEAT
        } else if (++run > PUNCT_FREE) {
          cost += PUNCT_COST
        }
      } else if (kind === CONTROL) {
        cost += 1
      } else if (kind === ACCENTED) {
        cost += LATIN
      } else {
        cost += WIDE_COST[c - 0x80] as number
      }
    }
    prev = kind
    prevCode = c
  }
  return cost
}

/**
 * Tokens `text` is likely to use, between UTF-8 bytes / WORST_CASE_FACTOR and UTF-8 bytes. Up to
 * FULL_SCAN units the whole text is scanned (a few times the cost of a bare charCodeAt loop, ~0.1 ms at
 * 16K); longer text is scanned in WINDOWS windows of FULL_SCAN / WINDOWS units, one per equal stratum,
 * and scaled, so the JavaScript work per call is bounded and the rest is one native UTF-8 length (skipped
 * for `ascii` text, one byte a unit: ~25 µs at 256 KB).
 */
export function estimateTextTokens (text: string, ascii = false): number {
  const bytes = ascii ? text.length : Buffer.byteLength(text, 'utf8')
  let cost: number
  if (text.length <= FULL_SCAN) {
    cost = scan(text, 0, text.length)
  } else {
    const width = FULL_SCAN / WINDOWS
    const stratum = (text.length - width) / WINDOWS
    cost = 0
    for (let w = 0; w < WINDOWS; w++) {
      // a fixed pseudo-random offset inside each stratum, so periodic text (records, tables) cannot alias
      const start = Math.floor(stratum * (w + ((w * 0.6180339887) % 1)))
      cost += scan(text, start, start + width)
    }
    cost *= text.length / FULL_SCAN
  }
  // never above the UTF-8 length: byte-level BPE cannot produce more tokens than bytes
  return Math.min(bytes, Math.ceil(Math.max(cost * MARGIN, bytes / WORST_CASE_FACTOR)))
}

/** What the estimate reads of a request's analysis (lib/request-analysis.ts). */
export interface PromptInputs {
  body: Record<string, unknown> | null
  /** Every string under the prompt fields but binary payloads. */
  estimateText: readonly string[]
  binaryParts: number
  integers: number
  /** Every string in the body is ASCII (lib/request-analysis.ts). */
  asciiText: boolean
}

/**
 * Prompt tokens of an analysed request (lib/request-analysis.ts): binary payloads at a flat cost, token ids
 * one each, the framing of each chat message, and the text. A long string (past FULL_SCAN) is estimated on
 * its own, from samples; the short ones are estimated together, so the JavaScript work stays bounded however
 * many strings a body holds, and no large string is copied into a joined one.
 */
export function estimatePrompt (analysis: PromptInputs): number {
  const messages = analysis.body?.messages
  let tokens = (Array.isArray(messages) ? messages.length * PER_MESSAGE : 0) + analysis.binaryParts * BINARY_TOKENS + analysis.integers
  const short: string[] = []
  for (const text of analysis.estimateText) {
    if (text.length > FULL_SCAN) tokens += estimateTextTokens(text, analysis.asciiText)
    else short.push(text)
  }
  return tokens + (short.length === 0 ? 0 : estimateTextTokens(short.join('\n'), analysis.asciiText))
}

/** The output the request may produce: its own cap if it sets one, else `fallback`. */
export function outputCap (body: unknown, fields: readonly string[], fallback: number): number {
  const b = body as Record<string, unknown>
  const caps = fields.map((f) => b[f]).filter((v): v is number => typeof v === 'number' && v > 0)
  const n = typeof b.n === 'number' && b.n > 1 ? Math.floor(b.n) : 1
  return (caps.length > 0 ? Math.min(...caps) : fallback) * n
}
