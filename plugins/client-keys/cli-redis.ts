import { Redis } from 'ioredis'
import { KeysFileError } from './records.js'
import { KeyNotFoundError } from './operations.js'

/*
 * The CLI's Redis connection (`--store redis`, and `keys usage` with a Redis URL). A command line must
 * end, so: short timeouts, the first connection error is final (the caller closes), and every failure turned into one message that names the
 * server's host:port and never the URL itself (it may hold a password).
 */

/** The command line is wrong: exit 2 and the usage. Shared by `keys` and `keys token`. */
export class UsageError extends Error {}

/** Redis could not be used: exit 1. The message names host:port, never a password. */
class RedisUnavailableError extends Error {}

/** host:port of a redis:// URL; a URL we cannot read is a command-line error, and its text is not echoed. */
export function redisAddress (url: string): string {
  let u: URL | undefined
  try {
    u = new URL(url)
  } catch {}
  if (u === undefined || (u.protocol !== 'redis:' && u.protocol !== 'rediss:')) throw new UsageError('--redis-url / REDIS_URL: give redis://[:password@]host[:port][/db] (or rediss://)')
  return `${u.hostname === '' ? 'localhost' : u.hostname}:${u.port === '' ? '6379' : u.port}`
}

/** What a CLI change on the records can throw besides Redis (a broken value, an unknown id): reported as it is. */
const isOurs = (err: unknown) => err instanceof KeysFileError || err instanceof KeyNotFoundError

/** How long connecting (and the first answer) may take. */
const READY_MS = 3000

export class RedisConnection {
  readonly address: string
  readonly #url: string
  readonly #password: string
  #client: Promise<Redis> | undefined
  #redis: Redis | undefined

  constructor (url: string) {
    this.address = redisAddress(url)
    this.#url = url
    const u = new URL(url)
    this.#password = decodeURIComponent(u.password)
  }

  /** A message from Redis or ioredis, with the password blotted out should it ever be quoted. */
  #clean (message: string): string {
    return this.#password === '' ? message : message.split(this.#password).join('***')
  }

  /** Connected once, on first use: a command refused before it needs Redis never waits on it. */
  async #connect (): Promise<Redis> {
    // disconnectTimeout: how long a closed connection waits for the server to agree before it is cut; a
    // server that never answers would otherwise hold the process open for 2 s more.
    const redis = new Redis(this.#url, { lazyConnect: true, connectTimeout: 2000, commandTimeout: READY_MS, maxRetriesPerRequest: 1, enableOfflineQueue: true, disconnectTimeout: 200 })
    this.#redis = redis
    // Errors after this one fail their command, where they are reported; unlistened, ioredis would print them.
    redis.on('error', () => {})
    // ioredis rejects connect() with a bare "Connection is closed."; the reason is the error event.
    // connectTimeout covers the TCP connect only: a server that accepts and never answers would hang us.
    let timer: NodeJS.Timeout | undefined
    const failed = await new Promise<NodeJS.ErrnoException | undefined>((resolve) => {
      timer = setTimeout(() => resolve(new Error(`no answer within ${READY_MS / 1000} s`)), READY_MS)
      redis.once('ready', () => resolve(undefined))
      redis.once('error', resolve)
      redis.connect().catch(() => {})
    })
    clearTimeout(timer)
    if (failed !== undefined) throw new RedisUnavailableError(`cannot reach Redis at ${this.address} (${this.#clean(failed.code ?? failed.message)})`)
    return redis
  }

  /** Run `fn` on the connection; a failure of Redis itself becomes a `RedisUnavailableError`. */
  async run<T> (fn: (redis: Redis) => Promise<T>): Promise<T> {
    this.#client ??= this.#connect()
    const redis = await this.#client
    try {
      return await fn(redis)
    } catch (err) {
      if (isOurs(err)) throw err
      throw new RedisUnavailableError(`Redis at ${this.address}: ${this.#clean((err as Error).message)}`)
    }
  }

  /** Drop the connection (if one was made), so the process can exit. */
  close (): void {
    this.#redis?.disconnect()
  }
}
