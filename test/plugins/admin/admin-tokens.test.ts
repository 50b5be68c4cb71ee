import { randomBytes } from 'node:crypto'
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import fastifyRateLimit from '@fastify/rate-limit'
import Fastify from 'fastify'
import t, { type Test } from 'tap'
import admin from '../../../plugins/admin/index.js'
import { oaiProxyTokenMinter } from '../../../plugins/client-keys/browser-token-plugin.js'
import { BrowserTokenError, tokenClientId } from '../../../plugins/client-keys/browser-tokens.js'
import { writeKeysFile } from '../../../plugins/client-keys/file-io.js'
import { KeysFileError } from '../../../plugins/client-keys/records.js'
import type { OaiProxyClientKeys } from '../../../plugins/client-keys/store.js'
import oaiProxy from '../../../app.js'
import { startFakeOpenAI } from '../../../testing/fake-openai.js'
import { assertNoLeak, canaryKey, chatBody, proxyTest, randomToken, seenByClient, type Harness } from '../../helper.js'

/*
 * POST /admin/tokens: a browser token minted through the admin API is used through the proxy (fake
 * upstream) from its origin only; every refusal of the minter is a 400 with its reason, an unknown record a
 * 404, no TOKEN_SECRETS a 400 of its own; the admin key guards it; and neither the token, the signing
 * secret, the admin key nor the subject in clear reaches the logs.
 */

const dir = mkdtempSync(join(tmpdir(), 'oai-admin-tokens-'))
t.teardown(() => rmSync(dir, { recursive: true, force: true }))
let n = 0
function keysFile (): string {
  const file = join(dir, `keys-${n++}.jsonl`)
  writeKeysFile(file, [])
  return file
}

const ADMIN_KEY = `adm-${randomToken(40)}`
const SIGNING = randomBytes(32).toString('base64url')
const ORIGIN = 'https://app.example'
const OTHER = 'https://other.example'
const SUB = `user-${randomToken(16)}`

type Res = { statusCode: number, headers: Record<string, unknown>, body: string }
const call = (h: Harness, method: string, url: string, body?: unknown, auth = `Bearer ${ADMIN_KEY}`) => h.app.inject({
  method: method as 'POST',
  url,
  headers: { authorization: auth, ...(body === undefined ? {} : { 'content-type': 'application/json' }) },
  ...(body === undefined ? {} : { payload: JSON.stringify(body) })
})
const chat = (h: Harness, token: string, origin: string, model = 'gpt-4o-mini') => h.app.inject({
  method: 'POST',
  url: '/v1/chat/completions',
  headers: { 'content-type': 'application/json', authorization: `Bearer ${token}`, origin },
  payload: JSON.stringify(chatBody({ model }))
})
const errorOf = (res: { body: string }) => (JSON.parse(res.body) as { error: { code: string | null, type: string, message: string, param: string | null } }).error

/** A record made through the admin API: the class of the tokens. */
async function record (h: Harness, body: Record<string, unknown> = { name: 'web users' }): Promise<{ id: string, secret: string }> {
  const res = await call(h, 'POST', '/admin/keys', body)
  return JSON.parse(res.body) as { id: string, secret: string }
}

function scan (t: Test, h: Harness, answers: Res[], tokens: string[], extra: string[] = []): void {
  for (const r of answers) assertNoLeak(t, seenByClient(r), [...h.secrets, SIGNING, ADMIN_KEY, ...extra], 'an answer')
  const logs = h.logs.join('')
  assertNoLeak(t, logs, [...h.secrets, SIGNING, ADMIN_KEY, ...tokens, ...extra], 'logs')
  t.notOk(logs.includes(SUB), 'the subject is never logged in clear')
}

const withTokens = { keysFile: keysFile(), admin: { key: ADMIN_KEY }, browserTokens: { secrets: [SIGNING] }, cors: { origins: [ORIGIN, OTHER] } }

