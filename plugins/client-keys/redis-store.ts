import fp from 'fastify-plugin'
import type { Redis } from 'ioredis'
import type { FastifyPluginAsync } from 'fastify'
import { buildIndex, type ClientKeyIndex } from './records.js'
import { DEFAULT_PREFIX, RedisRecords } from './redis-records.js'
import { clientKeysView } from './store.js'

export interface ClientKeyRedisOptions {
  /** The suite's Redis client (the limit store's): records live beside the counters. */
  redis: Redis
  /** Key prefix. Default `oaiproxy:keys`. */
  prefix?: string
  /** How often the version counter is compared. Default 1000 ms: a revoked key is refused everywhere within about a second. */
  pollMs?: number
}

/**
 * The Redis store: every replica keeps an in-memory index (a request never waits on Redis to look a key
 * up) and polls a version counter; a change anywhere (another replica's admin API, the CLI) is loaded in
 * one swap. A value that turns unusable, or a Redis outage, keeps the last good index in force (logged
 * once). At start a corrupt value stops start-up, naming the line; an unreachable Redis does not (the
 * limit store's policy decides about outages), but until the first load no client key is accepted.
 */
const clientKeyRedis: FastifyPluginAsync<ClientKeyRedisOptions> = async (app, opts) => {
  const store = new RedisRecords(opts.redis, opts.prefix ?? DEFAULT_PREFIX)
  let index: ClientKeyIndex = buildIndex([])
  let loaded = -1
  let failing = false

  /** Load when the version moved; `strict` (start-up) lets a corrupt value throw. */
  async function load (strict = false): Promise<boolean> {
    try {
      if (await store.version() === loaded) return false
      const { version, records } = await store.read()
      index = buildIndex(records)
      loaded = version
      if (failing) app.log.info('oai-proxy: client key records readable again')
      failing = false
      app.log.info({ keys: index.size, version }, 'oai-proxy: client keys loaded from redis')
      return true
    } catch (err) {
      if (strict && (err as Error).name === 'KeysFileError') throw new Error(`oai-proxy: invalid option /keysStore (KEYS_STORE=redis): ${(err as Error).message}`)
      if (!failing) app.log.warn({ reason: (err as Error).message }, 'oai-proxy: client key records unreadable in redis; the last good keys stay in force')
      failing = true
      return false
    }
  }

  await load(true)
  let chain = Promise.resolve(false)
  const reload = (): Promise<boolean> => (chain = chain.then(() => load()))
  const poller = setInterval(reload, opts.pollMs ?? 1000)
  poller.unref()

  const keys = clientKeysView('redis', () => index, { list: async () => (await store.read()).records, update: async (change) => await store.update(change) }, reload)
  app.decorate('oaiProxyClientKeys', keys)
  app.addHook('onClose', async () => {
    clearInterval(poller)
    await chain
    store.close()
  })
}

export default fp(clientKeyRedis, { name: 'oai-proxy-client-keys-redis', fastify: '5.x' })
