import fc from 'fast-check'
import t from 'tap'
import { startFakeOpenAI } from '../testing/fake-openai.js'
import { isAllowlisted, leakPatterns, proxyTest, type Harness } from './helper.js'
import { ALLOWLISTED, exchange } from './routing-shared.js'

/*
 * Property-based fuzzing of whole requests (threat catalogue R19 extended, B04, F06):
 *
 * 1. Raw request targets and headers through Node's real parser: origin, absolute, authority and asterisk
 *    forms; every character of allowed and admin paths percent-encoded (either hex case, double encoded,
 *    overlong UTF-8), swapped for a Unicode look-alike (raw or encoded), or surrounded by separators (`;`,
 *    `\`, tab, NUL, dot segments); Host, Authorization and Content-Type spelt oddly, duplicated or
 *    folded. Invariant: upstream receives only allowlisted (method, path) pairs, on its own host; no answer
 *    is a 5xx; no connection hangs; no form of the key reaches the client.
 * 2. JSON bodies with a blocked phrase in random prompt fields (or nowhere), written with random JSON
 *    encodings: `\uXXXX` escapes of any character, escaped slashes, whitespace, duplicate keys whose first
 *    or last value carries the phrase, nested content parts, integers beyond 2^53, unknown fields.
 *    Invariant: a body whose meaning (JSON.parse, last duplicate wins, as OpenAI reads it) holds the phrase
 *    is refused and nothing goes upstream; anything else is forwarded, upstream holds the phrase under
 *    neither first-wins nor last-wins parsing, and the bytes upstream are the client's own: identical when
 *    nothing changed, spliced member by member when the policy sets `store`, re-serialised only when a key
 *    repeats (see lib/request-body.ts).
 *
 * The seed is printed; replay a failure with FUZZ_SEED=<seed>. FUZZ_RAW_RUNS and FUZZ_BODY_RUNS set the
 * number of cases.
 */

const seed = Number(process.env.FUZZ_SEED ?? Date.now() % 2 ** 31)
const rawRuns = Number(process.env.FUZZ_RAW_RUNS ?? 5000)
const bodyRuns = Number(process.env.FUZZ_BODY_RUNS ?? 2000)

// ---------------------------------------------------------------------------------------------------------
// 1. Raw request targets and headers.

const BASES = [
  '/v1/chat/completions', '/v1/completions', '/v1/responses', '/v1/embeddings', '/v1/moderations', '/v1/models', '/v1/models/gpt-4o-mini',
  '/chat/completions', '/models',
  '/v1/organization/users', '/v1/organization/admin_api_keys', '/v1/files', '/v1/fine_tuning/jobs', '/v1/threads/runs', '/v1/batches', '/v1/assistants',
  '/v1/chat/completions/../../organization/users', '/v1/models/../organization/users', '/v1/./organization/users', '/v1/chat/completions/x'
]

/** Unicode look-alikes of the characters in our paths: fullwidth forms, slashes and dots, Cyrillic, Greek, dotless i. */
const LOOKALIKES: Record<string, string[]> = {
  '/': ['\uff0f', '\u2215', '\u2044', '\u29f8', '\u2571'],
  '.': ['\uff0e', '\u2024', '\u3002'],
  a: ['\u0430', '\uff41'],
  c: ['\u0441', '\uff43'],
  e: ['\u0435', '\uff45'],
  h: ['\u04bb'],
  i: ['\u0131', '\u0456', '\uff49'],
  o: ['\u043e', '\u03bf', '\uff4f'],
  p: ['\u0440'],
  s: ['\u0455'],
  v: ['\uff56', '\u03bd'],
  1: ['\uff11', '\u0661']
}
const lookalikes = (c: string): string[] => LOOKALIKES[c] ?? (c >= '!' && c <= '~' ? [String.fromCharCode(c.charCodeAt(0) - 0x21 + 0xff01)] : ['\u00e9'])

const hex = (b: number, upper: boolean): string => (upper ? b.toString(16).toUpperCase() : b.toString(16)).padStart(2, '0')
const pct = (bytes: number[], upper: boolean): string => bytes.map((b) => `%${hex(b, upper)}`).join('')
/** UTF-8 bytes of `s` as a latin1 string: what a client writing raw non-ASCII puts on the wire. */
const rawUtf8 = (s: string): string => Buffer.from(s, 'utf8').toString('latin1')
const utf8 = (s: string): number[] => [...Buffer.from(s, 'utf8')]

