import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, symlinkSync, utimesSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { Writable } from 'node:stream'
import Fastify from 'fastify'
import t, { type Test } from 'tap'
import { dispatch } from '../../../cli.js'
import { runKeysCli } from '../../../plugins/client-keys/cli.js'
import { readKeysFile, updateKeysFile, withLock, writeKeysFile } from '../../../plugins/client-keys/file-io.js'
import clientKeyFile from '../../../plugins/client-keys/file-store.js'
import { buildIndex, hashSecret, KeysFileError, newKeyId, newSecret, parseKeysFile, serializeKeys } from '../../../plugins/client-keys/records.js'
import type { ClientKeyRecord } from '../../../plugins/client-keys/schema.js'
import { sleep } from '../../helper.js'

/*
 * The keys file on its own: the record format, the index, atomic writes and the lock, the server-side
 * store (load, reload, corrupt and missing files) and the `keys` CLI run in-process (the end-to-end test
 * runs it as a child).
 */

export function record (secret: string, extra: Partial<ClientKeyRecord> = {}): ClientKeyRecord {
  return { id: newKeyId(), name: 'test', hash: hashSecret(secret), prefix: secret.slice(0, 12), created: new Date().toISOString(), disabled: false, scopes: {}, metadata: {}, ...extra }
}

const tempDir = (t: Test): string => {
  const dir = mkdtempSync(join(tmpdir(), 'oai-keys-'))
  t.teardown(() => rmSync(dir, { recursive: true, force: true }))
  return dir
}

/** Run the CLI in-process; resolve with its exit code and output. */
async function cli (args: string[], env: Record<string, string> = {}) {
  let out = ''
  let err = ''
  const code = await runKeysCli(args, env, { out: (s) => { out += s }, err: (s) => { err += s } })
  return { code, out, err }
}

t.test('secrets, ids and hashes have their documented shapes', async (t) => {
  const s = newSecret()
  t.match(s, /^oarp-[A-Za-z0-9_-]{43}$/)
  t.equal(Buffer.from(s.slice(5), 'base64url').length, 32)
  t.match(newKeyId(), /^key_[a-z2-7]{12}$/)
  t.match(hashSecret(s), /^[0-9a-f]{64}$/)
  t.not(newSecret(), s)
})

t.test('the index: usable keys by hash; unknown, disabled, expired and malformed all give null', async (t) => {
  const [a, b, c, d] = [newSecret(), newSecret(), newSecret(), newSecret()]
  let now = Date.parse('2030-01-01T00:00:00Z')
  const index = buildIndex([
    record(a, { scopes: { endpoints: ['chat.completions'], models: ['gpt-4o*'] } }),
    record(b, { disabled: true }),
    record(c, { expires: '2030-01-01T00:00:01Z' }),
    record(d, { expires: '2029-12-31' })
  ], () => now)
  t.equal(index.size, 3, 'disabled keys are not in the index')
  t.match(index.lookup(a), { name: 'test', models: ['gpt-4o*'], expiresMs: Infinity })
  t.ok(index.lookup(a)?.endpoints?.has('chat.completions'))
  t.equal(index.lookup(b), null, 'disabled')
  t.equal(index.lookup(d), null, 'expired (a date-only expiry is UTC midnight)')
  t.ok(index.lookup(c), 'not yet expired')
  now += 1000
  t.equal(index.lookup(c), null, 'expired at its instant')
  t.equal(index.lookup(newSecret()), null, 'unknown')
  t.equal(index.lookup(`${a}x`), null, 'malformed')
  t.equal(index.lookup(hashSecret(a)), null, 'the hash is not a credential')
})

t.test('parsing names the bad line and never quotes it', async (t) => {
  const s = newSecret()
  const good = JSON.stringify(record(s))
  t.equal(parseKeysFile(`\n${good}\n\n`).length, 1, 'blank lines are skipped')
  const r = record(newSecret())
  const cases: Array<[string, RegExp]> = [
    [`${good}\n{"id": "key_`, /^line 2: not valid JSON$/],
    [`${good}\n[]`, /^line 2: record: Expected object$/],
    [JSON.stringify({ ...r, hash: 'nothex' }), /^line 1: \/hash: /],
    [JSON.stringify({ ...r, secret: s }), /^line 1: /],
    [JSON.stringify({ ...r, created: 'yesterday-ish' }), /^line 1: \/created: not an ISO 8601 date$/],
    [JSON.stringify({ ...r, expires: '2027-13-45' }), /^line 1: \/expires: not an ISO 8601 date$/],
    [JSON.stringify({ ...r, scopes: { endpoints: ['files.list'] } }), /^line 1: \/scopes\/endpoints: unknown endpoint id "files.list"$/],
    [`${good}\n${JSON.stringify({ ...JSON.parse(good) as object, hash: hashSecret(newSecret()) })}`, /^line 2: duplicate id key_\w+ \(also on line 1\)$/],
    [`${good}\n${JSON.stringify({ ...r, hash: hashSecret(s) })}`, /^line 2: the same secret as line 1$/]
  ]
  for (const [text, message] of cases) {
    const err = t.throws(() => parseKeysFile(text)) as Error
    t.type(err, KeysFileError)
    t.match(err.message, message)
    t.notMatch(err.message, /[0-9a-f]{64}|oarp-/, 'no hash or secret in the message')
  }
})

