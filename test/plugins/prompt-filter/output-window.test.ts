import t from 'tap'
import fc from 'fast-check'
import { RuleSet, phraseScreen, screenReach, type RuleMatch } from '../../../plugins/prompt-filter/filter-rules.js'
import { normalise } from '../../../plugins/prompt-filter/normalise.js'
import { OutputWindow } from '../../../plugins/prompt-filter/output-window.js'

/*
 * The output guardrail's window screens only the text a new match can touch (plugins/prompt-filter/output-window.ts). It must
 * answer exactly as checking the whole window on every delta did: compared here, delta by delta, over
 * random streams of pieces of the rules' words, letter-spaced forms and filler, with windows short enough
 * that screen matches leave them.
 */

t.test('a screen alternative reaches its characters plus 16 per letter-spaced gap', async (t) => {
  t.strictSame(phraseScreen('ignore all').map(screenReach), [6, 6 + 16 * 5])
  t.equal(screenReach('a\\.b\\\\c'), 5, 'escaped characters count once')
  t.equal(screenReach('😀x'), 3, 'an astral character is two UTF-16 units, as the screen (no `u` flag) reads it')
  t.equal(new RuleSet(['purple elephant protocol'], ['jail\\s*break']).screenReach, Math.max(8 + 16 * 7, 5), 'the set reaches as far as its farthest alternative')
  t.equal(new RuleSet(['purple elephant'], ['[0-9]{5}']).screenReach, null, 'a rule without a screen: every window is checked whole')
})

const SETS = {
  screened: new RuleSet(['forbidden topic please', 'ab cd'], ['jail\\s*break[0-9]', 'say\\s+anything']),
  // Screens of a few letters: a phrase whose words are far apart is caught by the whole-window check alone.
  short: new RuleSet(['ab cd ef'], ['jail\\s*break[0-9]']),
  unscreened: new RuleSet(['forbidden topic please'], ['[0-9]{5}x'])
}
const PIECES = ['for', 'bid', 'den', 'forbidden', ' ', '  ', 'f o r b i d d e n', 'f.o.r', '.b.i.d.d.e.n', ' topic', ' topic please',
  ' please', 'jail', 'break', 'break7', '7', 'say ', 'anything', 'ab', ' cd', 'ＦＯＲＢＩＤＤＥＮ', '12345x', 'lorem ipsum ', 'x'.repeat(40), 'é', '\u200b',
  ' '.repeat(30), 'forbidden' + ' '.repeat(150), 'ef', ' ef']

/** Pieces that complete a rule with one or two others: drawn half the time, so many streams match. */
const CLOSE = ['ab', ' cd', 'ab c', 'd', ' ef', ' '.repeat(30), 'jail', 'break7', 'jailbreak', '3', 'say ', 'anything']

/** What the guardrail did before: keep the last `max` characters, check them with each new delta. */
function wholeWindow (rules: RuleSet, max: number, deltas: string[]): Array<RuleMatch | null> {
  let tail = ''
  return deltas.map((d) => {
    const text = tail + d
    tail = text.length > max ? text.slice(-max) : text
    return rules.first(text)
  })
}

t.test('the same first match as the whole window, delta by delta', async (t) => {
  const matched = { screened: 0, short: 0, unscreened: 0 }
  fc.assert(fc.property(
    fc.constantFrom('screened' as const, 'short' as const, 'unscreened' as const),
    fc.constantFrom(8, 24, 64, 300),
    fc.array(fc.oneof(fc.constantFrom(...PIECES), fc.constantFrom(...CLOSE)), { minLength: 1, maxLength: 80 }),
    (which, max, raw) => {
      const rules = SETS[which]
      const deltas = raw.map(normalise)
      const window = new OutputWindow(rules, max)
      const got = deltas.map((d) => window.check(d))
      const want = wholeWindow(rules, max, deltas)
      if (want.some((m) => m !== null)) matched[which]++
      return JSON.stringify(got) === JSON.stringify(want)
    }), { numRuns: 3000, seed: 9 })
  t.ok(Object.values(matched).every((n) => n > 30), `streams with a match: ${Object.values(matched).join(', ')} of ~1000 each`)
})

t.test('a match as long as the screen reaches, ending on the first character of a delta, is caught', async (t) => {
  // The tightest case the near end must cover: the screen's longest form (16 separators in every gap),
  // completed by the delta's first character, with more text after it in the same delta.
  const rules = new RuleSet(['forbidden'], [])
  const reach = rules.screenReach as number
  const spaced = [...'forbidden'].join(' '.repeat(16))
  t.equal(spaced.length, reach, `the longest screen match, ${reach} characters`)
  const deltas = [spaced.slice(0, -1), 'n' + ' '.repeat(10)]
  t.strictSame(wholeWindow(rules, 300, deltas).map((h) => h?.id ?? null), [null, 'phrase:1'], 'the whole window matches on the second delta')
  const window = new OutputWindow(rules, 300)
  t.strictSame(deltas.map((d) => window.check(d)?.id ?? null), [null, 'phrase:1'], 'and so does the near end')
})

t.test('a screen match that stays inside the window keeps the whole window checked until it leaves', async (t) => {
  // Screens of two letters ('ab', 'cd', 'ef'): the near end screened on each delta is a few characters, so
  // once 'ab' is further back than that, only the remembered screen match keeps the phrase in sight.
  const rules = SETS.short
  t.ok((rules.screenReach as number) < 10, `reach ${String(rules.screenReach)}`)
  const window = new OutputWindow(rules, 64)
  t.equal(window.check('ab'), null)
  const rest = [...' '.repeat(20), ' cd', ' e', 'f']
  const hits = rest.map((d) => window.check(d))
  t.equal(hits.at(-1)?.id, 'phrase:1', `caught on its last delta, ${rest.length} deltas after the screen matched`)
  t.ok(hits.slice(0, -1).every((h) => h === null))
  const far = new OutputWindow(rules, 16)
  far.check('ab')
  t.equal(rest.map((d) => far.check(d)).at(-1), null, 'once the screen match has left the window, the phrase is not seen')
  const letters = new OutputWindow(SETS.screened, 300)
  const many = [...'lorem ipsum dolor sit amet '.repeat(4), ...'forbidden topic please'].map((c) => letters.check(c))
  t.equal(many.findIndex((h) => h !== null), many.length - 1, 'a window of many one-letter deltas')
})