const SEPARATORS = [';', ';x=1', '\\', '\t', '%09', '\x00', '%00', '/', '//', '/.', '/..', '/./', '/../', '/%2e%2e/', '%2f', '%2F', '%5c', '%3b',
  '?x=../organization', '#/../../organization/users', ' ', '%20', '%', '%zz', '%c0%ae', '\u00a0', '+']

type Mutation =
  | { kind: 'pct' | 'double' | 'overlong' | 'overlongRaw' | 'upper' | 'delete', at: number, upper: boolean }
  | { kind: 'lookalike', at: number, upper: boolean, pick: number, encoded: boolean }
  | { kind: 'insert', at: number, sep: string }

/** Separators written raw: Node's parser refuses most of them, so they are drawn less often. */
const RAW_SEPARATORS = new Set(['\t', '\x00', ' ', '\u00a0'])

// Weighted so that most requests get past Node's parser (raw non-ASCII, tabs and NUL stop it) and the router.
const mutation: fc.Arbitrary<Mutation> = fc.oneof(
  // Percent-encoding a character the router decodes keeps the route, so these requests are still forwarded.
  { arbitrary: fc.record({ kind: fc.constant<'pct'>('pct'), at: fc.nat(), upper: fc.boolean() }), weight: 12 },
  { arbitrary: fc.record({ kind: fc.constantFrom<'double' | 'upper' | 'delete'>('double', 'upper', 'delete'), at: fc.nat(), upper: fc.boolean() }), weight: 6 },
  { arbitrary: fc.record({ kind: fc.constant<'overlong'>('overlong'), at: fc.nat(), upper: fc.boolean() }), weight: 3 },
  { arbitrary: fc.record({ kind: fc.constant<'lookalike'>('lookalike'), at: fc.nat(), upper: fc.boolean(), pick: fc.nat(), encoded: fc.constant(true) }), weight: 5 },
  { arbitrary: fc.record({ kind: fc.constant<'insert'>('insert'), at: fc.nat(), sep: fc.constantFrom(...SEPARATORS.filter((x) => !RAW_SEPARATORS.has(x))) }), weight: 10 },
  // Raw bytes Node's parser refuses: overlong UTF-8, raw look-alikes, tab, NUL, space.
  { arbitrary: fc.record({ kind: fc.constant<'overlongRaw'>('overlongRaw'), at: fc.nat(), upper: fc.boolean() }), weight: 1 },
  { arbitrary: fc.record({ kind: fc.constant<'lookalike'>('lookalike'), at: fc.nat(), upper: fc.boolean(), pick: fc.nat(), encoded: fc.constant(false) }), weight: 1 },
  { arbitrary: fc.record({ kind: fc.constant<'insert'>('insert'), at: fc.nat(), sep: fc.constantFrom(...RAW_SEPARATORS) }), weight: 1 }
)

/**
 * Apply mutations to the path, one token per original character so later mutations still hit whole
 * characters. The leading `/` is left alone (without it Node's parser refuses the target outright); `lead`
 * is what goes before it, usually nothing.
 */
function mutate (path: string, mutations: Mutation[], lead: string): string {
  const tokens = [...path]
  for (const m of mutations) {
    const i = 1 + m.at % (tokens.length - 1 + (m.kind === 'insert' ? 1 : 0))
    if (m.kind === 'insert') {
      tokens.splice(i, 0, m.sep)
      continue
    }
    const token = tokens[i] ?? ''
    // Only single characters are re-encoded; an earlier encoding or insertion is left as it is.
    if (token.length !== 1) continue
    const code = token.charCodeAt(0)
    switch (m.kind) {
      case 'pct': tokens[i] = pct([code], m.upper); break
      case 'double': tokens[i] = `%25${hex(code, m.upper)}`; break
      // The two-byte overlong form of an ASCII character (`/` as %C0%AF): invalid UTF-8.
      case 'overlong': tokens[i] = pct([0xc0 | (code >> 6), 0x80 | (code & 0x3f)], m.upper); break
      case 'overlongRaw': tokens[i] = String.fromCharCode(0xc0 | (code >> 6), 0x80 | (code & 0x3f)); break
      case 'upper': tokens[i] = token.toUpperCase(); break
      case 'delete': tokens[i] = ''; break
      case 'lookalike': {
        const options = lookalikes(token)
        const alike = options[m.pick % options.length] ?? token
        tokens[i] = m.encoded ? pct(utf8(alike), m.upper) : rawUtf8(alike)
      }
    }
  }
  return lead + tokens.join('')
}

