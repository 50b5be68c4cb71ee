import { RE2JS, RE2Set } from 're2js'
import { yieldTurn } from '../../lib/loop-budget.js'
import { normalise } from './normalise.js'
import { requiredLiterals } from './rule-literals.js'

/*
 * The prompt filter's rules, compiled once at start-up into one RE2 set: phrases and operator regexes
 * alike run on a linear-time automaton that cannot backtrack, in a single pass over the text however many
 * rules there are. A pattern that needs backtracking (backreferences, lookaround) does not compile, so it
 * is refused at start-up rather than left to stall the event loop on a crafted prompt. Before the set runs,
 * one plain JavaScript regex screens the text for what every match must contain (plugins/prompt-filter/rule-literals.ts):
 * when nothing is there, the automaton is skipped.
 */

export class RuleError extends Error {
  constructor (readonly option: 'phrases' | 'patterns' | 'scripts', readonly index: number, reason: string) {
    super(reason)
  }
}

/**
 * Anything that is not a letter or a digit: word separators, punctuation, and the joins between fields. The
 * phrase patterns run on the *phrase view* of the text (`phraseView`), where every character outside ASCII
 * that is not a letter or digit reads as a space, so this class needs only ASCII. Written as
 * `[^\p{L}\p{N}]`, RE2JS stores ~700 ranges for each of the hundreds of places a phrase set uses it: 40
 * phrases took ~30 MB of memory to compile.
 */
export const PHRASE_SEPARATOR = '[\\x00-\\x2f\\x3a-\\x40\\x5b-\\x60\\x7b-\\x7f]'
const SEP = PHRASE_SEPARATOR
const NON_ASCII = /[^\p{ASCII}]/u
const NON_ASCII_SEPARATOR = /[^\p{L}\p{N}\p{ASCII}]/gu

/**
 * The text phrases are matched in: normalised text with each character outside ASCII that is neither a letter
 * nor a digit replaced by a space (one code point for one, so a phrase matches here exactly where it would
 * match the original with `[^\p{L}\p{N}]` as its separator).
 */
function phraseView (text: string): string {
  return NON_ASCII.test(text) ? text.replace(NON_ASCII_SEPARATOR, ' ') : text
}
/** Scripts written without spaces between words: a phrase in them has no word boundary to look for. */
const UNSPACED = /[\p{Script=Han}\p{Script=Hiragana}\p{Script=Katakana}\p{Script=Thai}\p{Script=Lao}\p{Script=Khmer}\p{Script=Myanmar}]/u

/**
 * A phrase as an RE2 pattern over normalised text: its words in order, separated by any run of
 * non-letters or by nothing (`ignorepreviousinstructions`), not inside a longer word (so "ass" does not
 * block "class"), and each word of three or more letters also matched letter-spaced (`i g n o r e`,
 * `i.g.n.o.r.e`, `i -- g -- n…`). Between the letters the automaton takes any run of separators: that is
 * also its smallest form (a bounded `{1,3}` repeats the class three times per gap; 40 phrases compiled that
 * way held twice the memory and grew V8's young generation from 16 to 32 MiB). The screen (`phraseScreen`)
 * bounds the runs it looks for, so a letter-spaced word is caught with up to eight separators per gap.
 */
export function phrasePattern (phrase: string): string {
  const words = normalise(phrase).split(/[^\p{L}\p{N}]+/u).filter((w) => w.length > 0)
  const first = words[0]
  const last = words.at(-1)
  if (first === undefined || last === undefined) throw new Error('has no letters or digits once normalised; write it as a regex')
  const word = (w: string): string => {
    const letters = [...w]
    if (letters.length < 3) return RE2JS.quote(w)
    return `(?:${RE2JS.quote(w)}|${letters.map((c) => RE2JS.quote(c)).join(`${SEP}+`)})`
  }
  const open = UNSPACED.test(first.charAt(0)) ? '' : `(?:^|${SEP})`
  const close = UNSPACED.test(last.charAt(last.length - 1)) ? '' : `(?:${SEP}|$)`
  return open + words.map(word).join(`${SEP}*`) + close
}

/** What may stand between the letters of a letter-spaced screen alternative (see `phraseScreen`). */
const SCREEN_GAP = '[^a-z0-9]{1,16}'

const escapeJs = (s: string): string => s.replace(/[.*+?^${}()|[\]\\/]/g, '\\$&')

/**
 * What every match of `phrasePattern(phrase)` contains, as a JavaScript regex source: its longest word,
 * written out or letter-spaced, with up to 16 UTF-16 units (eight separators, astral ones taking two)
 * between letters. Bounded on purpose: `[^a-z0-9]` also holds letters outside ASCII, so an unbounded run
 * between two Han characters would make the backtracking engine quadratic on long CJK text.
 */