proxyTest(t, 'a token minted through the admin API works through the proxy from its origin only', { proxy: withTokens }, async (h, t) => {
  const cls = await record(h)
  const answers: Res[] = []
  const res = await call(h, 'POST', '/admin/tokens', { key: cls.id, sub: SUB, origin: 'HTTPS://App.Example:443', ttlSeconds: 120 })
  answers.push(res)
  t.equal(res.statusCode, 201, res.body)
  const minted = JSON.parse(res.body) as { token: string, expiresAt: string, key: string, sub: string, origin: string }
  t.strictSame(Object.keys(minted).sort(), ['expiresAt', 'key', 'origin', 'sub', 'token'])
  t.match(minted, { token: /^oarpt\./, key: cls.id, sub: SUB, origin: ORIGIN })
  const life = Date.parse(minted.expiresAt) - Date.now()
  t.ok(life > 100_000 && life <= 120_000, 'expires after ttlSeconds')

  const ok = await chat(h, minted.token, ORIGIN)
  answers.push(ok)
  t.equal(ok.statusCode, 200, ok.body)
  t.equal(h.upstream.requests[0]?.headers.authorization, `Bearer ${h.keys[0]}`, 'the upstream gets the pool key, never the token')
  const other = await chat(h, minted.token, OTHER)
  answers.push(other)
  t.equal(other.statusCode, 401)
  t.equal(errorOf(other).code, 'invalid_api_key')
  t.equal(errorOf(other).message, 'This browser token was issued for pages of another origin.')

  // Default lifetime, and scopes narrowing the record's: a model outside is refused.
  const narrow = await call(h, 'POST', '/admin/tokens', { key: cls.id, sub: SUB, origin: ORIGIN, scopes: { models: ['gpt-4o-mini'] } })
  answers.push(narrow)
  t.equal(narrow.statusCode, 201, narrow.body)
  const narrowToken = (JSON.parse(narrow.body) as { token: string }).token
  t.ok(Date.parse((JSON.parse(narrow.body) as { expiresAt: string }).expiresAt) - Date.now() <= 900_000, '15 minutes by default')
  t.equal((await chat(h, narrowToken, ORIGIN)).statusCode, 200)
  const outside = await chat(h, narrowToken, ORIGIN, 'gpt-4.1')
  t.equal(outside.statusCode, 403)
  t.equal(errorOf(outside).code, 'model_not_allowed')

  // Logged: who, what, which record, the subject's hash (the client id of its requests), origin, lifetime.
  const lines = h.logs.map((l) => JSON.parse(l) as Record<string, unknown>).filter((l) => l.action === 'token.mint')
  t.equal(lines.length, 2)
  t.match(lines[0], { level: 30, msg: 'oai-proxy: admin token minted', actor: 'admin', key: cls.id, client: tokenClientId(cls.id, SUB), origin: ORIGIN, ttlSeconds: 120, expiresAt: minted.expiresAt })
  t.equal(lines[1]?.ttlSeconds, 900)
  scan(t, h, answers, [minted.token, narrowToken], [cls.secret])
})

