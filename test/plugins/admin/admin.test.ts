import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import t, { type Test } from 'tap'
import { readKeysFile, writeKeysFile } from '../../../plugins/client-keys/file-io.js'
import { hashSecret } from '../../../plugins/client-keys/records.js'
import { ADMIN_FAILURES_PER_MINUTE } from '../../../plugins/admin/auth.js'
import { assertNoLeak, chatBody, proxyTest, randomToken, seenByClient, type Harness } from '../../helper.js'

/*
 * The admin API over the real suite: keys made, changed and removed through it are used (and refused)
 * through the proxy against the fake upstream on the very next request; its auth, its own failure
 * bucket, and what it never shows or logs. Start-up checks and the odd corners: test/plugins/admin/admin-edges.test.ts.
 */

const dir = mkdtempSync(join(tmpdir(), 'oai-admin-'))
t.teardown(() => rmSync(dir, { recursive: true, force: true }))

let n = 0
/** A fresh, empty keys file. */
function keysFile (): string {
  const file = join(dir, `keys-${n++}.jsonl`)
  writeKeysFile(file, [])
  return file
}

const ADMIN_KEY = `adm-${randomToken(40)}`

type Json = Record<string, unknown>
interface Created { id: string, name: string, secret: string, prefix: string, [k: string]: unknown }

export function adminCall (h: Harness, method: string, url: string, body?: unknown, headers: Record<string, string> = { authorization: `Bearer ${ADMIN_KEY}` }) {
  return h.app.inject({
    method: method as 'GET',
    url,
    headers: { ...headers, ...(body === undefined ? {} : { 'content-type': 'application/json' }) },
    ...(body === undefined ? {} : { payload: JSON.stringify(body) })
  })
}

const chat = (h: Harness, key: string, model = 'gpt-4o-mini') =>
  h.app.inject({ method: 'POST', url: '/v1/chat/completions', headers: { 'content-type': 'application/json', authorization: `Bearer ${key}` }, payload: JSON.stringify(chatBody({ model })) })

const errorOf = (res: { body: string }) => (JSON.parse(res.body) as { error: { code: string | null, type: string, message: string, param: string | null } }).error

/** Everything secret a run produced, for the leak scans: the admin key, every client secret, its hash and its prefix. */
function secretsOf (created: Created[]): string[] {
  return [ADMIN_KEY, ...created.flatMap((c) => [c.secret, hashSecret(c.secret), c.prefix])]
}

function scanLogs (t: Test, h: Harness, created: Created[]): void {
  const text = h.logs.join('')
  for (const s of secretsOf(created)) t.notOk(text.includes(s), 'no admin key, client secret, hash or prefix in the logs')
  assertNoLeak(t, text, [ADMIN_KEY], 'logs')
}

