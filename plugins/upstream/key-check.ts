import type { FastifyBaseLogger } from 'fastify'
import type { Dispatcher } from 'undici'
import type { KeyPool, PooledKey } from './key-pool.js'
import { request } from './undici-core.js'
import { firstHeader } from './headers.js'
import { errorCode, judgeUpstreamError, readCapped } from './upstream-errors.js'

/*
 * Upstream key health: each key is asked two cheap questions, so a dead key leaves rotation before a
 * user's request fails on it, and a recovered one comes back.
 * - `GET /v1/models` (free): is the key itself valid (revoked, deleted, deactivated -> 401)?
 * - `POST /v1/embeddings` of one token (about $0.00000002): can it still spend? A list of models answers
 *   200 for an account out of credit; only a billed call says `insufficient_quota`.
 * A network failure or an upstream 5xx says nothing about the key and changes nothing.
 */

export type KeyHealth = 'ok' | 'taken-out' | 'resting' | 'unknown'

/** Where upstream is (the upstream plugin's), and the credentials (the key-injection plugin's). */
export interface Upstream { origin: string, basePath: string, dispatcher: Dispatcher }
export interface Credentials { pool: KeyPool, organization?: string | undefined, project?: string | undefined, secrets: readonly string[] }

const PROBE_BODY = JSON.stringify({ model: 'text-embedding-3-small', input: 'ok' })

async function ask (upstream: Upstream, keys: Credentials, k: PooledKey, method: 'GET' | 'POST', path: string, signal: AbortSignal, userAgent: string) {
  const headers: Record<string, string> = { authorization: `Bearer ${k.key}`, 'user-agent': userAgent }
  if (keys.organization !== undefined) headers['openai-organization'] = keys.organization
  if (keys.project !== undefined) headers['openai-project'] = keys.project
  if (method === 'POST') headers['content-type'] = 'application/json'
  const res = await request(upstream.dispatcher, {
    origin: upstream.origin,
    path: `${upstream.basePath}${path}`,
    method,
    headers,
    ...(method === 'POST' ? { body: PROBE_BODY } : {}),
    signal
  })
  const text = await readCapped(res.body)
  return { status: res.statusCode, headers: res.headers, text }
}

/** Check one key and act on the pool; what it found, for logs and tests. */
export async function checkKey (upstream: Upstream, keys: Credentials, k: PooledKey, log: FastifyBaseLogger, opts: { timeoutMs: number, userAgent: string, signal: AbortSignal }): Promise<KeyHealth> {
  const { pool } = keys
  try {
    for (const [method, path] of [['GET', '/v1/models'], ['POST', '/v1/embeddings']] as const) {
      const res = await ask(upstream, keys, k, method, path, AbortSignal.any([opts.signal, AbortSignal.timeout(opts.timeoutMs)]), opts.userAgent)
      if (res.status >= 500) return 'unknown'
      if (res.status < 400) {
        pool.observe(k.id, res.headers)
        continue
      }
      const verdict = judgeUpstreamError(res.status, res.text, firstHeader(res.headers['retry-after']), keys.secrets)
      if (verdict.disable !== undefined) {
        if (k.disabled === null) log.warn({ key: k.id, reason: verdict.disable, by: 'health-check' }, 'oai-proxy: upstream key taken out of rotation')
        pool.disable(k.id, verdict.disable)
        return 'taken-out'
      }
      if (verdict.coolDownMs !== undefined) {
        pool.coolDown(k.id, verdict.coolDownMs)
        return 'resting'
      }
      // Any other refusal (a probe model this account cannot use, a restricted key) says nothing of the key.
      return 'unknown'
    }
  } catch (err) {
    log.debug({ key: k.id, code: errorCode(err) }, 'oai-proxy: key health check could not reach upstream')
    return 'unknown'
  }
  if (pool.enable(k.id)) log.info({ key: k.id, by: 'health-check' }, 'oai-proxy: upstream key back in rotation')
  return 'ok'
}
