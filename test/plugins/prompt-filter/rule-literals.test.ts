import fc from 'fast-check'
import { RE2JS, RE2Set } from 're2js'
import t from 'tap'
import { compileRules, PHRASE_SEPARATOR, RuleSet } from '../../../plugins/prompt-filter/filter-rules.js'
import { normalise } from '../../../plugins/prompt-filter/normalise.js'
import { requiredLiterals } from '../../../plugins/prompt-filter/rule-literals.js'

/*
 * The screen in front of the filter's automaton must never change a verdict: every match contains what the
 * screen looks for. Unit cases for the literal extraction, then a differential property run: the screened
 * rule set against a plain RE2 set over the same rules, on random text built to hit and nearly hit them.
 */

t.test('required literals: what every match contains, or null when unknown', async (t) => {
  const cases: Array<[string, string[] | null]> = [
    ['jail\\s*break', ['break']],
    ['(?:do|say)\\s+anything\\s+now', ['anything']],
    ['foo(bar|baz)', ['foobar', 'foobaz']],
    ['hello[0-9]+world', ['hello']],
    ['colou?r', ['colo']],
    ['\\bcat\\b', ['cat']],
    ['^start', ['start']],
    ['ABC', ['abc']],
    ['\\.com\\b', ['.com']],
    ['a{2}bcd', ['bcd']],
    ['(?:ab){2,}xyz', ['xyz']],
    ['x+?yzw', ['yzw']],
    ['[abc]def', ['def']],
    ['[]a]xyz', ['xyz']],
    ['[^]a]xyz', ['xyz']],
    ['[[:alpha:]]xyz', ['xyz']],
    ['[\\]]xyz', ['xyz']],
    ['\\p{Greek}abc\\pLdef', ['abc']],
    ['abc|defg', ['abc', 'defg']],
    ['(?:abc|)x', null],
    ['(?:abc|de)', null],
    ['abc|d.f', null],
    ['a.c', null],
    ['a*', null],
    ['(?i)abc', null],
    ['(?P<n>abc)', null],
    ['\\Qabc\\E', null],
    ['abc\\x41', null],
    ['Straße', null],
    ['x{,3}abc', null],
    ['abc)', null],
    ['(abc', null],
    ['[abc', null],
    ['abc\\', null],
    ['abc{', null],
    ['*abc', null],
    ['+abc', null],
    ['?abc', null],
    ['(?:a|b|c|d)(?:e|f|g|h)(?:i|j|k|l)xyz', ['ixyz', 'jxyz', 'kxyz', 'lxyz']],
    ['}]', null],
    ['}]x', ['}]x']]
  ]
  for (const [source, want] of cases) t.strictSame(requiredLiterals(source), want, source)
})

const PHRASES = ['ignore previous instructions', 'jail break', 'a bomb', 'DAN', 'do anything now', '東京の天気', 'Straße tax']
const PATTERNS = ['(?:do|say)\\s+anything\\s+now', 'jail\\s*break\\d?', 'secret[-_ ]?key', '\\d{3}-\\d{4}', 'x.y.z', 'col(?:o|ou)r scheme']

t.test('rules without a known literal run on every text; the others only when the screen lets them', async (t) => {
  const rules = new RuleSet(PHRASES, PATTERNS)
  t.equal(rules.unscreened, 2, '\\d{3}-\\d{4} and x.y.z have no literal of three characters')
  t.strictSame(compileRules(['ab cd']).map((r) => r.screen), [['ab']], 'short words are screened as written')
  t.match(rules.first(normalise('call 555-1234')), { id: 'pattern:4' })
  t.match(rules.first(normalise('please I.G.N.O.R.E previous instructions')), { id: 'phrase:1' })
  t.equal(rules.first(normalise('a perfectly ordinary prompt')), null)
})