const lifeFile = keysFile()
proxyTest(t, 'a key made through the admin API works through the proxy at once; disable, enable, rotate, scopes, delete', {
  proxy: { keysFile: lifeFile, admin: { key: ADMIN_KEY } }
}, async (h, t) => {
  const created: Created[] = []
  const res = await adminCall(h, 'POST', '/admin/keys', { name: 'alice', scopes: { endpoints: ['chat.completions', 'models.list'] }, expires: '2999-01-01', limits: { tokensPerDay: 1_000_000 }, metadata: { team: 'red' } })
  t.equal(res.statusCode, 201, res.body)
  const alice = JSON.parse(res.body) as Created
  created.push(alice)
  t.strictSame(Object.keys(alice).sort(), ['created', 'disabled', 'expires', 'id', 'limits', 'metadata', 'name', 'prefix', 'scopes', 'secret'])
  t.match(alice, { id: /^key_[a-z2-7]{12}$/, name: 'alice', secret: /^oarp-[A-Za-z0-9_-]{43}$/, expires: '2999-01-01T00:00:00.000Z', disabled: false, limits: { tokensPerDay: 1_000_000 }, metadata: { team: 'red' } })
  t.equal(alice.prefix, alice.secret.slice(0, 12))

  t.equal((await chat(h, alice.secret)).statusCode, 200, 'the new secret is accepted on the very next request')
  t.equal(h.upstream.requests.length, 1)

  // Read: the list and one record, never a hash or a secret.
  const list = await adminCall(h, 'GET', '/admin/keys')
  t.equal(list.statusCode, 200)
  const listed = JSON.parse(list.body) as { object: string, data: Json[] }
  t.equal(listed.object, 'list')
  t.strictSame(listed.data.map((k) => k.id), [alice.id])
  const one = await adminCall(h, 'GET', `/admin/keys/${alice.id}`)
  t.strictSame(JSON.parse(one.body), listed.data[0])
  const { secret: _secret, ...view } = alice
  t.strictSame(JSON.parse(one.body), view, 'the created answer minus its secret')
  for (const r of [list, one]) {
    t.notOk(r.body.includes('hash'), 'no hash field')
    t.notOk(r.body.includes(alice.secret) || r.body.includes(hashSecret(alice.secret)), 'no secret, no hash value')
  }

  // Disable: refused on the very next request, as an unknown key; enable: back.
  const disabled = await adminCall(h, 'POST', `/admin/keys/${alice.id}/disable`)
  t.equal(disabled.statusCode, 200)
  t.equal(JSON.parse(disabled.body).disabled, true)
  const refused = await chat(h, alice.secret)
  t.equal(refused.statusCode, 401)
  t.equal(errorOf(refused).code, 'invalid_api_key')
  t.equal((await adminCall(h, 'POST', `/admin/keys/${alice.id}/enable`)).statusCode, 200)
  t.equal((await chat(h, alice.secret)).statusCode, 200, 'enabled again')

  // Rotate: same id, the old secret 401, the new one 200.
  const rotated = await adminCall(h, 'POST', `/admin/keys/${alice.id}/rotate`)
  t.equal(rotated.statusCode, 200)
  const next = JSON.parse(rotated.body) as Created
  created.push(next)
  t.equal(next.id, alice.id)
  t.not(next.secret, alice.secret)
  t.not(next.prefix, alice.prefix)
  t.equal((await chat(h, alice.secret)).statusCode, 401, 'the old secret is refused')
  t.equal((await chat(h, next.secret)).statusCode, 200, 'the new one works')

  // PATCH scopes: a model outside them is 403 on the next request.
  const patched = await adminCall(h, 'PATCH', `/admin/keys/${alice.id}`, { scopes: { models: ['gpt-4o-mini'] }, name: 'alice 2', expires: null, limits: {}, metadata: { team: 'blue' } })
  t.equal(patched.statusCode, 200, patched.body)
  t.match(JSON.parse(patched.body), { name: 'alice 2', scopes: { models: ['gpt-4o-mini'] }, expires: null, limits: {}, metadata: { team: 'blue' } })
  t.equal(JSON.parse(patched.body).scopes.endpoints, undefined, 'scopes are replaced whole')
  const outside = await chat(h, next.secret, 'gpt-4.1')
  t.equal(outside.statusCode, 403)
  t.equal(errorOf(outside).code, 'model_not_allowed')
  t.equal((await chat(h, next.secret)).statusCode, 200, 'a model inside')
  const record = readKeysFile(lifeFile)?.[0]
  t.equal(record?.expires, undefined, 'expires: null removed the expiry')
  t.equal(record?.limits, undefined, 'limits: {} removed the limits')

  // Delete: refused at once, and gone.
  const deleted = await adminCall(h, 'DELETE', `/admin/keys/${alice.id}`)
  t.strictSame(JSON.parse(deleted.body), { id: alice.id, deleted: true })
  t.equal((await chat(h, next.secret)).statusCode, 401)
  t.equal((await adminCall(h, 'GET', `/admin/keys/${alice.id}`)).statusCode, 404)
  t.strictSame(JSON.parse((await adminCall(h, 'GET', '/admin/keys')).body), { object: 'list', data: [] })

  // Every change logged at info: who, what, which key, which fields; never a value.
  const changes = h.logs.map((l) => JSON.parse(l) as Json).filter((l) => l.msg === 'oai-proxy: admin change')
  t.strictSame(changes.map((l) => [l.level, l.actor, l.action, l.key, l.fields]), [
    [30, 'admin', 'create', alice.id, ['name', 'scopes', 'expires', 'limits', 'metadata']],
    [30, 'admin', 'disable', alice.id, ['disabled']],
    [30, 'admin', 'enable', alice.id, ['disabled']],
    [30, 'admin', 'rotate', alice.id, ['hash', 'prefix']],
    [30, 'admin', 'update', alice.id, ['scopes', 'name', 'expires', 'limits', 'metadata']],
    [30, 'admin', 'delete', alice.id, []]
  ])
  scanLogs(t, h, created)
  for (const r of [list, one, disabled, patched, deleted]) assertNoLeak(t, seenByClient(r), [...h.secrets, ADMIN_KEY], 'admin answer')
})