const METHODS = ['HEAD', 'OPTIONS', 'PUT', 'PATCH', 'DELETE', 'TRACE', 'PROPFIND', 'CONNECT', 'get', 'post', 'FOO', 'M-SEARCH']
const AUTH_NAMES = ['Authorization', 'authorization', 'AUTHORIZATION', 'aUtHoRiZaTiOn']
const CONTENT_TYPES = ['application/json', 'application/json', 'Application/JSON', 'application/json; charset=utf-8', 'application/json;charset=UTF-8', ' application/json',
  'application/json, text/plain', 'application/json\tx', 'text/plain', 'application/x-www-form-urlencoded', 'multipart/form-data; boundary=x', 'application/json; charset=utf-16']
const EXTRA_HEADERS = ['X-HTTP-Method-Override: DELETE', 'X-Original-URL: /v1/organization/users', 'X-Rewrite-URL: /v1/organization/users', 'X-Forwarded-Host: evil.example',
  'X-Forwarded-Prefix: /v1/organization', 'Forwarded: host=evil.example;proto=http', 'OpenAI-Beta: assistants=v2', 'X-Tab:\tvalue\t',
  'Accept: */*', 'x_forwarded_host: evil.example', 'Content-Encoding: identity', 'Expect: 100-continue']

interface RawCase {
  method: string
  form: 'origin' | 'absolute' | 'scheme-relative' | 'asterisk' | 'authority'
  scheme: string
  host: string
  base: string
  mutations: Mutation[]
  lead: string
  version: string
  hostLines: string[]
  authName: string
  contentType: string | null
  contentTypeName: string
  extras: string[]
  body: number
}

/** Mostly `usual`, sometimes one of `odd`: many odd choices get a request refused before routing, so they are drawn less often. */
const mostly = <T>(usual: T, odd: T[], weight = 8): fc.Arbitrary<T> => fc.oneof({ arbitrary: fc.constant(usual), weight }, { arbitrary: fc.constantFrom(...odd), weight: 1 })

const rawCase: fc.Arbitrary<RawCase> = fc.record({
  method: fc.oneof({ arbitrary: fc.constantFrom('GET', 'POST'), weight: 6 }, { arbitrary: fc.constantFrom(...METHODS), weight: 1 }),
  form: mostly<RawCase['form']>('origin', ['absolute', 'absolute', 'absolute', 'scheme-relative', 'asterisk', 'authority'], 3),
  scheme: fc.constantFrom('http', 'https', 'HTTP', 'ftp'),
  host: fc.constantFrom('evil.example', 'api.openai.com', 'EVIL', 'user:pass@evil.example', 'evil.example:80', '[::1]', 'EVILPORT'),
  base: fc.constantFrom(...BASES),
  mutations: fc.array(mutation, { maxLength: 5 }),
  lead: mostly('', ['/', '//', '%2f', '%2F', '%5c', '\\', '/..', '/%2e%2e', '.', 'v1', '%c0%af', '\uff0f'], 6),
  version: mostly('HTTP/1.1', ['HTTP/1.0', 'HTTP/1.0', 'HTTP/1.2', 'HTTP/2.0', 'HTTP/1.1 x']),
  hostLines: mostly(['Host: proxy.test'], [['host: proxy.test'], ['hOsT: evil.example'], ['HOST: api.openai.com'], ['Host: a.example', 'Host: evil.example'],
    ['Host: '], [], ['Host: EVILPORT'], ['Host: proxy.test', 'host: proxy.test'], ['Host: proxy.test\r\n\tevil.example']], 4),
  authName: fc.constantFrom(...AUTH_NAMES),
  contentType: fc.option(fc.constantFrom(...CONTENT_TYPES), { nil: null, freq: 6 }),
  contentTypeName: fc.constantFrom('Content-Type', 'content-type', 'CONTENT-TYPE', 'cOnTeNt-TyPe'),
  extras: fc.tuple(fc.shuffledSubarray(EXTRA_HEADERS, { maxLength: 4 }), mostly<string[]>([], [['X-Folded: a\r\n b'], ['X-Tab:\tvalue\t\x01']])).map(([a, b]) => [...a, ...b]),
  body: fc.nat({ max: 4 * ALLOWLISTED.length })
})