export function phraseScreen (phrase: string): string[] {
  const words = normalise(phrase).split(/[^\p{L}\p{N}]+/u).filter((w) => w.length > 0)
  const longest = words.reduce((a, b) => ([...b].length > [...a].length ? b : a))
  const letters = [...longest]
  if (letters.length < 3) return [escapeJs(longest)]
  return [escapeJs(longest), letters.map(escapeJs).join(SCREEN_GAP)]
}

/**
 * The most UTF-16 units a screen alternative can match: its literal characters (escaped by `escapeJs`), plus
 * 16 for each letter-spaced gap. The alternatives are only those two forms (`phraseScreen`, and patterns'
 * literals), so this is exact; the output guardrail uses it to screen only the text a new match can touch.
 */
export function screenReach (alternative: string): number {
  const pieces = alternative.split(SCREEN_GAP)
  return pieces.reduce((n, piece) => n + piece.replace(/\\([\s\S])/g, '$1').length, 0) + 16 * (pieces.length - 1)
}

/** Compile one operator regex on RE2, or explain why it cannot be used. */
function checkPattern (source: string): string {
  let compiled: RE2JS
  try {
    compiled = RE2JS.compile(source, RE2JS.CASE_INSENSITIVE)
  } catch (err) {
    const detail = (err as Error).message.slice(0, 200)
    throw new Error(`is not a pattern the linear-time engine (RE2) accepts; backreferences and lookaround need backtracking and are refused (${detail})`)
  }
  if (compiled.test('')) throw new Error('matches empty text, so it would refuse every request')
  return source
}

export interface RuleMatch {
  /** `phrase:3` / `pattern:1` (1-based, as listed), never the rule text: logs and replies stay generic. */
  id: string
  index: number
}

/**
 * Every rule as an RE2 pattern, each checked on its own; throws `RuleError` naming the option and 0-based
 * entry that cannot be used. Cheaper than building the set, so config loading can check line by line.
 */
export interface CompiledRule {
  id: string
  /** A phrase: runs on the phrase view of the text. */
  phrase: boolean
  /** The RE2 pattern. */
  source: string
  /** JavaScript regex alternatives one of which every match's text matches too (lower case); null when none is known. */
  screen: string[] | null
}

export function compileRules (phrases: readonly string[] = [], patterns: readonly string[] = []): CompiledRule[] {
  const rule = (option: 'phrases' | 'patterns', id: string, make: () => Omit<CompiledRule, 'id'>, i: number) => {
    try {
      return { id: `${id}:${i + 1}`, ...make() }
    } catch (err) {
      throw new RuleError(option, i, (err as Error).message)
    }
  }
  const literals = (source: string): string[] | null => requiredLiterals(source)?.map(escapeJs) ?? null
  return [
    ...phrases.map((p, i) => rule('phrases', 'phrase', () => ({ phrase: true, source: phrasePattern(p), screen: phraseScreen(p) }), i)),
    ...patterns.map((p, i) => rule('patterns', 'pattern', () => {
      const source = checkPattern(p)
      return { phrase: false, source, screen: literals(source) }
    }, i))
  ]
}

/** An RE2 set over some of the rules, with the rule index of each of its members. */
interface Part { set: RE2Set, index: number[] }

function part (rules: readonly CompiledRule[], indexes: number[]): Part | null {
  if (indexes.length === 0) return null
  const set = new RE2Set(RE2Set.UNANCHORED, RE2JS.CASE_INSENSITIVE)
  for (const i of indexes) set.add((rules[i] as CompiledRule).source)
  set.compile()
  return { set, index: indexes }
}

export class RuleSet {
  /** Phrases (each has a screen): their automaton runs on the phrase view of text the screen matches. */
  readonly #phrases: Part | null
  /** Patterns with a screen: their automaton runs only on text the screen matches. */
  readonly #screened: Part | null
  readonly #screen: RegExp | null
  /** The same, case-insensitive: for ASCII text, whose normal form is its lower case. */
  readonly #screenAnyCase: RegExp | null
  /** Rules without one: their automaton runs on every text. */
  readonly #always: Part | null
  readonly #sources: string[]
  readonly #ids: string[]
  readonly #isPhrase: boolean[]
  readonly #single = new Map<number, RE2JS>()

  /** Throws `RuleError` naming the option and 0-based entry that cannot be used. */
  constructor (phrases: readonly string[] = [], patterns: readonly string[] = []) {
    const rules = compileRules(phrases, patterns)
    this.#sources = rules.map((r) => r.source)
    this.#ids = rules.map((r) => r.id)
    this.#isPhrase = rules.map((r) => r.phrase)
    const all = rules.map((_, i) => i)
    const screened = all.filter((i) => rules[i]?.screen !== null)
    this.#phrases = part(rules, screened.filter((i) => rules[i]?.phrase === true))
    this.#screened = part(rules, screened.filter((i) => rules[i]?.phrase === false))
    // Many rules share a word ("ignore ... instructions"): each alternative once.
    const alternatives = new Set(screened.flatMap((i) => rules[i]?.screen as string[]))
    this.#screen = screened.length === 0 ? null : new RegExp([...alternatives].join('|'))
    this.#screenAnyCase = screened.length === 0 ? null : new RegExp([...alternatives].join('|'), 'i')
    this.#always = part(rules, all.filter((i) => rules[i]?.screen === null))
    this.screenReach = this.#always !== null ? null : Math.max(0, ...[...alternatives].map(screenReach))
  }

