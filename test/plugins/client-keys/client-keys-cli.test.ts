import { mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import t, { type Test } from 'tap'
import { quotaWindows } from '../../../plugins/client-keys/quota-store.js'
import { browserTokenVerifier } from '../../../plugins/client-keys/browser-tokens.js'
import { runKeysCli } from '../../../plugins/client-keys/cli.js'
import { readKeysFile } from '../../../plugins/client-keys/file-io.js'
import { buildIndex, hashSecret } from '../../../plugins/client-keys/records.js'
import type { ClientKeyRecord } from '../../../plugins/client-keys/schema.js'

/*
 * The keys CLI on the keys file: `keys token` reached through `keys`, and `keys usage` reading the usage
 * file a proxy without Redis writes. Every output is kept and scanned at the end: no hash anywhere, and a
 * secret only in the one output that handed it out. (Redis: client-keys-cli-redis.test.ts.)
 */

const TOKEN_SECRET = 'a-token-secret-of-at-least-32-characters'
const ORIGIN = 'https://app.example'

const tempDir = (t: Test): string => {
  const dir = mkdtempSync(join(tmpdir(), 'oai-keys-cli-'))
  t.teardown(() => rmSync(dir, { recursive: true, force: true }))
  return dir
}

/** Every output of the run, and the secret it was allowed to show. */
const outputs: Array<{ text: string, shows?: string }> = []
const secrets: string[] = []
const hashes: string[] = []

async function cli (args: string[], env: Record<string, string> = {}) {
  let out = ''
  let err = ''
  const code = await runKeysCli(args, env, { out: (s) => { out += s }, err: (s) => { err += s } })
  outputs.push({ text: out + err })
  return { code, out, err }
}

/** `create --json`: the id, and the secret recorded as shown by that output only. */
async function create (env: Record<string, string>, ...flags: string[]): Promise<{ id: string, secret: string }> {
  const r = await cli(['create', '--json', ...flags], env)
  const made = JSON.parse(r.out) as { id: string, secret: string }
  ;(outputs.at(-1) as { shows?: string }).shows = made.secret
  secrets.push(made.secret)
  hashes.push(hashSecret(made.secret))
  return made
}

t.test('keys token: reached through `keys`, signs against the keys file', async (t) => {
  const file = join(tempDir(t), 'keys.jsonl')
  const alice = await create({ KEYS_FILE: file }, '--name', 'alice', '--models', 'gpt-4o-mini')
  const env = { KEYS_FILE: file, TOKEN_SECRETS: TOKEN_SECRET }
  const ok = await cli(['token', '--key', alice.id, '--sub', 'user-1', '--origin', ORIGIN, '--ttl', '60'], env)
  t.equal(ok.code, 0, ok.err)
  const token = ok.out.split('\n')[0] as string
  t.match(ok.out, /^oarpt\.\S+\n# expires \d{4}-/)
  const verdict = browserTokenVerifier([TOKEN_SECRET], buildIndex(readKeysFile(file) as ClientKeyRecord[]).byId).verify(token, ORIGIN)
  t.match(verdict, { ok: true, entry: { id: alice.id } }, 'the proxy would accept it')
  t.match(JSON.parse((await cli(['token', '--key', alice.id, '--sub', 'u', '--origin', ORIGIN, '--json'], env)).out), { token: /^oarpt\./ })
  t.match(await cli(['token', '--sub', 'u'], env), { code: 2, err: /^oai-reverse-proxy keys token: --key is required\nUsage: oai-reverse-proxy keys token/ })
  t.match(await cli(['token', '--key', 'key_aaaaaaaaaaaa', '--sub', 'u', '--origin', ORIGIN], env), { code: 1, err: /key must name an enabled/ })
  t.match(await cli(['token', '--key', alice.id, '--sub', 'u', '--origin', ORIGIN], { KEYS_FILE: `${file}.nope`, TOKEN_SECRETS: TOKEN_SECRET }), { code: 1, err: /keys\.jsonl\.nope: no such file\n$/ })
  writeFileSync(join(file, '..', 'broken.jsonl'), 'not json\n')
  t.match(await cli(['token', '--key', alice.id, '--sub', 'u', '--origin', ORIGIN, '--file', join(file, '..', 'broken.jsonl')], { TOKEN_SECRETS: TOKEN_SECRET }), { code: 1, err: /broken\.jsonl: line 1: not valid JSON\n$/ })
  const help = await cli(['help'], {})
  t.match(help.out, /\n {2}token --key <key_…> --sub <user> --origin <origin> \[--ttl N\] \[--models …\] \[--endpoints …\] \[--json\]\n/)
  t.match(help.out, /\n {2}usage \[<id>\] \[--json\]/)
  t.match(help.out, /\[--store redis\] \(default: \$KEYS_STORE\) \[--redis-url <url>\]/)
})

t.test('keys usage from the usage file: quotas, counts of this UTC day and month, resets, its age', async (t) => {
  const dir = tempDir(t)
  const file = join(dir, 'keys.jsonl')
  const env = { KEYS_FILE: file }
  const alice = await create(env, '--name', 'alice', '--tokens-per-day', '1000', '--requests-per-day', '10', '--tokens-per-month', '50000', '--tokens-per-minute', '99')
  const bob = await create(env, '--name', 'bob')
  t.equal((await cli(['revoke', bob.id], env)).code, 0)
  const w = quotaWindows(Date.now())
  const iso = (ms: number) => new Date(ms).toISOString()

  // No usage file yet: zeros, and it says so.
  const none = await cli(['usage'], env)
  t.equal(none.code, 0, none.err)
  t.match(none.out, `Counts from ${file}.usage.json, which a running proxy writes every 5 s (so they may be up to 5 s old); it does not exist yet: nothing counted.\n`)

  writeFileSync(`${file}.usage.json`, JSON.stringify({
    version: 1,
    saved: new Date().toISOString(),
    counters: { [`${alice.id}|d|${w.day}`]: [120, 3], [`${alice.id}|m|${w.month}`]: [4500, 0], [`${bob.id}|d|2000-01-01`]: [9, 9] }
  }))
  const text = await cli(['usage'], env)
  t.strictSame(text, {
    code: 0,
    err: '',
    out: `Counts from ${file}.usage.json, which a running proxy writes every 5 s (so they may be up to 5 s old).\n` +
      `UTC day ${w.day} resets ${iso(w.dayReset)}; month ${w.month} resets ${iso(w.monthReset)}.\n` +
      `${alice.id}  alice\n` +
      '  today:      120 tokens of 1000 a day, 3 requests of 10 a day\n' +
      '  this month: 4500 tokens of 50000 a month\n' +
      `${bob.id}  bob  (disabled)\n` +
      '  today:      0 tokens (no quota), 0 requests (no quota)\n' +
      '  this month: 0 tokens (no quota)\n'
  })

  const json = await cli(['usage', alice.id, '--json'], env)
  t.equal(json.code, 0, json.err)
  t.strictSame(JSON.parse(json.out), {
    source: { kind: 'file', path: `${file}.usage.json`, exists: true, writtenEverySeconds: 5 },
    keys: [{
      id: alice.id,
      name: 'alice',
      disabled: false,
      quotas: { tokensPerDay: 1000, tokensPerMonth: 50000, requestsPerDay: 10 },
      day: { start: iso(w.dayStart), resetAt: iso(w.dayReset), tokens: 120, requests: 3 },
      month: { start: iso(w.monthStart), resetAt: iso(w.monthReset), tokens: 4500 }
    }]
  })
  t.match((await cli(['usage', bob.id], env)).out, new RegExp(`\\n${bob.id}  bob  \\(disabled\\)\\n  today: {6}0 tokens \\(no quota\\)`))

  t.match(await cli(['usage', 'key_aaaaaaaaaaaa'], env), { code: 1, err: /keys\.jsonl: no key key_aaaaaaaaaaaa\n$/ })
  t.match(await cli(['usage', 'alice'], env), { code: 2, err: /usage: give a key id/ })
  t.match(await cli(['usage', '--file', join(dir, 'none.jsonl')]), { code: 1, err: /none\.jsonl: no such file/ })
  writeFileSync(join(dir, 'empty.jsonl'), '')
  t.strictSame(await cli(['usage', '--file', join(dir, 'empty.jsonl')]), { code: 0, out: 'No keys.\n', err: '' })
  t.strictSame(JSON.parse((await cli(['usage', '--json', '--file', join(dir, 'empty.jsonl')])).out).keys, [])

  writeFileSync(`${file}.usage.json`, '{"version":1,"counters":{"x')
  t.match(await cli(['usage'], env), { code: 1, err: /keys\.jsonl\.usage\.json: not valid JSON\n$/ })
  writeFileSync(`${file}.usage.json`, '{"version":2,"counters":{}}')
  t.match(await cli(['usage'], env), { code: 1, err: /keys\.jsonl\.usage\.json: not a usage file of this version\n$/ })
})

t.test('the store flags, without Redis: wrong combinations are command-line errors that connect to nothing', async (t) => {
  const file = join(tempDir(t), 'keys.jsonl')
  t.match(await cli(['list', '--store', 'redis'], { KEYS_FILE: file }), { code: 2, err: /--store redis: give the Redis URL with --redis-url or REDIS_URL\nUsage/ })
  t.match(await cli(['list'], { KEYS_STORE: 'redis' }), { code: 2, err: /--store redis: give the Redis URL/ })
  t.match(await cli(['list', '--store', 'sqlite'], { KEYS_FILE: file }), { code: 2, err: /--store \/ KEYS_STORE: give file or redis/ })
  t.match(await cli(['list', '--store', 'redis', '--redis-url', 'redis://127.0.0.1:1', '--file', file]), { code: 2, err: /--file: the records are in Redis/ })
  const bad = await cli(['list', '--store', 'redis', '--redis-url', 'http://user:hunter2pass@example.com'])
  t.match(bad, { code: 2, err: /--redis-url \/ REDIS_URL: give redis:\/\/\[:password@\]host\[:port\]\[\/db\]/ })
  t.notMatch(bad.err, 'hunter2pass')
  t.match(await cli(['list', '--store', 'redis', '--redis-url', 'not a url']), { code: 2, err: /--redis-url/ })
  t.match(await cli(['list', '--store', 'file'], {}), { code: 2, err: /name the keys file with --file or KEYS_FILE \(or use --store redis\)/ })
  t.match(await cli(['token', '--key', 'key_aaaaaaaaaaaa', '--sub', 'u', '--origin', ORIGIN], { KEYS_STORE: 'redis', TOKEN_SECRETS: TOKEN_SECRET }), { code: 2, err: /keys token: --store redis: give the Redis URL/ })
  // Checked before anything is opened: the unreachable URL is never tried.
  t.match(await cli(['create', '--store', 'redis', '--redis-url', 'redis://127.0.0.1:1'], {}), { code: 2, err: /--name is required/ })
  t.match(await cli(['usage', 'nope', '--store', 'redis', '--redis-url', 'redis://127.0.0.1:1'], {}), { code: 2, err: /usage: give a key id/ })
})

t.test('no output showed a hash, nor a secret other than where create handed it out', async (t) => {
  t.ok(outputs.length > 20)
  const leaks = outputs.filter(({ text, shows }) => hashes.some((h) => text.includes(h)) || secrets.some((s) => s !== shows && text.includes(s)))
  t.strictSame(leaks, [])
})
