import fp from 'fastify-plugin'
import { randomBytes } from 'node:crypto'
import { readFile, rename, rm, writeFile } from 'node:fs/promises'
import { basename, dirname, join } from 'node:path'
import type { FastifyPluginAsync } from 'fastify'
import type { MemoryQuotas, QuotaSnapshot } from './quota-store.js'

export interface UsageFileOptions {
  /** Where the quota counters are kept between restarts: `<KEYS_FILE>.usage.json` by default. */
  file: string
  /** The counters (this replica's memory store). */
  quotas: MemoryQuotas
  /** How often changed counters are written. Default 5000 ms. */
  flushMs?: number
}

/** The file's shape: a version, when it was written, and the counters of the current UTC day and month. */
interface UsageFile { version: 1, saved: string, counters: QuotaSnapshot }

const isCounters = (v: unknown): v is QuotaSnapshot =>
  typeof v === 'object' && v !== null && Object.values(v).every((c) => Array.isArray(c) && c.length === 2 && c.every((n) => Number.isSafeInteger(n) && (n as number) >= 0))

/** The counters in `file`: empty when there is none; throws when it is not one of ours. */
export async function readUsageFile (file: string): Promise<QuotaSnapshot> {
  let text: string
  try {
    text = await readFile(file, 'utf8')
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return {}
    throw err
  }
  const parsed = JSON.parse(text) as Partial<UsageFile>
  if (parsed.version !== 1 || !isCounters(parsed.counters)) throw new Error('not a usage file of this version')
  return parsed.counters
}

/**
 * Usage survives a restart without Redis: the memory store's quota counters are written to a file beside
 * the keys file whenever they changed (every few seconds, and at close), atomically (temp file + rename),
 * and added back at start. A crash loses at most the last interval's counts; with `REDIS_URL` the counters
 * live in Redis and this file only covers what was counted in memory during a Redis outage.
 */
const usageFile: FastifyPluginAsync<UsageFileOptions> = async (app, opts) => {
  const { file, quotas } = opts
  try {
    quotas.restore(await readUsageFile(file))
  } catch (err) {
    // Quota counts are not worth refusing to start over; the unreadable file is kept aside, never overwritten.
    const aside = `${file}.unreadable-${Date.now()}`
    await rename(file, aside).catch(() => {})
    app.log.warn({ reason: (err as Error).message, keptAs: aside }, 'oai-proxy: usage file unreadable; quota counts start from zero')
  }
  let written = quotas.changes
  let writing: Promise<void> = Promise.resolve()

  const flush = async (): Promise<void> => {
    if (quotas.changes === written) return
    written = quotas.changes
    const body: UsageFile = { version: 1, saved: new Date().toISOString(), counters: quotas.snapshot(Date.now()) }
    const tmp = join(dirname(file), `.${basename(file)}.${randomBytes(4).toString('hex')}.tmp`)
    try {
      await writeFile(tmp, JSON.stringify(body), { mode: 0o600 })
      await rename(tmp, file)
    } catch (err) {
      written = -1 // try again next time
      await rm(tmp, { force: true })
      app.log.warn({ code: (err as NodeJS.ErrnoException).code }, 'oai-proxy: usage file not written')
    }
  }
  // One write at a time: a slow disk must not interleave two renames.
  const queue = () => (writing = writing.then(flush))
  const timer = setInterval(queue, opts.flushMs ?? 5000)
  timer.unref()
  app.addHook('onClose', async () => {
    clearInterval(timer)
    await queue()
  })
}

export default fp(usageFile, { name: 'oai-proxy-usage-file', fastify: '5.x' })
