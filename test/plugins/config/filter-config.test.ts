import { mkdtempSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import t from 'tap'
import { CJK_SCRIPTS, parseRejectPhrases } from '../../../plugins/config/filter-env.js'
import { ConfigError, readConfig } from '../../../plugins/config/read-config.js'
import { canaryKey, chatBody, harness } from '../../helper.js'

/*
 * The environment names of the prompt filter and request policy (the original proxy's where it had one),
 * mapped onto the suite's `filter`, `policy` and `logPrompts` options; bad values stop start-up naming
 * the variable (and line).
 */

const key = canaryKey()

t.test('nothing set: no filter, no policy keys, defaults apply in the plugins', async (t) => {
  const c = readConfig({ OPENAI_KEY: key })
  t.equal(c.proxy.filter, undefined)
  t.equal(c.proxy.policy, undefined)
  t.equal(c.proxy.logPrompts, undefined)
})

t.test('every variable maps onto its option', async (t) => {
  const c = readConfig({
    OPENAI_KEY: key,
    REJECT_PHRASES: 'ignore previous instructions\n# a comment\n\n/jail\\s*break/i\n/a.b/s\nforbidden fruit',
    REJECT_DISALLOWED: 'true',
    REJECT_SCRIPT_MIN_CHARS: '5',
    REJECT_SAMPLE_RATE: '0.2',
    REJECT_MESSAGE: 'Nope.',
    REJECT_MODE: 'completion',
    REJECT_NON_TEXT: 'true',
    FILTER_MODERATIONS_INPUT: 'true',
    MODERATION_CHECK: 'true',
    MODERATION_FAIL_MODE: 'open',
    MODERATION_MODEL: 'omni-moderation-2024-09-26',
    LOG_PROMPTS: 'true',
    ALLOWED_MODELS: 'gpt-4o-mini, gpt-4.1*',
    MAX_OUTPUT_TOKENS: '1024',
    MAX_N: '2',
    ALLOWED_TOOLS: 'web_search*',
    ALLOWED_SERVICE_TIERS: 'auto,flex',
    ALLOW_STORED_STATE: 'store,previous_response_id'
  })
  t.strictSame(c.proxy.filter, {
    phrases: ['ignore previous instructions', 'forbidden fruit'],
    patterns: ['jail\\s*break', '(?s)a.b'],
    scripts: CJK_SCRIPTS,
    scriptMinChars: 5,
    sampleRate: 0.2,
    nonText: 'reject',
    mode: 'completion',
    message: 'Nope.',
    optInEndpoints: ['moderations'],
    moderation: { failMode: 'open', model: 'omni-moderation-2024-09-26' }
  })
  t.strictSame(c.proxy.policy, {
    allowedModels: ['gpt-4o-mini', 'gpt-4.1*'],
    maxOutputTokens: 1024,
    maxN: 2,
    allowedTools: ['web_search*'],
    allowedServiceTiers: ['auto', 'flex'],
    allowStoredState: ['store', 'previous_response_id']
  })
  t.equal(c.proxy.logPrompts, true)
})

t.test('REJECT_DISALLOWED takes a list of scripts; MODERATION_FAIL_MODE defaults to closed', async (t) => {
  const c = readConfig({ OPENAI_KEY: key, REJECT_DISALLOWED: 'Cyrillic, Arabic', MODERATION_CHECK: 'true' })
  t.strictSame(c.proxy.filter, { scripts: ['Cyrillic', 'Arabic'], moderation: { failMode: 'closed' } })
  t.equal(readConfig({ OPENAI_KEY: key, REJECT_DISALLOWED: 'false' }).proxy.filter, undefined)
})

t.test('regex lines keep the s and m flags (i is implied); REJECT_NON_TEXT=false allows media', async (t) => {
  const c = readConfig({ OPENAI_KEY: key, REJECT_PHRASES: '/^start/m\n/a.b$/ms\n/plain/i', REJECT_NON_TEXT: 'false' })
  t.strictSame(c.proxy.filter, { patterns: ['(?m)^start', '(?sm)a.b$', 'plain'], nonText: 'allow' })
})

t.test('REJECT_PHRASES can name a file', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'oai-proxy-phrases-'))
  const file = join(dir, 'phrases.txt')
  writeFileSync(file, '# rules\r\nfirst phrase\r\n/second\\s+rule/\r\n')
  t.strictSame(parseRejectPhrases(file), { phrases: ['first phrase'], patterns: ['second\\s+rule'], lineOf: { phrases: [2], patterns: [3] } })
  t.strictSame(readConfig({ OPENAI_KEY: key, REJECT_PHRASES: file }).proxy.filter, { phrases: ['first phrase'], patterns: ['second\\s+rule'] })
  t.strictSame(parseRejectPhrases('/just a regex/').patterns, ['just a regex'], 'a /regex/ line is not a path')
})

