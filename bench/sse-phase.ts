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
 * `opts.rounds` bursts of `opts.streams` streams per side (the order reversed every other round). The bursts
 * of a side are pooled: TTFB and duration percentiles over all their streams; memory from the burst with
 * the most bytes per open stream (a later burst reuses memory an earlier one grew).
 */
export async function ssePhase (sides: readonly Side[], body: Buffer, opts: SseOptions) {
  const bursts = new Map(sides.map((s) => [s.name, { bursts: [] as Burst[], tcp: [] as TcpCounters[], mem: [] as Mem[] }]))
  for (let r = 0; r < opts.rounds; r++) {
    for (const s of r % 2 === 0 ? sides : [...sides].reverse()) {
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
