import type { ServerResponse } from 'node:http'
import { onResponseClose } from '../../lib/response-close.js'

/*
 * Two limits on a proxied response body (threats S08, S09), checked by one ticker for all responses:
 * - stalled: the client has not taken a byte for `stallMs` while we hold data for it. Backpressure keeps
 *   memory bounded (the upstream is paused, nothing piles up here), but a client that never reads would
 *   hold an upstream call, a concurrency slot and a socket forever. Progress is a 'drain': the socket took
 *   everything queued, so a client reading slowly but steadily is never cut, and one reading a byte a
 *   second (a kernel buffer's worth in hours) is.
 * - too long: the call has lasted `maxMs` since it was forwarded, however healthy.
 * Idle upstreams are not this guard's business: undici's body timeout (UPSTREAM_IDLE_TIMEOUT_MS) covers
 * them. Node's server timeouts do not apply to a response being written, so a healthy stream is never cut
 * by them; this guard is the only cap on its length.
 */

export interface StreamLimits {
  /** Longest time without progress while data waits for the client, in ms; 0 = never cut. */
  stallMs: number
  /** Longest time from forwarding to the last byte, in ms; 0 = no cap. */
  maxMs: number
}

export type CutReason = 'stalled' | 'too_long'

interface Watched {
  res: ServerResponse
  deadline: number
  /** When the client was first seen behind (0: it is keeping up). */
  behindSince: number
  onCut: (reason: CutReason) => void
}

export class StreamGuard {
  readonly #limits: StreamLimits
  readonly #watched = new Set<Watched>()
  readonly #tickMs: number
  #timer: NodeJS.Timeout | null = null

  constructor (limits: StreamLimits) {
    this.#limits = limits
    // Fine enough that a cut comes at most a quarter late, coarse enough to cost nothing with 10k streams.
    const finest = Math.min(limits.stallMs || Infinity, limits.maxMs || Infinity)
    this.#tickMs = Math.max(25, Math.min(1000, Math.floor(finest / 4)))
  }

  /**
   * Watch `res` until it closes; `onCut` runs once, just before it is destroyed (which aborts upstream).
   * `startedAt` is when the call was forwarded (Date.now()).
   */
  watch (res: ServerResponse, startedAt: number, onCut: (reason: CutReason) => void): void {
    if (this.#limits.stallMs === 0 && this.#limits.maxMs === 0) return
    const w: Watched = { res, deadline: this.#limits.maxMs === 0 ? Infinity : startedAt + this.#limits.maxMs, behindSince: 0, onCut }
    this.#watched.add(w)
    const progress = () => { w.behindSince = 0 }
    res.on('drain', progress)
    // Also when the client left before this call (then it runs at once).
    onResponseClose(res, () => {
      res.off('drain', progress)
      this.#watched.delete(w)
    })
    // Started once and kept (a wake-up per tick when idle), not per burst: at low concurrency the set
    // empties after nearly every request.
    if (this.#timer === null) {
      this.#timer = setInterval(() => this.#tick(), this.#tickMs)
      // Never keeps a process (or a host app's tests) alive on its own.
      this.#timer.unref()
    }
  }

  close (): void {
    if (this.#timer !== null) clearInterval(this.#timer)
    this.#timer = null
    this.#watched.clear()
  }

  #tick (): void {
    const now = Date.now()
    for (const w of this.#watched) {
      let reason: CutReason | null = null
      if (now >= w.deadline) {
        reason = 'too_long'
      } else if (this.#limits.stallMs > 0 && w.res.writableNeedDrain) {
        if (w.behindSince === 0) w.behindSince = now
        else if (now - w.behindSince >= this.#limits.stallMs) reason = 'stalled'
      } else {
        w.behindSince = 0
      }
      if (reason !== null) {
        this.#watched.delete(w)
        w.onCut(reason)
        w.res.destroy()
      }
    }
  }
}