proxyTest(t, 'who may call it: only the admin key; a proxy key, a client key, a wrong or missing key are 401', {
  proxy: { keysFile: keysFile(), admin: { key: ADMIN_KEY } }
}, async (h, t) => {
  const made = JSON.parse((await adminCall(h, 'POST', '/admin/keys', { name: 'bob' })).body) as Created
  const unauthorised: Array<[string, Record<string, string>]> = [
    ['no key', {}],
    ['a wrong key', { authorization: `Bearer ${ADMIN_KEY}x` }],
    ['the proxy key', { authorization: `Bearer ${h.proxyKey}` }],
    ['a client key', { authorization: `Bearer ${made.secret}` }],
    ['the admin key as x-api-key', { 'x-api-key': ADMIN_KEY }],
    ['not Bearer', { authorization: `Basic ${ADMIN_KEY}` }],
    ['a wrong x-admin-key', { 'x-admin-key': 'nope' }]
  ]
  for (const [what, headers] of unauthorised) {
    const res = await adminCall(h, 'GET', '/admin/keys', undefined, headers)
    t.equal(res.statusCode, 401, what)
    t.strictSame(errorOf(res), { message: "Missing or incorrect admin key. Send it as 'Authorization: Bearer <ADMIN_KEY>'.", type: 'invalid_request_error', param: null, code: 'invalid_admin_key' })
    t.notOk(res.body.includes('bob'), 'nothing of the keys')
  }
  t.equal((await adminCall(h, 'GET', '/admin/keys', undefined, { 'x-admin-key': ADMIN_KEY })).statusCode, 200, 'x-admin-key is accepted')
  t.equal((await adminCall(h, 'GET', '/admin/keys', undefined, { authorization: 'Basic dXNlcjpwYXNz', 'x-admin-key': ADMIN_KEY })).statusCode, 200, 'x-admin-key beside an Authorization header used for something else')
  t.equal((await adminCall(h, 'GET', '/admin/keys', undefined, { authorization: `Bearer ${'x'.repeat(1025)}` })).statusCode, 401, 'a key over 1024 characters is not compared')
  t.equal((await adminCall(h, 'GET', '/admin/keys', undefined, { authorization: `bearer  ${ADMIN_KEY} ` })).statusCode, 200, 'Bearer in any case, spaces around')
  // And the admin key is not a proxy key: the pipeline refuses it.
  t.equal((await chat(h, ADMIN_KEY)).statusCode, 401, 'the admin key cannot call the proxy')
  t.equal(h.upstream.requests.length, 0, 'nothing went upstream')
  scanLogs(t, h, [made])
})

proxyTest(t, 'failed admin requests have their own bucket: past it, 429 with retry-after, even with the right key', {
  proxy: { keysFile: keysFile(), admin: { key: ADMIN_KEY } }
}, async (h, t) => {
  for (let i = 0; i < ADMIN_FAILURES_PER_MINUTE; i++) t.equal((await adminCall(h, 'GET', '/admin/keys', undefined, { authorization: 'Bearer wrong' })).statusCode, 401)
  const banned = await adminCall(h, 'GET', '/admin/keys')
  t.equal(banned.statusCode, 429)
  t.equal(errorOf(banned).code, 'rate_limit_exceeded')
  t.match(errorOf(banned).message, /Too many failed admin requests from your address/)
  t.match(banned.headers['retry-after'], /^\d+$/)
  t.equal((await chat(h, h.proxyKey)).statusCode, 200, 'the proxy itself is not affected')
  scanLogs(t, h, [])
})

proxyTest(t, 'without ADMIN_KEY there is no admin API: 404 exactly like an unknown path', { proxy: { keysFile: keysFile() } }, async (h, t) => {
  const normalise = (res: { statusCode: number, headers: Record<string, unknown>, body: string }, path: string) => ({
    status: res.statusCode,
    type: res.headers['content-type'],
    body: res.body.replace(path, 'PATH')
  })
  for (const [method, path] of [['GET', '/admin/keys'], ['POST', '/admin/keys'], ['DELETE', '/admin/keys/key_aaaaaaaaaaaa'], ['GET', '/admin/keys/key_aaaaaaaaaaaa/usage']] as const) {
    const admin = await adminCall(h, method, path)
    const unknown = await adminCall(h, method, path.replace('/admin', '/nothing-here'))
    t.equal(admin.statusCode, 404)
    t.strictSame(normalise(admin, path), normalise(unknown, path.replace('/admin', '/nothing-here')), `${method} ${path}`)
  }
})

