import fp from 'fastify-plugin'
import fastifyRateLimit from '@fastify/rate-limit'
import type { Redis } from 'ioredis'
import type { FastifyPluginAsync } from 'fastify'
import { MemoryLimitStore, RedisLimitStore } from './limit-store.js'
import { GuardedLimitStore, StoreGuard, guardedCounterStore, type StoreErrorPolicy } from './store-guard.js'

export interface LimitStoreOptions {
  /** A host's ioredis client to keep counters in. The host owns it: we never close it. */
  redis?: Redis | undefined
  /** A Redis URL to connect to ourselves (`REDIS_URL`). Ignored when `redis` is given. */
  redisUrl?: string | undefined
  /** What to do when Redis is unreachable: `open` = per-replica memory limits (logged), `closed` = 503. */
  onStoreError: StoreErrorPolicy
  /** Longest wait for one Redis command before the policy applies. */
  storeTimeoutMs: number
}

export interface OaiProxyLimits {
  guard: StoreGuard
  store: GuardedLimitStore
  /** This replica's memory store (the fallback under `onStoreError: 'open'`); its quota counters are persisted with a keys file. */
  memory: MemoryLimitStore
  /** The Redis client limits use, when configured (client key records may live there too). */
  redis: Redis | undefined
}

declare module 'fastify' {
  interface FastifyInstance {
    oaiProxyLimits: OaiProxyLimits
  }
}

/**
 * Where rate-limit state lives: memory by default, Redis when configured, so replicas share one set of
 * limits. Registers @fastify/rate-limit (non-global: our own hooks call its limiters) on a store that
 * goes through the same failure policy as our token and concurrency scripts.
 */
const limitStore: FastifyPluginAsync<LimitStoreOptions> = async (app, opts) => {
  let redis = opts.redis
  if (redis === undefined && opts.redisUrl !== undefined) {
    // Loaded only here: ioredis costs ~20 MB of memory that a proxy without Redis never needs.
    const { Redis } = await import('ioredis')
    // No offline queue and short timeouts: a dead Redis must fail a command at once, not hold a request.
    const own = new Redis(opts.redisUrl, { lazyConnect: true, enableOfflineQueue: false, maxRetriesPerRequest: 0, connectTimeout: 1000, commandTimeout: opts.storeTimeoutMs, retryStrategy: (n) => Math.min(n * 200, 2000) })
    own.on('error', () => {}) // reported through the guard, once per outage
    try {
      await own.connect()
    } catch {
      if (opts.onStoreError === 'closed') {
        own.disconnect()
        throw new Error('oai-proxy: REDIS_URL is unreachable and RATE_LIMIT_ON_STORE_ERROR=closed')
      }
      app.log.warn('oai-proxy: REDIS_URL is unreachable at start-up; limits are per replica until it is back')
    }
    app.addHook('onClose', async () => { own.disconnect() })
    redis = own
  }
  const guard = new StoreGuard(redis, opts.onStoreError, opts.storeTimeoutMs, app.log)
  const memory = new MemoryLimitStore()
  app.decorate('oaiProxyLimits', { guard, memory, redis, store: new GuardedLimitStore(guard, redis === undefined ? undefined : new RedisLimitStore(redis), memory) })
  await app.register(fastifyRateLimit, { global: false, store: guardedCounterStore(guard, redis), skipOnError: false })
}

export default fp(limitStore, { name: 'oai-proxy-limit-store', fastify: '5.x' })