function rawBytes (c: RawCase, h: Harness, evilPort: number): string {
  const path = mutate(c.base, c.mutations, rawUtf8(c.lead))
  const host = c.host === 'EVILPORT' ? `127.0.0.1:${evilPort}` : c.host
  const target = c.form === 'origin'
    ? path
    : c.form === 'absolute'
      ? `${c.scheme}://${host}${path}`
      : c.form === 'scheme-relative' ? `//${host}${path}` : c.form === 'asterisk' ? '*' : 'api.openai.com:443'
  const lines = [`${c.method} ${target} ${c.version}`, ...c.hostLines.map((l) => l.replace('EVILPORT', `127.0.0.1:${evilPort}`)), `${c.authName}: ${h.auth.authorization}`, ...c.extras]
  const withBody = ['POST', 'PUT', 'PATCH', 'post'].includes(c.method)
  // Usually the body the base path's endpoint expects, so that some requests are forwarded.
  const fitting = ALLOWLISTED.find((a) => a.body !== undefined && c.base.endsWith(a.path))
  const body = withBody ? JSON.stringify((c.body % 4 !== 0 ? fitting?.body : undefined) ?? ALLOWLISTED[c.body % ALLOWLISTED.length]?.body ?? {}) : ''
  if (withBody) {
    if (c.contentType !== null) lines.push(`${c.contentTypeName}: ${c.contentType}`)
    lines.push(`Content-Length: ${Buffer.byteLength(body)}`)
  }
  lines.push('Connection: close')
  return lines.join('\r\n') + '\r\n\r\n' + body
}

/** The final status in what came back (a `100 Continue` interim answer skipped; any status line counts, parsed or not). */
const finalStatus = (text: string): number => [...text.matchAll(/^HTTP\/1\.[01] (\d{3})/gm)].map((m) => Number(m[1])).find((s) => s >= 200) ?? 0

const leaks = (text: string, secrets: readonly string[]): string[] =>
  secrets.flatMap((s) => leakPatterns(s).filter((p) => (typeof p === 'string' ? text.includes(p) : p.test(text))).map(String))

proxyTest(t, `R19, R05-R14: ${rawRuns} random raw requests (targets, encodings, look-alikes, separators, odd headers) reach upstream only as allowlisted pairs`, { listen: true }, async (h, t) => {
  t.comment(`fast-check seed ${seed} (replay with FUZZ_SEED=${seed})`)
  const evil = await startFakeOpenAI()
  t.teardown(() => evil.close())
  const port = Number(new URL(h.url).port)
  const upstreamHost = new URL(h.upstream.url).host
  const statuses = new Map<number, number>()
  let forwarded = 0
  await fc.assert(fc.asyncProperty(rawCase, async (c) => {
    const before = h.upstream.requests.length
    const seen = await exchange(port, Buffer.from(rawBytes(c, h, evil.port), 'latin1'))
    const status = finalStatus(seen.text)
    statuses.set(status, (statuses.get(status) ?? 0) + 1)
    const sent = h.upstream.requests.slice(before)
    forwarded += sent.length
    const problems = [
      ...(seen.closedByPeer ? [] : ['the connection hung']),
      ...(status >= 500 ? [`status ${status}`] : []),
      ...(sent.length > 1 ? [`${sent.length} upstream requests`] : []),
      ...sent.filter((r) => !isAllowlisted(r)).map((r) => `upstream got ${r.method} ${r.url}`),
      ...sent.filter((r) => r.headers.host !== upstreamHost).map((r) => `upstream Host ${String(r.headers.host)}`),
      ...(evil.requests.length > 0 ? ['the host named by the client was contacted'] : []),
      ...leaks(seen.text, h.secrets).map((p) => `client saw ${p.slice(0, 12)}…`)
    ]
    if (problems.length > 0) throw new Error(`${problems.join('; ')} for ${JSON.stringify(rawBytes(c, h, evil.port).split('\r\n')[0])}`)
  }), { seed, numRuns: rawRuns, includeErrorInReport: true })
  const summary = [...statuses].sort((a, b) => a[0] - b[0]).map(([s, n]) => `${s === 0 ? 'closed' : s}: ${n}`).join(', ')
  t.comment(`answers: ${summary}; ${forwarded} forwarded`)
  // Not vacuous: some requests were forwarded, some refused by the router, some by Node's parser.
  t.ok(forwarded > rawRuns / 100, `some requests were forwarded (${forwarded})`)
  t.ok((statuses.get(404) ?? 0) > rawRuns / 50 && (statuses.get(400) ?? 0) > rawRuns / 50, 'some refused by the router (404), some as malformed (400)')
  t.equal(evil.requests.length, 0, 'the host named in targets and Host headers received nothing')
})

