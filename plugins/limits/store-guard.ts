import { createRequire } from 'node:module'
import type { FastifyBaseLogger } from 'fastify'
import type { Redis } from 'ioredis'
import type { FastifyRateLimitStoreCtor } from '@fastify/rate-limit'
import { proxyError } from '../../errors.js'
import type { LimitStore, QuotaGrant, QuotaUsage, Quotas, SlotGrant, TokenGrant } from './limit-store.js'

/*
 * What happens when Redis misbehaves is a decision (RATE_LIMIT_ON_STORE_ERROR): `open` falls back to this
 * replica's memory and logs; `closed` answers 503. Either way no request waits long: a client that is not
 * connected is skipped at once, and every command races a short timeout (a host's client may queue
 * commands while offline).
 */

export type StoreErrorPolicy = 'open' | 'closed'

export class StoreGuard {
  readonly #redis: Redis | undefined
  readonly #policy: StoreErrorPolicy
  readonly #timeoutMs: number
  readonly #log: FastifyBaseLogger
  #down = false
  #errors = 0

  constructor (redis: Redis | undefined, policy: StoreErrorPolicy, timeoutMs: number, log: FastifyBaseLogger) {
    this.#redis = redis
    this.#policy = policy
    this.#timeoutMs = timeoutMs
    this.#log = log
  }

  /** For /health: where limits live right now. */
  get state (): 'memory' | 'redis' | 'redis-unavailable' {
    if (this.#redis === undefined) return 'memory'
    return this.#down || this.#redis.status !== 'ready' ? 'redis-unavailable' : 'redis'
  }

  /** Commands that could not use Redis (failed, timed out, or Redis not connected), for the metrics. */
  get errors (): number {
    return this.#errors
  }

  async run<T> (remote: (() => Promise<T>) | undefined, local: () => Promise<T>): Promise<T> {
    if (remote === undefined || this.#redis === undefined) return local()
    if (this.#redis.status === 'ready') {
      let timer: NodeJS.Timeout | undefined
      try {
        const timeout = new Promise<never>((_resolve, reject) => {
          timer = setTimeout(() => reject(new Error(`redis command timed out after ${this.#timeoutMs} ms`)), this.#timeoutMs)
        })
        const result = await Promise.race([remote(), timeout])
        if (this.#down) this.#log.info('oai-proxy: rate-limit store reachable again')
        this.#down = false
        return result
      } catch (err) {
        this.#failed((err as Error).message)
      } finally {
        clearTimeout(timer)
      }
    } else {
      this.#failed(`redis is ${this.#redis.status}`)
    }
    if (this.#policy === 'open') return local()
    throw proxyError('RATE_LIMIT_UNAVAILABLE')
  }

  #failed (why: string): void {
    this.#errors++
    if (!this.#down) this.#log.warn({ policy: this.#policy, why }, 'oai-proxy: rate-limit store unavailable')
    this.#down = true
  }
}

/** TPM windows and concurrency slots through the guard. */
export class GuardedLimitStore {
  constructor (private readonly guard: StoreGuard, private readonly remote: LimitStore | undefined, private readonly local: LimitStore) {}

  reserveTokens (client: string, tokens: number, limit: number, windowMs: number): Promise<TokenGrant> {
    return this.guard.run(this.remote && (() => (this.remote as LimitStore).reserveTokens(client, tokens, limit, windowMs)), () => this.local.reserveTokens(client, tokens, limit, windowMs))
  }

  acquireSlot (client: string, slot: string, max: number, leaseMs: number): Promise<SlotGrant> {
    return this.guard.run(this.remote && (() => (this.remote as LimitStore).acquireSlot(client, slot, max, leaseMs)), () => this.local.acquireSlot(client, slot, max, leaseMs))
  }

  reserveQuota (account: string, tokens: number, quotas: Quotas, now: number, requests = 1): Promise<QuotaGrant> {
    return this.guard.run(this.remote && (() => (this.remote as LimitStore).reserveQuota(account, tokens, quotas, now, requests)), () => this.local.reserveQuota(account, tokens, quotas, now, requests))
  }

  quotaUsage (account: string, now: number): Promise<QuotaUsage> {
    return this.guard.run(this.remote && (() => (this.remote as LimitStore).quotaUsage(account, now)), () => this.local.quotaUsage(account, now))
  }
}

/* @fastify/rate-limit's own stores (fixed windows, Lua INCR+PEXPIRE in Redis), behind the same guard. */
// The stores call back `(null, result)` or `(error, null)`.
type Done = (err: Error | null, res: { current: number, ttl: number }) => void
interface CounterStore {
  incr: (key: string, cb: Done, timeWindow: number, max: number) => void
  read: (key: string, cb: Done, timeWindow: number, max: number) => void
  child: (params: never) => CounterStore
}
const require = createRequire(import.meta.url)
const LocalStore = require('@fastify/rate-limit/store/LocalStore') as new (continueExceeding: boolean, backoff: boolean, cache?: number) => CounterStore
const RedisStore = require('@fastify/rate-limit/store/RedisStore') as new (continueExceeding: boolean, backoff: boolean, redis: Redis, prefix: string) => CounterStore

const promised = (store: CounterStore, op: 'incr' | 'read', key: string, tw: number, max: number) =>
  new Promise<{ current: number, ttl: number }>((resolve, reject) => {
    // Copy now: LocalStore hands out its live record, which later increments would change under us.
    store[op](key, (err, res) => (err === null ? resolve({ current: res.current, ttl: res.ttl }) : reject(err)), tw, max)
  })

/** A store class for @fastify/rate-limit's `store` option: Redis when healthy, else per the policy. */
export function guardedCounterStore (guard: StoreGuard, redis: Redis | undefined): FastifyRateLimitStoreCtor {
  return class GuardedCounterStore implements CounterStore {
    readonly #local: CounterStore
    readonly #remote: CounterStore | undefined

    constructor (_params?: unknown, local?: CounterStore, remote?: CounterStore) {
      this.#local = local ?? new LocalStore(false, false, 10_000)
      this.#remote = remote ?? (redis === undefined ? undefined : new RedisStore(false, false, redis, 'oaiproxy:rl:'))
    }

    incr (key: string, cb: Done, tw: number, max: number): void { this.#op('incr', key, cb, tw, max) }
    read (key: string, cb: Done, tw: number, max: number): void { this.#op('read', key, cb, tw, max) }

    #op (op: 'incr' | 'read', key: string, cb: Done, tw: number, max: number): void {
      const remote = this.#remote
      guard.run(remote && (() => promised(remote, op, key, tw, max)), () => promised(this.#local, op, key, tw, max))
        .then((res) => cb(null, res), (err: Error) => cb(err, null as never))
    }

    child (): CounterStore {
      // Our limiters are told apart by their key prefixes, so children share the parents' maps and keys.
      return new GuardedCounterStore(undefined, this.#local, this.#remote)
    }
  }
}
