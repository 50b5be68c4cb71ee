import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import Fastify from 'fastify'
import OpenAI from 'openai'
import t, { type Test } from 'tap'
import oaiProxy from '../../../app.js'
import browserTokens, { oaiProxyTokenMinter } from '../../../plugins/client-keys/browser-token-plugin.js'
import { mintBrowserToken, type MintTokenOptions } from '../../../plugins/client-keys/browser-tokens.js'
import { writeKeysFile } from '../../../plugins/client-keys/file-io.js'
import { buildIndex } from '../../../plugins/client-keys/records.js'
import type { ClientKeyRecord } from '../../../plugins/client-keys/schema.js'
import { startFakeOpenAI } from '../../../testing/fake-openai.js'
import { assertNoLeak, canaryKey, chatBody, proxyTest, seenByClient, sleep, type Harness } from '../../helper.js'
import { connect, open, refused, rtTest } from '../../realtime-helper.js'
import { randomBytes } from 'node:crypto'
import { hashSecret, newKeyId, newSecret } from '../../../plugins/client-keys/records.js'

/*
 * Browser tokens through the proxy: served from their origin only, refused when tampered, expired, of a
 * disabled record or a revoked subject, across a secret rotation, held to narrowed scopes and to per-subject
 * limits, seen by the openai SDK as AuthenticationError, over the Realtime handshake, and minted by a host
 * app that embeds the suite. Every answer and log line is scanned for the secrets and the tokens.
 */

const ORIGIN = 'https://app.example'
const OTHER = 'https://other.example'
const newTokenSecret = (): string => randomBytes(32).toString('base64url')
function tokenRecord (extra: Partial<ClientKeyRecord> = {}): ClientKeyRecord {
  const s = newSecret()
  return { id: newKeyId(), name: 'class', hash: hashSecret(s), prefix: s.slice(0, 12), created: new Date().toISOString(), disabled: false, scopes: {}, metadata: {}, ...extra }
}
const secret = newTokenSecret()
const dir = mkdtempSync(join(tmpdir(), 'oai-tokens-proxy-'))
t.teardown(() => rmSync(dir, { recursive: true, force: true }))

let files = 0
/** A keys file of its own for each test (some change it). */
function keysFile (records: ClientKeyRecord[]): string {
  const file = join(dir, `keys-${files++}.jsonl`)
  writeKeysFile(file, records)
  return file
}
const mintFor = (records: ClientKeyRecord[], o: Partial<MintTokenOptions> & { key: string }, secrets = [secret]) =>
  mintBrowserToken({ sub: 'alice', origin: ORIGIN, ...o }, secrets, buildIndex(records).byId).token
const proxyOpts = (file: string, extra: Record<string, unknown> = {}) => ({ keysFile: file, browserTokens: { secrets: [secret] }, cors: { origins: [ORIGIN, OTHER] }, ...extra })
const chat = (h: Harness, token: string, origin: string | null = ORIGIN, body: Record<string, unknown> = chatBody(), url = '/v1/chat/completions') =>
  h.app.inject({ method: 'POST', url, headers: { 'content-type': 'application/json', authorization: `Bearer ${token}`, ...(origin === null ? {} : { origin }) }, payload: JSON.stringify(body) })
const errorOf = (res: { body: string }) => (JSON.parse(res.body) as { error: { message: string, code: string | null } }).error
const until = async (check: () => Promise<boolean>, ms = 5000) => {
  for (const end = Date.now() + ms; Date.now() < end; await sleep(25)) if (await check()) return true
  return false
}
/** Nothing secret in what a client saw, and neither a signing secret nor a token in the logs. */
function scan (t: Test, h: Harness, answers: Array<{ statusCode: number, headers: Record<string, unknown>, body: string }>, tokens: string[], extra: string[] = []) {
  for (const r of answers) assertNoLeak(t, seenByClient(r), [...h.secrets, secret, ...extra], 'an answer')
  assertNoLeak(t, h.logs.join(''), [...h.secrets, secret, ...extra, ...tokens], 'logs')
}

const basic = tokenRecord()
const limited = tokenRecord({ limits: { requestsPerWindow: 2 }, scopes: { models: ['gpt-4o*'], endpoints: ['chat.completions', 'embeddings', 'models.list', 'realtime'] } })