// ---------------------------------------------------------------------------------------------------------
// 2. JSON bodies and the prompt filter.

const PHRASE = 'ignore previous instructions'
const PHRASE_RE = /(?<![a-z])ignore[^a-z]*previous[^a-z]*instructions(?![a-z])/i
const filter = { phrases: [PHRASE] }

/** A JSON value as the client writes it; `Big` is an integer written out digit by digit (beyond 2^53). */
class Big {
  constructor (readonly digits: string) {}
}
type Value = null | boolean | number | string | Big | Value[] | { [key: string]: Value }

// Filler text never forms the phrase, alone or joined with its neighbours.
const FILLER = ['hello', 'world', 'café', 'naïve', '東京', 'Привет', '😀', 'x/y', 'a\\b', '"quoted"', 'tab\there', 'line\nbreak', '42', '', 'ünïcödé', '</script>', 'ｆｕｌｌ']
const VARIANTS = [PHRASE, 'IGNORE PREVIOUS INSTRUCTIONS', 'Ignore previous instructions', 'ignore  previous\ninstructions', 'ignore-previous-instructions']

/** A text slot: filler, with the phrase in it when `variant` is set. */
const text = (variant: fc.Arbitrary<string | null>): fc.Arbitrary<string> =>
  fc.tuple(fc.constantFrom(...FILLER), variant, fc.constantFrom(...FILLER)).map(([a, v, b]) => (v === null ? `${a} ${b}` : `${a} ${v} ${b}`))

const nested: fc.Arbitrary<Value> = fc.letrec<{ v: Value }>((tie) => ({
  v: fc.oneof({ depthSize: 'small', withCrossShrink: true },
    { arbitrary: fc.constantFrom<Value>(null, true, false, 0, -1.5, 1e21, 3.14, 'v'), weight: 4 },
    { arbitrary: fc.constantFrom(...FILLER), weight: 4 },
    { arbitrary: fc.constantFrom(new Big('12345678901234567890'), new Big('-98765432109876543210987'), new Big('9007199254740993')), weight: 1 },
    { arbitrary: fc.array(tie('v'), { maxLength: 3 }), weight: 2 },
    { arbitrary: fc.dictionary(fc.constantFrom('a', 'b', 'x_y', 'é', 'n'), tie('v'), { maxKeys: 3 }), weight: 2 })
})).v

/** The body's prompt text: strings under the prompt fields, except role and type identifiers. */
function promptStrings (body: unknown, fields: readonly string[]): string[] {
  const out: string[] = []
  const walk = (v: unknown, key: string): void => {
    if (typeof v === 'string') {
      if (key !== 'role' && key !== 'type') out.push(v)
    } else if (Array.isArray(v)) {
      v.forEach((x) => walk(x, key))
    } else if (v !== null && typeof v === 'object') {
      for (const [k, x] of Object.entries(v)) walk(x, k)
    }
  }
  const obj = (body ?? {}) as Record<string, unknown>
  for (const f of fields) walk(obj[f], f)
  return out
}

interface BodyCase {
  endpoint: 'chat' | 'responses'
  value: { [key: string]: Value }
  style: Style
}

interface Style {
  /** Chance of whitespace around each token. */
  ws: number
  /** Chance of writing a character as a `\uXXXX` escape. */
  escape: number
  slash: boolean
  hexCase: 'upper' | 'lower' | 'mixed'
  /** Chance of a decoy member before each real one, with the same key. */
  dup: number
  /** Seed of the encoder's own choices. */
  rng: number
}

/** A phrase slot: null (clean) most of the time. */
const maybePhrase = (weight: number): fc.Arbitrary<string | null> =>
  fc.oneof({ arbitrary: fc.constant(null), weight }, { arbitrary: fc.constantFrom(...VARIANTS), weight: 1 })

