import { resolve } from 'node:path'
import type { ClientKeyRecord } from './schema.js'
import { RedisConnection, UsageError } from './cli-redis.js'
import { readKeysFile, updateKeysFile } from './file-io.js'
import { DEFAULT_PREFIX, RedisRecords } from './redis-records.js'
import type { KeyRecordChange } from './store.js'

/*
 * Where the CLI's records live: the keys file (the default) or Redis (`--store redis` / KEYS_STORE=redis,
 * the proxy's own store: the same value and prefix). Each command is written once against this; the
 * file and Redis differ only here.
 */

/** The flags that choose the store, in every `keys` command's parseArgs options. */
export const STORE_OPTIONS = {
  file: { type: 'string' },
  store: { type: 'string' },
  'redis-url': { type: 'string' }
} as const

/** Where to look, read from the command line and the environment (flags win). */
export type StoreSpec = { kind: 'file', file: string, redisUrl?: string | undefined } | { kind: 'redis', redisUrl: string }

const given = (v: string | undefined): string | undefined => (v === undefined || v === '' ? undefined : v)

/** Throws `UsageError` when the flags do not say where the records are. Connects to nothing. */
export function storeSpec (values: { file?: string | undefined, store?: string | undefined, 'redis-url'?: string | undefined }, env: Record<string, string | undefined>): StoreSpec {
  const store = given(values.store) ?? given(env.KEYS_STORE) ?? 'file'
  if (store !== 'file' && store !== 'redis') throw new UsageError('--store / KEYS_STORE: give file or redis')
  const redisUrl = given(values['redis-url']) ?? given(env.REDIS_URL)
  if (store === 'redis') {
    if (redisUrl === undefined) throw new UsageError('--store redis: give the Redis URL with --redis-url or REDIS_URL')
    // The proxy refuses both at once too; a file named beside Redis would be silently ignored.
    if (values.file !== undefined) throw new UsageError('--file: the records are in Redis (--store redis / KEYS_STORE=redis); give one or the other')
    return { kind: 'redis', redisUrl }
  }
  const file = given(values.file) ?? given(env.KEYS_FILE)
  if (file === undefined) throw new UsageError('name the keys file with --file or KEYS_FILE (or use --store redis)')
  return { kind: 'file', file: resolve(file), redisUrl }
}

export interface RecordsBackend {
  /** Where the records are, for messages: the file's path, or Redis' host:port and key prefix (never a password). */
  readonly where: string
  /** The Redis connection, when the records are there (`keys usage` reads its counters over it). */
  readonly redis?: RedisConnection
  /** Every record; null when the file does not exist (Redis: an empty store is simply no records). */
  read: () => Promise<ClientKeyRecord[] | null>
  /** Read, change, write as one step; a missing file counts as empty only with `create`. */
  update: <T>(change: (records: ClientKeyRecord[]) => KeyRecordChange<T>, create?: boolean) => Promise<T>
  /** Release what was opened, so the process exits. */
  close: () => void
}

function fileBackend (file: string): RecordsBackend {
  return {
    where: file,
    read: async () => readKeysFile(file),
    update: async (change, create = false) => await updateKeysFile(file, change, create),
    close: () => {}
  }
}

function redisBackend (url: string, prefix = DEFAULT_PREFIX): RecordsBackend {
  const redis = new RedisConnection(url)
  let records: RedisRecords | undefined
  const store = (client: ConstructorParameters<typeof RedisRecords>[0]) => (records ??= new RedisRecords(client, prefix))
  return {
    where: `Redis at ${redis.address} (${prefix})`,
    redis,
    read: async () => await redis.run(async (client) => (await store(client).read()).records),
    update: async (change) => await redis.run(async (client) => await store(client).update(change)),
    close: () => {
      records?.close()
      redis.close()
    }
  }
}

/** The store a spec names; nothing is opened until a command reads or writes. */
export function openBackend (spec: StoreSpec): RecordsBackend {
  return spec.kind === 'redis' ? redisBackend(spec.redisUrl) : fileBackend(spec.file)
}
