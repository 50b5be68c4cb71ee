import { randomBytes } from 'node:crypto'
import { copyFileSync, mkdirSync, mkdtempSync, rmSync } from 'node:fs'
import { loadavg, tmpdir } from 'node:os'
import { join } from 'node:path'
import { setTimeout as pause } from 'node:timers/promises'
import { mintBrowserToken } from '../plugins/client-keys/browser-tokens.js'
import { writeKeysFile } from '../plugins/client-keys/file-io.js'
import { buildIndex, hashSecret, newKeyId, newSecret } from '../plugins/client-keys/records.js'
import type { ClientKeyRecord } from '../plugins/client-keys/schema.js'
import { startChild, type Child } from './children.js'
import { chatBody, newPool, newTally, runFor, type Target } from './load.js'
import { busiest, machine, showBusy } from './machine.js'
import type { ProbeStats } from './probe.js'
import { cpuMicros } from './sse-phase.js'
import { fmt, markdown, median, round, summarize } from './stats.js'

/*
 * What a client key costs per request (issue 13): the same 1 KB chat completion at c=64 through four
 * proxies against one fake upstream, alternating in rounds (the order rotating each round):
 *   static  - the proxy key (PROXY_KEY), no keys file;
 *   key     - a client key looked up among 10,000 records of a KEYS_FILE (no limits, no scopes);
 *   token   - a browser token whose record is among the 10,000 (TOKEN_SECRETS, Origin header);
 *   quota   - the client key of `key`, its record with tokensPerDay 1e12: the quota reserve and settle run
 *             on every request (memory store, kept beside the keys file as the proxy does without Redis).
 * Every proxy has the same CORS allowlist and every request carries the same Origin header, so the only
 * difference between the rows is the auth path. Ratios to (1) are given of the medians and per round (each
 * turn over (1)'s turn of the same round, which cancels drift on a shared machine). Not a test: numbers
 * depend on the machine.
 *
 *   npm run build --silent && node dist/bench/keys-scenario.js [rounds=5] [ms-per-turn=3000]
 */

const ROUNDS = Number(process.argv[2] ?? 5)
const TURN_MS = Number(process.argv[3] ?? 3000)
const CONCURRENCY = 64
const RECORDS = 10_000
const ORIGIN = 'https://app.example'

const log = (msg: string): void => { process.stderr.write(`# ${msg}\n`) }

/** 10,000 records; the measured one in the middle. Returns the records and the measured one's secret. */
function records (): { list: ClientKeyRecord[], id: string, secret: string } {
  const list: ClientKeyRecord[] = []
  let measured = { id: '', secret: '' }
  const created = new Date().toISOString()
  for (let i = 0; i < RECORDS; i++) {
    const secret = newSecret()
    const r: ClientKeyRecord = { id: newKeyId(), name: `user ${i}`, hash: hashSecret(secret), prefix: secret.slice(0, 12), created, disabled: false, scopes: {}, metadata: { team: 'bench' } }
    if (i === RECORDS / 2) measured = { id: r.id, secret }
    list.push(r)
  }
  return { list, ...measured }
}

interface Turn { rps: number, cpuUsPerReq: number }

