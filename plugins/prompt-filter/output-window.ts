import type { RuleMatch, RuleSet } from './filter-rules.js'

/**
 * The normalised text of one output (a choice's content, a tool call's arguments, a Responses part) that
 * the output guardrail checks as its deltas arrive: each delta together with the `max` characters before
 * it, so a match cut across frames is caught.
 *
 * Screening that whole window on every frame (a stream sends one every few words) was most of the
 * guardrail's matching cost. The screen (plugins/prompt-filter/filter-rules.ts) decides whether any rule can match, and a
 * screen match has at most `screenReach` characters, so a new one ends in the delta and starts at most that
 * far before it. Only that near end is screened, unless an earlier screen match may still be inside the
 * window: then the whole window is. On a screen match the rules run over the whole window, as before. Same answers as
 * checking the whole window every time (test/plugins/prompt-filter/output-window.test.ts). The window stays the one string it
 * always was, replaced on every delta: held in pieces instead, it outlived the young generation's
 * collections and cost a stream more CPU than the copy it saved (docs/performance.md).
 */
export class OutputWindow {
  readonly #rules: RuleSet
  readonly #max: number
  /** The output's last `max` characters. */
  #tail = ''
  /** Characters of this output so far. */
  #seen = 0
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
    const window = this.#tail + delta
    this.#tail = window.length > this.#max ? window.slice(window.length - this.#max) : window
    this.#seen += delta.length
    const reach = this.#rules.screenReach
    if (reach === null) return this.#rules.first(window)
    // While an earlier screen match may still be inside, the whole window is screened; else only the end a new
    // match can reach (no screen match there: none in the window). A match in that end is one in the window.
    const near = reach + delta.length
    const live = this.#seen - window.length <= this.#live
    const screened = live || window.length <= near ? window : window.slice(window.length - near)
    if (!this.#rules.mayMatch(screened)) return null
    this.#live = this.#seen
    return this.#rules.firstScreened(window)
  }
}
