import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import Fastify from 'fastify'
import t from 'tap'
import clientKeyFile from '../../../plugins/client-keys/file-store.js'
import { writeKeysFile } from '../../../plugins/client-keys/file-io.js'
import { hashSecret, newKeyId, newSecret } from '../../../plugins/client-keys/records.js'

/* The file store's view (plugins/client-keys/store.ts) when its file goes away under it. */

t.test('list() on a keys file that has gone away says so; the index in force stays', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'oai-keys-store-'))
  t.teardown(() => rmSync(dir, { recursive: true, force: true }))
  const file = join(dir, 'keys.jsonl')
  const secret = newSecret()
  await writeKeysFile(file, [{ id: newKeyId(), name: 'gone', hash: hashSecret(secret), prefix: secret.slice(0, 12), created: new Date().toISOString(), disabled: false, scopes: {}, metadata: {} }])
  const app = Fastify()
  await app.register(clientKeyFile, { file, watch: false, pollMs: 60_000 })
  t.teardown(() => app.close())
  t.equal((await app.oaiProxyClientKeys.list()).length, 1)
  rmSync(file)
  await t.rejects(app.oaiProxyClientKeys.list(), { name: 'KeysFileError', message: 'no such file' })
  t.equal(app.oaiProxyClientKeys.lookup(secret)?.name, 'gone', 'the keys loaded before stay in force')
})
