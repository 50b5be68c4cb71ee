import { existsSync } from 'node:fs'
import { MemoryQuotas, RedisQuotas, type QuotaUsage } from './quota-store.js'
import type { ClientKeyRecord } from './schema.js'
import type { RecordsBackend, StoreSpec } from './backend.js'
import { RedisConnection } from './cli-redis.js'
import { KeyNotFoundError } from './operations.js'
import { KeysFileError } from './records.js'
import { readUsageFile } from './usage-file.js'

/*
 * `oai-reverse-proxy keys usage [<id>]`: each key's quotas beside what it has used in the current UTC day
 * and month. The counts are where the proxy keeps them: in Redis when it has one (KEYS_STORE=redis, or
 * REDIS_URL), else in `<keys file>.usage.json`, which a running proxy rewrites every 5 s, so it says so.
 * Shows names, ids, quotas and counts: never a hash or a secret.
 */

export interface UsageIo { out: (text: string) => void }

/** Where the counts came from, said beside them. */
type Source = { kind: 'redis', at: string } | { kind: 'file', path: string, exists: boolean, writtenEverySeconds: 5 }

interface Counts { source: Source, usage: (id: string) => Promise<QuotaUsage> }

/** Open the counts; `closers` collects what the caller must close. */
async function counts (backend: RecordsBackend, spec: StoreSpec, now: number, closers: Array<() => void>): Promise<Counts> {
  const redisUrl = spec.kind === 'redis' ? undefined : spec.redisUrl
  // The records' own connection when they are in Redis; else one of its own, closed by the caller.
  const redis = backend.redis ?? (redisUrl === undefined ? undefined : new RedisConnection(redisUrl))
  if (redis !== undefined) {
    if (redis !== backend.redis) closers.push(() => redis.close())
    return { source: { kind: 'redis', at: redis.address }, usage: async (id) => await redis.run(async (client) => await new RedisQuotas(client).usage(id, now)) }
  }
  // The proxy without Redis names its usage file after its keys file (app.ts).
  const path = `${(spec as { file: string }).file}.usage.json`
  const quotas = new MemoryQuotas()
  try {
    quotas.restore(await readUsageFile(path))
  } catch (err) {
    // Not the keys file's problem: reported under the usage file's own name.
    throw new Error(`${path}: ${err instanceof SyntaxError ? 'not valid JSON' : (err as Error).message}`)
  }
  return { source: { kind: 'file', path, exists: existsSync(path), writtenEverySeconds: 5 }, usage: async (id) => quotas.usage(id, now) }
}

const QUOTAS = ['tokensPerDay', 'tokensPerMonth', 'requestsPerDay'] as const

/** The record's quotas, null where it has none. */
const quotasOf = (r: ClientKeyRecord) => Object.fromEntries(QUOTAS.map((q) => [q, r.limits?.[q] ?? null])) as Record<typeof QUOTAS[number], number | null>

const of = (used: number, unit: string, quota: number | null, per: string) => `${used} ${unit}${quota === null ? ' (no quota)' : ` of ${quota} a ${per}`}`

function header (source: Source, first: QuotaUsage): string {
  const from = source.kind === 'redis'
    ? `Counts from Redis at ${source.at}.`
    : `Counts from ${source.path}, which a running proxy writes every ${source.writtenEverySeconds} s (so they may be up to ${source.writtenEverySeconds} s old)${source.exists ? '' : '; it does not exist yet: nothing counted'}.`
  return `${from}\nUTC day ${first.day.start.slice(0, 10)} resets ${first.day.resetAt}; month ${first.month.start.slice(0, 7)} resets ${first.month.resetAt}.\n`
}

/** Run `usage`; throws `KeyNotFoundError` for an unknown id, `KeysFileError` for a missing keys file. */
export async function showUsage (backend: RecordsBackend, spec: StoreSpec, id: string | undefined, json: boolean, io: UsageIo): Promise<void> {
  const records = await backend.read()
  if (records === null) throw new KeysFileError('no such file (`keys create` makes it)')
  const chosen = id === undefined ? records : records.filter((r) => r.id === id)
  if (id !== undefined && chosen.length === 0) throw new KeyNotFoundError(id)
  const closers: Array<() => void> = []
  try {
    const c = await counts(backend, spec, Date.now(), closers)
    const rows = await Promise.all(chosen.map(async (r) => ({ id: r.id, name: r.name, disabled: r.disabled, quotas: quotasOf(r), ...await c.usage(r.id) })))
    if (json) {
      io.out(`${JSON.stringify({ source: c.source, keys: rows })}\n`)
      return
    }
    if (rows.length === 0) {
      io.out('No keys.\n')
      return
    }
    io.out(header(c.source, rows[0] as QuotaUsage))
    for (const r of rows) {
      io.out(`${r.id}  ${r.name}${r.disabled ? '  (disabled)' : ''}\n` +
        `  today:      ${of(r.day.tokens, 'tokens', r.quotas.tokensPerDay, 'day')}, ${of(r.day.requests, 'requests', r.quotas.requestsPerDay, 'day')}\n` +
        `  this month: ${of(r.month.tokens, 'tokens', r.quotas.tokensPerMonth, 'month')}\n`)
    }
  } finally {
    for (const close of closers) close()
  }
}