proxyTest(t, 'a token works from its origin only; every refusal is the answer to a wrong key', { proxy: proxyOpts(keysFile([basic, limited])) }, async (h, t) => {
  const token = mintFor([basic], { key: basic.id })
  const ok = await chat(h, token)
  t.equal(ok.statusCode, 200, ok.body)
  t.equal(h.upstream.requests[0]?.headers.authorization, `Bearer ${h.keys[0]}`, 'upstream gets the pool key, never the token')
  t.equal(ok.headers['access-control-allow-origin'], ORIGIN)
  const xApiKey = await h.app.inject({ method: 'POST', url: '/v1/chat/completions', headers: { 'content-type': 'application/json', 'x-api-key': token, origin: ORIGIN }, payload: JSON.stringify(chatBody()) })
  t.equal(xApiKey.statusCode, 200, 'as x-api-key too')

  const other = await chat(h, token, OTHER)
  t.equal(other.statusCode, 401)
  t.strictSame(errorOf(other), { message: 'This browser token was issued for pages of another origin.', type: 'invalid_request_error', param: null, code: 'invalid_api_key' })
  t.equal(other.headers['access-control-allow-origin'], OTHER, 'a page of an allowed origin can read why')
  t.equal((await chat(h, token, null)).statusCode, 401, 'no Origin header')
  t.equal(errorOf(await chat(h, token, null)).code, 'invalid_api_key')

  const wrongKey = errorOf(await chat(h, 'sk-not-a-key'))
  const [, body, sig] = token.split('.') as [string, string, string]
  const bad = [`oarpt.${body.slice(0, -2)}.${sig}`, `oarpt.${body}.${sig.slice(1)}`, `oarpt.${body}.${sig}.x`, `${token}${'A'.repeat(5000)}`, 'oarpt.', 'oarpt.!!.??']
  const answers = []
  for (const b of bad) {
    const r = await chat(h, b)
    answers.push(r)
    t.equal(r.statusCode, 401)
    t.strictSame(errorOf(r), wrongKey, 'the same answer as a wrong key: no oracle')
  }
  const expired = mintBrowserToken({ sub: 'alice', key: basic.id, origin: ORIGIN, ttlSeconds: 1 }, [secret], buildIndex([basic]).byId, { now: Date.now() - 5000 }).token
  t.strictSame(errorOf(await chat(h, expired)), wrongKey, 'expired')
  t.equal(h.upstream.requests.length, 2, 'nothing refused went upstream')
  t.match(h.logs.join(''), /"rule":"browser_token","reason":"signature"/, 'the log says why')
  t.match(h.logs.join(''), /"reason":"origin"/)
  scan(t, h, [ok, other, ...answers], [token, expired])
})

proxyTest(t, 'narrowed scopes hold; per-subject buckets under one record; the abuse guard knows a token\'s client', {
  proxy: proxyOpts(keysFile([basic, limited]), { rateLimit: { failuresPerMinute: 3 } })
}, async (h, t) => {
  const records = [limited]
  const narrow = mintFor(records, { key: limited.id, sub: 'carol', scopes: { models: ['gpt-4o-mini'], endpoints: ['chat.completions'] } })
  t.equal((await chat(h, narrow)).statusCode, 200)
  const model = await chat(h, narrow, ORIGIN, chatBody({ model: 'gpt-4o' }))
  t.equal(model.statusCode, 403, 'a model the record allows but the token does not')
  t.equal(errorOf(model).code, 'model_not_allowed')
  // Another subject: carol has spent the record's 2 requests per window.
  const narrow2 = mintFor(records, { key: limited.id, sub: 'carol2', scopes: { models: ['gpt-4o-mini'], endpoints: ['chat.completions'] } })
  const endpoint = await chat(h, narrow2, ORIGIN, { model: 'gpt-4o-mini', input: 'x' }, '/v1/embeddings')
  t.equal(endpoint.statusCode, 403)
  t.equal(errorOf(endpoint).code, 'endpoint_not_allowed')

  // The record allows 2 requests per window: each subject has its own 2.
  const alice = mintFor(records, { key: limited.id, sub: 'alice' })
  const bob = mintFor(records, { key: limited.id, sub: 'bob' })
  t.strictSame([(await chat(h, alice)).statusCode, (await chat(h, alice)).statusCode, (await chat(h, alice)).statusCode], [200, 200, 429])
  t.strictSame([(await chat(h, bob)).statusCode, (await chat(h, bob)).statusCode], [200, 200], 'bob is not held to alice\'s bucket')

  // Failures on paths auth never sees count against the token's client, not the address.
  const dave = mintFor(records, { key: limited.id, sub: 'dave' })
  for (let i = 0; i < 3; i++) t.equal((await h.app.inject({ method: 'GET', url: '/v1/nope', headers: { authorization: `Bearer ${dave}`, origin: ORIGIN } })).statusCode, 404)
  t.equal((await chat(h, dave)).statusCode, 429, 'dave is over his failures')
  t.equal((await chat(h, mintFor(records, { key: limited.id, sub: 'erin' }))).statusCode, 200, 'erin, same address, is not')
  scan(t, h, [model, endpoint], [narrow, narrow2, alice, bob, dave])
})

