import type { Redis } from 'ioredis'
import type { ClientQuotas } from './schema.js'

/*
 * Quotas over UTC calendar windows (tokens per day and per month, requests per day), in memory or in
 * Redis. Admission reserves against every quota the account has in one step, all or nothing, so
 * concurrent requests at the edge of a quota can overshoot it only by what the requests already admitted
 * end up using beyond their reservation (reserve -> settle, as the tokens-per-minute budget).
 */

/** Quotas over UTC calendar windows; an absent field is no quota (0 allows nothing). */
export type Quotas = ClientQuotas
export type QuotaName = keyof Quotas

export interface QuotaGrant {
  admitted: boolean
  /** When refused: the quota that would be exceeded, its limit, what is used of it, and when it resets (epoch ms). */
  refused?: { quota: QuotaName, limit: number, used: number, resetAt: number }
  /** Replace the tokens reserved with the real count (a refund when smaller). */
  settle: (actualTokens: number) => Promise<void>
  /** The request was not served after all (a later limit refused it): give back its tokens and its request. */
  refund: () => Promise<void>
}

/** What an account has used in the current UTC day and month (reservations in flight included). */
export interface QuotaUsage {
  day: { start: string, resetAt: string, tokens: number, requests: number }
  month: { start: string, resetAt: string, tokens: number }
}

const DAY_MS = 86_400_000

/** The UTC day and month `now` falls in: their names (counter keys) and bounds. */
export function quotaWindows (now: number) {
  // Every request of a metered key asks; the answer changes once a day.
  if (now >= last.dayStart && now < last.dayReset) return last
  const d = new Date(now)
  const y = d.getUTCFullYear()
  const m = d.getUTCMonth()
  const dayStart = Date.UTC(y, m, d.getUTCDate())
  const monthStart = Date.UTC(y, m, 1)
  last = {
    day: new Date(dayStart).toISOString().slice(0, 10),
    month: new Date(monthStart).toISOString().slice(0, 7),
    dayStart,
    dayReset: dayStart + DAY_MS,
    monthStart,
    monthReset: Date.UTC(y, m + 1, 1)
  }
  return last
}

interface Windows { day: string, month: string, dayStart: number, dayReset: number, monthStart: number, monthReset: number }
let last: Windows = { day: '', month: '', dayStart: 0, dayReset: 0, monthStart: 0, monthReset: 0 }

/** The counts a reservation is checked against, in the order they are checked. */
function firstRefused (quotas: Quotas, tokens: number, requests: number, used: { dayRequests: number, dayTokens: number, monthTokens: number }, w: Windows): QuotaGrant['refused'] {
  const checks: Array<[QuotaName, number, number, number]> = [
    ['requestsPerDay', used.dayRequests, requests, w.dayReset],
    ['tokensPerDay', used.dayTokens, tokens, w.dayReset],
    ['tokensPerMonth', used.monthTokens, tokens, w.monthReset]
  ]
  for (const [quota, count, cost, resetAt] of checks) {
    const limit = quotas[quota]
    // A used-up quota refuses even what costs nothing of it (a model list, a Realtime handshake), as OpenAI does.
    if (limit !== undefined && (count + cost > limit || count >= limit)) return { quota, limit, used: count, resetAt }
  }
  return undefined
}

function usageOf (w: Windows, dayTokens: number, dayRequests: number, monthTokens: number): QuotaUsage {
  const iso = (ms: number) => new Date(ms).toISOString()
  return {
    day: { start: iso(w.dayStart), resetAt: iso(w.dayReset), tokens: dayTokens, requests: dayRequests },
    month: { start: iso(w.monthStart), resetAt: iso(w.monthReset), tokens: monthTokens }
  }
}

const noop = async (): Promise<void> => {}
const refused = (why: NonNullable<QuotaGrant['refused']>): QuotaGrant => ({ admitted: false, refused: why, settle: noop, refund: noop })

interface Count { tokens: number, requests: number }

/** A snapshot for the usage file: counter name -> [tokens, requests]. */
export type QuotaSnapshot = Record<string, [number, number]>

export class MemoryQuotas {
  readonly #counts = new Map<string, Count>()
  /** Bumped on every change, so a persister knows when there is something to write. */
  changes = 0

