/**
 * OpenAI's `x-ratelimit-reset-*` format: Go's time.Duration string ("12ms", "1s", "1.5s", "6m0s",
 * "1h2m3s"), per openai-wire.md §1.2.
 */
export function goDuration (ms: number): string {
  const total = Math.max(0, Math.round(ms))
  if (total < 1000) return `${total}ms`
  const h = Math.floor(total / 3_600_000)
  const m = Math.floor((total % 3_600_000) / 60_000)
  // Integer arithmetic (milliseconds are whole): "5", "1.5", "0.025", never a float's rounding.
  const rest = total % 60_000
  const frac = rest % 1000
  let s = String((rest - frac) / 1000)
  if (frac > 0) s += `.${String(frac).padStart(3, '0').replace(/0+$/, '')}`
  if (h > 0) return `${h}h${m}m${s}s`
  if (m > 0) return `${m}m${s}s`
  return `${s}s`
}

/** `Retry-After` (whole seconds, rounded up, at least 1) and `retry-after-ms`, and whether to retry at all. */
export function retryHeaders (waitMs: number, retryable = true): Record<string, string> {
  const ms = Math.max(1, Math.ceil(waitMs))
  const headers: Record<string, string> = { 'retry-after': String(Math.ceil(ms / 1000)), 'retry-after-ms': String(ms) }
  // The SDK would otherwise sleep for Retry-After, twice; a wait over a minute is better reported than slept.
  if (!retryable || ms > 60_000) headers['x-should-retry'] = 'false'
  return headers
}

const GO_UNITS: Record<string, number> = { h: 3_600_000, m: 60_000, s: 1000, ms: 1, us: 0.001, µs: 0.001, ns: 0.000001 }

/** Milliseconds in one of upstream's `x-ratelimit-reset-*` durations ("1s", "6m0s", "20ms"); 0 when absent or unreadable. */
export function parseGoDuration (text: string | undefined): number {
  if (text === undefined || !/^(\d+(\.\d+)?(h|ms|m|s|us|µs|ns))+$/.test(text)) return 0
  let ms = 0
  for (const [, n, unit] of text.matchAll(/(\d+(?:\.\d+)?)(h|ms|m|s|us|µs|ns)/g)) ms += Number(n) * (GO_UNITS[unit as string] as number)
  return ms
}
