import { parseArgs } from 'node:util'
import type { ClientKeyLimits, ClientKeyRecord } from './schema.js'
import { openBackend, STORE_OPTIONS, storeSpec, type RecordsBackend } from './backend.js'
import { UsageError } from './cli-redis.js'
import { runTokenCli } from './cli-token.js'
import { showUsage } from './cli-usage.js'
import { addKey, draftKey, KeyInputError, KeyNotFoundError, keyView, removeKey, rotateKey, setDisabled } from './operations.js'
import { KeysFileError } from './records.js'

/*
 * `oai-reverse-proxy keys …`: manage the client key records, in the keys file or in Redis (backend.ts).
 * Secrets are printed once, by `create` and `rotate`; nothing prints a hash. The rules on values are
 * plugins/client-keys/operations.ts' (shared with the admin API); this file only reads the command line.
 * Exit codes: 0 done, 1 the store or the key is the problem, 2 the command line is.
 */

export interface CliIo { out: (text: string) => void, err: (text: string) => void }

export const USAGE = `Usage: oai-reverse-proxy keys <command> [--file <path>] (default: $KEYS_FILE)
       or, with the records in Redis: [--store redis] (default: $KEYS_STORE) [--redis-url <url>] (default: $REDIS_URL)
  create --name <name> [--models 'gpt-4o-mini,gpt-4.1*'] [--endpoints chat.completions,responses]
         [--expires 2027-01-01] [--requests-per-window N] [--tokens-per-minute N] [--max-concurrent N]
         [--tokens-per-day N] [--tokens-per-month N] [--requests-per-day N] [--meta key=value ...] [--json]
  list [--json]
  revoke <id> | enable <id> | delete <id>
  rotate <id> [--json]   (a new secret for the same key, printed once; the old one stops working)
  usage [<id>] [--json]  (quotas and what is used of them this UTC day and month: from Redis with a Redis URL,
                          else from <keys file>.usage.json, which a running proxy writes every 5 s)
  token --key <key_…> --sub <user> --origin <origin> [--ttl N] [--models …] [--endpoints …] [--json]
         (a browser token for the key, signed with the first of $TOKEN_SECRETS: docs/browser.md)
Every limit and quota is enforced per key (docs/client-keys.md).`

const LIMIT_FLAGS: Record<string, keyof ClientKeyLimits> = {
  'requests-per-window': 'requestsPerWindow',
  'tokens-per-minute': 'tokensPerMinute',
  'max-concurrent': 'maxConcurrent',
  'tokens-per-day': 'tokensPerDay',
  'tokens-per-month': 'tokensPerMonth',
  'requests-per-day': 'requestsPerDay'
}

/** The command line's name for each record field an operation may refuse. */
const FLAG_OF: Record<string, string> = {
  name: '--name',
  'scopes.models': '--models',
  'scopes.endpoints': '--endpoints',
  expires: '--expires',
  metadata: '--meta',
  ...Object.fromEntries(Object.entries(LIMIT_FLAGS).map(([flag, field]) => [`limits.${field}`, `--${flag}`]))
}

const OPTIONS = {
  ...STORE_OPTIONS,
  name: { type: 'string' },
  models: { type: 'string' },
  endpoints: { type: 'string' },
  expires: { type: 'string' },
  meta: { type: 'string', multiple: true },
  json: { type: 'boolean' },
  ...Object.fromEntries(Object.keys(LIMIT_FLAGS).map((f) => [f, { type: 'string' }]))
} as const

type Values = Record<string, string | boolean | string[] | undefined>

const list = (v: string): string[] => v.split(',').map((s) => s.trim()).filter((s) => s.length > 0)

/** The limits and metadata flags as values (their syntax is the command line's business). */
function limitsAndMetadata (v: Values): { limits: ClientKeyLimits, metadata: Record<string, string> } {
  const limits: ClientKeyLimits = {}
  for (const [flag, field] of Object.entries(LIMIT_FLAGS)) {
    const raw = v[flag] as string | undefined
    if (raw === undefined) continue
    if (!/^\d{1,12}$/.test(raw)) throw new UsageError(`--${flag}: give a whole number`)
    limits[field] = Number(raw)
  }
  const metadata: Record<string, string> = {}
  for (const pair of (v.meta as string[] | undefined) ?? []) {
    const at = pair.indexOf('=')
    if (at < 1) throw new UsageError('--meta: give key=value')
    metadata[pair.slice(0, at)] = pair.slice(at + 1)
  }
  return { limits, metadata }
}

