import { spawn } from 'node:child_process'
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import OpenAI from 'openai'
import Fastify from 'fastify'
import t from 'tap'
import oaiProxy from '../../../app.js'
import { readConfig } from '../../../plugins/config/read-config.js'
import { writeKeysFile } from '../../../plugins/client-keys/file-io.js'
import { hashSecret, newKeyId, newSecret } from '../../../plugins/client-keys/records.js'
import { startServer } from '../../../server.js'
import { formContentType, multipartBody } from '../../../testing/fake-uploads.js'
import type { ClientKeyRecord } from '../../../plugins/client-keys/schema.js'
import { assertNoLeak, canaryKey, chatBody, listeningUrl, proxyTest, seenByClient, sleep, type Harness } from '../../helper.js'

/*
 * Client keys end to end: the CLI (as a child process, the way an operator runs it) writes the file, the
 * running proxy accepts, scopes and refuses keys from it, and picks up every change without a restart.
 */

const dir = mkdtempSync(join(tmpdir(), 'oai-keys-e2e-'))
t.teardown(() => rmSync(dir, { recursive: true, force: true }))

const cliPath = fileURLToPath(new URL('../../../cli.ts', import.meta.url))
/** Run `cli.ts keys …` in a child with tap's TypeScript loader but not its coverage hooks (as spawnServer). */
function spawnCli (args: string[], env: Record<string, string>) {
  const execArgv = process.execArgv.filter((a) => !a.includes('processinfo'))
  const base = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith('_TAPJS') && !k.startsWith('TAP') && k !== 'NODE_V8_COVERAGE'))
  return spawn(process.execPath, [...execArgv, cliPath, ...args], { env: { ...base, ...env }, stdio: ['ignore', 'pipe', 'pipe'] })
}
function runCli (args: string[], env: Record<string, string>): Promise<{ code: number | null, stdout: string, stderr: string }> {
  return new Promise((resolve) => {
    const child = spawnCli(['keys', ...args], env)
    let stdout = ''
    let stderr = ''
    child.stdout.on('data', (c: Buffer) => { stdout += c.toString() })
    child.stderr.on('data', (c: Buffer) => { stderr += c.toString() })
    child.on('close', (code) => resolve({ code, stdout, stderr }))
  })
}

function record (secret: string, extra: Partial<ClientKeyRecord> = {}): ClientKeyRecord {
  return { id: newKeyId(), name: 'test', hash: hashSecret(secret), prefix: secret.slice(0, 12), created: new Date().toISOString(), disabled: false, scopes: {}, metadata: {}, ...extra }
}

const INVALID = { error: { message: 'Incorrect API key provided.', type: 'invalid_request_error', param: null, code: 'invalid_api_key' } }
const chat = (h: Harness, key: string, extra: Record<string, unknown> = {}) =>
  h.app.inject({ method: 'POST', url: '/v1/chat/completions', headers: { 'content-type': 'application/json', authorization: `Bearer ${key}` }, payload: JSON.stringify(chatBody(extra)) })

// The operator's first step: `keys create` makes the file the server then starts with.
const mainFile = join(dir, 'keys.jsonl')
const created = await runCli(['create', '--name', 'alice', '--json'], { KEYS_FILE: mainFile })
const alice = JSON.parse(created.stdout) as { id: string, name: string, secret: string }