proxyTest(t, '50 concurrent creates: 50 records, none lost, every secret distinct and working', {
  proxy: { keysFile: keysFile(), admin: { key: ADMIN_KEY } }
}, async (h, t) => {
  const answers = await Promise.all(Array.from({ length: 50 }, (_, i) => adminCall(h, 'POST', '/admin/keys', { name: `k${i}` })))
  t.strictSame(answers.map((r) => r.statusCode), Array(50).fill(201))
  const made = answers.map((r) => JSON.parse(r.body) as Created)
  const listed = (JSON.parse((await adminCall(h, 'GET', '/admin/keys')).body) as { data: Json[] }).data
  t.equal(listed.length, 50)
  t.strictSame(new Set(listed.map((k) => k.id)), new Set(made.map((k) => k.id)))
  t.equal(new Set(made.map((k) => k.secret)).size, 50)
  const sample = await Promise.all(made.slice(0, 5).concat(made.slice(-5)).map((k) => chat(h, k.secret)))
  t.strictSame(sample.map((r) => r.statusCode), Array(10).fill(200), 'the first and the last made are in force')
  scanLogs(t, h, made)
})

proxyTest(t, 'refusals: values the operations refuse are 400 naming the field; unknown ids 404; bad ids, bodies and types', {
  proxy: { keysFile: keysFile(), admin: { key: ADMIN_KEY } }
}, async (h, t) => {
  const made = JSON.parse((await adminCall(h, 'POST', '/admin/keys', { name: 'carol' })).body) as Created
  const cases: Array<[string, string, unknown, number, Partial<ReturnType<typeof errorOf>>]> = [
    ['POST', '/admin/keys', { name: 'x', scopes: { endpoints: ['files.list'] } }, 400, { code: 'invalid_request_body', param: 'scopes.endpoints' }],
    ['POST', '/admin/keys', { name: 'x', scopes: { models: [] } }, 400, { param: 'scopes.models' }],
    ['POST', '/admin/keys', { name: 'x', expires: '2001-01-01' }, 400, { message: 'Invalid request: expires: that date has passed', param: 'expires' }],
    ['POST', '/admin/keys', { name: '   ' }, 400, { message: 'Invalid request: name is required (1 to 200 characters)', param: 'name' }],
    ['POST', '/admin/keys', { name: 'x', hash: 'a'.repeat(64) }, 400, { code: 'invalid_request_body' }],
    ['POST', '/admin/keys', { name: 'x', limits: { tokensPerDay: -1 } }, 400, { param: 'limits.tokensPerDay' }],
    ['POST', '/admin/keys', {}, 400, { param: 'name' }],
    ['PATCH', `/admin/keys/${made.id}`, {}, 400, { code: 'invalid_request_body' }],
    ['PATCH', `/admin/keys/${made.id}`, { expires: 'soon' }, 400, { param: 'expires' }],
    ['PATCH', `/admin/keys/${made.id}`, { metadata: { k: 'v'.repeat(2001) } }, 400, { param: 'metadata.k' }],
    ['PATCH', '/admin/keys/key_aaaaaaaaaaaa', { name: 'y' }, 404, { code: 'key_not_found', message: 'No client key key_aaaaaaaaaaaa.' }],
    ['GET', '/admin/keys/key_aaaaaaaaaaaa', undefined, 404, { code: 'key_not_found' }],
    ['POST', '/admin/keys/key_aaaaaaaaaaaa/disable', undefined, 404, { code: 'key_not_found' }],
    ['POST', '/admin/keys/key_aaaaaaaaaaaa/rotate', undefined, 404, { code: 'key_not_found' }],
    ['DELETE', '/admin/keys/key_aaaaaaaaaaaa', undefined, 404, { code: 'key_not_found' }],
    ['GET', '/admin/keys/key_aaaaaaaaaaaa/usage', undefined, 404, { code: 'key_not_found' }],
    ['GET', '/admin/keys/not-an-id', undefined, 400, { code: 'invalid_value', param: 'id' }]
  ]
  for (const [method, url, body, status, error] of cases) {
    const res = await adminCall(h, method, url, body)
    t.equal(res.statusCode, status, `${method} ${url} ${JSON.stringify(body)}`)
    t.match(errorOf(res), error)
  }
  const auth = { authorization: `Bearer ${ADMIN_KEY}` }
  const raw = (payload: string, type: string) => h.app.inject({ method: 'POST', url: '/admin/keys', headers: { ...auth, 'content-type': type }, payload })
  t.match(errorOf(await raw('{"name":', 'application/json')), { code: 'invalid_json' })
  t.match(errorOf(await raw('{"name":"x","__proto__":{"a":1}}', 'application/json')), { code: 'invalid_json' })
  t.match(errorOf(await raw('', 'application/json')), { code: 'invalid_json', message: /empty/ })
  t.equal((await raw('name=x', 'application/x-www-form-urlencoded')).statusCode, 415)
  t.equal((await raw(JSON.stringify({ name: 'x'.repeat(2 * 1024 * 1024) }), 'application/json')).statusCode, 413)
  t.equal((await adminCall(h, 'PUT', '/admin/keys')).statusCode, 404, 'an unserved method')
  t.equal((JSON.parse((await adminCall(h, 'GET', '/admin/keys')).body) as { data: unknown[] }).data.length, 1, 'no refused create was written')
  scanLogs(t, h, [made])
})

