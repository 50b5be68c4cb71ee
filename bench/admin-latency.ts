import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { performance } from 'node:perf_hooks'
import Fastify from 'fastify'
import oaiProxy from '../app.js'
import { writeKeysFile } from '../plugins/client-keys/file-io.js'
import { addKey, draftKey } from '../plugins/client-keys/operations.js'
import type { ClientKeyRecord } from '../plugins/client-keys/schema.js'
import { fmt, summarize, table } from './stats.js'

/*
 * Admin API latency over a real socket, with a keys file of 1,000 records (docs/admin-api.md):
 * `POST /admin/keys` (lock, read, parse, write, fsync, rename, reload) and `GET /admin/keys` (read, parse,
 * serialise every record), each called one at a time. Not a test: numbers depend on the disk.
 *
 *   npm run build && node dist/bench/admin-latency.js [records=1000] [calls=200]
 */

const records = Number(process.argv[2] ?? 1000)
const calls = Number(process.argv[3] ?? 200)
const dir = mkdtempSync(join(tmpdir(), 'oai-admin-bench-'))
const file = join(dir, 'keys.jsonl')
let initial: ClientKeyRecord[] = []
for (let i = 0; i < records; i++) initial = addKey(initial, draftKey({ name: `user ${i}`, models: ['gpt-4o-mini'], limits: { tokensPerDay: 100_000 }, metadata: { team: 'bench' } })).records
writeKeysFile(file, initial)

const key = 'b'.repeat(40)
const app = Fastify({ logger: false })
await app.register(oaiProxy, { upstreamUrl: 'http://127.0.0.1:9', openaiKeys: ['sk-bench-not-a-key'], keysFile: file, admin: { key } })
const url = await app.listen({ host: '127.0.0.1', port: 0 })
const headers = { authorization: `Bearer ${key}`, 'content-type': 'application/json' }

async function time (fn: () => Promise<Response>): Promise<number[]> {
  const samples: number[] = []
  for (let i = 0; i < calls; i++) {
    const start = performance.now()
    const res = await fn()
    await res.arrayBuffer()
    if (!res.ok) throw new Error(`status ${res.status}`)
    samples.push(performance.now() - start)
  }
  return samples
}

try {
  let n = 0
  const create = summarize(await time(() => fetch(`${url}/admin/keys`, { method: 'POST', headers, body: JSON.stringify({ name: `new ${n++}` }) })))
  const list = summarize(await time(() => fetch(`${url}/admin/keys`, { headers })))
  const row = (name: string, s: typeof create) => [name, String(s.n), fmt(s.p50), fmt(s.p99), fmt(s.max)]
  console.log(`admin API, ${records} records to start (${records + calls} after the creates), ${calls} sequential calls each, ms:`)
  console.log(table([['call', 'n', 'p50', 'p99', 'max'], row('POST /admin/keys', create), row('GET /admin/keys', list)]))
} finally {
  await app.close()
  rmSync(dir, { recursive: true, force: true })
}
