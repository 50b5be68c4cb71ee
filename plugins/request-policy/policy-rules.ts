/*
 * `*` globs for model and tool names, for the request policy; easier to test on their own.
 */

/**
 * `*`-glob match (`gpt-4o*`, `ft:*:my-org:*`), linear in practice: the classic two-pointer wildcard
 * algorithm, which backtracks only to the last `*` (a regex built from `a*b*c*` can backtrack
 * polynomially on a long model name).
 */
export function globMatch (pattern: string, text: string): boolean {
  let p = 0
  let t = 0
  let star = -1
  let mark = 0
  while (t < text.length) {
    if (p < pattern.length && pattern[p] !== '*' && pattern[p] === text[t]) {
      p++
      t++
    } else if (p < pattern.length && pattern[p] === '*') {
      star = p++
      mark = t
    } else if (star !== -1) {
      p = star + 1
      t = ++mark
    } else {
      return false
    }
  }
  while (pattern[p] === '*') p++
  return p === pattern.length
}

export const anyGlob = (patterns: readonly string[], text: string): boolean => patterns.some((g) => globMatch(g, text))
