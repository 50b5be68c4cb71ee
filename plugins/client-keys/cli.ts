import { parseArgs } from 'node:util'
import { resolve } from 'node:path'
import type { ClientKeyLimits, ClientKeyRecord } from '../../schemas/client-keys.js'
import { DISPLAY_PREFIX_LENGTH } from '../../schemas/client-keys.js'
import { readKeysFile, updateKeysFile } from './file-io.js'
import { hashSecret, KeysFileError, newKeyId, newSecret, SCOPE_ENDPOINT_IDS } from './records.js'

/*
 * `oai-reverse-proxy keys …`: manage the keys file. Secrets are printed once, by `create`; nothing prints a
 * hash. Exit codes: 0 done, 1 the file or the key is the problem, 2 the command line is.
 */

export interface CliIo { out: (text: string) => void, err: (text: string) => void }

class UsageError extends Error {}

export const USAGE = `Usage: oai-reverse-proxy keys <command> [--file <path>] (default: $KEYS_FILE)
  create --name <name> [--models 'gpt-4o-mini,gpt-4.1*'] [--endpoints chat.completions,responses]
         [--expires 2027-01-01] [--requests-per-window N] [--tokens-per-minute N] [--max-concurrent N]
         [--tokens-per-day N] [--tokens-per-month N] [--requests-per-day N] [--meta key=value ...] [--json]
  list [--json]
  revoke <id> | enable <id> | delete <id>
Requests per window, tokens per minute and concurrency are enforced per key; the daily and monthly quotas are stored, not enforced yet (docs/client-keys.md).`

const LIMIT_FLAGS: Record<string, keyof ClientKeyLimits> = {
  'requests-per-window': 'requestsPerWindow',
  'tokens-per-minute': 'tokensPerMinute',
  'max-concurrent': 'maxConcurrent',
  'tokens-per-day': 'tokensPerDay',
  'tokens-per-month': 'tokensPerMonth',
  'requests-per-day': 'requestsPerDay'
}

const OPTIONS = {
  file: { type: 'string' },
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

async function create (file: string, v: Values, io: CliIo): Promise<void> {
  const name = (v.name as string | undefined)?.trim() ?? ''
  if (name.length === 0 || name.length > 200) throw new UsageError('--name is required (1 to 200 characters)')
  const models = v.models === undefined ? undefined : list(v.models as string)
  if (models?.length === 0) throw new UsageError('--models: give at least one model or glob')
  const endpoints = v.endpoints === undefined ? undefined : list(v.endpoints as string)
  const unknown = endpoints?.find((id) => !SCOPE_ENDPOINT_IDS.has(id))
  if (unknown !== undefined || endpoints?.length === 0) throw new UsageError(`--endpoints: unknown endpoint id ${JSON.stringify(unknown ?? '')}; known: ${[...SCOPE_ENDPOINT_IDS].join(', ')}`)
  let expires: string | undefined
  if (v.expires !== undefined) {
    const ms = /^\d{4}-\d{2}-\d{2}/.test(v.expires as string) ? Date.parse(v.expires as string) : Number.NaN
    if (Number.isNaN(ms)) throw new UsageError('--expires: give an ISO 8601 date, e.g. 2027-01-01 (UTC midnight)')
    if (ms <= Date.now()) throw new UsageError('--expires: that date has passed')
    expires = new Date(ms).toISOString()
  }
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
  const secret = newSecret()
  const id = await updateKeysFile(file, (records) => {
    let id: string
    do id = newKeyId(); while (records.some((r) => r.id === id))
    const record: ClientKeyRecord = {
      id,
      name,
      hash: hashSecret(secret),
      prefix: secret.slice(0, DISPLAY_PREFIX_LENGTH),
      created: new Date().toISOString(),
      ...(expires === undefined ? {} : { expires }),
      disabled: false,
      scopes: { ...(endpoints === undefined ? {} : { endpoints }), ...(models === undefined ? {} : { models }) },
      ...(Object.keys(limits).length === 0 ? {} : { limits }),
      metadata
    }
    return { records: [...records, record], result: id }
  }, true)
  if (v.json === true) io.out(`${JSON.stringify({ id, name, secret })}\n`)
  else io.out(`Created ${id} (${name}). The secret is shown only now; store it safely:\n${secret}\n`)
}

/** What `list` shows: never the hash. */
const view = (r: ClientKeyRecord) => ({ id: r.id, name: r.name, prefix: r.prefix, created: r.created, expires: r.expires ?? null, disabled: r.disabled, scopes: r.scopes, limits: r.limits ?? {} })

function show (file: string, v: Values, io: CliIo): void {
  const records = readKeysFile(file)
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

async function change (file: string, command: string, id: string | undefined, io: CliIo): Promise<void> {
  if (id === undefined || !/^key_[a-z2-7]{12}$/.test(id)) throw new UsageError(`${command}: give a key id (key_…; see \`keys list\`)`)
  await updateKeysFile(file, (records) => {
    const found = records.find((r) => r.id === id)
    if (found === undefined) throw new KeysFileError(`no key ${id}`)
    if (command === 'delete') return { records: records.filter((r) => r !== found), result: undefined }
    return { records: records.map((r) => (r === found ? { ...r, disabled: command === 'revoke' } : r)), result: undefined }
  })
  const done = { revoke: 'revoked (disabled)', enable: 'enabled', delete: 'deleted' }[command]
  io.out(`${id} ${done as string}\n`)
}

/** Run `keys <argv>`; resolves with the exit code. */
export async function runKeysCli (argv: readonly string[], env: Record<string, string | undefined>, io: CliIo): Promise<number> {
  let file = ''
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
    if (!['create', 'list', 'revoke', 'enable', 'delete'].includes(command)) throw new UsageError(`unknown command ${JSON.stringify(command)}`)
    const fileArg = (values.file as string | undefined) ?? env.KEYS_FILE
    if (fileArg === undefined || fileArg === '') throw new UsageError('name the keys file with --file or KEYS_FILE')
    file = resolve(fileArg)
    if (command === 'create') await create(file, values, io)
    else if (command === 'list') show(file, values, io)
    else await change(file, command, rest[0], io)
    return 0
  } catch (err) {
    if (err instanceof UsageError) {
      io.err(`oai-reverse-proxy keys: ${err.message}\n${USAGE}\n`)
      return 2
    }
    const message = err instanceof KeysFileError ? `${file}: ${err.message}` : (err as Error).message
    io.err(`oai-reverse-proxy keys: ${message}\n`)
    return 1
  }
}
