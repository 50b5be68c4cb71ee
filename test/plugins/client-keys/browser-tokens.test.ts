import { createHmac, randomBytes } from 'node:crypto'
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import t from 'tap'
import { resolveOptions } from '../../../app.js'
import { readConfig } from '../../../plugins/config/read-config.js'
import { browserTokenVerifier, BrowserTokenError, mintBrowserToken, MAX_TOKEN_LENGTH, secretId, tokenClientId, type MintTokenOptions } from '../../../plugins/client-keys/browser-tokens.js'
import { runTokenCli } from '../../../plugins/client-keys/cli-token.js'
import { writeKeysFile } from '../../../plugins/client-keys/file-io.js'
import { buildIndex, hashSecret, newKeyId, newSecret, parseKeysFile } from '../../../plugins/client-keys/records.js'
import { globWithin, narrowed, normaliseOrigin } from '../../../plugins/client-keys/token-scopes.js'
import type { ClientKeyRecord } from '../../../plugins/client-keys/schema.js'
import { compileOrigins } from '../../../lib/origins.js'

/*
 * Browser tokens on their own: the format, minting and verifying (tampering, expiry, origin, records,
 * revoked subjects, rotation, narrowed scopes), the options that configure them and the `keys token` CLI.
 * The proxy, the SDK and a real browser are in browser-tokens-proxy and browser-tokens-chromium.
 */

const newTokenSecret = (): string => randomBytes(32).toString('base64url')
const ORIGIN = 'https://app.example'

function tokenRecord (extra: Partial<ClientKeyRecord> = {}): ClientKeyRecord {
  const secret = newSecret()
  return { id: newKeyId(), name: 'class', hash: hashSecret(secret), prefix: secret.slice(0, 12), created: new Date().toISOString(), disabled: false, scopes: {}, metadata: {}, ...extra }
}

const NOW = Date.parse('2030-01-01T12:00:00Z')
const secret = newTokenSecret()
const scoped = tokenRecord({ scopes: { endpoints: ['chat.completions', 'responses', 'models.list'], models: ['gpt-4o*', 'gpt-4.1-mini'] }, limits: { requestsPerWindow: 5, tokensPerDay: 100 } })
const open = tokenRecord()
const off = tokenRecord({ disabled: true })
const revoking = tokenRecord({ revokedSubjects: { alice: '2030-01-01T11:00:00Z' } })
const index = buildIndex([scoped, open, off, revoking], () => NOW)
const mint = (o: Partial<MintTokenOptions> = {}, secrets = [secret], now = NOW) => mintBrowserToken({ sub: 'alice', key: open.id, origin: ORIGIN, ...o }, secrets, index.byId, { now })
const verifier = (secrets = [secret], at = NOW) => browserTokenVerifier(secrets, index.byId, () => at)
/** The verdict's reason; `origin` null stands for a request without an Origin header. */
const reason = (token: string, origin: string | null = ORIGIN, v = verifier()) => { const r = v.verify(token, origin ?? undefined); return r.ok ? 'ok' : r.reason }
const payloadOf = (token: string): Record<string, unknown> => JSON.parse(Buffer.from(token.split('.')[1] as string, 'base64url').toString())
const resign = (payload: unknown, key = secret): string => {
  const body = Buffer.from(JSON.stringify(payload)).toString('base64url')
  return `oarpt.${body}.${createHmac('sha256', key).update(`oarpt.${body}`).digest('base64url')}`
}

