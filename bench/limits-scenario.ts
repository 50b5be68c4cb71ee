import { spawn, spawnSync, type ChildProcess } from 'node:child_process'
import { randomBytes } from 'node:crypto'
import { connect, createServer } from 'node:net'
import { startChild, type Child } from './children.js'
import { newPool, newTally, runFor, type Target, type Tally } from './load.js'
import { fmt, round, summarize, table } from './stats.js'

/*
 * What rate limiting costs: the same small chat completion at c=64 through three proxies (limits off;
 * requests + tokens + concurrency in memory; the same in a real redis-server), alternating in rounds
 * against one fake upstream. Limits are set high enough that nothing is refused: this measures the
 * bookkeeping, not the refusals.
 */

const SETTINGS = { concurrency: 64, rounds: 3, ms: 2000 }
const HIGH = { requestsPerWindow: 1e9, tokensPerMinute: 1e12, maxConcurrent: 1e6, failuresPerMinute: 1e9 }
const body = Buffer.from(JSON.stringify({ model: 'gpt-4o-mini', messages: [{ role: 'user', content: 'Say hello to the benchmark.' }] }))

export interface LimitsSide { rps: number, p50: number, p99: number, errors: Record<string, number> }
export interface LimitsResult { concurrency: number, off: LimitsSide, memory: LimitsSide, redis: LimitsSide | null, memoryRatio: number, redisRatio: number | null }

async function freePort (): Promise<number> {
  return new Promise((resolve) => {
    const s = createServer().listen(0, '127.0.0.1', () => {
      const { port } = s.address() as { port: number }
      s.close(() => resolve(port))
    })
  })
}

/** A throwaway redis-server on loopback, or null when the binary is not installed. */
async function startRedis (): Promise<{ url: string, proc: ChildProcess } | null> {
  if (spawnSync('redis-server', ['--version']).status !== 0) return null
  const port = await freePort()
  const proc = spawn('redis-server', ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no'], { stdio: 'ignore' })
  for (let i = 0; i < 100; i++) {
    const up = await new Promise<boolean>((resolve) => {
      const s = connect(port, '127.0.0.1', () => { s.destroy(); resolve(true) })
      s.on('error', () => resolve(false))
    })
    if (up) return { url: `redis://127.0.0.1:${port}`, proc }
    await new Promise((resolve) => setTimeout(resolve, 50))
  }
  proc.kill('SIGKILL')
  return null
}

const side = (t: Tally): LimitsSide => {
  const s = summarize(t.latencies)
  return { rps: round(t.ok / (t.elapsedMs / 1000)), p50: round(s.p50), p99: round(s.p99), errors: t.errors }
}

export async function runLimitsScenario (upstreamUrl: string, log: (msg: string) => void = () => {}): Promise<LimitsResult> {
  const proxyKey = `pk-bench-${randomBytes(16).toString('hex')}`
  const redis = await startRedis()
  if (redis === null) log('rate limits: redis-server not installed, skipping the Redis row')
  const children: Child[] = []
  const start = async (name: string, options: Record<string, unknown>) => {
    const c = await startChild(name, './proxy-child.js', { BENCH_UPSTREAM_URL: upstreamUrl, BENCH_PROXY_KEY: proxyKey, BENCH_PROXY_OPTIONS: JSON.stringify(options) })
    children.push(c)
    return c
  }
  try {
    const proxies = {
      off: await start('limits-off', { rateLimit: { failuresPerMinute: 0 } }),
      memory: await start('limits-memory', { rateLimit: HIGH }),
      ...(redis === null ? {} : { redis: await start('limits-redis', { rateLimit: HIGH, redisUrl: redis.url }) })
    }
    const headers = { authorization: `Bearer ${proxyKey}`, 'content-type': 'application/json' }
    const names = Object.keys(proxies) as Array<keyof typeof proxies>
    const targets = Object.fromEntries(names.map((n) => [n, { name: 'proxy', origin: (proxies[n] as Child).url, headers, pool: newPool((proxies[n] as Child).url, SETTINGS.concurrency) } satisfies Target])) as Record<string, Target>
    const tallies = Object.fromEntries(names.map((n) => [n, newTally()])) as Record<string, Tally>
    for (const n of names) await runFor(targets[n] as Target, body, 16, 500, newTally()) // warm-up
    log(`rate limits: off / memory / redis at c=${SETTINGS.concurrency}, ${SETTINGS.rounds} x ${SETTINGS.ms} ms each`)
    for (let r = 0; r < SETTINGS.rounds; r++) {
      const order = r % 2 === 0 ? names : [...names].reverse()
      for (const n of order) await runFor(targets[n] as Target, body, SETTINGS.concurrency, SETTINGS.ms, tallies[n] as Tally)
    }
    await Promise.all(Object.values(targets).map((t) => t.pool.close()))
    const off = side(tallies.off as Tally)
    const memory = side(tallies.memory as Tally)
    const redisSide = tallies.redis === undefined ? null : side(tallies.redis)
    return { concurrency: SETTINGS.concurrency, off, memory, redis: redisSide, memoryRatio: round(memory.rps / off.rps), redisRatio: redisSide === null ? null : round(redisSide.rps / off.rps) }
  } finally {
    await Promise.all(children.map((c) => c.stop()))
    redis?.proc.kill('SIGKILL')
  }
}

export function limitsTable (r: LimitsResult): string {
  const row = (name: string, s: LimitsSide | null, ratio: number | null) => s === null ? [name, 'n/a', '', '', ''] : [name, fmt(s.rps), ratio === null ? '1x' : `${fmt(ratio)}x`, fmt(s.p50), fmt(s.p99)]
  return table([
    [`rate limits, c=${r.concurrency}`, 'req/s', 'vs off', 'p50 ms', 'p99 ms'],
    row('off', r.off, null),
    row('requests+tokens+concurrency, memory', r.memory, r.memoryRatio),
    row('requests+tokens+concurrency, Redis', r.redis, r.redisRatio)
  ])
}
