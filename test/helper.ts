import { randomBytes } from 'node:crypto'
import { spawn } from 'node:child_process'
import { connect } from 'node:net'
import { fileURLToPath } from 'node:url'
import { Writable } from 'node:stream'
import Fastify, { type FastifyInstance, type FastifyServerOptions } from 'fastify'
import type { Test } from 'tap'
import oaiProxy from '../app.js'
import { oaiProxyServerOptions } from '../lib/server-options.js'
import type { OaiProxyOptions } from '../plugins/config/options.js'
import { startFakeOpenAI, type FakeOpenAI, type FakeOpenAIOptions, type RecordedRequest } from '../testing/fake-openai.js'

const ALPHANUM = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789'
export function randomToken (length: number): string {
  return [...randomBytes(length)].map((b) => ALPHANUM[b % ALPHANUM.length]).join('')
}

/** A fresh canary upstream key: the threat catalogue's `sk-proj-CANARY` + 40 random characters. */
export const canaryKey = (): string => `sk-proj-CANARY${randomToken(40)}`

/** Every form of a secret a careless proxy could leak (threat catalogue, "Canary key"). */
export function leakPatterns (secret: string): Array<string | RegExp> {
  const forms: Array<string | RegExp> = [secret, Buffer.from(secret).toString('base64'), encodeURIComponent(secret)]
  if (secret.startsWith('sk-')) {
    forms.push(secret.slice(3), secret.slice(-8), new RegExp(`\\*{3,}${secret.slice(-4)}`))
    if (secret.includes('CANARY')) forms.push('CANARY')
  }
  return forms
}

/** Fail if `text` contains any form of any secret. */
export function assertNoLeak (t: Test, text: string, secrets: readonly string[], where: string): void {
  const hits = secrets.flatMap((s) => leakPatterns(s).filter((p) => (typeof p === 'string' ? text.includes(p) : p.test(text))).map(String))
  t.strictSame(hits, [], `no secret in ${where}`)
}

const MODEL_ID = /^[A-Za-z0-9][A-Za-z0-9._:%-]{0,400}$/
const ALLOWED = new Set([
  'POST /v1/chat/completions', 'POST /v1/completions', 'POST /v1/responses', 'POST /v1/embeddings', 'POST /v1/moderations', 'GET /v1/models',
  'POST /v1/responses/compact', 'POST /v1/responses/input_tokens', 'POST /v1/images/generations', 'POST /v1/audio/speech',
  'POST /v1/audio/transcriptions', 'POST /v1/audio/translations', 'POST /v1/images/edits', 'POST /v1/images/variations', 'POST /v1/realtime/calls'
])

/** True when a request the upstream received is one of the allowlisted (method, path) pairs, with no query. */
export function isAllowlisted (r: Pick<RecordedRequest, 'method' | 'url'>): boolean {
  if (r.url.includes('?')) return false
  if (ALLOWED.has(`${r.method} ${r.url}`)) return true
  const m = /^\/v1\/models\/([^/]+)$/.exec(r.url)
  return r.method === 'GET' && m !== null && MODEL_ID.test(m[1] ?? '') && !decodeURIComponent(m[1] ?? '').includes('/')
}

export interface Harness {
  app: FastifyInstance
  upstream: FakeOpenAI
  /** The upstream keys configured (canaries). */
  keys: string[]
  proxyKey: string
  organization: string
  project: string
  /** Every secret the client and the logs must never see. */
  secrets: string[]
  /** Log lines captured at level trace. */
  logs: string[]
  /** Base URL when `listen` was asked for. */
  url: string
  /** Headers that authenticate a client. */
  auth: Record<string, string>
}

export interface HarnessOptions {
  proxy?: Partial<OaiProxyOptions>
  fake?: FakeOpenAIOptions
  /** How many upstream keys. Default 1. */
  keyCount?: number
  /** Listen on a loopback port (for real sockets). Default false (inject only). */
  listen?: boolean
  /** Extra Fastify constructor options (e.g. `trustProxy`). */
  fastify?: FastifyServerOptions
  /** Skip the teardown check that the upstream saw only allowlisted pairs. */
  allowAnyUpstream?: boolean
}