const chatPart = (v: fc.Arbitrary<string | null>) => fc.record({ type: fc.constant('text'), text: text(v), x_meta: nested }, { requiredKeys: ['type', 'text'] })
const chatMessage = (v: fc.Arbitrary<string | null>) => fc.record({
  role: fc.constantFrom('user', 'system', 'developer', 'assistant'),
  content: fc.oneof(text(v), fc.array(chatPart(v), { minLength: 1, maxLength: 3 })),
  x_note: text(v)
}, { requiredKeys: ['role', 'content'] })

const chatBody = (v: fc.Arbitrary<string | null>) => fc.record({
  model: fc.constant('gpt-4o-mini'),
  messages: fc.array(chatMessage(v), { minLength: 1, maxLength: 4 }),
  temperature: fc.constantFrom(0, 0.7, 1.0),
  seed: fc.constantFrom<Value>(new Big('12345678901234567890'), 42, 7),
  logit_bias: fc.constant<Value>({ 100257: -100 }),
  x_extra: nested
}, { requiredKeys: ['model', 'messages'] }) as fc.Arbitrary<{ [key: string]: Value }>

const inputItem = (v: fc.Arbitrary<string | null>) => fc.oneof(
  fc.record({ role: fc.constantFrom('user', 'system', 'developer', 'assistant'), content: text(v) }),
  fc.record({ type: fc.constant('message'), role: fc.constantFrom('user', 'system', 'developer'), content: fc.array(fc.record({ type: fc.constant('input_text'), text: text(v) }), { minLength: 1, maxLength: 3 }) }, { requiredKeys: ['role', 'content'] })
)
const responsesBody = (v: fc.Arbitrary<string | null>) => fc.record({
  model: fc.constant('gpt-4o-mini'),
  input: fc.oneof(text(v), fc.array(inputItem(v), { minLength: 1, maxLength: 3 })),
  instructions: text(v),
  store: fc.constant(false),
  max_output_tokens: fc.constantFrom(16, 1000),
  x_big: fc.constantFrom<Value>(new Big('123456789012345678901234567890'), 5, 6),
  x_extra: nested
}, { requiredKeys: ['model', 'input'] }) as fc.Arbitrary<{ [key: string]: Value }>

const style: fc.Arbitrary<Style> = fc.record({
  ws: fc.constantFrom(0, 0, 0.2, 0.6),
  escape: fc.constantFrom(0, 0, 0.1, 0.5, 1),
  slash: fc.boolean(),
  hexCase: fc.constantFrom('upper', 'lower', 'mixed'),
  dup: fc.constantFrom(0, 0, 0.15, 0.4),
  rng: fc.integer()
})

// The weight of a clean slot against one with the phrase: from nearly every slot to a body in ten.
const bodyCase: fc.Arbitrary<BodyCase> = fc.constantFrom(1, 8, 60, 60).chain((w) => fc.oneof(
  fc.record({ endpoint: fc.constant('chat' as const), value: chatBody(maybePhrase(w)), style }),
  fc.record({ endpoint: fc.constant('responses' as const), value: responsesBody(maybePhrase(w)), style })
))

/** mulberry32: the encoder's choices, reproducible from the case. */
function prng (seed: number): () => number {
  let a = seed >>> 0
  return () => {
    a = (a + 0x6d2b79f5) >>> 0
    let x = Math.imul(a ^ (a >>> 15), 1 | a)
    x = (x + Math.imul(x ^ (x >>> 7), 61 | x)) ^ x
    return ((x ^ (x >>> 14)) >>> 0) / 4294967296
  }
}

/** Decoys for a repeated key: any JSON, some carrying the phrase, some a long integer. */
const DECOYS = [`"${PHRASE}"`, '"IGNORE previous instructions"', `[{"type":"text","text":"${PHRASE}"}]`, `[{"role":"user","content":"${PHRASE}"}]`, 'null', '{"x":1}', '"clean"', '12345678901234567890', '[]']

interface Encoded {
  text: string
  /** Each top-level member as written: `"key" : value`, decoys included. */
  members: Array<{ key: string, text: string }>
  duplicates: boolean
  longNumber: boolean
}

