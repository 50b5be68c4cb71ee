import { monitorEventLoopDelay } from 'node:perf_hooks'
import { serveIpc } from './ipc.js'

/*
 * What a proxy child (proxy-child, floor-child) reports to run.ts over IPC: its RSS (sampled every 50 ms;
 * the peak overall and since the last `mark`), its CPU time (process.cpuUsage()), and its event-loop
 * delay (monitorEventLoopDelay at 1 ms resolution, while run.ts turns it on).
 */

export interface ProbeStats { rss: number, peak: number, phasePeak: number, cpu: NodeJS.CpuUsage }
/** Milliseconds (all 0 when nothing was recorded). The monitor's timer fires every 1 ms, so ~1 ms is an idle loop, not a delay. */
export interface LoopDelay { p50: number, p99: number, max: number, count: number }

export function serveProbe (url: string, close: () => Promise<unknown>): void {
  let peak = process.memoryUsage.rss()
  let phasePeak = peak
  const sample = (): number => {
    const rss = process.memoryUsage.rss()
    if (rss > peak) peak = rss
    if (rss > phasePeak) phasePeak = rss
    return rss
  }
  setInterval(sample, 50).unref()
  const report = (): ProbeStats => ({ rss: sample(), peak, phasePeak, cpu: process.cpuUsage() })

  // Off until run.ts asks (phase 2 only): its 1 ms timer costs CPU, which would count in the other
  // phases' CPU per request, more so at low load.
  const delay = monitorEventLoopDelay({ resolution: 1 })
  const ms = (ns: number): number => Math.round(ns / 1e4) / 100

  process.once('SIGTERM', () => {
    process.stdout.write(`PROXY_RSS ${JSON.stringify(report())}\n`)
    process.exit(0)
  })

  serveIpc(url, {
    stats: report,
    /** Start a new phase: its peak starts from the current RSS. */
    mark: () => {
      phasePeak = 0
      return report()
    },
    /** A full garbage collection when the child runs with --expose-gc (run.ts forks them so), then `stats`. */
    gc: async () => {
      const gc = (globalThis as { gc?: () => void }).gc
      if (gc !== undefined) {
        gc()
        await new Promise((resolve) => setTimeout(resolve, 200))
      }
      return { ...report(), collected: gc !== undefined }
    },
    /**
     * Start or stop the event-loop delay monitor. The reset after enable() matters: without it the first
     * sample after a pause would span the whole pause.
     */
    loopOn: () => {
      delay.enable()
      delay.reset()
      return true
    },
    loopOff: () => {
      delay.disable()
      delay.reset()
      return true
    },
    /** The event-loop delay since the last `delay` or `loopOn`, then reset. */
    delay: (): LoopDelay => {
      const out = delay.count === 0
        ? { p50: 0, p99: 0, max: 0, count: 0 }
        : { p50: ms(delay.percentile(50)), p99: ms(delay.percentile(99)), max: ms(delay.max), count: delay.count }
      delay.reset()
      return out
    },
    /** What a soak watches for leaks: RSS, heap, external memory and active handles (sockets, timers, …). */
    health: () => {
      const m = process.memoryUsage()
      return { rss: m.rss, heapUsed: m.heapUsed, external: m.external, handles: process.getActiveResourcesInfo().length }
    },
    stop: async () => {
      const last = report()
      setImmediate(() => { close().finally(() => process.exit(0)) })
      return last
    }
  })
}