t.test('a minted token verifies, and carries what the docs say', async (t) => {
  const { token, expiresAt } = mint()
  t.match(token, /^oarpt\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]{43}$/)
  t.equal(expiresAt, '2030-01-01T12:15:00.000Z', 'the default lifetime is 15 minutes')
  t.strictSame(payloadOf(token), { v: 1, sub: 'alice', key: open.id, iat: NOW / 1000, exp: NOW / 1000 + 900, origin: ORIGIN, kid: secretId(secret) })
  const v = verifier().verify(token, ORIGIN)
  t.ok(v.ok)
  if (!v.ok) return
  t.strictSame(v.client, { id: tokenClientId(open.id, 'alice'), kind: 'browser-token', limits: {}, quota: { account: open.id, quotas: {} } })
  t.match(v.client.id, new RegExp(`^${open.id}:[0-9a-f]{16}$`), 'the record and a hash of the subject, not the name')
  t.not(tokenClientId(open.id, 'bob'), v.client.id)
  t.equal(v.entry, index.byId(open.id), 'an unnarrowed token is checked against the record itself')
  t.equal(verifier().idOf(token, ORIGIN), v.client.id)
  t.equal(verifier().idOf(token, 'https://evil.example'), null)
  t.equal(secretId(secret).length, 8)
  t.notMatch(token, secret)
})

t.test('the record is the class: its limits per subject, its quotas charged to the record', async (t) => {
  const v = verifier().verify(mint({ key: scoped.id, sub: 'bob' }).token, ORIGIN)
  t.ok(v.ok && v.client.quota?.account === scoped.id)
  t.match(v.ok ? v.client : null, { limits: { requestsPerWindow: 5 }, quota: { quotas: { tokensPerDay: 100 } } })
})

t.test('tampered, truncated, oversized and look-alike tokens are refused', async (t) => {
  const { token } = mint()
  const [, body, sig] = token.split('.') as [string, string, string]
  const flip = (s: string, i: number) => s.slice(0, i) + (s[i] === 'A' ? 'B' : 'A') + s.slice(i + 1)
  const cases: Record<string, string> = {
    'a payload character changed': `oarpt.${flip(body, 10)}.${sig}`,
    'the payload re-encoded with another subject': `oarpt.${Buffer.from(JSON.stringify({ ...payloadOf(token), sub: 'mallory' })).toString('base64url')}.${sig}`,
    'a signature character changed': `oarpt.${body}.${flip(sig, 5)}`,
    'the last signature character changed (its two spare bits)': `oarpt.${body}.${sig.slice(0, 42)}${String.fromCharCode(sig.charCodeAt(42) ^ 1)}`,
    'signed with another secret': resign(payloadOf(token), newTokenSecret()),
    'an HMAC-SHA512 signature (alg confusion)': `oarpt.${body}.${createHmac('sha512', secret).update(`oarpt.${body}`).digest('base64url')}`,
    'an unsigned JWT-style token (alg none)': `oarpt.${body}.`,
    'a JWT': `eyJhbGciOiJub25lIn0.${body}.`,
    truncated: token.slice(0, -1),
    'no signature': `oarpt.${body}`,
    'extra dots': `oarpt.${body}.${sig}.${sig}`,
    'a dot inside': `oarpt.${body.slice(0, 5)}.${body.slice(5)}.${sig}`,
    'not base64url': `oarpt.${body}+/.${sig}`,
    padding: `oarpt.${body}=.${sig}`,
    'another prefix': `oarpu.${body}.${sig}`,
    huge: `oarpt.${'A'.repeat(MAX_TOKEN_LENGTH)}.${sig}`,
    empty: ''
  }
  for (const [name, bad] of Object.entries(cases)) t.not(reason(bad), 'ok', name)
  t.equal(reason(cases['a signature character changed'] as string), 'signature')
  t.equal(reason(cases.huge as string), 'malformed', 'a huge token is refused before hashing')
  t.equal(reason(cases['signed with another secret'] as string), 'signature')
  // Signed, but not what the proxy mints.
  const p = payloadOf(token)
  t.equal(reason(resign({ ...p, v: 2 })), 'payload', 'an unknown version')
  t.equal(reason(resign({ ...p, extra: 1 })), 'payload', 'an unknown field')
  t.equal(reason(resign({ ...p, exp: (p.iat as number) + 86_401 })), 'payload', 'a lifetime over 24 hours')
  t.equal(reason(`oarpt.${Buffer.from('not json').toString('base64url')}.${createHmac('sha256', secret).update(`oarpt.${Buffer.from('not json').toString('base64url')}`).digest('base64url')}`), 'payload', 'a signed non-JSON payload')
  t.equal(reason(token), 'ok', 'the original still works')
})

