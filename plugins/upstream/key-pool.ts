import { createHash } from 'node:crypto'
import { parseGoDuration } from '../../lib/durations.js'
import { firstHeader } from './headers.js'

export type KeyDisableReason = 'invalid_api_key' | 'insufficient_quota'

export interface PooledKey {
  /** The secret. Never log it: log `id`. */
  readonly key: string
  /** A short, stable, non-reversible id for logs and metrics. */
  readonly id: string
  lastUsed: number
  coolUntil: number
  disabled: KeyDisableReason | null
  /** Share of its rate limit upstream last said was left, 0..1 (1 until it says otherwise). */
  headroom: number
}

/** What replicas share about a key (never the secret): taken out, or resting until an instant. */
export interface KeyState { disabled: KeyDisableReason | null, coolUntil: number }

/** Log-safe fingerprint of a secret. */
export function fingerprint (secret: string, prefix = 'key'): string {
  return `${prefix}_${createHash('sha256').update(secret).digest('hex').slice(0, 10)}`
}

/** Headroom in coarse steps, so rotation stays least-recently-used among keys with about as much left. */
const band = (headroom: number): number => (headroom >= 0.5 ? 3 : headroom >= 0.2 ? 2 : headroom >= 0.05 ? 1 : 0)

type Headers = Record<string, string | string[] | undefined>

/**
 * The upstream key pool: least-recently-used rotation among the keys with the most headroom left,
 * keys taken out on a revoked key or an exhausted quota (and brought back when a health check finds them
 * working again), and rests after an upstream 429 or when upstream says a key's window is used up.
 * Every change of state is reported to `onChange`, so replicas can share it (plugins/upstream/key-state-sync.ts).
 */
export class KeyPool {
  readonly #keys: PooledKey[]
  readonly #byId: Map<string, PooledKey>
  readonly #now: () => number
  #tick = 0
  /** Called after a local change of a key's state (not for states applied from elsewhere). */
  onChange: ((id: string, state: KeyState) => void) | null = null

  constructor (keys: readonly string[], now: () => number = Date.now) {
    this.#keys = [...new Set(keys)].map((key) => ({ key, id: fingerprint(key), lastUsed: 0, coolUntil: 0, disabled: null, headroom: 1 }))
    this.#byId = new Map(this.#keys.map((k) => [k.id, k]))
    this.#now = now
  }

  /** Every configured secret, for redaction. */
  get secrets (): string[] {
    return this.#keys.map((k) => k.key)
  }

  /** The keys (the health checker calls each); never log `key`. */
  get keys (): readonly PooledKey[] {
    return this.#keys
  }

  get usableCount (): number {
    return this.#keys.filter((k) => k.disabled === null).length
  }

  /**
   * The least recently used enabled key not in `exclude`, among those with the most headroom. Keys resting
   * after a 429 are used only when no other key is left (a 429 from upstream then reaches the client,
   * which is the honest answer).
   */
  acquire (exclude: ReadonlySet<string> = new Set()): PooledKey | undefined {
    const now = this.#now()
    let best: PooledKey | undefined
    let bestCooling: PooledKey | undefined
    for (const k of this.#keys) {
      if (k.disabled !== null || exclude.has(k.id)) continue
      if (k.coolUntil > now) {
        if (bestCooling === undefined || k.coolUntil < bestCooling.coolUntil) bestCooling = k
      } else if (best === undefined || band(k.headroom) > band(best.headroom) || (band(k.headroom) === band(best.headroom) && k.lastUsed < best.lastUsed)) {
        best = k
      }
    }
    const chosen = best ?? bestCooling
    if (chosen !== undefined) chosen.lastUsed = ++this.#tick
    return chosen
  }

  /**
   * The keys to try for one upstream call, best first, each at most once (a key taken out of rotation
   * meanwhile is skipped). The one rotation every caller walks: the proxy route, the Realtime handshake and
   * the moderation client.
   */
  * rotation (): Generator<PooledKey, void, undefined> {
    const tried = new Set<string>()
    for (let key = this.acquire(tried); key !== undefined; key = this.acquire(tried)) {
      tried.add(key.id)
      yield key
    }
  }

  /**
   * What upstream's refusal of a call (plugins/upstream/upstream-errors.ts) means for the key that made it:
   * taken out of rotation (true: the caller tries the next key; nothing was billed), rested after a rate
   * limit, or nothing.
   */
  settle (id: string, verdict: { disable?: KeyDisableReason | undefined, coolDownMs?: number | undefined }): boolean {
    if (verdict.disable !== undefined) {
      this.disable(id, verdict.disable)
      return true
    }
    if (verdict.coolDownMs !== undefined) this.coolDown(id, verdict.coolDownMs)
    return false
  }

  disable (id: string, reason: KeyDisableReason): void {
    const k = this.#byId.get(id)
    if (k === undefined || k.disabled !== null) return
    k.disabled = reason
    this.#changed(k)
  }

  /** Back in rotation (a health check found it working); false when it was not out. */
  enable (id: string): boolean {
    const k = this.#byId.get(id)
    if (k === undefined || k.disabled === null) return false
    k.disabled = null
    k.coolUntil = 0
    k.headroom = 1
    this.#changed(k)
    return true
  }

  coolDown (id: string, ms: number): void {
    const k = this.#byId.get(id)
    if (k === undefined) return
    const until = this.#now() + ms
    if (until <= k.coolUntil) return
    k.coolUntil = until
    this.#changed(k)
  }

  /**
   * Upstream's `x-ratelimit-*` headers on any answer: how much of the key's window is left. A key with
   * nothing left rests until its window resets, before a request fails on it.
   */
  observe (id: string, headers: Headers): void {
    const remaining = firstHeader(headers['x-ratelimit-remaining-requests'])
    if (remaining === undefined) return
    const k = this.#byId.get(id)
    if (k === undefined) return
    const ratio = (kind: string): number => {
      const left = Number(firstHeader(headers[`x-ratelimit-remaining-${kind}`]))
      const limit = Number(firstHeader(headers[`x-ratelimit-limit-${kind}`]))
      return Number.isFinite(left) && limit > 0 ? Math.max(0, left / limit) : 1
    }
    k.headroom = Math.min(ratio('requests'), ratio('tokens'))
    if (k.headroom > 0) return
    const reset = Math.max(parseGoDuration(firstHeader(headers['x-ratelimit-reset-requests'])), parseGoDuration(firstHeader(headers['x-ratelimit-reset-tokens'])))
    this.coolDown(id, Math.min(Math.max(reset, 1000), 60_000))
  }

  /** A state learnt from another replica: applied as is, not reported again. */
  apply (id: string, state: KeyState): void {
    const k = this.#byId.get(id)
    if (k === undefined) return
    k.disabled = state.disabled
    k.coolUntil = state.coolUntil
  }

  /** Public view for status/health: ids and states, never the secrets. */
  describe (): Array<{ id: string, state: 'active' | 'cooling' | KeyDisableReason }> {
    const now = this.#now()
    return this.#keys.map((k) => ({ id: k.id, state: k.disabled ?? (k.coolUntil > now ? 'cooling' : 'active') }))
  }

  #changed (k: PooledKey): void {
    this.onChange?.(k.id, { disabled: k.disabled, coolUntil: k.coolUntil })
  }
}