/** Write `value` as JSON text with the random spellings `s` asks for. */
function encode (value: { [key: string]: Value }, s: Style): Encoded {
  const rnd = prng(s.rng)
  let duplicates = false
  let longNumber = false
  const ws = (): string => (rnd() < s.ws ? [' ', '\t', '\n', '\r\n', '  '][Math.floor(rnd() * 5)] ?? ' ' : '')
  const u = (code: number): string => {
    const digits = code.toString(16).padStart(4, '0')
    const upper = s.hexCase === 'upper' || (s.hexCase === 'mixed' && rnd() < 0.5)
    return `\\u${upper ? digits.toUpperCase() : digits}`
  }
  const str = (x: string): string => {
    let out = '"'
    for (const ch of x) {
      const code = ch.codePointAt(0) as number
      if (ch === '"') out += rnd() < s.escape ? u(code) : '\\"'
      else if (ch === '\\') out += rnd() < s.escape ? u(code) : '\\\\'
      else if (ch === '/' && s.slash) out += '\\/'
      else if (code < 0x20) out += rnd() < 0.5 ? u(code) : ({ 10: '\\n', 9: '\\t', 13: '\\r' } as Record<number, string>)[code] ?? u(code)
      else if (rnd() < s.escape) out += code > 0xffff ? [...String.fromCodePoint(code)].map((c) => u(c.charCodeAt(0))).join('') : u(code)
      else out += ch
    }
    return out + '"'
  }
  const member = (key: string, v: Value): string => `${str(key)}${ws()}:${ws()}${val(v)}`
  const decoy = (key: string): string => {
    duplicates = true
    const d = DECOYS[Math.floor(rnd() * DECOYS.length)] ?? 'null'
    if (/\d{16}/.test(d)) longNumber = true
    return `${str(key)}${ws()}:${ws()}${d}`
  }
  const members = (obj: { [key: string]: Value }): string[] => Object.entries(obj).flatMap(([k, v]) => (rnd() < s.dup ? [decoy(k), member(k, v)] : [member(k, v)]))
  function val (v: Value): string {
    if (v instanceof Big) {
      longNumber = true
      return v.digits
    }
    if (v === null || typeof v === 'boolean' || typeof v === 'number') return JSON.stringify(v)
    if (typeof v === 'string') return str(v)
    if (Array.isArray(v)) return `[${ws()}${v.map(val).join(`${ws()},${ws()}`)}${ws()}]`
    return `{${ws()}${members(v).join(`${ws()},${ws()}`)}${ws()}}`
  }
  const top = Object.entries(value).flatMap(([k, v]) => {
    const real = { key: k, text: member(k, v) }
    return rnd() < s.dup ? [{ key: k, text: decoy(k) }, real] : [real]
  })
  const text = `${ws()}{${ws()}${top.map((m) => m.text).join(`${ws()},${ws()}`)}${ws()}}${ws()}`
  return { text, members: top, duplicates, longNumber }
}

/** JSON.parse, except that the FIRST of repeated keys wins (how some other parsers read a body). */
function parseFirstWins (text: string): unknown {
  let i = 0
  const skip = (): void => { while (/[ \t\n\r]/.test(text[i] ?? '')) i++ }
  function value (): unknown {
    skip()
    const c = text[i]
    if (c === '{') {
      i++
      const obj: Record<string, unknown> = {}
      skip()
      if (text[i] === '}') { i++; return obj }
      for (;;) {
        skip()
        const key = value() as string
        skip()
        i++ // :
        const v = value()
        if (!Object.hasOwn(obj, key)) Object.defineProperty(obj, key, { value: v, enumerable: true, writable: true, configurable: true })
        skip()
        if (text[i++] === '}') return obj
      }
    }
    if (c === '[') {
      i++
      const arr: unknown[] = []
      skip()
      if (text[i] === ']') { i++; return arr }
      for (;;) {
        arr.push(value())
        skip()
        if (text[i++] === ']') return arr
      }
    }
    if (c === '"') {
      let j = i + 1
      while (text[j] !== '"') j += text[j] === '\\' ? 2 : 1
      const s = JSON.parse(text.slice(i, j + 1)) as string
      i = j + 1
      return s
    }
    const m = /^(?:true|false|null|-?\d+(?:\.\d+)?(?:[eE][+-]?\d+)?)/.exec(text.slice(i, i + 400)) as RegExpExecArray
    i += m[0].length
    return JSON.parse(m[0])
  }
  return value()
}