/** A fake upstream and a proxy in front of it. Prefer `proxyTest`, which also checks the invariants. */
export async function harness (opts: HarnessOptions = {}): Promise<Harness & { close: () => Promise<void> }> {
  const keys = Array.from({ length: opts.keyCount ?? 1 }, canaryKey)
  const upstream = await startFakeOpenAI({ validKeys: keys, ...opts.fake })
  const organization = `org-${randomToken(24)}`
  const project = `proj_${randomToken(24)}`
  const proxyKey = `sk-oaip-${randomToken(32)}`
  const logs: string[] = []
  const stream = new Writable({
    write (chunk: Buffer, _enc, done) {
      logs.push(chunk.toString())
      done()
    }
  })
  const app = Fastify({ ...oaiProxyServerOptions, ...opts.fastify, logger: { level: 'trace', stream } })
  // The abuse guard is off unless a test asks for it: several suites send hundreds of 404s on purpose.
  const rateLimit = { failuresPerMinute: 0, ...opts.proxy?.rateLimit }
  // Key health checks are off too: they call upstream at start-up, and many tests count upstream calls.
  await app.register(oaiProxy, { upstreamUrl: upstream.url, openaiKeys: keys, organization, project, proxyKeys: [proxyKey], keyHealth: { intervalMs: 0 }, ...opts.proxy, rateLimit })
  const url = opts.listen === true ? await app.listen({ host: '127.0.0.1', port: 0 }) : ''
  await app.ready()
  const close = async () => {
    await app.close()
    await upstream.close()
  }
  return { app, upstream, keys, proxyKey, organization, project, secrets: [...keys, organization, project], logs, url, auth: { authorization: `Bearer ${proxyKey}` }, close }
}

/**
 * A subtest with a harness, closed afterwards, then the global invariants checked: the logs hold no
 * secret and the upstream saw only allowlisted (method, path) pairs with no query string.
 */
export function proxyTest (t: Test, name: string, opts: HarnessOptions, fn: (h: Harness, t: Test) => Promise<void>): Promise<unknown> {
  return t.test(name, async (t) => {
    const h = await harness(opts)
    try {
      await fn(h, t)
    } finally {
      await h.close()
      assertNoLeak(t, h.logs.join(''), h.secrets, 'logs')
      if (opts.allowAnyUpstream !== true) {
        t.strictSame(h.upstream.requests.filter((r) => !isAllowlisted(r)).map((r) => `${r.method} ${r.url}`), [], 'upstream saw only allowlisted pairs')
      }
    }
  })
}

/** Everything a client saw of an inject() response: status line, headers and body, for leak scans. */
export function seenByClient (res: { statusCode: number, headers: Record<string, unknown>, body: string }): string {
  return `${res.statusCode}\n${JSON.stringify(res.headers)}\n${res.body}`
}

/** Send raw bytes on a fresh TCP connection; resolve with everything received until close or `timeoutMs`. */
export function rawRequest (port: number, payload: string | Buffer, timeoutMs = 2000): Promise<string> {
  return new Promise((resolve, reject) => {
    const socket = connect(port, '127.0.0.1')
    const chunks: Buffer[] = []
    const timer = setTimeout(() => socket.destroy(), timeoutMs)
    socket.on('data', (c) => chunks.push(c))
    socket.on('error', (err) => {
      if ((err as NodeJS.ErrnoException).code !== 'ECONNRESET') reject(err)
    })
    socket.on('close', () => {
      clearTimeout(timer)
      resolve(Buffer.concat(chunks).toString('latin1'))
    })
    socket.write(payload)
  })
}

export const chatBody = (extra: Record<string, unknown> = {}) => ({ model: 'gpt-4o-mini', messages: [{ role: 'user', content: 'hello' }], ...extra })
export const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms))

/** Run server.ts in a child with tap's TypeScript loader but without its coverage hooks (they would clobber ours). */
export function spawnServer (env: Record<string, string>) {
  const server = fileURLToPath(new URL('../server.ts', import.meta.url))
  const execArgv = process.execArgv.filter((a) => !a.includes('processinfo'))
  const base = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith('_TAPJS') && !k.startsWith('TAP') && k !== 'NODE_V8_COVERAGE'))
  // No key health checks unless a test asks: they call upstream at start-up, and tests count upstream calls.
  return spawn(process.execPath, [...execArgv, server], { env: { ...base, KEY_HEALTH_INTERVAL_MS: '0', ...env }, stdio: ['ignore', 'pipe', 'pipe'] })
}

/** Resolve with the base URL a spawned server.ts logs once it listens (LOG_LEVEL info or lower). */
export function listeningUrl (child: ReturnType<typeof spawnServer>, timeoutMs = 20_000): Promise<string> {
  return new Promise((resolve, reject) => {
    let out = ''
    const timer = setTimeout(() => reject(new Error(`server did not listen: ${out.slice(-500)}`)), timeoutMs)
    child.stdout?.on('data', (c: Buffer) => {
      out += c.toString()
      const m = /Server listening at (http:\/\/[^"\s]+)/.exec(out)
      if (m?.[1] !== undefined) {
        clearTimeout(timer)
        resolve(m[1])
      }
    })
  })
}
