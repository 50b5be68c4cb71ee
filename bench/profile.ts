import { randomBytes } from 'node:crypto'
import { mkdtempSync, readdirSync, readFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { startChild } from './children.js'
import { ALL_FEATURES } from './features.js'
import { STREAM_BODY, chatBody, newPool, newTally, runFor, sseBurst, type Target } from './load.js'
import { burstSummary } from './sse-phase.js'

/*
 * `npm run bench:profile [floor|defaults|all] [bytes] [seconds] [concurrency]` (default all 262144 6 16), or
 * `npm run bench:profile [floor|defaults|all] sse [bursts] [streams]` (default 2 1000, the bench's stream
 * phase): a CPU profile of the proxy under one load, to find where the time goes before changing the
 * request path. The proxy runs with `--cpu-prof`; this
 * prints the functions with the most self time (and writes the .cpuprofile for Chrome DevTools).
 */

interface Node { id: number, callFrame: { functionName: string, url: string, lineNumber: number }, children?: number[] }
interface Profile { nodes: Node[], samples: number[], timeDeltas: number[] }

function top (profile: Profile, n: number): string[] {
  const self = new Map<number, number>()
  profile.samples.forEach((id, i) => self.set(id, (self.get(id) ?? 0) + (profile.timeDeltas[i] ?? 0)))
  const byName = new Map<string, number>()
  let total = 0
  let idle = 0
  for (const node of profile.nodes) {
    const us = self.get(node.id) ?? 0
    total += us
    const f = node.callFrame
    if (f.functionName === '(idle)') { idle += us; continue }
    const file = f.url.replace(/^.*\/(node_modules\/|dist\/)/, '$1')
    const name = `${f.functionName || '(anonymous)'} ${file}:${f.lineNumber + 1}`
    byName.set(name, (byName.get(name) ?? 0) + us)
  }
  const busy = total - idle
  return [`busy ${(busy / 1000).toFixed(0)} ms of ${(total / 1000).toFixed(0)} ms sampled`,
    ...[...byName].sort((a, b) => b[1] - a[1]).slice(0, n).map(([name, us]) => `${(100 * us / busy).toFixed(1).padStart(5)}%  ${name}`)]
}

/** The load to profile under: bodies of `bytes` at a concurrency for some seconds, or bursts of SSE streams. */
type Load = { kind: 'requests', bytes: number, seconds: number, concurrency: number } | { kind: 'sse', bursts: number, streams: number }

function loadOf (args: readonly string[]): Load {
  const [what = '262144', a, b] = args
  if (what === 'sse') return { kind: 'sse', bursts: Number(a ?? 2), streams: Number(b ?? 1000) }
  return { kind: 'requests', bytes: Number(what), seconds: Number(a ?? 6), concurrency: Number(b ?? 16) }
}

async function main (): Promise<void> {
  const [mode = 'all', ...rest] = process.argv.slice(2)
  const fake = await startChild('fake', './fake-child.js', { BENCH_CHUNK_DELAY_MS: '25' })
  try {
    await profileProxy(fake.url, mode, loadOf(rest))
  } finally {
    await fake.stop()
  }
}

async function profileProxy (upstreamUrl: string, mode: string, load: Load): Promise<void> {
  const dir = mkdtempSync(join(tmpdir(), 'oai-proxy-prof-'))
  const key = `pk-bench-${randomBytes(16).toString('hex')}`
  const proxy = await startChild('proxy', mode === 'floor' ? './floor-child.js' : './proxy-child.js', {
    BENCH_UPSTREAM_URL: upstreamUrl,
    BENCH_PROXY_KEY: key,
    BENCH_PROXY_OPTIONS: JSON.stringify(mode === 'all' ? ALL_FEATURES : {})
  }, 15_000, ['--cpu-prof', `--cpu-prof-dir=${dir}`])
  const headers = { 'content-type': 'application/json', authorization: `Bearer ${key}` }
  if (load.kind === 'sse') {
    const lines: string[] = []
    for (let i = 0; i < load.bursts; i++) lines.push(JSON.stringify(burstSummary(await sseBurst(proxy.url, headers, STREAM_BODY, load.streams, 30_000))))
    await proxy.stop()
    process.stdout.write(`${mode}: ${load.bursts} bursts of ${load.streams} SSE streams\n${lines.join('\n')}\n`)
  } else {
    const body = chatBody(load.bytes)
    const pool = newPool(proxy.url, load.concurrency)
    const target: Target = { name: 'proxy', origin: proxy.url, headers, pool }
    const tally = newTally()
    await runFor(target, body, load.concurrency, load.seconds * 1000, tally)
    await pool.destroy()
    await proxy.stop()
    process.stdout.write(`${mode}: ${body.length} byte bodies, c=${load.concurrency}, ${tally.ok} ok, errors ${JSON.stringify(tally.errors)}, ${(tally.ok / (tally.elapsedMs / 1000)).toFixed(0)} req/s\n`)
  }
  printTop(dir)
}

function printTop (dir: string): void {
  const file = readdirSync(dir).find((f) => f.endsWith('.cpuprofile'))
  if (file === undefined) throw new Error(`no profile written in ${dir}`)
  process.stdout.write(top(JSON.parse(readFileSync(join(dir, file), 'utf8')) as Profile, 25).join('\n') + `\nprofile: ${join(dir, file)}\n`)
}

main().catch((err: unknown) => {
  process.stderr.write(`profile failed: ${(err as Error).stack ?? String(err)}\n`)
  process.exitCode = 1
})