async function create (store: RecordsBackend, v: Values, io: CliIo): Promise<void> {
  // A bad limit or --meta is reported after the other flags' problems, as it always was.
  let parsed: ReturnType<typeof limitsAndMetadata> | UsageError
  try {
    parsed = limitsAndMetadata(v)
  } catch (err) {
    parsed = err as UsageError
  }
  const extra = parsed instanceof UsageError ? {} : parsed
  // Checked before the store is touched: a wrong command line never takes the lock, creates the file or connects.
  const draft = draftKey({
    name: (v.name as string | undefined) ?? '',
    models: v.models === undefined ? undefined : list(v.models as string),
    endpoints: v.endpoints === undefined ? undefined : list(v.endpoints as string),
    expires: v.expires as string | undefined,
    ...extra
  })
  if (parsed instanceof UsageError) throw parsed
  const { record, secret } = await store.update((records) => addKey(records, draft), true)
  if (v.json === true) io.out(`${JSON.stringify({ id: record.id, name: record.name, secret })}\n`)
  else io.out(`Created ${record.id} (${record.name}). The secret is shown only now; store it safely:\n${secret}\n`)
}

/** What `list --json` shows: the admin API's view without the metadata; never the hash. */
const view = (r: ClientKeyRecord) => {
  const { metadata: _metadata, ...shown } = keyView(r)
  return shown
}

async function show (store: RecordsBackend, v: Values, io: CliIo): Promise<void> {
  const records = await store.read()
  if (records === null) throw new KeysFileError('no such file (`keys create` makes it)')
  if (v.json === true) {
    io.out(`${JSON.stringify(records.map(view))}\n`)
    return
  }
  if (records.length === 0) io.out('No keys.\n')
  for (const r of records) {
    const scopes = [`endpoints=${r.scopes.endpoints?.join(',') ?? '*'}`, `models=${r.scopes.models?.join(',') ?? '*'}`].join(' ')
    io.out(`${r.id}  ${r.prefix}…  ${r.disabled ? 'disabled' : 'enabled '}  created ${r.created}  expires ${r.expires ?? 'never'}  ${scopes}  ${r.name}\n`)
  }
}

function checkId (command: string, id: string | undefined): string {
  if (id === undefined || !/^key_[a-z2-7]{12}$/.test(id)) throw new UsageError(`${command}: give a key id (key_…; see \`keys list\`)`)
  return id
}

async function change (store: RecordsBackend, command: string, given: string | undefined, v: Values, io: CliIo): Promise<void> {
  const id = checkId(command, given)
  if (command === 'rotate') {
    const { secret } = await store.update((records) => rotateKey(records, id))
    if (v.json === true) io.out(`${JSON.stringify({ id, secret })}\n`)
    else io.out(`Rotated ${id}: the old secret stops working within about a second. The new one is shown only now; store it safely:\n${secret}\n`)
    return
  }
  await store.update((records) => (command === 'delete' ? removeKey(records, id) : setDisabled(records, id, command === 'revoke')))
  const done = { revoke: 'revoked (disabled)', enable: 'enabled', delete: 'deleted' }[command]
  io.out(`${id} ${done as string}\n`)
}

async function run (argv: readonly string[], env: Record<string, string | undefined>, io: CliIo, held: { store?: RecordsBackend }): Promise<number> {
  try {
    const { values, positionals } = (() => {
      try {
        return parseArgs({ args: [...argv], options: OPTIONS, allowPositionals: true, strict: true })
      } catch (err) {
        throw new UsageError((err as Error).message)
      }
    })()
    const [command, ...rest] = positionals
    if (command === undefined) {
      io.err(`${USAGE}\n`)
      return 2
    }
    if (command === 'help') {
      io.out(`${USAGE}\n`)
      return 0
    }
    if (!['create', 'list', 'revoke', 'enable', 'delete', 'rotate', 'usage'].includes(command)) throw new UsageError(`unknown command ${JSON.stringify(command)}`)
    const spec = storeSpec(values as Record<string, string | undefined>, env)
    const store = held.store = openBackend(spec)
    if (command === 'create') await create(store, values, io)
    else if (command === 'list') await show(store, values, io)
    else if (command === 'usage') await showUsage(store, spec, rest[0] === undefined ? undefined : checkId(command, rest[0]), values.json === true, io)
    else await change(store, command, rest[0], values, io)
    return 0
  } catch (err) {
    // Every field a record built from these flags can be refused on has its flag in FLAG_OF.
    const usage = err instanceof KeyInputError ? err.describe(FLAG_OF[err.field] as string) : err instanceof UsageError ? err.message : undefined
    if (usage !== undefined) {
      io.err(`oai-reverse-proxy keys: ${usage}\n${USAGE}\n`)
      return 2
    }
    // Redis' own failures already name its host:port (never the URL, which may hold a password).
    const message = err instanceof KeysFileError || err instanceof KeyNotFoundError ? `${(held.store as RecordsBackend).where}: ${err.message}` : (err as Error).message
    io.err(`oai-reverse-proxy keys: ${message}\n`)
    return 1
  }
}

/** Run `keys <argv>`; resolves with the exit code. Whatever the command opened is closed, so the process can exit. */
export async function runKeysCli (argv: readonly string[], env: Record<string, string | undefined>, io: CliIo): Promise<number> {
  // Its own flags and usage: passed on whole.
  if (argv[0] === 'token') return await runTokenCli(argv.slice(1), env, io)
  const held: { store?: RecordsBackend } = {}
  const code = await run(argv, env, io, held)
  held.store?.close()
  return code
}