t.test('differential: the screened set (phrases on the phrase view) finds exactly what the plain set finds', async (t) => {
  const rules = new RuleSet(PHRASES, PATTERNS)
  const plain = new RE2Set(RE2Set.UNANCHORED, RE2JS.CASE_INSENSITIVE)
  // The reference is the rules as first specified: phrases separated by any character that is not a letter or
  // digit, run on the normalised text itself (the set under test runs them on the phrase view instead).
  for (const r of compileRules(PHRASES, PATTERNS)) plain.add(r.source.replaceAll(PHRASE_SEPARATOR, '[^\\p{L}\\p{N}]'))
  plain.compile()
  const reference = (text: string): number | null => {
    const hits = plain.match(text)
    return hits.length === 0 ? null : Math.min(...hits)
  }
  const seed = Number(process.env.FUZZ_SEED ?? Date.now() % 2 ** 31)
  t.comment(`fast-check seed ${seed} (replay with FUZZ_SEED=${seed})`)
  // Pieces of the rules, separators of every kind and characters whose case folds are unusual.
  const piece = fc.constantFrom('ignore', 'previous', 'instructions', 'i', 'g', 'n', 'o', 'r', 'e', 'jail', 'break', 'bomb', 'a', 'dan', 'do', 'say',
    'anything', 'now', 'secret', 'key', '555', '1234', 'x', 'y', 'z', 'color', 'colour', 'scheme', '東京', 'の', '天気', 'straße', 'strasse', 'tax',
    ' ', '  ', '.', '-', '_', '\n', '…', '🙂', '\u200b', '€', '“', '¿', '\ud800', '🙂🙂🙂', 'ſ', 'K', 'İ', 'і', 'о', 'Ⅰ', 'ＩＧＮＯＲＥ', 'Ｋ', 'ß', 'ǅ', 'µ', 'ς', '\\u0069', '<', '|')
  // A phrase as an evader writes it: words whole or letter-spaced, joined by one to four separators (the
  // rule allows three between letters: four must not match), sometimes with a letter dropped.
  const sep = fc.array(fc.constantFrom(' ', '.', '-', '🙂', '\n', '_', '​'), { minLength: 0, maxLength: 4 }).map((a) => a.join(''))
  const variant = fc.tuple(fc.constantFrom(...PHRASES), fc.infiniteStream(fc.tuple(fc.boolean(), sep, fc.nat(20)))).map(([phrase, choices]) => {
    const it = choices[Symbol.iterator]()
    return phrase.split(' ').map((word) => {
      const [spaced, s, drop] = it.next().value as [boolean, string, number]
      const letters = [...word].filter((_, i) => i !== drop)
      return spaced ? letters.join(s.length === 0 ? ' ' : s) : letters.join('')
    }).join((it.next().value as [boolean, string, number])[1])
  })
  let matched = 0
  fc.assert(fc.property(fc.array(fc.oneof(piece, variant), { maxLength: 30 }), (parts) => {
    const text = normalise(parts.join(''))
    const want = reference(text)
    if (want !== null) matched++
    const got = rules.first(text)?.index ?? null
    if (got !== want) throw new Error(`screened ${String(got)} vs plain ${String(want)} on ${JSON.stringify(text)}`)
  }), { seed, numRuns: 10_000 })
  t.ok(matched > 1500, `10000 random texts agree, ${matched} of them matching some rule`)
})

t.test('ASCII text is screened before normalisation, case-insensitively, with no text missed', async (t) => {
  const rules = new RuleSet(PHRASES, PATTERNS.filter((p) => requiredLiterals(p) !== null))
  t.equal(rules.unscreened, 0)
  const seed = Number(process.env.FUZZ_SEED ?? Date.now() % 2 ** 31)
  t.comment(`fast-check seed ${seed}`)
  const word = fc.constantFrom('Ignore', 'PREVIOUS', 'instructions', 'I', 'g', 'N', 'jail', 'BREAK', 'Bomb', 'a', 'DAN', 'Do', 'any', 'Thing', 'now',
    'Secret', 'KEY', 'colour', 'Scheme', 'x', 'y', 'z', '555', ' ', '.', '-', '_', '\n', '\t', '|', '(', ')')
  let screenedIn = 0
  fc.assert(fc.property(fc.array(word, { maxLength: 30 }), (parts) => {
    const text = parts.join('')
    const normal = normalise(text)
    if (normal !== text.toLowerCase()) throw new Error(`not its lower case: ${JSON.stringify(text)}`)
    if (rules.mayMatch(normal)) {
      screenedIn++
      if (!rules.mayMatchAnyCase(text)) throw new Error(`missed ${JSON.stringify(text)}`)
    }
  }), { seed, numRuns: 5000 })
  t.ok(screenedIn > 500 && screenedIn < 4500, `${screenedIn} of 5000 texts got past the screen; none was missed before normalisation`)
})