t.test('atomic writes keep the previous version as .bak, with mode 0600', async (t) => {
  const dir = tempDir(t)
  const file = join(dir, 'keys.jsonl')
  const one = record(newSecret())
  writeKeysFile(file, [one])
  t.notOk(existsSync(`${file}.bak`), 'no previous version yet')
  t.equal(statSync(file).mode & 0o777, 0o600)
  const two = record(newSecret())
  writeKeysFile(file, [one, two])
  t.strictSame(readKeysFile(`${file}.bak`), [one])
  t.strictSame(readKeysFile(file), [one, two])
  t.equal(readFileSync(file, 'utf8'), serializeKeys([one, two]))
  t.equal(readKeysFile(join(dir, 'none.jsonl')), null, 'missing')
  t.throws(() => readKeysFile(dir), /cannot read the file \(EISDIR\)/)
  // A .bak that cannot be written (a directory in its place) aborts the write and leaves no temp file.
  const blocked = join(dir, 'blocked.jsonl')
  writeKeysFile(blocked, [one])
  writeFileSync(`${blocked}.bak`, '')
  rmSync(`${blocked}.bak`)
  mkdirSync(`${blocked}.bak`)
  t.throws(() => writeKeysFile(blocked, [two]))
  t.strictSame(readKeysFile(blocked), [one], 'the file is unchanged')
  t.strictSame(readdirSync(dir).filter((f) => f.endsWith('.tmp')), [], 'no temp file left')
})

t.test('the lock serialises writers, waits for a held lock, and takes over a stale one', async (t) => {
  const dir = tempDir(t)
  const file = join(dir, 'keys.jsonl')
  // 20 concurrent creates: every one survives.
  const codes = await Promise.all(Array.from({ length: 20 }, (_, i) => cli(['create', '--name', `n${i}`, '--file', file])))
  t.strictSame(codes.map((c) => c.code), Array(20).fill(0))
  t.equal(readKeysFile(file)?.length, 20)
  writeFileSync(`${file}.lock`, '')
  await t.rejects(withLock(file, () => 1, 50), /another writer holds/)
  const old = new Date(Date.now() - 60_000)
  utimesSync(`${file}.lock`, old, old)
  t.equal(await withLock(file, () => 2, 50), 2, 'a stale lock is taken over')
  t.notOk(existsSync(`${file}.lock`), 'and released')
  await t.rejects(withLock(join(dir, 'no/such/dir/keys.jsonl'), () => 3), { code: 'ENOENT' })
  // A lock that cannot be stat'ed (a dangling link) is never taken to be stale.
  symlinkSync(join(dir, 'nowhere'), `${file}.lock`)
  await t.rejects(withLock(file, () => 4, 50), /another writer holds/)
  rmSync(`${file}.lock`)
  // A lock released while we wait: taken.
  writeFileSync(`${file}.lock`, '')
  setTimeout(() => rmSync(`${file}.lock`), 30)
  t.equal(await withLock(file, () => 5), 5)
  await t.rejects(updateKeysFile(join(dir, 'missing.jsonl'), (records) => ({ records, result: 0 })), /no such file/)
})

function logged () {
  const lines: string[] = []
  const stream = new Writable({ write (chunk: Buffer, _e, done) { lines.push(chunk.toString()); done() } })
  return { lines, logger: { level: 'info', stream } }
}

const until = async (check: () => boolean, ms = 3000): Promise<boolean> => {
  const end = Date.now() + ms
  while (!check()) {
    if (Date.now() > end) return false
    await sleep(10)
  }
  return true
}

