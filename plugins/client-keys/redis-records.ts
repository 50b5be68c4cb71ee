import type { Redis } from 'ioredis'
import type { ClientKeyRecord } from './schema.js'
import { KeysFileError, parseKeysFile, serializeKeys } from './records.js'
import type { KeyRecordChange } from './store.js'

/*
 * Client key records in Redis (`KEYS_STORE=redis`), shared by every replica and by the CLI. The records
 * are one value in the keys file's own format (JSON Lines), so the same parser checks both and a broken
 * value is named by its line; a version counter beside it tells replicas when to reload. A write is a
 * WATCH/MULTI transaction: two writers never lose each other's change, and the previous value is kept.
 */

export const DEFAULT_PREFIX = 'oaiproxy:keys'
/** How often a transaction that lost a race is tried again before giving up. */
const MAX_ATTEMPTS = 20

export class RedisRecords {
  readonly #redis: Redis
  readonly #records: string
  readonly #version: string
  #writer: Redis | undefined
  #queue: Promise<unknown> = Promise.resolve()

  constructor (redis: Redis, prefix = DEFAULT_PREFIX) {
    this.#redis = redis
    this.#records = `${prefix}:records`
    this.#version = `${prefix}:version`
  }

  /** The version counter (0 before the first write): cheap to poll. */
  async version (): Promise<number> {
    return Number(await this.#redis.get(this.#version) ?? 0)
  }

  /** The records and the version they belong to, read together. Throws `KeysFileError` naming a bad line. */
  async read (): Promise<{ version: number, records: ClientKeyRecord[] }> {
    const [[versionErr, version], [textErr, text]] = await this.#redis.multi().get(this.#version).get(this.#records).exec() as Array<[Error | null, string | null]> as [[Error | null, string | null], [Error | null, string | null]]
    // A key of another type answers an error inside the transaction, not a rejection: never read it as "no keys".
    const failed = versionErr ?? textErr
    if (failed !== null) throw failed
    return { version: Number(version ?? 0), records: parseKeysFile(text ?? '') }
  }

  /**
   * Read, change, write. Transactions need a connection of their own (WATCH is per connection), and one
   * at a time on it; a replica's or the CLI's concurrent write makes EXEC fail and the change is re-run
   * on the new records. A value that does not parse is refused, never overwritten.
   */
  async update<T> (change: (records: ClientKeyRecord[]) => KeyRecordChange<T>): Promise<T> {
    const run = this.#queue.then(() => this.#transact(change))
    this.#queue = run.catch(() => {})
    return await run
  }

  async #transact<T> (change: (records: ClientKeyRecord[]) => KeyRecordChange<T>): Promise<T> {
    // The suite's client neither connects on its own nor queues (lazyConnect, no offline queue): the writer
    // must do both, or its first WATCH fails before the connection is up.
    this.#writer ??= this.#redis.duplicate({ lazyConnect: false, enableOfflineQueue: true })
    const w = this.#writer
    for (let attempt = 0; attempt < MAX_ATTEMPTS; attempt++) {
      await w.watch(this.#records)
      let outcome: KeyRecordChange<T>
      try {
        const text = await w.get(this.#records)
        outcome = change(parseKeysFile(text ?? ''))
        const done = await w.multi().set(`${this.#records}:previous`, text ?? '').set(this.#records, serializeKeys(outcome.records)).incr(this.#version).exec()
        if (done !== null) return outcome.result
      } catch (err) {
        await w.unwatch()
        throw err
      }
      // Lost to another writer: wait a little, at random, so two busy writers do not keep colliding in step.
      await new Promise((resolve) => setTimeout(resolve, Math.random() * 4 * (attempt + 1)))
    }
    throw new KeysFileError('the key records kept changing under this write; try again')
  }

  /** Close the writer connection (the reader is the caller's). */
  close (): void {
    this.#writer?.disconnect()
  }
}