proxyTest(t, 'CLI create -> accepted; CLI revoke -> refused within a second without a restart, the request in flight completes', { listen: true, proxy: { keysFile: mainFile } }, async (h, t) => {
  t.equal(created.code, 0, created.stderr)
  const seen: string[] = [created.stderr]
  const sdk = (key: string) => new OpenAI({ baseURL: `${h.url}/v1`, apiKey: key, maxRetries: 0 })
  const answer = await sdk(alice.secret).chat.completions.create({ model: 'gpt-4o-mini', messages: [{ role: 'user', content: 'hi' }] })
  t.equal(answer.object, 'chat.completion')
  t.equal(h.upstream.requests.at(-1)?.headers.authorization, `Bearer ${h.keys[0] as string}`, 'upstream gets the pool key, never the client key')
  t.equal((await chat(h, h.proxyKey)).statusCode, 200, 'PROXY_KEY keeps working beside the file')

  // A slow request admitted before the revocation.
  h.upstream.script((r) => (JSON.stringify(r.json ?? {}).includes('slow') ? { kind: 'delay', ms: 800, then: { kind: 'json', body: { id: 'c', object: 'chat.completion', choices: [] } } } : undefined))
  const inFlight = fetch(`${h.url}/v1/chat/completions`, { method: 'POST', headers: { 'content-type': 'application/json', authorization: `Bearer ${alice.secret}` }, body: JSON.stringify(chatBody({ messages: [{ role: 'user', content: 'slow' }] })) })
  await h.upstream.waitFor((r) => JSON.stringify(r.json ?? {}).includes('slow'))

  const revoked = await runCli(['revoke', alice.id], { KEYS_FILE: mainFile })
  t.strictSame(revoked, { code: 0, stdout: `${alice.id} revoked (disabled)\n`, stderr: '' })
  const start = Date.now()
  let res = await chat(h, alice.secret)
  while (res.statusCode === 200 && Date.now() - start < 3000) {
    await sleep(10)
    res = await chat(h, alice.secret)
  }
  const ms = Date.now() - start
  t.equal(res.statusCode, 401)
  t.strictSame(res.json(), INVALID, 'the same answer as any wrong key')
  t.ok(ms < 1000, `refused ${ms} ms after the CLI exited`)
  seen.push(seenByClient(res))
  const slow = await inFlight
  t.equal(slow.status, 200, 'the request in flight at the swap completed')
  seen.push(await slow.text())

  const err = await sdk(alice.secret).chat.completions.create({ model: 'gpt-4o-mini', messages: [{ role: 'user', content: 'hi' }] }).catch((e: unknown) => e)
  t.type(err, OpenAI.AuthenticationError)
  t.match(err, { status: 401, code: 'invalid_api_key' })

  t.equal((await runCli(['enable', alice.id], { KEYS_FILE: mainFile })).code, 0)
  const listed = await runCli(['list', '--json'], { KEYS_FILE: mainFile })
  t.match(JSON.parse(listed.stdout), [{ id: alice.id, name: 'alice', prefix: alice.secret.slice(0, 12), disabled: false }])
  seen.push(listed.stdout, listed.stderr)
  t.ok(await (async () => { for (let i = 0; i < 200; i++) { if ((await chat(h, alice.secret)).statusCode === 200) return true; await sleep(10) } return false })(), 're-enabled without a restart')

  const missing = await runCli(['revoke', 'key_aaaaaaaaaaaa'], { KEYS_FILE: mainFile })
  t.match(missing, { code: 1, stderr: /no key key_aaaaaaaaaaaa/ })
  const noFile = await runCli(['list'], {})
  t.match(noFile, { code: 2, stderr: /name the keys file/ })

  const secrets = [alice.secret, hashSecret(alice.secret), alice.secret.slice(5)]
  assertNoLeak(t, seen.join('\n'), secrets, 'responses and CLI output')
  assertNoLeak(t, h.logs.join(''), secrets, 'logs')
  t.match(h.logs.join(''), /client keys reloaded/)
})

const expiring = { past: newSecret(), soon: newSecret(), off: newSecret() }
const expiringFile = join(dir, 'expiring.jsonl')
writeKeysFile(expiringFile, [
  record(expiring.past, { expires: new Date(Date.now() - 1000).toISOString() }),
  record(expiring.soon, { expires: new Date(Date.now() + 3_600_000).toISOString() }),
  record(expiring.off, { disabled: true })
])

