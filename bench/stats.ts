/* Small statistics and formatting helpers for the benchmark. */

/** Nearest-rank percentile of an ascending-sorted array (NaN when empty). */
export function percentile (sorted: readonly number[], p: number): number {
  if (sorted.length === 0) return Number.NaN
  const rank = Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1))
  return sorted[rank] as number
}

/** The middle value (the mean of the two middle ones for an even count; NaN when empty). */
export function median (xs: readonly number[]): number {
  if (xs.length === 0) return Number.NaN
  const s = [...xs].sort((a, b) => a - b)
  const mid = Math.floor(s.length / 2)
  return s.length % 2 === 1 ? s[mid] as number : ((s[mid - 1] as number) + (s[mid] as number)) / 2
}

export interface Summary { n: number, p50: number, p99: number, max: number }

export function summarize (samples: readonly number[]): Summary {
  const sorted = [...samples].sort((a, b) => a - b)
  return { n: sorted.length, p50: percentile(sorted, 50), p99: percentile(sorted, 99), max: sorted.at(-1) ?? Number.NaN }
}

/** Round for display and JSON: 2 decimals below 10, 1 below 100, integers above. */
export function round (x: number): number {
  if (!Number.isFinite(x)) return x
  const a = Math.abs(x)
  const f = a < 10 ? 100 : a < 100 ? 10 : 1
  return Math.round(x * f) / f
}

export const fmt = (x: number): string => (Number.isFinite(x) ? round(x).toLocaleString('en-US') : 'n/a')
export const signed = (x: number): string => (Number.isFinite(x) ? (x >= 0 ? '+' : '') + fmt(x) : 'n/a')
export const mb = (bytes: number): number => Math.round(bytes / 1024 / 1024 * 10) / 10

/** Render rows as aligned columns (first column left-aligned, the rest right-aligned). */
export function table (rows: readonly string[][]): string {
  const widths: number[] = []
  for (const row of rows) row.forEach((cell, i) => { widths[i] = Math.max(widths[i] ?? 0, cell.length) })
  return rows.map((row) => row.map((cell, i) => (i === 0 ? cell.padEnd(widths[i] ?? 0) : cell.padStart(widths[i] ?? 0))).join('  ').trimEnd()).join('\n')
}

/** A markdown table, columns padded so that it also reads in a terminal. */
export function markdown (rows: readonly string[][]): string {
  const widths: number[] = []
  for (const row of rows) row.forEach((cell, i) => { widths[i] = Math.max(widths[i] ?? 3, cell.length) })
  const line = (row: readonly string[]) => `| ${row.map((cell, i) => cell.padEnd(widths[i] ?? 0)).join(' | ')} |`
  return [line(rows[0] ?? []), line(widths.map((w) => '-'.repeat(w))), ...rows.slice(1).map(line)].join('\n')
}

export const sumErrors = (e: Record<string, number>): number => Object.values(e).reduce((a, b) => a + b, 0)
export const merge = (...all: Array<Record<string, number>>): Record<string, number> => {
  const out: Record<string, number> = {}
  for (const e of all) for (const [k, v] of Object.entries(e)) out[k] = (out[k] ?? 0) + v
  return out
}
