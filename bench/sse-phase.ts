import { setTimeout as pause } from 'node:timers/promises'
import type { Child } from './children.js'
import { sseBurst, type Burst, type Target } from './load.js'
import { tcpCounters, tcpDelta, type TcpCounters } from './netstat.js'
import type { ProbeStats } from './probe.js'
import { round, summarize } from './stats.js'

/*
 * Phase 3 of `npm run bench`: bursts of concurrent SSE streams, one target at a time, and what each proxy
 * spent on them (memory per open stream, CPU per stream). run.ts runs the other phases and the report.
 */

/** One target of the run: the fake directly, or a proxy child. */
export interface Side { name: string, target: Target, child?: Child }

export const cpuMicros = (a: NodeJS.CpuUsage, b: NodeJS.CpuUsage): number => (b.user - a.user) + (b.system - a.system)

interface Mem { rssBefore: number, peakRss: number, bytesPerStream: number, cpuUs: number }

export interface SseOptions { streams: number, rounds: number, timeoutMs: number }

export function burstSummary (b: Burst) {
  const ok = b.results.filter((r) => r.status === 200)
  const errors: Record<string, number> = {}
  for (const r of b.results) {
    const key = r.error ?? (r.status !== 200 ? `HTTP ${String(r.status)}` : r.done ? undefined : 'no [DONE]')
    if (key !== undefined) errors[key] = (errors[key] ?? 0) + 1
  }
  const ttfb = summarize(ok.flatMap((r) => (r.ttfbMs === undefined ? [] : [r.ttfbMs])))
  const total = summarize(ok.flatMap((r) => (r.totalMs === undefined ? [] : [r.totalMs])))
  const frames = ok.map((r) => r.frames)
  return {
    started: b.results.length,
    responded: b.results.filter((r) => r.status !== undefined).length,
    completed: b.results.filter((r) => r.done).length,
    peakOpen: b.peakOpen,
    wallMs: round(b.wallMs),
    ttfbP50: round(ttfb.p50),
    ttfbP99: round(ttfb.p99),
    durationP50: round(total.p50),
    durationP99: round(total.p99),
    framesMin: frames.length > 0 ? Math.min(...frames) : 0,
    framesMax: frames.length > 0 ? Math.max(...frames) : 0,
    errors
  }
}

/**
 * The order of the sides in round `r`: a Williams design (first row 0, 1, n-1, 2, n-2, …, each next row
 * one more, mod n). With an even n and n rounds every side bursts once in every position and right after
 * every other side once. A burst's TTFB tail depends on what ran just before it (docs/performance.md: the
 * same proxy measured 0.8-1.4 s at p99 after its own burst and 3.8-4.4 s right after another's), so a fixed
 * or merely reversed order would favour whichever target it happens to place well.
 */
export function burstOrder (n: number, r: number): number[] {
  const first = Array.from({ length: n }, (_, i) => i % 2 === 1 ? (i + 1) / 2 : (n - i / 2) % n)
  return first.map((x) => (x + r) % n)
}

/**
 * `opts.rounds` bursts of `opts.streams` streams per side, in the order of `burstOrder`. The bursts of a
 * side are pooled: TTFB and duration percentiles over all their streams (and each burst's TTFB p99 beside
 * them); memory from the burst with the most bytes per open stream (a later burst reuses memory an earlier
 * one grew).
 */
export async function ssePhase (sides: readonly Side[], body: Buffer, opts: SseOptions) {
  const bursts = new Map(sides.map((s) => [s.name, { bursts: [] as Burst[], tcp: [] as TcpCounters[], mem: [] as Mem[] }]))
  for (let r = 0; r < opts.rounds; r++) {
    for (const s of burstOrder(sides.length, r).map((i) => sides[i] as Side)) {
      const acc = bursts.get(s.name) as { bursts: Burst[], tcp: TcpCounters[], mem: Mem[] }
      await pause(1000)
      // A full GC first, so that the heap grown by the earlier phases (256 KB bodies) is not what the
      // streams fill; RSS barely shrinks, so this narrows the bias rather than removing it.
      await s.child?.call('gc')
      const before = await s.child?.call<ProbeStats>('mark')
      const tcp = tcpCounters()
      const burst = await sseBurst(s.target.origin, s.target.headers, body, opts.streams, opts.timeoutMs)
      const after = await s.child?.call<ProbeStats>('stats')
      acc.bursts.push(burst)
      acc.tcp.push(tcpDelta(tcp, tcpCounters()))
      if (before !== undefined && after !== undefined) {
        acc.mem.push({ rssBefore: before.rss, peakRss: after.phasePeak, bytesPerStream: (after.phasePeak - before.rss) / Math.max(1, burst.peakOpen), cpuUs: cpuMicros(before.cpu, after.cpu) })
      }
    }
  }
  return new Map([...bursts].map(([name, acc]) => {
    const pooled = burstSummary({ results: acc.bursts.flatMap((b) => b.results), peakOpen: Math.max(...acc.bursts.map((b) => b.peakOpen)), wallMs: Math.max(...acc.bursts.map((b) => b.wallMs)) })
    const tcp: TcpCounters = {}
    for (const d of acc.tcp) for (const [k, v] of Object.entries(d) as Array<[keyof TcpCounters, number]>) tcp[k] = (tcp[k] ?? 0) + v
    const mem = acc.mem.reduce<Mem | undefined>((a, b) => (a === undefined || b.bytesPerStream > a.bytesPerStream ? b : a), undefined)
    return [name, {
      ...pooled,
      peakOpenPerBurst: acc.bursts.map((b) => b.peakOpen),
      ttfbP99PerBurst: acc.bursts.map((b) => burstSummary(b).ttfbP99),
      wallMsPerBurst: acc.bursts.map((b) => round(b.wallMs)),
      tcp,
      ...(mem === undefined
        ? {}
        : {
            rssBefore: mem.rssBefore,
            peakRss: Math.max(...acc.mem.map((m) => m.peakRss)),
            bytesPerStream: mem.bytesPerStream,
            bytesPerStreamPerBurst: acc.mem.map((m) => Math.round(m.bytesPerStream)),
            cpuUsPerStream: acc.mem.reduce((a, m) => a + m.cpuUs, 0) / pooled.started
          })
    }] as const
  }))
}
