import type { Redis } from 'ioredis'
import { MemoryQuotas, RedisQuotas, type QuotaGrant, type QuotaUsage, type Quotas } from '../client-keys/quota-store.js'

/*
 * Token-per-minute windows and concurrency slots, in memory or in Redis. Every operation returns a handle
 * bound to the store that granted it, so a settle or release after a Redis outage (or recovery) goes back
 * to where the grant was made and no slot leaks.
 */

export interface TokenGrant {
  admitted: boolean
  /** Tokens counted in the current window, including this request if admitted. */
  used: number
  limit: number
  /** Milliseconds until the window resets. */
  resetMs: number
  /** Replace the reservation with the real count (a refund when smaller). */
  settle: (actualTokens: number) => Promise<void>
}

export interface SlotGrant {
  admitted: boolean
  release: () => Promise<void>
}

export type { QuotaGrant, QuotaName, QuotaUsage, Quotas } from '../client-keys/quota-store.js'

export interface LimitStore {
  readonly kind: 'memory' | 'redis'
  reserveTokens: (client: string, tokens: number, limit: number, windowMs: number) => Promise<TokenGrant>
  acquireSlot: (client: string, slot: string, max: number, leaseMs: number) => Promise<SlotGrant>
  /** Check and reserve against every quota in one atomic step: all are charged or none. */
  reserveQuota: (account: string, tokens: number, quotas: Quotas, now: number, requests?: number) => Promise<QuotaGrant>
  quotaUsage: (account: string, now: number) => Promise<QuotaUsage>
}

const windowKey = (client: string, windowMs: number, now: number) => `oaiproxy:tpm:${client}:${Math.floor(now / windowMs)}`
const noop = async (): Promise<void> => {}

export class MemoryLimitStore implements LimitStore {
  readonly kind = 'memory' as const
  /** Quota counters; the keys file's usage file persists them (plugins/client-keys/usage-file.ts). */
  readonly quotas = new MemoryQuotas()
  readonly #windows = new Map<string, { used: number, expiresAt: number }>()
  readonly #slots = new Map<string, Set<string>>()
  readonly #now: () => number
  #nextSweep = 0

  constructor (now: () => number = Date.now) {
    this.#now = now
  }

  async reserveTokens (client: string, tokens: number, limit: number, windowMs: number): Promise<TokenGrant> {
    const now = this.#now()
    this.#sweep(now)
    const key = windowKey(client, windowMs, now)
    const w = this.#window(key, now, windowMs)
    const resetMs = windowMs - (now % windowMs)
    if (w.used + tokens > limit) return { admitted: false, used: w.used, limit, resetMs, settle: noop }
    w.used += tokens
    const settle = async (actual: number): Promise<void> => {
      const delta = actual - tokens
      const current = this.#windows.get(key)
      if (current !== undefined) current.used = Math.max(0, current.used + delta)
      else if (delta > 0) this.#charge(client, delta, windowMs)
    }
    return { admitted: true, used: w.used, limit, resetMs, settle }
  }

