import type { ClientKeyRecord } from './schema.js'
import type { ClientKeyEntry, ClientKeyIndex, ClientKeyLookup } from './records.js'

/*
 * What the rest of the suite sees of the client key records, wherever they live (the keys file, or Redis
 * with `KEYS_STORE=redis`): a synchronous lookup on an in-memory index (no store round trip per request)
 * and an atomic read-change-write for the CLI and the admin API.
 */

/** A change to the records: the full new list, and what to hand back to the caller. */
export interface KeyRecordChange<T> {
  records: ClientKeyRecord[]
  result: T
}

export interface OaiProxyClientKeys extends ClientKeyLookup {
  /** Where the records live. */
  readonly kind: 'file' | 'redis'
  /** Usable keys in the index now in force. */
  readonly size: number
  /** The entry of a usable key by its record id (browser tokens name theirs); null when unknown, disabled or expired. */
  byId: (id: string) => ClientKeyEntry | null
  /** Every record as stored (hashes included: never send one to a client). */
  list: () => Promise<ClientKeyRecord[]>
  /**
   * Read, change and write as one step (the file: under its lock; Redis: a transaction retried on a
   * concurrent write). `change` may throw to abort with nothing written. When it resolves, this replica's
   * index already holds the change; others pick it up within their poll.
   */
  update: <T>(change: (records: ClientKeyRecord[]) => KeyRecordChange<T>) => Promise<T>
  /** Read the store now; true when a new index is in force. */
  reload: () => Promise<boolean>
}

declare module 'fastify' {
  interface FastifyInstance {
    /** The client key records (absent without `keysFile` / `keysStore`). */
    oaiProxyClientKeys: OaiProxyClientKeys
  }
}

/** Where a store keeps its records: read them all, and change them in one atomic step. */
export interface RecordsBackend {
  list: () => Promise<ClientKeyRecord[]>
  update: <T>(change: (records: ClientKeyRecord[]) => KeyRecordChange<T>) => Promise<T>
}

/**
 * The decorator both stores expose: lookups on the index in force now (`current()`, swapped whole by a
 * reload), writes through the backend, then a reload so this replica holds its own change at once.
 */
export function clientKeysView (kind: OaiProxyClientKeys['kind'], current: () => ClientKeyIndex, backend: RecordsBackend, reload: () => Promise<boolean>): OaiProxyClientKeys {
  return {
    kind,
    lookup: (presented) => current().lookup(presented),
    byId: (id) => current().byId(id),
    get size () { return current().size },
    list: backend.list,
    update: async (change) => {
      const result = await backend.update(change)
      await reload()
      return result
    },
    reload
  }
}