const PROMPT_FIELDS = { chat: ['messages'], responses: ['input', 'instructions'] } as const
const URLS = { chat: '/v1/chat/completions', responses: '/v1/responses' } as const

proxyTest(t, `B04, F06: ${bodyRuns} randomly encoded JSON bodies: the filter judges what upstream receives, and clean bodies go upstream as the client's bytes`, { proxy: { filter } }, async (h, t) => {
  t.comment(`fast-check seed ${seed} (replay with FUZZ_SEED=${seed})`)
  const outcomes = new Map<string, number>()
  const count = (k: string): void => { outcomes.set(k, (outcomes.get(k) ?? 0) + 1) }
  await fc.assert(fc.asyncProperty(bodyCase, async (c) => {
    const enc = encode(c.value, c.style)
    const fields = PROMPT_FIELDS[c.endpoint]
    const meaning = JSON.parse(enc.text) as Record<string, unknown>
    const blocked = promptStrings(meaning, fields).some((s) => PHRASE_RE.test(s))
    const before = h.upstream.requests.length
    const res = await h.app.inject({ method: 'POST', url: URLS[c.endpoint], headers: { ...h.auth, 'content-type': 'application/json' }, payload: Buffer.from(enc.text, 'utf8') })
    const sent = h.upstream.requests.slice(before)
    const fail = (why: string): never => {
      throw new Error(`${why}\nstatus ${res.statusCode} ${res.body.slice(0, 300)}\nsent: ${enc.text.slice(0, 2000)}\nupstream: ${sent[0]?.body.toString().slice(0, 2000) ?? '(nothing)'}`)
    }
    // Whatever went upstream holds no phrase, under either reading of repeated keys, and repeats no key.
    for (const r of sent) {
      const body = r.body.toString('utf8')
      const last = JSON.parse(body) as unknown
      const first = parseFirstWins(body)
      if (JSON.stringify(first) !== JSON.stringify(last)) fail('upstream body repeats a key with different values')
      if (promptStrings(last, fields).some((s) => PHRASE_RE.test(s))) fail('the phrase reached upstream in a prompt field')
      if (PHRASE_RE.test(body)) fail('the phrase reached upstream')
    }
    if (enc.duplicates && enc.longNumber) {
      // A repeated key forces re-serialisation, which would round a long integer: refused as ambiguous.
      count('ambiguous: 400')
      if (res.statusCode !== 400 || !/repeats a key/.test(res.body) || sent.length !== 0) fail('a repeated key with a long integer should be a 400 with nothing upstream')
      return
    }
    if (blocked) {
      count('phrase: refused')
      if (res.statusCode !== 400 || (res.json() as { error?: { code?: string } }).error?.code !== 'content_filter') fail('a body with the phrase in a prompt field should be refused by the filter')
      if (sent.length !== 0) fail('a refused body reached upstream')
      return
    }
    if (res.statusCode !== 200 || sent.length !== 1) fail('a clean body should be forwarded once')
    const got = sent[0]?.body.toString('utf8') ?? ''
    const patchStore = c.endpoint === 'responses' && meaning.store !== false
    let expected: string
    if (enc.duplicates) {
      // Re-serialised from the parsed body (last value wins), with the policy's change applied.
      const value = JSON.parse(enc.text) as Record<string, unknown>
      if (patchStore) value.store = false
      expected = JSON.stringify(value)
      count('repeated key: re-serialised')
    } else if (patchStore) {
      // The client's members byte for byte, the policy's member appended.
      expected = `{${enc.members.map((m) => m.text).join(',')},"store":false}`
      count('store set: spliced')
    } else {
      expected = enc.text
      count('unchanged: identical bytes')
    }
    if (got !== expected) fail('upstream bytes differ from what the client sent')
  }), { seed, numRuns: bodyRuns, includeErrorInReport: true })
  t.comment(`outcomes: ${[...outcomes].map(([k, n]) => `${k} ${n}`).join(', ')}`)
  for (const k of ['phrase: refused', 'unchanged: identical bytes', 'store set: spliced', 'repeated key: re-serialised']) {
    t.ok((outcomes.get(k) ?? 0) > 0, `the run exercised "${k}" (${outcomes.get(k) ?? 0})`)
  }
})