proxyTest(t, 'a keys file that cannot be read or written: 503, the file left as it is', {
  proxy: { keysFile: join(dir, 'broken.jsonl'), admin: { key: ADMIN_KEY } }
}, async (h, t) => {
  const file = join(dir, 'broken.jsonl')
  writeFileSync(file, 'not json\n')
  for (const [method, url, body] of [['GET', '/admin/keys', undefined], ['POST', '/admin/keys', { name: 'x' }], ['GET', '/admin/keys/key_aaaaaaaaaaaa', undefined]] as const) {
    const res = await adminCall(h, method, url, body)
    t.equal(res.statusCode, 503, `${method} ${url}`)
    t.match(errorOf(res), { code: 'keys_store_unavailable', message: /line 1: not valid JSON/ })
  }
  t.equal(readFileSync(file, 'utf8'), 'not json\n')
  scanLogs(t, h, [])
})
writeKeysFile(join(dir, 'broken.jsonl'), [])

proxyTest(t, 'without a keys store the key routes say so (400), after auth', { proxy: { admin: { key: ADMIN_KEY } } }, async (h, t) => {
  for (const [method, url, body] of [['GET', '/admin/keys', undefined], ['POST', '/admin/keys', { name: 'x' }], ['POST', '/admin/keys/key_aaaaaaaaaaaa/rotate', undefined], ['GET', '/admin/keys/key_aaaaaaaaaaaa/usage', undefined]] as const) {
    const res = await adminCall(h, method, url, body)
    t.equal(res.statusCode, 400, `${method} ${url}`)
    t.match(errorOf(res), { code: 'keys_store_not_configured' })
  }
  t.equal((await adminCall(h, 'GET', '/admin/keys', undefined, {})).statusCode, 401, 'auth first')
  scanLogs(t, h, [])
})

proxyTest(t, 'usage: the key\'s quotas and what it used today and this month', {
  proxy: { keysFile: keysFile(), admin: { key: ADMIN_KEY, prefix: '/ops/proxy-admin' } }
}, async (h, t) => {
  t.equal((await adminCall(h, 'GET', '/admin/keys')).statusCode, 404, 'the default prefix is not served')
  const made = JSON.parse((await adminCall(h, 'POST', '/ops/proxy-admin/keys', { name: 'dave', limits: { tokensPerDay: 100000, requestsPerDay: 10, maxConcurrent: 3 } })).body) as Created
  t.equal((await chat(h, made.secret)).statusCode, 200)
  const res = await adminCall(h, 'GET', `/ops/proxy-admin/keys/${made.id}/usage`)
  t.equal(res.statusCode, 200, res.body)
  const body = JSON.parse(res.body) as { id: string, quotas: Json, usage: { day: Json, month: Json } }
  t.equal(body.id, made.id)
  t.strictSame(body.quotas, { tokensPerDay: 100000, requestsPerDay: 10 }, 'the quotas only, not the other limits')
  t.match(body.usage, { day: { start: /^\d{4}-\d{2}-\d{2}T00:00:00/, resetAt: String, tokens: Number, requests: Number }, month: { start: /-01T00:00:00/, resetAt: String, tokens: Number } })
  const plain = JSON.parse((await adminCall(h, 'POST', '/ops/proxy-admin/keys', { name: 'no quotas' })).body) as Created
  const none = JSON.parse((await adminCall(h, 'GET', `/ops/proxy-admin/keys/${plain.id}/usage`)).body) as { quotas: Json, usage: { day: { tokens: number } } }
  t.strictSame(none.quotas, {}, 'a key without quotas')
  t.equal(none.usage.day.tokens, 0)
  scanLogs(t, h, [made, plain])
})
