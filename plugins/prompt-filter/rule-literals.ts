/*
 * Screening for the prompt filter's RE2 set. re2js runs its automaton at ~150 MB/s in JavaScript: 1.7 ms on
 * a 256 KB prompt, whatever the rules. Most prompts match no rule, and most rules cannot match without some
 * literal text (`jail\s*break` needs "jail"): V8's own regex engine finds plain literals in a fraction of
 * that time. So each rule gets a *necessary condition*, a few strings one of which every match contains;
 * when no rule's condition holds, no rule can match and the automaton is skipped. When one holds, the full
 * set runs as before, so the screen only ever saves work, never changes a verdict.
 *
 * The conditions are computed conservatively from the pattern's syntax: anything this small parser does
 * not fully understand (flags, `\Q…\E`, non-ASCII literals, ...) gives "no condition", and such a rule runs
 * on every prompt. Literals are lower-cased: rules run case-insensitively on normalised text, which is lower
 * case, and no character normalisation leaves behind folds to an ASCII letter other than that letter.
 */

/** What a piece of pattern can match: every string it matches, if few and known; else the strings one of which it must contain. */
interface Info {
  /** All strings the piece matches, when there are at most MAX_SET; null otherwise. */
  exact: string[] | null
  /** Strings one of which every match contains; null when nothing is known. */
  required: string[] | null
}

const MAX_SET = 16
/** A condition only pays when its strings are this long: a one-letter "literal" is in every prompt. */
const MIN_LITERAL = 3

class Unsupported extends Error {}

/** One literal character (never empty). */
const lit = (s: string): Info => ({ exact: [s], required: [s] })
const ANY: Info = { exact: null, required: null }
const EMPTY: Info = { exact: [''], required: null }

/** The better of two conditions: longer shortest string, then fewer strings. */
function better (a: string[] | null, b: string[] | null): string[] | null {
  if (a === null) return b
  if (b === null) return a
  const score = (s: string[]): number => Math.min(...s.map((x) => x.length)) * 100 - s.length
  return score(b) > score(a) ? b : a
}

function product (a: string[], b: string[]): string[] | null {
  if (a.length * b.length > MAX_SET) return null
  return [...new Set(a.flatMap((x) => b.map((y) => x + y)))]
}

function concat (parts: Info[]): Info {
  let required: string[] | null = null
  let run: string[] = ['']
  let exactAll: string[] | null = ['']
  for (const p of parts) {
    required = better(required, p.required)
    if (p.exact === null) {
      required = better(required, nonEmpty(run))
      run = ['']
      exactAll = null
    } else {
      const joined = product(run, p.exact)
      if (joined === null) required = better(required, nonEmpty(run))
      run = joined ?? p.exact
      if (exactAll !== null) exactAll = product(exactAll, p.exact)
    }
  }
  required = better(required, nonEmpty(run))
  return { exact: exactAll, required }
}

const nonEmpty = (set: string[] | null): string[] | null => (set === null || set.some((s) => s.length === 0) ? null : set)

function alternate (alts: Info[]): Info {
  const exact = alts.every((a) => a.exact !== null) ? [...new Set(alts.flatMap((a) => a.exact as string[]))] : null
  const required = alts.every((a) => a.required !== null) ? [...new Set(alts.flatMap((a) => a.required as string[]))] : null
  return { exact: exact !== null && exact.length <= MAX_SET ? exact : null, required: required !== null && required.length <= MAX_SET ? required : (nonEmpty(exact)) }
}

class Parser {
  at = 0
  constructor (readonly src: string) {}

  alternation (): Info {
    const alts = [this.sequence()]
    while (this.src[this.at] === '|') {
      this.at++
      alts.push(this.sequence())
    }
    return alts.length === 1 ? alts[0] as Info : alternate(alts)
  }

  sequence (): Info {
    const parts: Info[] = []
    while (this.at < this.src.length && this.src[this.at] !== '|' && this.src[this.at] !== ')') parts.push(this.quantified(this.atom()))
    return parts.length === 0 ? EMPTY : concat(parts)
  }

  quantified (atom: Info): Info {
    const c = this.src[this.at]
    let min: number
    if (c === '*' || c === '?') {
      min = 0
      this.at++
    } else if (c === '+') {
      min = 1
      this.at++
    } else if (c === '{') {
      const m = /^\{(\d+)(,\d*)?\}/.exec(this.src.slice(this.at))
      if (m === null) throw new Unsupported()
      min = Number(m[1])
      this.at += m[0].length
    } else {
      return atom
    }
    if (this.src[this.at] === '?') this.at++ // lazy: same strings
    return min === 0 ? ANY : { exact: null, required: atom.required }
  }

  atom (): Info {
    const c = this.src[this.at++] as string
    if (c === '(') {
      if (this.src.startsWith('?:', this.at)) this.at += 2
      else if (this.src[this.at] === '?') throw new Unsupported() // flags, named groups
      const inner = this.alternation()
      if (this.src[this.at++] !== ')') throw new Unsupported()
      return inner
    }
    if (c === '[') return this.skipClass()
    if (c === '.') return ANY
    if (c === '^' || c === '$') return EMPTY
    if (c === '\\') return this.escape()
    if (c === '*' || c === '+' || c === '?' || c === '{') throw new Unsupported()
    if (c.charCodeAt(0) >= 0x80) throw new Unsupported()
    return lit(c.toLowerCase())
  }

  escape (): Info {
    const e = this.src[this.at++]
    if (e === undefined) throw new Unsupported()
    if ('dDwWsS'.includes(e)) return ANY
    if (e === 'p' || e === 'P') {
      if (this.src[this.at] === '{') this.at = this.src.indexOf('}', this.at) + 1
      else this.at++
      return ANY
    }
    if ('bBAz'.includes(e)) return EMPTY
    // An escaped ASCII punctuation character stands for itself.
    if (e.charCodeAt(0) < 0x80 && !/[\dA-Za-z]/.test(e)) return lit(e)
    throw new Unsupported()
  }

  /** A character class: matches one character of a set; nothing literal is learned from it. */
  skipClass (): Info {
    if (this.src[this.at] === '^') this.at++
    if (this.src[this.at] === ']') this.at++
    while (this.at < this.src.length && this.src[this.at] !== ']') {
      if (this.src[this.at] === '\\') this.at += 2
      else if (this.src.startsWith('[:', this.at)) this.at = this.src.indexOf(':]', this.at) + 2
      else this.at++
    }
    if (this.src[this.at++] !== ']') throw new Unsupported()
    return ANY
  }
}

/**
 * Strings one of which every match of the RE2 pattern `source` contains (lower case, at least MIN_LITERAL
 * characters each), or null when no such condition is known.
 */
export function requiredLiterals (source: string): string[] | null {
  try {
    const p = new Parser(source)
    const info = p.alternation()
    if (p.at !== source.length) return null
    const req = info.required
    return req !== null && req.every((s) => s.length >= MIN_LITERAL) ? req : null
  } catch {
    // Unsupported syntax (or a parser mistake): no condition, so the rule runs on every prompt. Safe either way.
    return null
  }
}