  /**
   * The longest text the screen can match, or null when some rule has no screen (its automaton runs on every
   * text). A screen match in a text that grows at its end either was in it before, or lies in its last
   * `screenReach` characters plus what was added.
   */
  readonly screenReach: number | null

  get size (): number {
    return this.#sources.length
  }

  /**
   * Run the automaton over sample text in several scripts once, at start-up: the engine's code gets
   * compiled and the DFA states that ordinary text needs get built now, not during the first large prompt
   * (which otherwise stalls the event loop for ~100 ms).
   */
  warm (): void {
    const sample = 'The quick brown fox, 42 times! Пожалуйста, быстро. 東京の天気 날씨 Ελληνικά العربية हिन्दी\n'
    const text = normalise(sample.repeat(256))
    this.#screen?.test(text)
    for (const p of [this.#always, this.#screened]) p?.set.match(text)
    this.#phrases?.set.match(phraseView(text))
  }

  /** How many rules run on every text because no screen is known for them (for the start-up log). */
  get unscreened (): number {
    return this.#always?.index.length ?? 0
  }

  /** Whether the automaton has to run on this text at all: some rule has no screen, or the screen matches. */
  mayMatch (text: string): boolean {
    return this.#always !== null || this.#screen?.test(text) === true
  }

  /**
   * `mayMatch` for ASCII text holding no `\u` escape, read before normalisation: such text normalises to its
   * lower case, and ASCII case-insensitive matching of the screen's (lower-case) alternatives equals
   * matching them on the lower-cased text.
   */
  mayMatchAnyCase (text: string): boolean {
    return this.#always !== null || this.#screenAnyCase?.test(text) === true
  }

  /**
   * The first rule (in configuration order) that matches normalised text, if any: the screen, then the
   * automaton over the rules it lets through (linear passes, never backtracking).
   */
  first (text: string): RuleMatch | null {
    return this.#first(text, this.#screen?.test(text) === true)
  }

  /** `first` for text the caller has already found the screen to match (`mayMatch`): it is not run again. */
  firstScreened (text: string): RuleMatch | null {
    return this.#first(text, true)
  }

  #first (text: string, screened: boolean): RuleMatch | null {
    const hits: number[] = []
    const run = (p: Part | null, t: string): void => {
      if (p !== null) for (const h of p.set.match(t)) hits.push(p.index[h] as number)
    }
    run(this.#always, text)
    if (screened) {
      run(this.#screened, text)
      if (this.#phrases !== null) run(this.#phrases, phraseView(text))
    }
    if (hits.length === 0) return null
    const index = Math.min(...hits)
    return { id: this.#ids[index] as string, index }
  }

  /**
   * Which piece of text a matched rule is in: the index into `texts`, or -1 when the match only exists
   * across pieces (a phrase split between two messages). Only runs on the refusal path.
   */
  async locate (rule: RuleMatch, texts: readonly string[]): Promise<number> {
    let re = this.#single.get(rule.index)
    if (re === undefined) {
      re = RE2JS.compile(this.#sources[rule.index] as string, RE2JS.CASE_INSENSITIVE)
      this.#single.set(rule.index, re)
    }
    const view = this.#isPhrase[rule.index] === true ? phraseView : (t: string) => t
    for (let i = 0; i < texts.length; i++) {
      await yieldTurn((texts[i] as string).length)
      if (re.test(view(texts[i] as string))) return i
    }
    return -1
  }
}

/*
 * Compiled sets by their rules: the prompt filter and the output guardrail often get the same list, and a
 * set of 50 rules holds ~3.3 MiB of heap (~8 MiB of RSS with its code). A few entries: a process builds
 * one or two sets, a test process many.
 */
const shared = new Map<string, RuleSet>()

/** A compiled set for these rules, reused when the same rules were compiled before (throws as `new RuleSet`). */
export function ruleSetFor (phrases: readonly string[] = [], patterns: readonly string[] = []): RuleSet {
  const key = JSON.stringify([phrases, patterns])
  let set = shared.get(key)
  if (set === undefined) {
    set = new RuleSet(phrases, patterns)
    if (shared.size >= 8) shared.delete(shared.keys().next().value as string)
    shared.set(key, set)
  }
  return set
}
