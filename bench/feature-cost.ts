import { randomBytes } from 'node:crypto'
import { startChild, type Child } from './children.js'
import { ALL_FEATURES } from './features.js'
import { chatBody, newPool, newTally, runFor } from './load.js'
import { machine } from './machine.js'
import { inRounds, type Rounds } from './rounds.js'
import type { Side } from './sse-phase.js'
import { fmt, markdown, median, signed, sumErrors } from './stats.js'

/*
 * `npm run bench:features [rounds=5] [ms=2000]`: what each feature of the every-feature-on target costs on
 * its own. Default options, then default options plus one feature at a time, then all of them, each in a
 * proxy child of its own against the same fake upstream; 1 KB chat completions at c=64, the targets taking
 * turns in rounds (the order rotating each round). Reports the proxy's CPU per request, median over rounds,
 * and its difference from defaults: where the every-feature-on target's extra cost comes from.
 */

const { rateLimit, filter, policy, outputFilter } = ALL_FEATURES
const CONFIGS: Record<string, object> = {
  defaults: {},
  'requests per window': { rateLimit: { requestsPerWindow: rateLimit.requestsPerWindow } },
  'failed-auth limit': { rateLimit: { failuresPerMinute: rateLimit.failuresPerMinute } },
  'tokens per minute': { rateLimit: { tokensPerMinute: rateLimit.tokensPerMinute } },
  concurrency: { rateLimit: { maxConcurrent: rateLimit.maxConcurrent } },
  '50 filter rules': { filter: { phrases: filter.phrases, patterns: filter.patterns } },
  'CJK script rule': { filter: { scripts: filter.scripts } },
  'model allowlist + output cap': { policy },
  'output guardrail': { outputFilter },
  all: ALL_FEATURES
}

async function main (): Promise<void> {
  const rounds = Number(process.argv[2] ?? 5)
  const ms = Number(process.argv[3] ?? 2000)
  const m = machine()
  process.stdout.write(`feature cost, c=64 1 KB, ${rounds} rounds x ${ms} ms; node ${m.node}, ${m.cpus} x ${m.cpuModel}, load ${m.loadAvg.join(' / ')}\n`)
  const fake = await startChild('fake', './fake-child.js', { BENCH_CHUNK_DELAY_MS: '25' })
  const key = `pk-bench-${randomBytes(16).toString('hex')}`
  const sides: Array<Side & { child: Child }> = []
  try {
    for (const [name, opts] of Object.entries(CONFIGS)) {
      const child = await startChild(name, './proxy-child.js', { BENCH_UPSTREAM_URL: fake.url, BENCH_PROXY_KEY: key, BENCH_PROXY_OPTIONS: JSON.stringify(opts) })
      sides.push({ name, child, target: { name, origin: child.url, headers: { 'content-type': 'application/json', authorization: `Bearer ${key}` }, pool: newPool(child.url, 64) } })
    }
    const body = chatBody(1024)
    for (const s of sides) await runFor(s.target, body, 16, 1500, newTally())
    const turns = await inRounds(sides, rounds, (s, tally) => runFor(s.target, body, 64, ms, tally))
    const cpu = (name: string): number[] => (turns.get(name) as Rounds).cpuPerReq
    const base = median(cpu('defaults'))
    process.stdout.write('\n' + markdown([
      ['configuration', 'CPU µs/req (median)', 'vs defaults', 'per round', 'errors'],
      ...sides.map((s) => [s.name, fmt(median(cpu(s.name))), s.name === 'defaults' ? '-' : signed(median(cpu(s.name)) - base), cpu(s.name).map(fmt).join(' '), String(sumErrors((turns.get(s.name) as Rounds).tally.errors))])
    ]) + '\n')
  } finally {
    for (const s of sides) {
      await s.target.pool.destroy()
      await s.child.stop()
    }
    await fake.stop()
  }
}

await main()