t.test('time: expired, issued in the future, the skew allowance', async (t) => {
  const { token } = mint({ ttlSeconds: 60 })
  t.equal(reason(token, ORIGIN, verifier([secret], NOW + 59_999)), 'ok')
  t.equal(reason(token, ORIGIN, verifier([secret], NOW + 60_000)), 'expired')
  t.equal(reason(token, ORIGIN, verifier([secret], NOW - 30_000)), 'ok', '30 s of clock skew are allowed')
  t.equal(reason(token, ORIGIN, verifier([secret], NOW - 31_000)), 'future')
  t.throws(() => mint({ ttlSeconds: 86_401 }), { name: 'BrowserTokenError', message: /ttlSeconds must be a whole number from 1 to 86400/ }, 'more than 24 hours is refused at mint')
  for (const ttl of [0, -1, 1.5, Number.NaN, '60' as unknown as number]) t.throws(() => mint({ ttlSeconds: ttl }), BrowserTokenError)
  t.equal(mint({ ttlSeconds: 86_400 }).expiresAt, '2030-01-02T12:00:00.000Z')
  const expiring = tokenRecord({ expires: '2030-01-01T12:05:00Z' })
  const lookup = buildIndex([expiring], () => NOW).byId
  t.equal(mintBrowserToken({ sub: 'a', key: expiring.id, origin: ORIGIN }, [secret], lookup, { now: NOW }).expiresAt, '2030-01-01T12:05:00.000Z', 'never outlives its record')
})

t.test('origin: exact match of the normalised origin; missing or other origins are refused', async (t) => {
  const { token } = mint({ origin: 'HTTPS://App.Example:443/' })
  t.equal(payloadOf(token).origin, ORIGIN, 'normalised at mint')
  t.equal(reason(token), 'ok')
  for (const other of [null, 'null', 'https://app.example.evil', 'http://app.example', 'https://app.example:8443', 'https://APP.example', `${ORIGIN}/`]) {
    t.equal(reason(token, other), 'origin', `Origin ${String(other)}`)
  }
  t.equal(normaliseOrigin('http://[::1]:3000'), 'http://[::1]:3000')
  t.equal(normaliseOrigin('http://127.0.0.1:5173'), 'http://127.0.0.1:5173')
  for (const bad of ['https://*.example.com', 'app.example', 'https://app.example/path', 'https://app.example?x', 'https://u:p@app.example', 'ftp://app.example', 'null', 'https://', 'https://a b', 'https://exa%mple.com', 'x'.repeat(300), 42 as unknown as string]) {
    t.throws(() => normaliseOrigin(bad), /one exact origin/, `refused: ${String(bad).slice(0, 40)}`)
  }
  t.throws(() => mint({ origin: 'https://*.example.com' }), /cannot mint a browser token: origin must be one exact origin/)
  const cors = compileOrigins(['https://*.example.com'])
  t.throws(() => mintBrowserToken({ sub: 'a', key: open.id, origin: 'https://other.test' }, [secret], index.byId, { now: NOW, originAllowed: cors }), /not in the CORS allowlist/)
  t.ok(mintBrowserToken({ sub: 'a', key: open.id, origin: 'https://app.example.com' }, [secret], index.byId, { now: NOW, originAllowed: cors }).token)
})