  #count (key: string): Count {
    let c = this.#counts.get(key)
    if (c === undefined) {
      c = { tokens: 0, requests: 0 }
      this.#counts.set(key, c)
    }
    return c
  }

  #add (key: string, tokens: number, requests: number): void {
    const c = this.#count(key)
    c.tokens = Math.max(0, c.tokens + tokens)
    c.requests = Math.max(0, c.requests + requests)
    this.changes++
  }

  reserve (account: string, tokens: number, quotas: Quotas, now: number, requests = 1): QuotaGrant {
    const w = quotaWindows(now)
    const dayKey = `${account}|d|${w.day}`
    const monthKey = `${account}|m|${w.month}`
    const day = this.#counts.get(dayKey)
    const why = firstRefused(quotas, tokens, requests, { dayRequests: day?.requests ?? 0, dayTokens: day?.tokens ?? 0, monthTokens: this.#counts.get(monthKey)?.tokens ?? 0 }, w)
    if (why !== undefined) return refused(why)
    this.#add(dayKey, tokens, requests)
    this.#add(monthKey, tokens, 0)
    let open = true
    const back = (dt: number, dr: number) => {
      if (!open) return
      open = false
      this.#add(dayKey, dt, dr)
      this.#add(monthKey, dt, 0)
    }
    return { admitted: true, settle: async (actual) => back(actual - tokens, 0), refund: async () => back(-tokens, -requests) }
  }

  usage (account: string, now: number): QuotaUsage {
    const w = quotaWindows(now)
    const day = this.#counts.get(`${account}|d|${w.day}`)
    return usageOf(w, day?.tokens ?? 0, day?.requests ?? 0, this.#counts.get(`${account}|m|${w.month}`)?.tokens ?? 0)
  }

  /** The counters of the current day and month (older ones are of no use to a quota and are dropped). */
  snapshot (now: number): QuotaSnapshot {
    const w = quotaWindows(now)
    const out: QuotaSnapshot = {}
    for (const [key, c] of this.#counts) {
      if (key.endsWith(`|d|${w.day}`) || key.endsWith(`|m|${w.month}`)) out[key] = [c.tokens, c.requests]
      else this.#counts.delete(key)
    }
    return out
  }

  /** Add a snapshot's counters (read at start-up) to these. */
  restore (snapshot: QuotaSnapshot): void {
    for (const [key, [tokens, requests]] of Object.entries(snapshot)) this.#add(key, tokens, requests)
  }
}

/*
 * Redis: a hash per account and window (`t` tokens, `r` requests), under one hash tag per account so a
 * cluster keeps both keys of a reservation on one slot. The check and the charge are one script.
 */
const RESERVE = `
local dr = tonumber(redis.call('HGET', KEYS[1], 'r') or '0')
local dt = tonumber(redis.call('HGET', KEYS[1], 't') or '0')
local mt = tonumber(redis.call('HGET', KEYS[2], 't') or '0')
local cost, n = tonumber(ARGV[1]), tonumber(ARGV[7])
local lr, ld, lm = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
if lr >= 0 and (dr + n > lr or dr >= lr) then return {0, 1, dr} end
if ld >= 0 and (dt + cost > ld or dt >= ld) then return {0, 2, dt} end
if lm >= 0 and (mt + cost > lm or mt >= lm) then return {0, 3, mt} end
redis.call('HINCRBY', KEYS[1], 'r', n)
redis.call('HINCRBY', KEYS[1], 't', cost)
redis.call('HINCRBY', KEYS[2], 't', cost)
redis.call('PEXPIRE', KEYS[1], ARGV[5])
redis.call('PEXPIRE', KEYS[2], ARGV[6])
return {1, 0, 0}`

const ADJUST = `
for i = 1, 2 do
  if redis.call('EXISTS', KEYS[i]) == 1 then
    if redis.call('HINCRBY', KEYS[i], 't', ARGV[1]) < 0 then redis.call('HSET', KEYS[i], 't', 0) end
  end
end
if redis.call('EXISTS', KEYS[1]) == 1 and redis.call('HINCRBY', KEYS[1], 'r', ARGV[2]) < 0 then redis.call('HSET', KEYS[1], 'r', 0) end
return 1`

interface QuotaRedis extends Redis {
  oaiProxyQuotaReserve: (day: string, month: string, cost: number, lr: number, ld: number, lm: number, dayTtl: number, monthTtl: number, requests: number) => Promise<[number, number, number]>
  oaiProxyQuotaAdjust: (day: string, month: string, tokens: number, requests: number) => Promise<number>
}

const QUOTA_ORDER: QuotaName[] = ['requestsPerDay', 'tokensPerDay', 'tokensPerMonth']
/** Counters are kept past their window for reporting: days for ~5 weeks, months for ~13. */
const KEEP_DAY_MS = 35 * DAY_MS
const KEEP_MONTH_MS = 400 * DAY_MS

const keysOf = (account: string, w: Windows) => [`oaiproxy:quota:{${account}}:d:${w.day}`, `oaiproxy:quota:{${account}}:m:${w.month}`] as const

export class RedisQuotas {
  readonly #redis: QuotaRedis

  constructor (redis: Redis) {
    if (typeof (redis as unknown as Partial<QuotaRedis>).oaiProxyQuotaReserve !== 'function') {
      redis.defineCommand('oaiProxyQuotaReserve', { numberOfKeys: 2, lua: RESERVE })
      redis.defineCommand('oaiProxyQuotaAdjust', { numberOfKeys: 2, lua: ADJUST })
    }
    this.#redis = redis as unknown as QuotaRedis
  }

  async reserve (account: string, tokens: number, quotas: Quotas, now: number, requests = 1): Promise<QuotaGrant> {
    const w = quotaWindows(now)
    const [day, month] = keysOf(account, w)
    const [ok, which, used] = await this.#redis.oaiProxyQuotaReserve(day, month, tokens,
      quotas.requestsPerDay ?? -1, quotas.tokensPerDay ?? -1, quotas.tokensPerMonth ?? -1, KEEP_DAY_MS, KEEP_MONTH_MS, requests)
    if (ok !== 1) {
      const quota = QUOTA_ORDER[which - 1] as QuotaName
      return refused({ quota, limit: quotas[quota] as number, used, resetAt: quota === 'tokensPerMonth' ? w.monthReset : w.dayReset })
    }
    let open = true
    const back = async (dt: number, dr: number) => {
      if (!open) return
      open = false
      await this.#redis.oaiProxyQuotaAdjust(day, month, dt, dr)
    }
    return { admitted: true, settle: (actual) => back(actual - tokens, 0), refund: () => back(-tokens, -requests) }
  }

  async usage (account: string, now: number): Promise<QuotaUsage> {
    const w = quotaWindows(now)
    const [day, month] = keysOf(account, w)
    const [[, d], [, m]] = await this.#redis.multi().hmget(day, 't', 'r').hget(month, 't').exec() as [[null, Array<string | null>], [null, string | null]]
    return usageOf(w, Number(d[0] ?? 0), Number(d[1] ?? 0), Number(m ?? 0))
  }
}
