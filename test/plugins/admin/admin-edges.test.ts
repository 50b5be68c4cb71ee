import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import Fastify from 'fastify'
import fastifyRateLimit from '@fastify/rate-limit'
import t from 'tap'
import oaiProxy from '../../../app.js'
import admin from '../../../plugins/admin/index.js'
import { readConfig } from '../../../plugins/config/read-config.js'
import { writeKeysFile } from '../../../plugins/client-keys/file-io.js'
import { hashSecret } from '../../../plugins/client-keys/records.js'
import type { OaiProxyClientKeys } from '../../../plugins/client-keys/store.js'
import type { OaiProxyOptions } from '../../../plugins/config/options.js'
import { canaryKey, chatBody, proxyTest, randomToken } from '../../helper.js'

/*
 * The admin API's start-up checks (the option named, never its value), the environment mapping, a run
 * over real sockets, and a store failing in a way the catalogue does not name.
 */

const dir = mkdtempSync(join(tmpdir(), 'oai-admin-edges-'))
t.teardown(() => rmSync(dir, { recursive: true, force: true }))

async function start (opts: Partial<OaiProxyOptions>): Promise<Error | null> {
  const app = Fastify()
  try {
    await app.register(oaiProxy, { upstreamUrl: 'http://127.0.0.1:9', openaiKeys: [canaryKey()], ...opts })
    await app.ready()
    return null
  } catch (err) {
    return err as Error
  } finally {
    await app.close()
  }
}

t.test('start-up fails on a short admin key, one that is a proxy key, or a prefix that is not a path of its own', async (t) => {
  const proxyKey = `pk-${randomToken(40)}`
  const short = randomToken(31)
  const cases: Array<[Partial<OaiProxyOptions>, RegExp, string]> = [
    [{ admin: { key: short } }, /^oai-proxy: invalid option \/admin\/key \(ADMIN_KEY\): shorter than 32 characters$/, short],
    [{ proxyKeys: [randomToken(40), proxyKey], admin: { key: proxyKey } }, /^oai-proxy: invalid option \/admin\/key \(ADMIN_KEY\): is one of the proxy keys \(PROXY_KEY\)/, proxyKey],
    [{ admin: { key: randomToken(40), prefix: 'admin' } }, /^oai-proxy: invalid option \/admin\/prefix \(ADMIN_PREFIX\): give a path like \/admin/, 'x'],
    [{ admin: { key: randomToken(40), prefix: '/admin/../x' } }, /\/admin\/prefix \(ADMIN_PREFIX\): give a path/, 'x'],
    [{ admin: { key: randomToken(40), prefix: '/admin/' } }, /\/admin\/prefix \(ADMIN_PREFIX\): give a path/, 'x'],
    [{ admin: { key: randomToken(40), prefix: '/Models' } }, /\/admin\/prefix \(ADMIN_PREFIX\): its first segment is a path the proxy serves$/, 'x'],
    [{ admin: { key: randomToken(40), prefix: '/v1/admin' } }, /its first segment is a path the proxy serves/, 'x'],
    [{ admin: { key: randomToken(40), prefix: '/health' } }, /its first segment is a path the proxy serves/, 'x'],
    [{ admin: { key: `${randomToken(40)} x` } }, /^oai-proxy: invalid option \/admin\/key: /, ' x']
  ]
  for (const [opts, message, value] of cases) {
    const err = await start(opts)
    t.match(err?.message, message)
    if (value.length > 2) t.notOk(err?.message.includes(value), 'the value is not in the message')
  }
  t.equal(await start({ proxyKeys: [proxyKey], admin: { key: `${proxyKey}x`, prefix: '/ops/admin-api' } }), null, 'a key of its own and a path of its own start')
})

t.test('the environment: ADMIN_KEY and ADMIN_PREFIX become the admin option; a bad ADMIN_KEY is named, not shown', async (t) => {
  const key = randomToken(40)
  t.strictSame(readConfig({ ADMIN_KEY: key }).proxy.admin, { key })
  t.strictSame(readConfig({ ADMIN_KEY: key, ADMIN_PREFIX: '/ops' }).proxy.admin, { key, prefix: '/ops' })
  t.equal(readConfig({ ADMIN_KEY: '' }).proxy.admin, undefined, 'empty is unset')
  t.equal(readConfig({}).proxy.admin, undefined)
  const err = t.throws(() => readConfig({ ADMIN_KEY: `${key}é` })) as Error
  t.equal(err.message, 'ADMIN_KEY: has invalid characters or length')
})

proxyTest(t, 'over real sockets: create, list, and the created key calls the proxy', {
  listen: true,
  proxy: { keysFile: (() => { const f = join(dir, 'sockets.jsonl'); writeKeysFile(f, []); return f })(), admin: { key: 'k'.repeat(32) } }
}, async (h, t) => {
  const headers = { authorization: `Bearer ${'k'.repeat(32)}`, 'content-type': 'application/json' }
  const created = await fetch(`${h.url}/admin/keys`, { method: 'POST', headers, body: JSON.stringify({ name: 'eve', scopes: { models: ['gpt-4o-mini'] } }) })
  t.equal(created.status, 201)
  t.ok(created.headers.get('x-proxy-request-id'), 'the suite\'s own headers')
  const { id, secret } = await created.json() as { id: string, secret: string }
  const listed = await (await fetch(`${h.url}/admin/keys`, { headers: { 'x-admin-key': 'k'.repeat(32) } })).json() as { data: Array<{ id: string }> }
  t.strictSame(listed.data.map((k) => k.id), [id])
  const call = await fetch(`${h.url}/v1/chat/completions`, { method: 'POST', headers: { authorization: `Bearer ${secret}`, 'content-type': 'application/json' }, body: JSON.stringify(chatBody()) })
  t.equal(call.status, 200)
  await call.text()
  const noBody = await fetch(`${h.url}/admin/keys/${id}/disable`, { method: 'POST', headers: { authorization: headers.authorization } })
  t.equal(noBody.status, 200, 'a POST without a body')
  t.equal((await noBody.json() as { disabled: boolean }).disabled, true)
  const logs = h.logs.join('')
  for (const s of ['k'.repeat(32), secret, hashSecret(secret), secret.slice(0, 12)]) t.notOk(logs.includes(s), 'no admin key, secret, hash or prefix in the logs')
})

t.test('a store error the catalogue does not name is passed on as it is (the suite\'s error handler makes it a 500 internal_error)', async (t) => {
  const failing: OaiProxyClientKeys = {
    kind: 'file',
    size: 0,
    lookup: () => null,
    byId: () => null,
    list: async () => { throw new Error('EACCES: permission denied, open /secret/path') },
    update: async () => { throw new Error('ENOSPC: no space left on device') },
    reload: async () => false
  }
  const app = Fastify()
  await app.register(fastifyRateLimit, { global: false })
  await app.register(admin, { key: 'a'.repeat(32), keys: failing })
  t.teardown(() => app.close())
  const headers = { authorization: `Bearer ${'a'.repeat(32)}` }
  t.equal((await app.inject({ method: 'GET', url: '/admin/keys', headers })).statusCode, 500)
  t.equal((await app.inject({ method: 'DELETE', url: '/admin/keys/key_aaaaaaaaaaaa', headers })).statusCode, 500)
})