  /** Usage that outlived its window (a long stream) is charged to the current one. */
  #charge (client: string, tokens: number, windowMs: number): void {
    const now = this.#now()
    this.#window(windowKey(client, windowMs, now), now, windowMs).used += tokens
  }

  #window (key: string, now: number, windowMs: number): { used: number, expiresAt: number } {
    let w = this.#windows.get(key)
    if (w === undefined) {
      w = { used: 0, expiresAt: now + 2 * windowMs }
      this.#windows.set(key, w)
    }
    return w
  }

  /** Drop expired windows at most once a minute, on the way through (no timer to keep a process alive). */
  #sweep (now: number): void {
    if (now < this.#nextSweep) return
    this.#nextSweep = now + 60_000
    for (const [k, w] of this.#windows) if (w.expiresAt <= now) this.#windows.delete(k)
  }

  async reserveQuota (account: string, tokens: number, quotas: Quotas, now: number, requests = 1): Promise<QuotaGrant> {
    return this.quotas.reserve(account, tokens, quotas, now, requests)
  }

  async quotaUsage (account: string, now: number): Promise<QuotaUsage> {
    return this.quotas.usage(account, now)
  }

  async acquireSlot (client: string, slot: string, max: number): Promise<SlotGrant> {
    const held = this.#slots.get(client) ?? new Set<string>()
    if (held.size >= max) return { admitted: false, release: noop }
    held.add(slot)
    this.#slots.set(client, held)
    return {
      admitted: true,
      release: async () => {
        held.delete(slot)
        if (held.size === 0 && this.#slots.get(client) === held) this.#slots.delete(client)
      }
    }
  }
}

/* Atomic scripts: a check-and-add cannot interleave with another replica's. */
const RESERVE = `
local used = tonumber(redis.call('GET', KEYS[1]) or '0')
local cost = tonumber(ARGV[1])
if used + cost > tonumber(ARGV[2]) then return {0, used} end
used = redis.call('INCRBY', KEYS[1], cost)
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return {1, used}`

const SETTLE = `
local delta = tonumber(ARGV[1])
if redis.call('EXISTS', KEYS[1]) == 1 then
  if redis.call('INCRBY', KEYS[1], delta) < 0 then redis.call('SET', KEYS[1], 0, 'KEEPTTL') end
elseif delta > 0 then
  redis.call('INCRBY', KEYS[2], delta)
  redis.call('PEXPIRE', KEYS[2], ARGV[2])
end
return 1`

// Slots are a sorted set scored by lease expiry (Redis clock), so a crashed replica's slots expire.
const ACQUIRE = `
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[2]) then return 0 end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[3]), ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return 1`

interface ScriptedRedis extends Redis {
  oaiProxyReserve: (key: string, cost: number, limit: number, ttl: number) => Promise<[number, number]>
  oaiProxySettle: (key: string, current: string, delta: number, ttl: number) => Promise<number>
  oaiProxyAcquire: (key: string, slot: string, max: number, lease: number) => Promise<number>
}

export class RedisLimitStore implements LimitStore {
  readonly kind = 'redis' as const
  readonly #redis: ScriptedRedis
  readonly #quotas: RedisQuotas

  constructor (redis: Redis) {
    if (typeof (redis as unknown as Partial<ScriptedRedis>).oaiProxyReserve !== 'function') {
      redis.defineCommand('oaiProxyReserve', { numberOfKeys: 1, lua: RESERVE })
      redis.defineCommand('oaiProxySettle', { numberOfKeys: 2, lua: SETTLE })
      redis.defineCommand('oaiProxyAcquire', { numberOfKeys: 1, lua: ACQUIRE })
    }
    this.#redis = redis as unknown as ScriptedRedis
    this.#quotas = new RedisQuotas(redis)
  }

  reserveQuota (account: string, tokens: number, quotas: Quotas, now: number, requests = 1): Promise<QuotaGrant> {
    return this.#quotas.reserve(account, tokens, quotas, now, requests)
  }

  quotaUsage (account: string, now: number): Promise<QuotaUsage> {
    return this.#quotas.usage(account, now)
  }

  async reserveTokens (client: string, tokens: number, limit: number, windowMs: number): Promise<TokenGrant> {
    const now = Date.now()
    const key = windowKey(client, windowMs, now)
    const [ok, used] = await this.#redis.oaiProxyReserve(key, tokens, limit, 2 * windowMs)
    const resetMs = windowMs - (now % windowMs)
    const settle = async (actual: number): Promise<void> => {
      await this.#redis.oaiProxySettle(key, windowKey(client, windowMs, Date.now()), actual - tokens, 2 * windowMs)
    }
    return { admitted: ok === 1, used, limit, resetMs, settle: ok === 1 ? settle : noop }
  }

  async acquireSlot (client: string, slot: string, max: number, leaseMs: number): Promise<SlotGrant> {
    const key = `oaiproxy:slots:${client}`
    const ok = await this.#redis.oaiProxyAcquire(key, slot, max, leaseMs)
    return { admitted: ok === 1, release: ok === 1 ? async () => { await this.#redis.zrem(key, slot) } : noop }
  }
}