proxyTest(t, 'expired, disabled and unknown keys get one identical 401', { proxy: { keysFile: expiringFile, proxyKeys: [] } }, async (h, t) => {
  const answers = new Set<string>()
  for (const key of [expiring.past, expiring.off, newSecret(), 'oarp-short', `${expiring.soon}x`]) {
    const res = await chat(h, key)
    t.equal(res.statusCode, 401)
    answers.add(res.body)
  }
  t.strictSame([...answers], [JSON.stringify(INVALID)])
  t.equal((await chat(h, expiring.soon)).statusCode, 200, 'not yet expired')
  const missing = await h.app.inject({ method: 'POST', url: '/v1/chat/completions', headers: { 'content-type': 'application/json' }, payload: JSON.stringify(chatBody()) })
  t.equal(missing.statusCode, 401, 'a keys file closes the proxy even without PROXY_KEY')
  t.notMatch(h.logs.join(''), /anyone who can reach this proxy/, 'no open-proxy warning')
  assertNoLeak(t, h.logs.join(''), Object.values(expiring).flatMap((s) => [s, hashSecret(s)]), 'logs')
})

const scoped = { chatOnly: newSecret(), mini: newSecret(), realtime: newSecret(), any: newSecret() }
const scopedFile = join(dir, 'scoped.jsonl')
writeKeysFile(scopedFile, [
  record(scoped.chatOnly, { scopes: { endpoints: ['chat.completions'] } }),
  record(scoped.mini, { scopes: { models: ['gpt-4o-mini', 'text-embedding-*'] } }),
  record(scoped.realtime, { scopes: { endpoints: ['realtime', 'chat.completions'] } }),
  record(scoped.any)
])

proxyTest(t, 'scopes: an endpoint or a model outside them is 403 naming it; the model list shows only the key\'s models', {
  listen: true,
  proxy: { keysFile: scopedFile, realtime: { enabled: true }, policy: { allowedModels: ['gpt-4o*', 'gpt-4.1*', 'gpt-realtime', 'text-embedding-*', 'omni-moderation*'] } }
}, async (h, t) => {
  const get = (url: string, key: string) => fetch(`${h.url}${url}`, { headers: { authorization: `Bearer ${key}` } })
  const post = (url: string, key: string, body: unknown) => fetch(`${h.url}${url}`, { method: 'POST', headers: { 'content-type': 'application/json', authorization: `Bearer ${key}` }, body: JSON.stringify(body) })
  const before = h.upstream.requests.length

  let res = await post('/v1/embeddings', scoped.chatOnly, { model: 'text-embedding-3-small', input: 'x' })
  t.equal(res.status, 403)
  t.strictSame(await res.json(), { error: { message: 'This API key may not call the endpoint embeddings.', type: 'invalid_request_error', param: null, code: 'endpoint_not_allowed' } })
  t.equal((await get('/v1/realtime?model=gpt-realtime', scoped.chatOnly)).status, 403, 'the Realtime WebSocket is an endpoint too')
  t.equal((await post('/v1/chat/completions', scoped.chatOnly, chatBody())).status, 200)

  res = await post('/v1/chat/completions', scoped.mini, chatBody({ model: 'gpt-4.1' }))
  t.equal(res.status, 403)
  t.strictSame(await res.json(), { error: { message: 'This API key may not use the model gpt-4.1.', type: 'invalid_request_error', param: 'model', code: 'model_not_allowed' } })
  t.equal((await post('/v1/chat/completions', scoped.mini, chatBody())).status, 200)
  t.equal((await post('/v1/embeddings', scoped.mini, { model: 'text-embedding-3-small', input: 'x' })).status, 200, 'a glob')
  t.equal((await get('/v1/models/gpt-4.1', scoped.mini)).status, 403, 'a model in the path')
  t.equal((await post('/v1/moderations', scoped.mini, { input: 'x' })).status, 200, 'an optional model left out: the free default, as the policy')
  const listed = await (await get('/v1/models', scoped.mini)).json() as { data: Array<{ id: string }> }
  t.ok(listed.data.length > 0 && listed.data.every((m) => m.id === 'gpt-4o-mini' || m.id.startsWith('text-embedding-')), `listed: ${listed.data.map((m) => m.id).join(', ')}`)
  const fullList = await (await get('/v1/models', scoped.any)).json() as { data: unknown[] }
  t.ok(fullList.data.length > listed.data.length, 'a key without model scopes sees the policy\'s list')
  t.equal((await get('/v1/realtime?model=gpt-realtime', scoped.mini)).status, 403, 'a model-scoped key opens no Realtime session (it could switch models mid-session)')
  const form = new FormData()
  form.set('sdp', 'v=0\r\n')
  form.set('session', JSON.stringify({ type: 'realtime', model: 'gpt-realtime' }))
  res = await fetch(`${h.url}/v1/realtime/calls`, { method: 'POST', headers: { authorization: `Bearer ${scoped.mini}` }, body: form })
  t.equal(res.status, 403, 'the session model of a WebRTC call')
  t.match(await res.json(), { error: { message: /model gpt-realtime\./ } })

  t.equal((await get('/v1/realtime?model=gpt-realtime', scoped.realtime)).status, 426, 'in scope: on to the route, which wants an upgrade')
  t.equal((await get('/v1/files', scoped.chatOnly)).status, 404, 'an unknown path stays a 404')

  const err = await new OpenAI({ baseURL: `${h.url}/v1`, apiKey: scoped.mini, maxRetries: 0 }).chat.completions.create({ model: 'gpt-4.1', messages: [{ role: 'user', content: 'x' }] }).catch((e: unknown) => e)
  t.type(err, OpenAI.PermissionDeniedError)
  t.match(err, { status: 403, code: 'model_not_allowed' })
  const refused = h.upstream.requests.slice(before).filter((r) => r.url.includes('embeddings') && JSON.stringify(r.json).includes('text-embedding') && r.headers.authorization === undefined)
  t.strictSame(refused, [])
  t.match(h.logs.join(''), /"rule":"key_scope_endpoints","endpoint":"embeddings"/)
  assertNoLeak(t, h.logs.join(''), Object.values(scoped).flatMap((s) => [s, hashSecret(s)]), 'logs')
})

