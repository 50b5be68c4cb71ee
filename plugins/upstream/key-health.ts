import fp from 'fastify-plugin'
import type { Redis } from 'ioredis'
import type { FastifyPluginAsync } from 'fastify'
import { checkKey } from './key-check.js'
import { KeyStateSync } from './key-state-sync.js'

export interface KeyHealthOptions {
  /** How often every upstream key is checked (`KEY_HEALTH_INTERVAL_MS`), also once at start-up. 0: never. */
  intervalMs: number
  /** Longest wait for one check. Default 10 s. */
  timeoutMs?: number
  /** Share key states (out of rotation, resting) with the other replicas through this Redis. */
  redis?: Redis | undefined
  /** How often the shared states are read. Default 2000 ms. */
  syncMs?: number
  userAgent: string
}

/**
 * Key health (plugins/upstream/key-check.ts) on a timer, and key state shared through Redis (plugins/upstream/key-state-sync.ts):
 * one replica learning that a key is out of quota takes it out everywhere within `syncMs`. The checks run
 * one key at a time, after the server is ready, and never hold start-up or a request.
 */
const keyHealth: FastifyPluginAsync<KeyHealthOptions> = async (app, opts) => {
  const keys = app.oaiProxyKeys
  const upstream = app.oaiProxyUpstream
  const sync = opts.redis === undefined ? undefined : new KeyStateSync(keys.pool, opts.redis, app.log)
  if (sync !== undefined) await sync.start(opts.syncMs ?? 2000)

  let timer: NodeJS.Timeout | undefined
  let round: Promise<void> = Promise.resolve()
  const closing = new AbortController()
  const checkAll = async (): Promise<void> => {
    for (const k of keys.pool.keys) {
      if (closing.signal.aborted) return
      await checkKey(upstream, keys, k, app.log, { timeoutMs: opts.timeoutMs ?? 10_000, userAgent: opts.userAgent, signal: closing.signal })
    }
  }
  if (opts.intervalMs > 0) {
    app.addHook('onReady', async () => {
      round = checkAll()
      timer = setInterval(() => { round = round.then(checkAll) }, opts.intervalMs)
      timer.unref()
    })
  }
  app.addHook('preClose', async () => {
    closing.abort()
    clearInterval(timer)
    await round
    await sync?.stop()
  })
}

export default fp(keyHealth, { name: 'oai-proxy-key-health', fastify: '5.x', dependencies: ['oai-proxy-key-injection', 'oai-proxy-upstream'] })