const changing = keysFile([basic])
proxyTest(t, 'disabling the record or revoking a subject ends tokens without a restart', { proxy: proxyOpts(changing) }, async (h, t) => {
  const file = changing
  const alice = mintFor([basic], { key: basic.id, sub: 'alice' })
  const bob = mintFor([basic], { key: basic.id, sub: 'bob' })
  t.equal((await chat(h, alice)).statusCode, 200)
  // Up to a minute from now: every alice token issued until then is refused, whenever this test's clock ticks.
  writeKeysFile(file, [{ ...basic, revokedSubjects: { alice: new Date(Date.now() + 60_000).toISOString() } }])
  t.ok(await until(async () => (await chat(h, alice)).statusCode === 401), 'alice is refused after the reload')
  t.equal((await chat(h, bob)).statusCode, 200, 'bob still works')
  t.equal((await chat(h, mintFor([{ ...basic }], { key: basic.id, sub: 'alice' }))).statusCode, 401, 'a token issued before the revocation instant is refused too')
  writeKeysFile(file, [{ ...basic, disabled: true }])
  t.ok(await until(async () => (await chat(h, bob)).statusCode === 401), 'a disabled record ends every token of its class')
  t.match(h.logs.join(''), /"reason":"revoked"/)
  t.match(h.logs.join(''), /"reason":"record"/)
  scan(t, h, [], [alice, bob])
})

const shared = tokenRecord({ limits: { requestsPerDay: 3 } })
proxyTest(t, 'quotas are the record\'s: every subject under it spends one budget', { proxy: proxyOpts(keysFile([shared])) }, async (h, t) => {
  const [alice, bob] = ['alice', 'bob'].map((sub) => mintFor([shared], { key: shared.id, sub }))
  t.strictSame([(await chat(h, alice as string)).statusCode, (await chat(h, alice as string)).statusCode, (await chat(h, bob as string)).statusCode], [200, 200, 200])
  const over = await chat(h, bob as string)
  t.equal(over.statusCode, 429, 'bob\'s first request of the day is refused: alice spent most of it')
  t.equal(errorOf(over).code, 'insufficient_quota')
  t.equal(h.upstream.requests.length, 3)
  scan(t, h, [over], [alice as string, bob as string])
})

t.test('rotation: a token signed by the old secret works while it is listed, and not after', async (t) => {
  const next = newTokenSecret()
  const file = keysFile([basic])
  const old = mintFor([basic], { key: basic.id })
  await proxyTest(t, 'both listed', { proxy: proxyOpts(file, { browserTokens: { secrets: [next, secret] } }) }, async (h, t) => {
    t.equal((await chat(h, old)).statusCode, 200)
    t.equal((await chat(h, mintFor([basic], { key: basic.id }, [next]))).statusCode, 200)
  })
  await proxyTest(t, 'the old one removed', { proxy: proxyOpts(file, { browserTokens: { secrets: [next] } }) }, async (h, t) => {
    const r = await chat(h, old)
    t.equal(r.statusCode, 401)
    t.equal(errorOf(r).message, 'Incorrect API key provided.')
    scan(t, h, [r], [old], [next])
  })
})

proxyTest(t, 'the openai SDK: AuthenticationError for a bad token; a good one from a server must send its Origin', { listen: true, proxy: proxyOpts(keysFile([basic])) }, async (h, t) => {
  const token = mintFor([basic], { key: basic.id })
  const sdk = (apiKey: string, headers: Record<string, string> = {}) => new OpenAI({ apiKey, baseURL: `${h.url}/v1`, maxRetries: 0, defaultHeaders: headers })
  const params = { model: 'gpt-4o-mini', messages: [{ role: 'user' as const, content: 'hi' }] }
  const tampered = token.slice(0, -3) + 'AAA'
  const failure = (p: Promise<unknown>) => p.then(() => null, (err: unknown) => err)
  t.type(await failure(sdk(tampered, { origin: ORIGIN }).chat.completions.create(params)), OpenAI.AuthenticationError)
  t.type(await failure(sdk(token).chat.completions.create(params)), OpenAI.AuthenticationError, 'Node sends no Origin')
  const done = await sdk(token, { origin: ORIGIN }).chat.completions.create(params)
  t.match(done.choices[0]?.message.content, /hi/)
  scan(t, h, [], [token, tampered])
})