proxyTest(t, 'model scopes without a policy allowlist still filter the model list', { proxy: { keysFile: scopedFile, realtime: { enabled: true }, rateLimit: { failuresPerMinute: 50 } } }, async (h, t) => {
  const get = (url: string) => h.app.inject({ method: 'GET', url, headers: { authorization: `Bearer ${scoped.mini}` } })
  const listed = (await get('/v1/models')).json() as { data: Array<{ id: string }> }
  t.ok(listed.data.length > 0 && listed.data.every((m) => m.id === 'gpt-4o-mini' || m.id.startsWith('text-embedding-')))
  h.upstream.script((r) => (r.url === '/v1/models' ? { kind: 'json', body: { object: 'list' } } : undefined))
  t.strictSame((await get('/v1/models')).json(), { object: 'list', data: [] }, 'a list without data')
  // The abuse guard counts a key holder's 404s against the key, not the address.
  t.equal((await get('/v1/files')).statusCode, 404)
  t.equal((await h.app.inject({ method: 'GET', url: '/v1/files' })).statusCode, 404)
  const noSession = multipartBody([{ name: 'sdp', value: 'v=0\r\n' }])
  const res = await h.app.inject({ method: 'POST', url: '/v1/realtime/calls', headers: { authorization: `Bearer ${scoped.mini}`, 'content-type': formContentType() }, payload: noSession })
  t.equal(res.statusCode, 403, 'a call without a session names no model the key may use')
  t.match(res.json(), { error: { message: 'This API key may not use the model (none).' } })
})

const busy = { on: newSecret(), off: newSecret() }
const busyFile = join(dir, 'busy.jsonl')
const busyRecords = [record(busy.on), record(busy.off, { disabled: true })]
writeKeysFile(busyFile, busyRecords)