t.test('the server-side store: refuses a missing or corrupt file at start, naming the line', async (t) => {
  const dir = tempDir(t)
  const start = async (file: string) => { const app = Fastify(); await app.register(clientKeyFile, { file }); await app.ready() }
  await t.rejects(start(join(dir, 'keys.jsonl')), /keysFile \(KEYS_FILE\): .*keys\.jsonl: no such file; create it with `npx oai-reverse-proxy keys create/)
  const file = join(dir, 'bad.jsonl')
  const s = newSecret()
  writeFileSync(file, `${JSON.stringify(record(s))}\n{"hash":"${hashSecret(s)}"\n`)
  const err = await start(file).catch((e: Error) => e)
  t.match((err as Error).message, /bad\.jsonl: line 2: not valid JSON$/)
  t.notMatch((err as Error).message, new RegExp(hashSecret(s)))
})

t.test('the store reloads on change (watch), keeps the last good index when the file breaks or vanishes', async (t) => {
  const dir = tempDir(t)
  const file = join(dir, 'keys.jsonl')
  const [a, b] = [newSecret(), newSecret()]
  writeKeysFile(file, [record(a)])
  const { lines, logger } = logged()
  const app = Fastify({ logger })
  await app.register(clientKeyFile, { file, debounceMs: 10 })
  await app.ready()
  t.teardown(() => app.close())
  const keys = app.oaiProxyClientKeys
  t.equal(keys.size, 1)
  t.ok(keys.lookup(a))
  writeKeysFile(file, [record(a), record(b)])
  t.ok(await until(() => keys.lookup(b) !== null), 'a new key is seen without a restart')
  t.equal(keys.size, 2)
  writeFileSync(file, 'garbage\n')
  t.ok(await until(() => lines.some((l) => l.includes('keys file is corrupt'))), 'a corrupt file is logged')
  t.ok(keys.lookup(a) && keys.lookup(b), 'the last good index stays in force')
  t.match(lines.find((l) => l.includes('corrupt')), /"level":40.*"reason":"line 1: not valid JSON"/)
  rmSync(file)
  t.ok(await until(() => lines.some((l) => l.includes('keys file unreadable'))), 'a vanished file is logged')
  t.ok(keys.lookup(a), 'and the keys stay')
  t.equal(await keys.reload(), false, 'still missing: nothing new')
  t.equal(lines.filter((l) => l.includes('unreadable')).length, 1, 'logged once, not on every check')
  writeKeysFile(file, [record(b)])
  t.ok(await until(() => keys.lookup(a) === null), 'back: the new file is in force')
  t.equal(await keys.reload(), false, 'unchanged content is not parsed again')
  for (const l of lines) t.notMatch(l, new RegExp(`${hashSecret(a)}|${hashSecret(b)}|${a}|${b}`), 'no hash or secret in the logs')
})

t.test('without fs.watch the periodic stat notices a change', async (t) => {
  const dir = tempDir(t)
  const file = join(dir, 'keys.jsonl')
  const [a, b] = [newSecret(), newSecret()]
  writeKeysFile(file, [record(a)])
  const app = Fastify()
  await app.register(clientKeyFile, { file, watch: false, pollMs: 20, debounceMs: 1 })
  await app.ready()
  t.teardown(() => app.close())
  writeKeysFile(file, [record(b)])
  t.ok(await until(() => app.oaiProxyClientKeys.lookup(b) !== null), 'reloaded by the poll')
  t.equal(app.oaiProxyClientKeys.lookup(a), null)
  rmSync(file)
  await sleep(100)
  t.ok(app.oaiProxyClientKeys.lookup(b), 'a vanished file keeps the keys')
})

t.test('keys CLI in-process: every command and every refusal', async (t) => {
  const dir = tempDir(t)
  const file = join(dir, 'keys.jsonl')
  const env = { KEYS_FILE: file }
  const created = await cli(['create', '--name', 'alice', '--models', 'gpt-4o-mini, gpt-4.1*', '--endpoints', 'chat.completions,responses', '--expires', '2999-01-01', '--tokens-per-day', '200000', '--max-concurrent', '2', '--meta', 'team=red', '--meta', 'note=a=b'], env)
  t.equal(created.code, 0, created.err)
  const m = /^Created (key_[a-z2-7]{12}) \(alice\)\. The secret is shown only now; store it safely:\n(oarp-\S{43})\n$/.exec(created.out)
  t.ok(m, created.out.replace(/oarp-\S+/, 'SECRET'))
  const [, id, secret] = m as unknown as [string, string, string]
  const [rec] = readKeysFile(file) as ClientKeyRecord[]
  t.strictSame({ ...rec, created: 'x' }, {
    id,
    name: 'alice',
    hash: hashSecret(secret),
    prefix: secret.slice(0, 12),
    created: 'x',
    expires: '2999-01-01T00:00:00.000Z',
    disabled: false,
    scopes: { endpoints: ['chat.completions', 'responses'], models: ['gpt-4o-mini', 'gpt-4.1*'] },
    limits: { tokensPerDay: 200000, maxConcurrent: 2 },
    metadata: { team: 'red', note: 'a=b' }
  })
  const json = await cli(['create', '--name', 'bob', '--json', '--file', file], {})
  const bob = JSON.parse(json.out) as { id: string, name: string, secret: string }
  t.match(bob, { id: /^key_/, name: 'bob', secret: /^oarp-/ })

  const listed = await cli(['list'], env)
  t.equal(listed.code, 0)
  t.match(listed.out, new RegExp(`^${id}  ${secret.slice(0, 12)}…  enabled   created \\S+  expires 2999-01-01T00:00:00.000Z  endpoints=chat.completions,responses models=gpt-4o-mini,gpt-4.1\\*  alice\n${bob.id} .* expires never  endpoints=\\* models=\\*  bob\n$`))
  const listedJson = JSON.parse((await cli(['list', '--json'], env)).out) as Array<Record<string, unknown>>
  t.strictSame(Object.keys(listedJson[0] ?? {}), ['id', 'name', 'prefix', 'created', 'expires', 'disabled', 'scopes', 'limits'])
  for (const out of [listed.out, JSON.stringify(listedJson)]) {
    for (const s of [secret, bob.secret, hashSecret(secret), hashSecret(bob.secret)]) t.notOk(out.includes(s), 'list shows no secret or hash')
  }

  t.strictSame(await cli(['revoke', id], env), { code: 0, out: `${id} revoked (disabled)\n`, err: '' })
  t.equal(readKeysFile(file)?.[0]?.disabled, true)
  t.match((await cli(['list'], env)).out, `${id}  ${secret.slice(0, 12)}…  disabled`)
  t.strictSame(await cli(['enable', id], env), { code: 0, out: `${id} enabled\n`, err: '' })
  t.equal(readKeysFile(file)?.[0]?.disabled, false)
  t.strictSame(await cli(['delete', bob.id], env), { code: 0, out: `${bob.id} deleted\n`, err: '' })
  t.equal(readKeysFile(file)?.length, 1)
  t.ok(existsSync(`${file}.bak`), 'the previous version is kept')

  const usage: Array<[string[], RegExp]> = [
    [['create'], /--name is required/],
    [['create', '--name', 'x', '--models', ' , '], /--models: give at least one/],
    [['create', '--name', 'x', '--endpoints', 'files.list'], /--endpoints: unknown endpoint id "files.list"; known: chat.completions, /],
    [['create', '--name', 'x', '--endpoints', ','], /--endpoints: unknown endpoint id ""/],
    [['create', '--name', 'x', '--expires', 'tomorrow'], /--expires: give an ISO 8601 date/],
    [['create', '--name', 'x', '--expires', '2001-01-01'], /--expires: that date has passed/],
    [['create', '--name', 'x', '--tokens-per-day', '5k'], /--tokens-per-day: give a whole number/],
    [['create', '--name', 'x', '--meta', 'novalue'], /--meta: give key=value/],
    [['create', '--name', 'x', '--bogus'], /Unknown option '--bogus'/],
    [['frobnicate'], /unknown command "frobnicate"/],
    [['revoke'], /revoke: give a key id/],
    [['enable', 'nope'], /enable: give a key id/]
  ]
  for (const [args, message] of usage) {
    const r = await cli(args, env)
    t.equal(r.code, 2, args.join(' '))
    t.match(r.err, message)
    t.match(r.err, /Usage: oai-reverse-proxy keys/)
  }
  t.match(await cli(['list'], {}), { code: 2, err: /name the keys file with --file or KEYS_FILE/ })
  t.match(await cli([], env), { code: 2, out: '', err: /^Usage/ })
  t.match(await cli(['help'], env), { code: 0, out: /^Usage/ })

  t.match(await cli(['revoke', 'key_aaaaaaaaaaaa'], env), { code: 1, err: /keys\.jsonl: no key key_aaaaaaaaaaaa\n$/ })
  t.match(await cli(['list', '--file', join(dir, 'none.jsonl')], {}), { code: 1, err: /none\.jsonl: no such file/ })
  t.match(await cli(['revoke', id, '--file', join(dir, 'none.jsonl')], {}), { code: 1, err: /no such file/ })
  t.match(await cli(['create', '--name', 'x', '--file', join(dir, 'no/dir/keys.jsonl')], {}), { code: 1, err: /ENOENT: no such file or directory/ })
  writeFileSync(join(dir, 'empty.jsonl'), '')
  t.strictSame(await cli(['list', '--file', join(dir, 'empty.jsonl')], {}), { code: 0, out: 'No keys.\n', err: '' })

  // A corrupt file is never overwritten.
  const before = `${readFileSync(file, 'utf8')}not json\n`
  writeFileSync(file, before)
  t.match(await cli(['create', '--name', 'x'], env), { code: 1, err: /keys\.jsonl: line 2: not valid JSON/ })
  t.equal(readFileSync(file, 'utf8'), before, 'left as it was')
})

t.test('cli.ts: `keys` runs the CLI, anything else starts the server', async (t) => {
  const dir = tempDir(t)
  const file = join(dir, 'keys.jsonl')
  const writes: string[] = []
  const write = process.stdout.write
  process.stdout.write = ((s: string) => { writes.push(s); return true }) as typeof process.stdout.write
  let code: number | undefined
  try {
    code = await dispatch(['keys', 'create', '--name', 'x', '--json', '--file', file], {})
  } finally {
    process.stdout.write = write
  }
  t.equal(code, 0)
  t.match(writes.join(''), /"secret":"oarp-/)
  const errs: string[] = []
  const writeErr = process.stderr.write
  process.stderr.write = ((s: string) => { errs.push(s); return true }) as typeof process.stderr.write
  try {
    code = await dispatch(['keys', 'nope'], {})
  } finally {
    process.stderr.write = writeErr
  }
  t.equal(code, 2)
  t.match(errs.join(''), /unknown command/)
  let started = false
  t.equal(await dispatch([], {}, async () => { started = true }), undefined)
  t.ok(started)
})

t.test('keys rotate: a new secret for the same id, printed once; the old one stops working', async (t) => {
  const dir = tempDir(t)
  const file = join(dir, 'keys.jsonl')
  const env = { KEYS_FILE: file }
  const first = JSON.parse((await cli(['create', '--name', 'carol', '--models', 'gpt-4o-mini', '--json'], env)).out) as { id: string, secret: string }
  const before = readKeysFile(file)?.[0] as ClientKeyRecord
  const rotated = await cli(['rotate', first.id], env)
  t.equal(rotated.code, 0, rotated.err)
  const m = new RegExp(`^Rotated ${first.id}: the old secret stops working within about a second\\. The new one is shown only now; store it safely:\\n(oarp-\\S{43})\\n$`).exec(rotated.out)
  t.ok(m, 'the new secret, once')
  const secret = (m as RegExpExecArray)[1] as string
  t.not(secret, first.secret)
  const after = readKeysFile(file)?.[0] as ClientKeyRecord
  t.strictSame({ ...after, hash: 'h', prefix: 'p' }, { ...before, hash: 'h', prefix: 'p' }, 'same id, name, scopes and everything else')
  t.equal(after.hash, hashSecret(secret))
  t.equal(after.prefix, secret.slice(0, 12))
  const index = buildIndex(readKeysFile(file) as ClientKeyRecord[])
  t.equal(index.lookup(first.secret), null, 'the old secret is unknown')
  t.equal(index.lookup(secret)?.id, first.id, 'the new one is the same key')
  const json = JSON.parse((await cli(['rotate', first.id, '--json'], env)).out) as { id: string, secret: string }
  t.equal(json.id, first.id)
  t.equal(readKeysFile(file)?.[0]?.hash, hashSecret(json.secret))
  const listed = (await cli(['list', '--json'], env)).out
  t.notOk(listed.includes(secret) || listed.includes(json.secret), 'list never shows it')
  t.match(await cli(['rotate'], env), { code: 2, err: /rotate: give a key id/ })
  t.match(await cli(['rotate', 'key_aaaaaaaaaaaa'], env), { code: 1, err: /keys\.jsonl: no key key_aaaaaaaaaaaa\n$/ })
  t.match(await cli(['help'], env), { out: /rotate <id>/ })
})

t.test('keys create: a value the record format refuses is a command-line error (exit 2), the file untouched', async (t) => {
  const dir = tempDir(t)
  const file = join(dir, 'keys.jsonl')
  const r = await cli(['create', '--name', 'x', '--meta', `k=${'v'.repeat(2001)}`, '--file', file])
  t.equal(r.code, 2)
  t.match(r.err, /--meta: Expected string length less or equal to 2000/)
  t.notOk(existsSync(file), 'nothing written, no file created')
  t.match(await cli(['create', '--name', 'x', '--models', ',', '--tokens-per-day', 'x', '--file', file]), { code: 2, err: /--models: give at least one/ }, 'the flags\' order of old: the models before the limits')
  t.match(await cli(['create', '--name', ' '.repeat(3), '--file', file]), { code: 2, err: /--name is required \(1 to 200 characters\)/ })
})