t.test('OUTPUT_REJECT_PHRASES and OUTPUT_FILTER_WINDOW_CHARS map onto outputFilter', async (t) => {
  t.equal(readConfig({ OPENAI_KEY: key }).proxy.outputFilter, undefined)
  t.strictSame(readConfig({ OPENAI_KEY: key, OUTPUT_REJECT_PHRASES: 'purple elephant\n/launch\\s+codes/' }).proxy.outputFilter, { phrases: ['purple elephant'], patterns: ['launch\\s+codes'] })
  t.strictSame(readConfig({ OPENAI_KEY: key, OUTPUT_REJECT_PHRASES: '/only/', OUTPUT_FILTER_WINDOW_CHARS: '4096' }).proxy.outputFilter, { patterns: ['only'], windowChars: 4096 })
  t.strictSame(readConfig({ OPENAI_KEY: key, OUTPUT_REJECT_PHRASES: 'only a phrase' }).proxy.outputFilter, { phrases: ['only a phrase'] })
})

t.test('bad values stop start-up naming the variable and the line', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'oai-proxy-phrases-'))
  const file = join(dir, 'bad.txt')
  writeFileSync(file, 'fine\n\n/(a)\\1/\n')
  const cases: Array<[Record<string, string>, RegExp]> = [
    [{ REJECT_PHRASES: 'ok\n/(\\w+) \\1/' }, /^REJECT_PHRASES line 2: is not a pattern the linear-time engine \(RE2\) accepts; backreferences and lookaround/],
    [{ REJECT_PHRASES: 'ok\nok too\n/(x{1000}){1000}/' }, /^REJECT_PHRASES line 3: .*invalid repeat count/],
    [{ REJECT_PHRASES: '/.*/' }, /^REJECT_PHRASES line 1: matches empty text/],
    [{ REJECT_PHRASES: 'fine\n!!!' }, /^REJECT_PHRASES line 2: has no letters or digits/],
    [{ REJECT_PHRASES: file }, /^REJECT_PHRASES file line 3: /],
    [{ REJECT_PHRASES: '/no/such/file.txt' }, /^REJECT_PHRASES: looks like a file path, but the file cannot be read/],
    [{ REJECT_DISALLOWED: 'Han,Klingon' }, /^REJECT_DISALLOWED: entry 2 is not a Unicode script name/],
    [{ REJECT_MODE: 'silent' }, /REJECT_MODE/],
    [{ REJECT_SAMPLE_RATE: '2' }, /REJECT_SAMPLE_RATE/],
    [{ MODERATION_FAIL_MODE: 'open' }, /^MODERATION_FAIL_MODE is set but MODERATION_CHECK is not true/],
    [{ MODERATION_CHECK: 'true', MODERATION_FAIL_MODE: 'maybe' }, /MODERATION_FAIL_MODE/],
    [{ MAX_OUTPUT_TOKENS: '0' }, /MAX_OUTPUT_TOKENS/],
    [{ MAX_N: 'many' }, /MAX_N/],
    [{ ALLOW_STORED_STATE: 'store,everything' }, /^ALLOW_STORED_STATE: unknown feature everything/],
    [{ ALLOWED_MODELS: 'gpt-4o,bad\u0000name' }, /^ALLOWED_MODELS/],
    [{ OUTPUT_REJECT_PHRASES: 'fine\n/(a)\\1/' }, /^OUTPUT_REJECT_PHRASES line 2: is not a pattern/],
    [{ OUTPUT_REJECT_PHRASES: '/no/such/file.txt' }, /^OUTPUT_REJECT_PHRASES: looks like a file path/],
    [{ OUTPUT_FILTER_WINDOW_CHARS: '64' }, /^OUTPUT_FILTER_WINDOW_CHARS is set but OUTPUT_REJECT_PHRASES is not/],
    [{ OUTPUT_REJECT_PHRASES: 'x y z', OUTPUT_FILTER_WINDOW_CHARS: '8' }, /OUTPUT_FILTER_WINDOW_CHARS/]
  ]
  for (const [env, message] of cases) {
    const err = t.throws(() => readConfig({ OPENAI_KEY: key, ...env })) as Error
    t.type(err, ConfigError)
    t.match(err.message, message, JSON.stringify(env))
    t.notMatch(err.message, /CANARY/)
  }
})

t.test('REJECT_SAMPLE_RATE is accepted and said to be ignored: every request is scanned in full', async (t) => {
  const c = readConfig({ OPENAI_KEY: key, REJECT_PHRASES: 'forbidden fruit', REJECT_SAMPLE_RATE: '0.01' })
  const h = await harness({ proxy: { filter: c.proxy.filter } })
  try {
    t.match(h.logs.join(''), /REJECT_SAMPLE_RATE \(filter.sampleRate\) is accepted for compatibility and ignored/)
    for (let i = 0; i < 20; i++) {
      const res = await h.app.inject({ method: 'POST', url: '/v1/chat/completions', headers: h.auth, payload: chatBody({ messages: [{ role: 'user', content: 'the forbidden fruit' }] }) })
      t.equal(res.statusCode, 400)
    }
    t.equal(h.upstream.requests.length, 0)
  } finally {
    await h.close()
  }
})
