import type { RuleMatch, RuleSet } from './filter-rules.js'

/** Pieces held before they are joined into one: a window fed a letter at a time stays a short list. */
const MAX_PIECES = 32

/**
 * The normalised text of one output (a choice's content, a tool call's arguments, a Responses part) that
 * the output guardrail checks as its deltas arrive: each delta together with the `max` characters before
 * it, so a match cut across frames is caught.
 *
 * Checking that whole window on every frame (a stream sends one every few words) joined and screened up to
 * `max` characters per frame: most of the guardrail's cost per stream. The screen (lib/filter-rules.ts)
 * decides whether any rule can match, and a screen match has at most `screenReach` characters, so a new one
 * ends in the delta and starts at most that far before it. Only that near text is screened, unless an
 * earlier screen match may still be inside the window: then (and on a near match) the whole window is
 * joined and checked, as before. Same answers as checking the whole window every time (test/output-window).
 */
export class OutputWindow {
  readonly #rules: RuleSet
  readonly #max: number
  #pieces: string[] = []
  /** Characters in `#pieces`. */
  #held = 0
  /** Characters of this output so far. */
  #seen = 0
  /**
   * The output's last characters, at least `screenReach` before the newest delta: what the screen runs on
   * while no earlier match may be in the window. Trimmed only when twice that long, so it is not copied on
   * every delta.
   */
  #near = ''
  /**
   * Where the last screen match found ends at the latest (`#seen` when it was found): while the window
   * starts at or before it, that match may still be inside.
   */
  #live = -1

  constructor (rules: RuleSet, max: number) {
    this.#rules = rules
    this.#max = max
  }

  /** The first rule matching the window that ends with `delta` (normalised text), if any. */
  check (delta: string): RuleMatch | null {
    const span = this.#max + delta.length
    this.#add(delta, span)
    const reach = this.#rules.screenReach
    if (reach === null) return this.#rules.first(this.#window(span))
    // A longer suffix than the screen can reach is as good: no screen match in it, none in the window.
    const near = Math.min(reach + delta.length, span)
    this.#near += delta
    if (this.#near.length > 2 * near) this.#near = this.#near.slice(-near)
    if (Math.max(0, this.#seen - span) > this.#live && !this.#rules.mayMatch(this.#near.length > span ? this.#near.slice(-span) : this.#near)) return null
    const window = this.#window(span)
    if (!this.#rules.mayMatch(window)) return null
    this.#live = this.#seen
    return this.#rules.first(window)
  }

  #add (delta: string, span: number): void {
    this.#pieces.push(delta)
    this.#held += delta.length
    this.#seen += delta.length
    // Keep this window (`span`, the delta and the `max` characters before it), which holds the next one's.
    while (this.#held - (this.#pieces[0] as string).length >= span) this.#held -= (this.#pieces.shift() as string).length
    if (this.#pieces.length > MAX_PIECES) this.#pieces = [this.#pieces.join('')]
  }

  /** The last `span` characters of the output (all of it when shorter). */
  #window (span: number): string {
    const text = this.#pieces.length === 1 ? this.#pieces[0] as string : (this.#pieces = [this.#pieces.join('')])[0] as string
    return text.length > span ? text.slice(text.length - span) : text
  }
}