// A record with model scopes cannot open Realtime sessions at all (docs/client-keys.md): this one has none.
const voice = tokenRecord({ scopes: { endpoints: ['chat.completions', 'realtime'] } })
rtTest(t, 'Realtime: the handshake carries Origin; a token works from its origin, by header or subprotocol', {
  proxy: proxyOpts(keysFile([voice]))
}, async (h, t) => {
  const token = mintFor([voice], { key: voice.id })
  const byHeader = await open(t, h.wsUrl, { headers: { authorization: `Bearer ${token}`, origin: ORIGIN } })
  byHeader.send({ type: 'response.create' })
  await byHeader.next('response.done')
  byHeader.ws.close()
  const bySubprotocol = await open(t, h.wsUrl, { protocols: ['realtime', `openai-insecure-api-key.${token}`], headers: { origin: ORIGIN } })
  bySubprotocol.ws.close()
  const wrong = await refused(h.wsUrl, { headers: { authorization: `Bearer ${token}`, origin: OTHER } })
  t.equal(wrong.status, 401)
  t.match(wrong.body, /another origin/)
  const narrowed = mintFor([voice], { key: voice.id, scopes: { endpoints: ['chat.completions'] } })
  const scoped = await connect(h.wsUrl, { headers: { authorization: `Bearer ${narrowed}`, origin: ORIGIN } })
  t.match(scoped, { status: 403, body: /endpoint_not_allowed/ }, 'a token narrowed to chat cannot open a session')
  assertNoLeak(t, h.logs.join(''), [secret, token, narrowed], 'logs')
})

t.test('a host app mints for its signed-in users through oaiProxyTokenMinter', async (t) => {
  const upstreamKey = canaryKey()
  const upstream = await startFakeOpenAI({ validKeys: [upstreamKey] })
  const app = Fastify()
  t.teardown(async () => { await app.close(); await upstream.close() })
  await app.register(oaiProxyTokenMinter)
  t.throws(() => app.oaiProxyMintToken({ sub: 'u', key: basic.id, origin: ORIGIN }), /no suite with browserTokens is registered/)
  await app.register(oaiProxy, { prefix: '/ai', upstreamUrl: upstream.url, openaiKeys: [upstreamKey], ...proxyOpts(keysFile([basic])) })
  // The host's own route: its session says who the user is; the proxy never sees the session.
  app.post('/api/ai-token', async (request) => app.oaiProxyMintToken({ sub: String(request.headers['x-user']), key: basic.id, origin: ORIGIN, ttlSeconds: 300 }))
  await app.ready()
  const minted = await app.inject({ method: 'POST', url: '/api/ai-token', headers: { 'x-user': 'user-42' } })
  const { token, expiresAt } = minted.json() as { token: string, expiresAt: string }
  t.ok(Date.parse(expiresAt) - Date.now() <= 300_000)
  const r = await app.inject({ method: 'POST', url: '/ai/v1/chat/completions', headers: { 'content-type': 'application/json', authorization: `Bearer ${token}`, origin: ORIGIN }, payload: JSON.stringify(chatBody()) })
  t.equal(r.statusCode, 200, r.body)
  t.throws(() => app.oaiProxyMintToken({ sub: 'u', key: basic.id, origin: 'https://not-in-cors.example' }), /not in the CORS allowlist/)
  const refusedMint = await app.inject({ method: 'POST', url: '/api/ai-token', headers: { 'x-user': 'a user with spaces' } })
  t.equal(refusedMint.statusCode, 400, 'a refusal thrown through a host route is a 400')
  t.match(refusedMint.json(), { message: /sub must be 1 to 128 printable ASCII/ })
  assertNoLeak(t, seenByClient(r) + minted.body, [upstreamKey, secret], 'answers')

  const twice = Fastify()
  t.teardown(() => twice.close())
  await twice.register(oaiProxyTokenMinter)
  const opts = { upstreamUrl: upstream.url, openaiKeys: [upstreamKey], ...proxyOpts(keysFile([basic])) }
  await twice.register(oaiProxy, { prefix: '/a', ...opts })
  await t.rejects(async () => { await twice.register(oaiProxy, { prefix: '/b', ...opts }) }, /a second suite with browserTokens on one host/)
})

t.test('the plugin on its own: decorates the scope it is in; refuses unusable secrets without echoing them', async (t) => {
  const app = Fastify()
  t.teardown(() => app.close())
  const lookup = buildIndex([basic]).byId
  await app.register(browserTokens, { secrets: [secret], keys: { byId: lookup }, corsOrigins: [ORIGIN] })
  await app.ready()
  const { token } = app.oaiProxyMintToken({ sub: 'x', key: basic.id, origin: ORIGIN })
  t.ok(app.oaiProxyBrowserTokens.verify(token, ORIGIN).ok)
  for (const [secrets, why] of [[[], /give at least one secret/], [[secret, 'too-short-secret'], /entry 2 is shorter than 32 characters/]] as const) {
    const bad = Fastify()
    let err: unknown
    try {
      await bad.register(browserTokens, { secrets: [...secrets], keys: { byId: lookup }, corsOrigins: [] }).ready()
    } catch (e) {
      err = e
    }
    t.match(err, { message: why })
    t.notMatch((err as Error).message, 'too-short-secret')
    await bad.close()
  }
})
