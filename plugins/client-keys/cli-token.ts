import { parseArgs } from 'node:util'
import { compileOrigins } from '../../lib/origins.js'
import { openBackend, STORE_OPTIONS, storeSpec, type RecordsBackend } from './backend.js'
import { UsageError } from './cli-redis.js'
import { buildIndex, KeysFileError } from './records.js'
import { BrowserTokenError, mintBrowserToken, MIN_SECRET_LENGTH } from './browser-tokens.js'

/*
 * `oai-reverse-proxy keys token …`: mint a browser token from the command line (for a quick test, or a
 * backend that shells out). It signs with the first of TOKEN_SECRETS, checks the record (in the keys file,
 * or in Redis with --store redis / KEYS_STORE=redis) as the proxy would, and the origin against CORS_ORIGINS when that is set. Prints the token once.
 */

export interface TokenCliIo { out: (text: string) => void, err: (text: string) => void }

const TOKEN_USAGE = `Usage: oai-reverse-proxy keys token --key <key_…> --sub <user> --origin <https://app.example>
         [--ttl <seconds, default 900, at most 86400>] [--models 'gpt-4o-mini'] [--endpoints chat.completions]
         [--file <path>] (default: $KEYS_FILE) or [--store redis] (default: $KEYS_STORE) [--redis-url <url>] (default: $REDIS_URL)
         [--json]
Signs with the first of $TOKEN_SECRETS (comma-separated, each at least ${MIN_SECRET_LENGTH} characters).`

const OPTIONS = {
  ...STORE_OPTIONS,
  key: { type: 'string' },
  sub: { type: 'string' },
  origin: { type: 'string' },
  ttl: { type: 'string' },
  models: { type: 'string' },
  endpoints: { type: 'string' },
  json: { type: 'boolean' }
} as const

const list = (v: string | undefined): string[] | undefined => v?.split(',').map((s) => s.trim()).filter((s) => s.length > 0)

async function run (argv: readonly string[], env: Record<string, string | undefined>, io: TokenCliIo, held: { store?: RecordsBackend }): Promise<number> {
  try {
    let values
    try {
      values = parseArgs({ args: [...argv], options: OPTIONS, allowPositionals: false, strict: true }).values
    } catch (err) {
      throw new UsageError((err as Error).message)
    }
    for (const name of ['key', 'sub', 'origin'] as const) if (values[name] === undefined) throw new UsageError(`--${name} is required`)
    if (values.ttl !== undefined && !/^\d{1,6}$/.test(values.ttl)) throw new UsageError('--ttl: a whole number of seconds')
    const spec = storeSpec(values, env)
    const secrets = list(env.TOKEN_SECRETS) ?? []
    if (secrets.length === 0) throw new BrowserTokenError('set TOKEN_SECRETS (the same as the proxy\'s) to sign tokens')
    // Never the value: only which entry is too short.
    const short = secrets.findIndex((s) => s.length < MIN_SECRET_LENGTH)
    if (short !== -1) throw new BrowserTokenError(`TOKEN_SECRETS: entry ${short + 1} is shorter than ${MIN_SECRET_LENGTH} characters`)
    const store = held.store = openBackend(spec)
    const records = await store.read()
    if (records === null) throw new KeysFileError('no such file')
    const cors = list(env.CORS_ORIGINS)
    const models = list(values.models)
    const endpoints = list(values.endpoints)
    const scopes = models === undefined && endpoints === undefined ? undefined : { ...(models === undefined ? {} : { models }), ...(endpoints === undefined ? {} : { endpoints }) }
    const minted = mintBrowserToken({
      key: values.key as string,
      sub: values.sub as string,
      origin: values.origin as string,
      ...(values.ttl === undefined ? {} : { ttlSeconds: Number(values.ttl) }),
      ...(scopes === undefined ? {} : { scopes })
    }, secrets, buildIndex(records).byId, cors === undefined ? {} : { originAllowed: compileOrigins(cors) })
    io.out(values.json === true ? `${JSON.stringify(minted)}\n` : `${minted.token}\n# expires ${minted.expiresAt}\n`)
    return 0
  } catch (err) {
    if (err instanceof UsageError) {
      io.err(`oai-reverse-proxy keys token: ${err.message}\n${TOKEN_USAGE}\n`)
      return 2
    }
    // A record's problem is named with its store (the file's path, or Redis' host:port); Redis' own failures already are.
    io.err(`oai-reverse-proxy keys token: ${err instanceof KeysFileError ? `${(held.store as RecordsBackend).where}: ` : ''}${(err as Error).message}\n`)
    return 1
  }
}

/** Run `keys token <argv>` (argv after `token`); resolves with the exit code: 0 done, 1 refused, 2 usage. */
export async function runTokenCli (argv: readonly string[], env: Record<string, string | undefined>, io: TokenCliIo): Promise<number> {
  const held: { store?: RecordsBackend } = {}
  const code = await run(argv, env, io, held)
  held.store?.close()
  return code
}
