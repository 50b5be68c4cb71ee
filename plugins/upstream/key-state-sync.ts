import type { FastifyBaseLogger } from 'fastify'
import type { Redis } from 'ioredis'
import type { KeyPool, KeyState } from './key-pool.js'

/*
 * Upstream key state shared by replicas through Redis: one hash, key id -> { disabled, coolUntil, at }.
 * A replica that learns something about a key (upstream said it is revoked, out of quota, rate limited,
 * or a health check found it working again) writes it; every replica reads the hash every `pollMs` and
 * applies what is newer than what it has. Only the key's id (a hash prefix) is stored, never the key.
 * Redis failures are logged once per outage: each replica then goes on with what it knows itself.
 */

export const KEY_STATE_HASH = 'oaiproxy:upstream-keys'

interface Shared extends KeyState { at: number }

const parse = (text: string): Shared | null => {
  try {
    const v = JSON.parse(text) as Partial<Shared>
    const disabled = v.disabled === 'invalid_api_key' || v.disabled === 'insufficient_quota' ? v.disabled : null
    return typeof v.at === 'number' && typeof v.coolUntil === 'number' ? { disabled, coolUntil: v.coolUntil, at: v.at } : null
  } catch {
    return null
  }
}

export class KeyStateSync {
  readonly #pool: KeyPool
  readonly #redis: Redis
  readonly #log: FastifyBaseLogger
  readonly #seen = new Map<string, number>()
  #timer: NodeJS.Timeout | undefined
  #failing = false
  #polling: Promise<void> = Promise.resolve()

  constructor (pool: KeyPool, redis: Redis, log: FastifyBaseLogger) {
    this.#pool = pool
    this.#redis = redis
    this.#log = log
  }

  /** Publish local changes and start reading the others'. Resolves after the first read. */
  async start (pollMs: number): Promise<void> {
    this.#pool.onChange = (id, state) => {
      const at = Date.now()
      this.#seen.set(id, at)
      this.#redis.hset(KEY_STATE_HASH, id, JSON.stringify({ ...state, at })).then(() => this.#ok(), (err: unknown) => this.#failed(err))
    }
    await this.poll()
    this.#timer = setInterval(() => { this.#polling = this.poll() }, pollMs)
    this.#timer.unref()
  }

  /** Read the hash and apply every state newer than this replica's own. */
  async poll (): Promise<void> {
    let all: Record<string, string>
    try {
      all = await this.#redis.hgetall(KEY_STATE_HASH)
    } catch (err) {
      this.#failed(err)
      return
    }
    this.#ok()
    for (const k of this.#pool.keys) {
      const text = all[k.id]
      const shared = text === undefined ? null : parse(text)
      if (shared === null || shared.at <= (this.#seen.get(k.id) ?? 0)) continue
      this.#seen.set(k.id, shared.at)
      if (shared.disabled !== k.disabled) this.#log.info({ key: k.id, state: shared.disabled ?? 'active', by: 'another replica' }, 'oai-proxy: upstream key state changed')
      this.#pool.apply(k.id, shared)
    }
  }

  async stop (): Promise<void> {
    clearInterval(this.#timer)
    this.#pool.onChange = null
    await this.#polling
  }

  #ok (): void {
    if (this.#failing) this.#log.info('oai-proxy: upstream key state shared through redis again')
    this.#failing = false
  }

  #failed (err: unknown): void {
    if (!this.#failing) this.#log.warn({ why: (err as Error).message }, 'oai-proxy: upstream key state cannot be shared (redis); each replica keeps its own')
    this.#failing = true
  }
}