async function main (): Promise<void> {
  const m = machine()
  const loadStart = loadavg().map((x) => round(x))
  const busyStart = showBusy(await busiest())
  const dir = mkdtempSync(join(tmpdir(), 'oai-keys-bench-'))
  const children: Child[] = []
  try {
    const plain = records()
    // A directory per proxy: each watches its keys file's directory and writes its usage file beside it.
    const files = Object.fromEntries(['key', 'token', 'quota'].map((n) => [n, join(mkdirSync(join(dir, n), { recursive: true }) as string, 'keys.jsonl')])) as Record<'key' | 'token' | 'quota', string>
    writeKeysFile(files.key, plain.list)
    copyFileSync(files.key, files.token)
    // The same records and secret, the measured record with a quota no request reaches.
    writeKeysFile(files.quota, plain.list.map((r) => (r.id === plain.id ? { ...r, limits: { tokensPerDay: 1e12 } } : r)))
    const tokenSecret = randomBytes(32).toString('base64url')
    const token = mintBrowserToken({ sub: 'bench-user', key: plain.id, origin: ORIGIN, ttlSeconds: 86_400 }, [tokenSecret], buildIndex(plain.list).byId).token

    const proxyKey = `pk-bench-${randomBytes(16).toString('hex')}`
    log('starting the fake upstream and four proxies')
    const fake = await startChild('fake', './fake-child.js', { BENCH_CHUNK_DELAY_MS: '25' })
    children.push(fake)
    const cors = { origins: [ORIGIN] }
    const configs = [
      { name: 'static', label: '(1) static PROXY_KEY', options: { cors }, key: proxyKey },
      { name: 'key', label: `(2) client key, ${RECORDS.toLocaleString('en-US')} records`, options: { cors, keysFile: files.key }, key: plain.secret },
      { name: 'token', label: '(3) browser token, record among them', options: { cors, keysFile: files.token, browserTokens: { secrets: [tokenSecret] } }, key: token },
      { name: 'quota', label: '(4) client key + tokensPerDay quota', options: { cors, keysFile: files.quota }, key: plain.secret }
    ]
    const sides: Array<{ name: string, label: string, child: Child, target: Target, turns: Turn[], latencies: number[], errors: Record<string, number> }> = []
    for (const c of configs) {
      const child = await startChild(c.name, './proxy-child.js', { BENCH_UPSTREAM_URL: fake.url, BENCH_PROXY_KEY: proxyKey, BENCH_PROXY_OPTIONS: JSON.stringify(c.options) }, 30_000)
      children.push(child)
      const headers = { 'content-type': 'application/json', origin: ORIGIN, authorization: `Bearer ${c.key}` }
      sides.push({ name: c.name, label: c.label, child, target: { name: c.name, origin: child.url, headers, pool: newPool(child.url, CONCURRENCY) }, turns: [], latencies: [], errors: {} })
    }
    const body = chatBody(1024)

    log('warming up')
    for (const s of sides) {
      const warm = newTally()
      await runFor(s.target, body, 16, 1500, warm)
      if (warm.ok === 0) throw new Error(`warm-up of ${s.name}: nothing succeeded (${JSON.stringify(warm.errors)}); ${s.child.logs.samples.join(' | ')}`)
    }

    log(`${ROUNDS} rounds x ${sides.length} configurations x ${TURN_MS} ms at c=${CONCURRENCY}, ${body.length} byte bodies`)
    for (let r = 0; r < ROUNDS; r++) {
      for (let i = 0; i < sides.length; i++) {
        const s = sides[(i + r) % sides.length] as typeof sides[number]
        const tally = newTally()
        const before = await s.child.call<ProbeStats>('stats')
        await runFor(s.target, body, CONCURRENCY, TURN_MS, tally)
        const after = await s.child.call<ProbeStats>('stats')
        s.turns.push({ rps: tally.ok / (tally.elapsedMs / 1000), cpuUsPerReq: cpuMicros(before.cpu, after.cpu) / Math.max(1, tally.ok) })
        s.latencies.push(...tally.latencies)
        for (const [k, v] of Object.entries(tally.errors)) s.errors[k] = (s.errors[k] ?? 0) + v
        await pause(200)
      }
      log(`round ${r + 1}/${ROUNDS} done`)
    }
    // Proof that (4) ran its quota: the record's day counts, from the proxy's own usage route.
    const quotaSide = sides[3] as typeof sides[number]
    const usage = await fetch(`${quotaSide.child.url}/v1/proxy/usage`, { headers: quotaSide.target.headers }).then(async (r) => JSON.stringify(await r.json()))
    await Promise.all(sides.map((s) => s.target.pool.close()))

    const range = (xs: number[]): string => `${fmt(Math.min(...xs))}–${fmt(Math.max(...xs))}`
    const base = sides[0] as typeof sides[number]
    const baseRps = median(base.turns.map((t) => t.rps))
    const baseCpu = median(base.turns.map((t) => t.cpuUsPerReq))
    // Paired: each turn against (1)'s turn of the same round, so drift over the run (other processes
    // starting or stopping) cancels; the median of those ratios, and their range.
    const paired = (s: typeof base, f: (t: Turn) => number): number[] => s.turns.map((t, r) => f(t) / f(base.turns[r] as Turn))
    const ratio = (xs: number[]): string => `${fmt(median(xs))}x (${fmt(Math.min(...xs))}–${fmt(Math.max(...xs))})`
    const rows = [['configuration', 'req/s (median)', 'range', 'vs (1)', 'vs (1) per round', 'CPU µs/req (median)', 'range', 'vs (1)', 'vs (1) per round', 'p50 ms', 'p99 ms', 'errors']]
    for (const s of sides) {
      const rps = s.turns.map((t) => t.rps)
      const cpu = s.turns.map((t) => t.cpuUsPerReq)
      const lat = summarize(s.latencies)
      const errs = Object.entries(s.errors).map(([k, v]) => `${k}: ${v}`).join(', ')
      rows.push([s.label, fmt(median(rps)), range(rps), `${fmt(median(rps) / baseRps)}x`, ratio(paired(s, (t) => t.rps)), fmt(median(cpu)), range(cpu), `${fmt(median(cpu) / baseCpu)}x`, ratio(paired(s, (t) => t.cpuUsPerReq)), fmt(lat.p50), fmt(lat.p99), errs === '' ? '0' : errs])
    }
    const warnings = sides.reduce((a, s) => a + s.child.logs.warnings, 0)
    process.stdout.write(`client keys (issue 13), ${new Date().toISOString()}\n` +
      `machine: node ${m.node}, ${m.platform}, ${m.cpus} x ${m.cpuModel}; load average ${loadStart.join(' / ')} at start, ${loadavg().map((x) => round(x)).join(' / ')} at end (1 / 5 / 15 min)\n` +
      `busiest other processes at start: ${busyStart}\n` +
      `${ROUNDS} rounds, each configuration once per round for ${TURN_MS} ms at c=${CONCURRENCY}, ${body.length} byte chat bodies; ` +
      `ranges are over the ${ROUNDS} turns; "per round" is the median (range) of each turn over (1)'s turn in the same round; p50/p99 over every request; CPU is the proxy process's user+system time during its turns; ` +
      `proxy warnings logged: ${warnings}\n\n` +
      `${markdown(rows)}\n\n(4) usage after the run (GET /v1/proxy/usage): ${usage}\n`)
    for (const s of sides) for (const line of s.child.logs.samples) process.stderr.write(`# ${line}\n`)
  } finally {
    await Promise.all(children.map((c) => c.stop()))
    rmSync(dir, { recursive: true, force: true })
  }
}

await main()
