import { createHash } from 'node:crypto'

export type KeyDisableReason = 'invalid_api_key' | 'insufficient_quota'

export interface PooledKey {
  /** The secret. Never log it: log `id`. */
  readonly key: string
  /** A short, stable, non-reversible id for logs and metrics. */
  readonly id: string
  lastUsed: number
  coolUntil: number
  disabled: KeyDisableReason | null
}

/** Log-safe fingerprint of a secret. */
export function fingerprint (secret: string, prefix = 'key'): string {
  return `${prefix}_${createHash('sha256').update(secret).digest('hex').slice(0, 10)}`
}

/**
 * The upstream key pool: least-recently-used rotation, keys taken out for good on a revoked key or an
 * exhausted quota, and short cool-downs after an upstream 429. State is per process for now.
 */
export class KeyPool {
  readonly #keys: PooledKey[]
  readonly #now: () => number
  #tick = 0

  constructor (keys: readonly string[], now: () => number = Date.now) {
    this.#keys = [...new Set(keys)].map((key) => ({ key, id: fingerprint(key), lastUsed: 0, coolUntil: 0, disabled: null }))
    this.#now = now
  }

  /** Every configured secret, for redaction. */
  get secrets (): string[] {
    return this.#keys.map((k) => k.key)
  }

  get usableCount (): number {
    return this.#keys.filter((k) => k.disabled === null).length
  }

  /**
   * The least recently used enabled key not in `exclude`. Keys cooling down after a 429 are used only when
   * no other key is left (a 429 from upstream then reaches the client, which is the honest answer).
   */
  acquire (exclude: ReadonlySet<string> = new Set()): PooledKey | undefined {
    const now = this.#now()
    let best: PooledKey | undefined
    let bestCooling: PooledKey | undefined
    for (const k of this.#keys) {
      if (k.disabled !== null || exclude.has(k.id)) continue
      if (k.coolUntil > now) {
        if (bestCooling === undefined || k.coolUntil < bestCooling.coolUntil) bestCooling = k
      } else if (best === undefined || k.lastUsed < best.lastUsed) {
        best = k
      }
    }
    const chosen = best ?? bestCooling
    if (chosen !== undefined) chosen.lastUsed = ++this.#tick
    return chosen
  }

  disable (id: string, reason: KeyDisableReason): void {
    const k = this.#keys.find((key) => key.id === id)
    if (k !== undefined && k.disabled === null) k.disabled = reason
  }

  coolDown (id: string, ms: number): void {
    const k = this.#keys.find((key) => key.id === id)
    if (k !== undefined) k.coolUntil = Math.max(k.coolUntil, this.#now() + ms)
  }

  /** Public view for status/health: ids and states, never the secrets. */
  describe (): Array<{ id: string, state: 'active' | 'cooling' | KeyDisableReason }> {
    const now = this.#now()
    return this.#keys.map((k) => ({ id: k.id, state: k.disabled ?? (k.coolUntil > now ? 'cooling' : 'active') }))
  }
}
