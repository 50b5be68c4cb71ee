import { createHash } from 'node:crypto'
import type { FastifyBaseLogger } from 'fastify'
import type { OaiProxyKeys } from '../upstream/key-injection.js'
import type { OaiProxyUpstream } from '../upstream/index.js'
import { upstreamRequestHeaders } from '../upstream/headers.js'
import { judgeUpstreamError, readCapped, errorCode } from '../upstream/upstream-errors.js'
import { request } from '../upstream/undici-core.js'

/*
 * The optional second opinion: OpenAI's moderation endpoint, called with a key from the pool through the
 * same undici agent and header allowlist as every proxied request. Verdicts are cached by a hash of the
 * model and text (bounded LRU with a TTL), so retries, regenerations and swipes of the same prompt cost
 * one moderation call. Failures are never cached: the caller's fail-open/closed setting decides.
 */

export interface ModerationSettings {
  model: string
  timeoutMs: number
  cacheSize: number
  cacheTtlMs: number
  userAgent: string
}

export type ModerationVerdict =
  | { ok: true, flagged: boolean, categories: string[] }
  | { ok: false, reason: string }

/** Inputs are split into pieces of this many characters, sent as one array in one call. */
const PIECE_CHARS = 16_000
/** A moderation answer is small; anything bigger is not one. */
const ANSWER_LIMIT = 256 * 1024

interface Cached { flagged: boolean, categories: string[], until: number }

export class ModerationClient {
  readonly #cache = new Map<string, Cached>()
  readonly #upstream: OaiProxyUpstream
  readonly #keys: OaiProxyKeys
  readonly #s: ModerationSettings
  readonly #now: () => number

  constructor (upstream: OaiProxyUpstream, keys: OaiProxyKeys, settings: ModerationSettings, now: () => number = Date.now) {
    this.#upstream = upstream
    this.#keys = keys
    this.#s = settings
    this.#now = now
  }

  async check (text: string, log: FastifyBaseLogger): Promise<ModerationVerdict> {
    const hash = createHash('sha256').update(this.#s.model).update('\0').update(text).digest('base64url')
    const hit = this.#cache.get(hash)
    if (hit !== undefined && hit.until > this.#now()) {
      // Re-insert: Map order is the LRU order.
      this.#cache.delete(hash)
      this.#cache.set(hash, hit)
      return { ok: true, flagged: hit.flagged, categories: hit.categories }
    }
    const verdict = await this.#ask(text, log)
    if (verdict.ok) {
      this.#cache.delete(hash)
      this.#cache.set(hash, { flagged: verdict.flagged, categories: verdict.categories, until: this.#now() + this.#s.cacheTtlMs })
      while (this.#cache.size > this.#s.cacheSize) this.#cache.delete(this.#cache.keys().next().value as string)
    }
    return verdict
  }

  async #ask (text: string, log: FastifyBaseLogger): Promise<ModerationVerdict> {
    const pieces: string[] = []
    for (let at = 0; at < text.length; at += PIECE_CHARS) pieces.push(text.slice(at, at + PIECE_CHARS))
    const body = JSON.stringify({ model: this.#s.model, input: pieces.length === 1 ? pieces[0] : pieces })
    const { dispatcher, origin, basePath } = this.#upstream
    for (const key of this.#keys.pool.rotation()) {
      const headers = upstreamRequestHeaders({}, { key: key.key, organization: this.#keys.organization, project: this.#keys.project, userAgent: this.#s.userAgent }, 'application/json')
      let status: number
      let answer: string | null
      try {
        const res = await request(dispatcher, { origin, path: `${basePath}/v1/moderations`, method: 'POST', headers, body, signal: AbortSignal.timeout(this.#s.timeoutMs) })
        status = res.statusCode
        answer = await readCapped(res.body, ANSWER_LIMIT)
      } catch (err) {
        log.warn({ code: errorCode(err), key: key.id }, 'oai-proxy: moderation call failed')
        return { ok: false, reason: 'upstream unreachable' }
      }
      if (status >= 200 && status < 300) return parseAnswer(answer)
      const verdict = judgeUpstreamError(status, answer, undefined, this.#keys.secrets)
      log.warn({ status, key: key.id }, 'oai-proxy: moderation call refused upstream')
      if (this.#keys.pool.settle(key.id, verdict)) continue
      return { ok: false, reason: `upstream status ${status}` }
    }
    return { ok: false, reason: 'no usable upstream key' }
  }
}

function parseAnswer (text: string | null): ModerationVerdict {
  try {
    const results = (JSON.parse(text ?? '') as { results?: unknown }).results
    if (!Array.isArray(results) || results.length === 0) return { ok: false, reason: 'malformed answer' }
    const categories = new Set<string>()
    let flagged = false
    for (const r of results as Array<{ flagged?: unknown, categories?: Record<string, unknown> }>) {
      if (r.flagged === true) flagged = true
      for (const [name, on] of Object.entries(r.categories ?? {})) if (on === true) categories.add(name)
    }
    return { ok: true, flagged, categories: [...categories].sort() }
  } catch {
    return { ok: false, reason: 'malformed answer' }
  }
}