proxyTest(t, 'what the minter refuses is a 400 with its reason; an unknown record a 404; a bad body a 400 naming the field', { proxy: { ...withTokens, keysFile: keysFile() } }, async (h, t) => {
  const cls = await record(h, { name: 'scoped', scopes: { models: ['gpt-4o*'] } })
  const off = await record(h, { name: 'off' })
  t.equal((await call(h, 'POST', `/admin/keys/${off.id}/disable`)).statusCode, 200)
  const answers: Res[] = []
  const refused = async (body: Record<string, unknown>, status: number, code: string, message: RegExp, param: string | null = null) => {
    const res = await call(h, 'POST', '/admin/tokens', { key: cls.id, sub: SUB, origin: ORIGIN, ...body })
    answers.push(res)
    t.equal(res.statusCode, status, `${JSON.stringify(body)}: ${res.body}`)
    t.match(errorOf(res), { code, type: 'invalid_request_error', message, param })
  }
  await refused({ key: off.id }, 400, 'token_not_minted', /^cannot mint a browser token: key must name an enabled, unexpired client key record/)
  await refused({ scopes: { models: ['gpt-4*'] } }, 400, 'token_not_minted', /scopes may only narrow the record's/)
  await refused({ ttlSeconds: 86_401 }, 400, 'token_not_minted', /ttlSeconds must be a whole number from 1 to 86400 \(24 hours\)/)
  await refused({ ttlSeconds: 0 }, 400, 'token_not_minted', /ttlSeconds/)
  await refused({ origin: 'https://evil.example' }, 400, 'token_not_minted', /origin https:\/\/evil\.example is not in the CORS allowlist/)
  await refused({ origin: 'https://*.example' }, 400, 'token_not_minted', /origin must be one exact origin/)
  await refused({ sub: 'two words' }, 400, 'token_not_minted', /sub must be 1 to 128 printable ASCII characters/)
  await refused({ key: 'key_aaaaaaaaaaaa' }, 404, 'key_not_found', /^No client key key_aaaaaaaaaaaa\.$/)
  await refused({ key: 'sk-nope' }, 400, 'invalid_request_body', /key/, 'key')
  await refused({ ttl_seconds: 60 }, 400, 'invalid_request_body', /Unexpected property/, 'ttl_seconds')
  await refused({ ttlSeconds: '60' }, 400, 'invalid_request_body', /ttlSeconds/, 'ttlSeconds')
  t.equal(h.logs.filter((l) => l.includes('token.mint')).length, 0, 'nothing minted, nothing logged as minted')
  scan(t, h, answers, [], [cls.secret, off.secret])
})

proxyTest(t, 'only the admin key opens it', { proxy: { ...withTokens, keysFile: keysFile() } }, async (h, t) => {
  const cls = await record(h)
  const body = { key: cls.id, sub: SUB, origin: ORIGIN }
  const minted = JSON.parse((await call(h, 'POST', '/admin/tokens', body)).body) as { token: string }
  const answers: Res[] = []
  for (const auth of [`Bearer ${ADMIN_KEY.slice(0, -1)}${ADMIN_KEY.endsWith('x') ? 'y' : 'x'}`, `Bearer ${h.proxyKey}`, `Bearer ${cls.secret}`, `Bearer ${minted.token}`, '']) {
    const res = await call(h, 'POST', '/admin/tokens', body, auth)
    answers.push(res)
    t.equal(res.statusCode, 401)
    t.equal(errorOf(res).code, 'invalid_admin_key')
    t.notOk(res.body.includes('oarpt.'), 'no token in a refusal')
  }
  scan(t, h, answers, [minted.token], [cls.secret])
})

proxyTest(t, 'without a CORS allowlist the origin is the minter\'s choice: a same-origin page (a host app serving its own pages) gets its token', { proxy: { ...withTokens, keysFile: keysFile(), cors: { origins: [] } } }, async (h, t) => {
  const cls = await record(h)
  const res = await call(h, 'POST', '/admin/tokens', { key: cls.id, sub: SUB, origin: ORIGIN })
  t.equal(res.statusCode, 201, res.body)
  const minted = JSON.parse(res.body) as { token: string }
  t.equal((await chat(h, minted.token, ORIGIN)).statusCode, 200)
  t.equal((await chat(h, minted.token, OTHER)).statusCode, 401, 'still bound to its origin')
})

proxyTest(t, 'without TOKEN_SECRETS the route answers 400 browser_tokens_not_configured', { proxy: { keysFile: keysFile(), admin: { key: ADMIN_KEY } } }, async (h, t) => {
  const cls = await record(h)
  const res = await call(h, 'POST', '/admin/tokens', { key: cls.id, sub: SUB, origin: ORIGIN })
  t.equal(res.statusCode, 400)
  t.strictSame(errorOf(res), { message: 'This proxy has no browser token secrets (TOKEN_SECRETS), so it cannot mint browser tokens.', type: 'invalid_request_error', param: null, code: 'browser_tokens_not_configured' })
  t.equal((await call(h, 'POST', '/admin/tokens', { key: cls.id, sub: SUB, origin: ORIGIN }, 'Bearer nope')).statusCode, 401, 'auth first')
  scan(t, h, [res], [], [cls.secret])
})

proxyTest(t, 'without a keys file either', { proxy: { admin: { key: ADMIN_KEY } } }, async (h, t) => {
  const res = await call(h, 'POST', '/admin/tokens', { key: 'key_aaaaaaaaaaaa', sub: SUB, origin: ORIGIN })
  t.equal(res.statusCode, 400)
  t.equal(errorOf(res).code, 'browser_tokens_not_configured')
})

t.test('a host app\'s oaiProxyTokenMinter alone does not make the admin API think tokens are configured', async (t) => {
  const upstream = await startFakeOpenAI({ validKeys: [canaryKey()] })
  const app = Fastify()
  await app.register(oaiProxyTokenMinter)
  await app.register(oaiProxy, { upstreamUrl: upstream.url, openaiKeys: [canaryKey()], keysFile: keysFile(), admin: { key: ADMIN_KEY } })
  t.teardown(async () => { await app.close(); await upstream.close() })
  const res = await app.inject({ method: 'POST', url: '/admin/tokens', headers: { authorization: `Bearer ${ADMIN_KEY}`, 'content-type': 'application/json' }, payload: JSON.stringify({ key: 'key_aaaaaaaaaaaa', sub: SUB, origin: ORIGIN }) })
  t.equal(res.statusCode, 400)
  t.equal(errorOf(res).code, 'browser_tokens_not_configured')
})

t.test('a store that cannot be read is a 503; an error the minter should never throw is passed on', async (t) => {
  const store = (list: () => Promise<never>): OaiProxyClientKeys => ({ kind: 'file', size: 0, lookup: () => null, byId: (id) => (id === 'key_bbbbbbbbbbbb' ? {} as never : null), list, update: list, reload: async () => false })
  const build = async (mint: () => never, list: () => Promise<never>) => {
    const app = Fastify()
    await app.register(fastifyRateLimit, { global: false })
    app.decorate('oaiProxyBrowserTokens', { verify: () => ({ ok: false, reason: 'malformed' }), idOf: () => null })
    app.decorate('oaiProxyMintToken', mint)
    await app.register(admin, { key: ADMIN_KEY, keys: store(list) })
    t.teardown(() => app.close())
    return (key: string) => app.inject({ method: 'POST', url: '/admin/tokens', headers: { authorization: `Bearer ${ADMIN_KEY}`, 'content-type': 'application/json' }, payload: JSON.stringify({ key, sub: SUB, origin: ORIGIN }) })
  }
  const broken = await build(() => { throw new BrowserTokenError('never reached') }, async () => { throw new KeysFileError('the keys file is corrupt') })
  const res = await broken('key_aaaaaaaaaaaa')
  t.equal(res.statusCode, 503)
  t.match(JSON.parse(res.body), { code: 'OAI_PROXY_ADMIN_STORE_FAILED', message: /corrupt/ })
  const odd = await build(() => { throw new Error('not a BrowserTokenError') }, async () => { throw new Error('unused') })
  t.equal((await odd('key_bbbbbbbbbbbb')).statusCode, 500)
})