proxyTest(t, '100 concurrent requests during repeated reloads are all answered correctly', {}, async (h, t) => {
  // Its own app: the harness's logger level is trace, which would make this test about logging speed.
  const app = Fastify({ logger: { level: 'info', stream: { write: (s: string) => { h.logs.push(s) } } } })
  await app.register(oaiProxy, { upstreamUrl: h.upstream.url, openaiKeys: h.keys, keysFile: busyFile, rateLimit: { failuresPerMinute: 0 } })
  await app.ready()
  t.teardown(() => app.close())
  const state = { writing: true }
  let writes = 0
  const writer = (async () => {
    while (state.writing) {
      // A third key that changes every time, so every write is a new index.
      writeKeysFile(busyFile, [...busyRecords, record(newSecret())])
      writes++
      await sleep(5)
    }
  })()
  const keyFor = (i: number) => [busy.on, busy.off, newSecret()][i % 3] as string
  const results = await Promise.all(Array.from({ length: 100 }, async (_, i) => {
    await sleep(i * 2)
    const res = await app.inject({ method: 'POST', url: '/v1/chat/completions', headers: { 'content-type': 'application/json', authorization: `Bearer ${keyFor(i)}` }, payload: JSON.stringify(chatBody()) })
    return res.statusCode
  }))
  state.writing = false
  await writer
  t.strictSame(results, Array.from({ length: 100 }, (_, i) => (i % 3 === 0 ? 200 : 401)))
  const reloads = h.logs.filter((l) => l.includes('client keys reloaded')).length
  t.ok(reloads >= 3, `${writes} writes, ${reloads} reloads while the requests ran`)
})

t.test('KEYS_FILE from the environment: maps onto keysFile; a missing or corrupt file stops start-up naming the line', async (t) => {
  t.equal(readConfig({ KEYS_FILE: mainFile }).proxy.keysFile, mainFile)
  t.equal(readConfig({}).proxy.keysFile, undefined)
  const quiet = { LOG_LEVEL: 'silent', PORT: '0', OPENAI_KEY: canaryKey(), UPSTREAM_URL: 'http://127.0.0.1:9' }
  await t.rejects(startServer({ ...quiet, KEYS_FILE: join(dir, 'nope.jsonl') }), /invalid option \/keysFile \(KEYS_FILE\): .*nope\.jsonl: no such file/)
  const bad = join(dir, 'bad.jsonl')
  const s = newSecret()
  writeFileSync(bad, `${JSON.stringify(record(s))}\n${JSON.stringify({ ...record(newSecret()), disabled: 'no' })}\n`)
  const err = await startServer({ ...quiet, KEYS_FILE: bad }).catch((e: Error) => e)
  t.match((err as Error).message, /bad\.jsonl: line 2: \/disabled: Expected boolean$/)
  t.notMatch((err as Error).message, new RegExp(`${hashSecret(s)}|oarp-`))
  const running = await startServer({ ...quiet, KEYS_FILE: mainFile })
  t.teardown(running.shutdown)
  t.equal(running.config.proxy.keysFile, mainFile)
})

t.test('keysFile and resolveClient cannot be combined', async (t) => {
  const app = Fastify()
  t.teardown(() => app.close())
  await t.rejects(async () => { await app.register(oaiProxy, { openaiKeys: [canaryKey()], keysFile: mainFile, resolveClient: () => ({ id: 'x' }) }) }, /give keysFile or resolveClient, not both/)
})

t.test('the command without `keys` starts the server as before, with KEYS_FILE', async (t) => {
  const child = spawnCli([], { LOG_LEVEL: 'info', PORT: '0', KEYS_FILE: mainFile, OPENAI_KEY: canaryKey(), UPSTREAM_URL: 'http://127.0.0.1:9' })
  t.teardown(() => { child.kill() })
  const url = await listeningUrl(child)
  const res = await fetch(`${url}/v1/models`, { headers: { authorization: `Bearer ${newSecret()}` } })
  t.equal(res.status, 401, 'serving, with the keys file')
  t.equal((await fetch(`${url}/health`)).status, 200)
})
