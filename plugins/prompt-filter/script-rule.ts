import { RuleError } from './filter-rules.js'

/*
 * The prompt filter's script rule (`scripts`, e.g. Han): text in scripts the operator does not serve. One
 * JavaScript regex of Unicode script classes, apart from the RE2 rule set (plugins/prompt-filter/filter-rules.ts): it counts
 * characters, it does not match phrases.
 */

/** Check script names (`Han`, `Cyrillic`, ...) and build one matcher for all of them. */
export function scriptMatcher (scripts: readonly string[]): RegExp | null {
  if (scripts.length === 0) return null
  scripts.forEach((name, i) => {
    let ok = /^[A-Za-z_]{2,40}$/.test(name)
    try {
      if (ok) RegExp(`\\p{Script=${name}}`, 'u')
    } catch {
      ok = false
    }
    if (!ok) throw new RuleError('scripts', i, 'is not a Unicode script name (e.g. Han, Hiragana, Katakana, Hangul, Cyrillic, Arabic)')
  })
  return new RegExp(`[${scripts.map((s) => `\\p{Script=${s}}`).join('')}]`, 'gu')
}

/** How many characters of the matched scripts `text` holds, counting no further than `enough`. */
export function countScript (re: RegExp, text: string, enough: number): number {
  re.lastIndex = 0
  let n = 0
  while (n < enough && re.exec(text) !== null) n++
  return n
}

/** The script of one character, for logs: `Han`. */
export function scriptOf (scripts: readonly string[], text: string, re: RegExp): string {
  re.lastIndex = 0
  const ch = re.exec(text)?.[0] ?? ''
  return scripts.find((s) => new RegExp(`\\p{Script=${s}}`, 'u').test(ch)) ?? 'unknown'
}