t.test('the record: unknown, disabled or expired refuses its tokens; revoked subjects are refused', async (t) => {
  const token = resign({ ...payloadOf(mint().token), key: off.id })
  t.equal(reason(token), 'record', 'a disabled record')
  t.equal(reason(resign({ ...payloadOf(mint().token), key: newKeyId() })), 'record', 'an unknown one')
  t.throws(() => mint({ key: off.id }), /key must name an enabled, unexpired client key record/)
  t.throws(() => mint({ key: 'key_nope' }), /key must name/)
  t.throws(() => mint({ key: 7 as unknown as string }), /key must name/)
  // alice is revoked up to 11:00; her tokens from before are refused, those from after are not; bob is untouched.
  const before = resign({ ...payloadOf(mint().token), key: revoking.id, iat: Date.parse('2030-01-01T11:00:00Z') / 1000 })
  t.equal(reason(before), 'revoked', 'issued at the revocation instant')
  t.equal(reason(mint({ key: revoking.id, sub: 'alice' }).token), 'ok', 'issued after it')
  t.equal(reason(mint({ key: revoking.id, sub: 'bob' }).token), 'ok', 'another subject')
  t.throws(() => mint({ key: revoking.id, sub: 'alice' }, [secret], Date.parse('2030-01-01T10:00:00Z')), /the subject's tokens are revoked up to 2030-01-01T11:00:00.000Z/)
  for (const sub of ['', 'a b', 'x'.repeat(129), 'é', 5 as unknown as string]) t.throws(() => mint({ sub }), /sub must be 1 to 128 printable ASCII/)
  t.throws(() => mint({}, []), /no browserTokens.secrets/)
})

t.test('rotation: the first secret signs, every listed one verifies', async (t) => {
  const next = newTokenSecret()
  const old = mint().token
  const fresh = mint({}, [next, secret]).token
  t.equal(payloadOf(fresh).kid, secretId(next))
  t.equal(reason(old, ORIGIN, verifier([next, secret])), 'ok', 'the old secret still verifies while listed')
  t.equal(reason(fresh, ORIGIN, verifier([next, secret])), 'ok')
  t.equal(reason(old, ORIGIN, verifier([next])), 'signature', 'and not once removed')
  t.equal(reason(fresh, ORIGIN, verifier([next])), 'ok')
  const list = [secret]
  const v = verifier(list)
  list[0] = next
  t.equal(reason(old, ORIGIN, v), 'ok', 'the verifier keeps its own copy of the list')
})

t.test('scopes only narrow: wider is refused at mint, the intersection is enforced', async (t) => {
  t.ok(globWithin('gpt-4o-mini', 'gpt-4o*'))
  t.ok(globWithin('gpt-4o-*', 'gpt-4o*'))
  t.ok(globWithin('gpt-4o*', 'gpt-4o*'))
  t.notOk(globWithin('gpt-4*', 'gpt-4o*'))
  t.notOk(globWithin('*', 'gpt-*'))
  t.notOk(globWithin('gpt-*', 'gpt-*-mini'))
  const entry = index.byId(scoped.id)
  if (entry === null) throw new Error('scoped record missing')
  const narrow = mint({ key: scoped.id, scopes: { models: ['gpt-4o-mini'], endpoints: ['chat.completions'] } }).token
  const v = verifier().verify(narrow, ORIGIN)
  t.ok(v.ok)
  t.strictSame(v.ok ? [v.entry.models, [...v.entry.endpoints as Set<string>]] : null, [['gpt-4o-mini'], ['chat.completions']])
  t.strictSame(payloadOf(narrow).scopes, { models: ['gpt-4o-mini'], endpoints: ['chat.completions'] })
  t.throws(() => mint({ key: scoped.id, scopes: { models: ['gpt-4*'] } }), /scopes may only narrow the record's, and its scopes do not allow model "gpt-4\*"/)
  t.throws(() => mint({ key: scoped.id, scopes: { endpoints: ['embeddings'] } }), /do not allow endpoint "embeddings"/)
  t.throws(() => mint({ scopes: { endpoints: ['no.such.endpoint'] } }), /do not allow endpoint "no.such.endpoint"/, 'unknown ids even on an unscoped record')
  t.throws(() => mint({ scopes: { models: 'gpt-4o' } as never }), /scopes must be/)
  t.throws(() => mint({ scopes: { models: Array.from({ length: 200 }, (_, i) => `model-${i}-${'x'.repeat(30)}`) } }), /longer than 4096 characters/)
  t.ok(mint({ scopes: { models: ['anything*'], endpoints: ['realtime'] } }).token, 'an unscoped record allows any narrowing')
  // The record narrowed after minting: the token's lists are cut to what the record still allows.
  t.strictSame(narrowed({ ...entry, models: ['gpt-4o'], endpoints: new Set(['responses']) }, { models: ['gpt-4o*', 'gpt-4o'], endpoints: ['chat.completions', 'responses'] }).models, ['gpt-4o'])
  t.strictSame([...narrowed({ ...entry, endpoints: new Set(['responses']) }, { endpoints: ['chat.completions', 'responses'] }).endpoints as Set<string>], ['responses'])
  t.equal(narrowed(entry, { models: ['gpt-4o-mini'] }).endpoints, entry.endpoints, 'a list the token leaves out is the record\'s')
  t.strictSame(narrowed({ ...entry, models: null, endpoints: null }, { models: ['a'], endpoints: ['responses'] }).models, ['a'])
  t.strictSame(narrowed(entry, { endpoints: ['responses'] }).models, entry.models)
})

t.test('records: revokedSubjects must hold ISO dates', async (t) => {
  const r = tokenRecord({ revokedSubjects: { alice: 'yesterday!' } })
  t.throws(() => parseKeysFile(`${JSON.stringify(r)}\n`), /line 1: \/revokedSubjects: not an ISO 8601 date/)
  const ok = tokenRecord({ revokedSubjects: { alice: '2030-01-01' } })
  t.equal(buildIndex(parseKeysFile(`${JSON.stringify(ok)}\n`)).byId(ok.id)?.revokedSubjects?.get('alice'), Date.parse('2030-01-01'))
  t.equal(buildIndex([open]).byId(open.id)?.revokedSubjects, undefined)
})

t.test('options: TOKEN_SECRETS and browserTokens, never echoing a secret', async (t) => {
  const a = newTokenSecret()
  const b = newTokenSecret()
  t.strictSame(readConfig({ TOKEN_SECRETS: `${a}, ${b}`, KEYS_FILE: '/x' }).proxy.browserTokens, { secrets: [a, b] })
  t.equal(readConfig({}).proxy.browserTokens, undefined)
  const short = 'short-secret-of-20ch'
  t.throws(() => readConfig({ TOKEN_SECRETS: `${a},${short}` }), { message: 'TOKEN_SECRETS: entry 2 is shorter than 32 characters' })
  const base = { openaiKeys: ['sk-test'], keysFile: '/x' }
  t.throws(() => resolveOptions({ openaiKeys: ['sk-test'], browserTokens: { secrets: [a] } }), { message: /invalid option \/browserTokens: needs keysFile/ })
  let message = ''
  try {
    resolveOptions({ ...base, browserTokens: { secrets: [short] } })
  } catch (err) {
    message = (err as Error).message
  }
  t.match(message, /^oai-proxy: invalid option \/browserTokens\/secrets\/0: /)
  t.notMatch(message, short)
  t.throws(() => resolveOptions({ ...base, browserTokens: { secrets: [] } }), /\/browserTokens\/secrets/)
})

t.test('the keys token CLI', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'oai-tokens-'))
  t.teardown(() => rmSync(dir, { recursive: true, force: true }))
  const file = join(dir, 'keys.jsonl')
  writeKeysFile(file, [scoped, open])
  const run = async (args: string[], env: Record<string, string> = { KEYS_FILE: file, TOKEN_SECRETS: secret }) => {
    let out = ''
    let err = ''
    const code = await runTokenCli(args, env, { out: (s) => { out += s }, err: (s) => { err += s } })
    return { code, out, err }
  }
  const ok = await run(['--key', scoped.id, '--sub', 'alice', '--origin', ORIGIN, '--ttl', '120', '--models', 'gpt-4o-mini', '--endpoints', 'chat.completions'])
  t.equal(ok.code, 0, ok.err)
  const token = ok.out.split('\n')[0] as string
  t.match(ok.out, /^oarpt\.\S+\n# expires \d{4}-/)
  t.match(payloadOf(token), { sub: 'alice', key: scoped.id, scopes: { models: ['gpt-4o-mini'], endpoints: ['chat.completions'] } })
  t.equal((payloadOf(token).exp as number) - (payloadOf(token).iat as number), 120)
  t.ok(browserTokenVerifier([secret], buildIndex([scoped]).byId).verify(token, ORIGIN).ok, 'the proxy would accept it')
  const json = await run(['--key', open.id, '--sub', 'bob', '--origin', ORIGIN, '--json', '--file', file], { TOKEN_SECRETS: `${secret},${newTokenSecret()}`, CORS_ORIGINS: ORIGIN })
  t.equal(json.code, 0, json.err)
  t.match(JSON.parse(json.out), { token: /^oarpt\./, expiresAt: /Z$/ })
  t.match(JSON.parse(json.out), { models: undefined })
  const usage = [
    [['--sub', 'a', '--origin', ORIGIN], /--key is required/],
    [['--key', open.id, '--sub', 'a', '--origin', ORIGIN, '--ttl', '1h'], /--ttl: a whole number/],
    [['--key', open.id, '--sub', 'a', '--origin', ORIGIN, '--nope'], /Unknown option/],
    [['--key', open.id, '--sub', 'a', '--origin', ORIGIN, 'extra'], /positional/]
  ] as const
  for (const [args, why] of usage) {
    const r = await run([...args])
    t.equal(r.code, 2, String(why))
    t.match(r.err, why)
    t.match(r.err, /Usage: oai-reverse-proxy keys token/)
  }
  const args = ['--key', open.id, '--sub', 'a', '--origin', ORIGIN]
  t.match(await run(args, { TOKEN_SECRETS: secret }), { code: 2, err: /--file or KEYS_FILE/ })
  t.match(await run(args, { KEYS_FILE: file }), { code: 1, err: /set TOKEN_SECRETS/ })
  const short = await run(args, { KEYS_FILE: file, TOKEN_SECRETS: `${secret},tooshort` })
  t.match(short, { code: 1, err: /TOKEN_SECRETS: entry 2 is shorter than 32 characters/ })
  t.notMatch(short.err, 'tooshort')
  t.match(await run(args, { KEYS_FILE: join(dir, 'missing.jsonl'), TOKEN_SECRETS: secret }), { code: 1, err: /missing.jsonl: no such file/ })
  t.match(await run(args, { KEYS_FILE: file, TOKEN_SECRETS: secret, CORS_ORIGINS: 'https://elsewhere.example' }), { code: 1, err: /not in the CORS allowlist/ })
  t.match(await run(['--key', off.id, '--sub', 'a', '--origin', ORIGIN]), { code: 1, err: /key must name an enabled/ })
  t.match(await run(['--key', scoped.id, '--sub', 'a', '--origin', ORIGIN, '--models', 'o3']), { code: 1, err: /do not allow model "o3"/ })
  const chatOnly = await run(['--key', scoped.id, '--sub', 'a', '--origin', ORIGIN, '--endpoints', 'chat.completions'])
  t.strictSame(payloadOf(chatOnly.out.split('\n')[0] as string).scopes, { endpoints: ['chat.completions'] })
  for (const r of [ok, json]) t.notMatch(r.out + r.err, secret, 'the secret is never printed')
})
