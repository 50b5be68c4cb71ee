import { spawnSync } from 'node:child_process'
import { readdirSync, readFileSync } from 'node:fs'
import { cpus, loadavg, platform } from 'node:os'

/*
 * Machine notes for the top of the report: on a small shared machine the figures depend as much on what
 * else is running as on the proxy, so say what that was.
 */

export interface Busy { pid: number, cpuPercent: number, command: string }

const CLOCK_TICKS = 100 // USER_HZ: 100 on every Linux the bench targets

/** CPU ticks (user + system) of every process, from /proc/<pid>/stat. */
function ticks (): Map<number, { ticks: number, comm: string }> {
  const out = new Map<number, { ticks: number, comm: string }>()
  for (const entry of readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue
    try {
      const stat = readFileSync(`/proc/${entry}/stat`, 'utf8')
      const close = stat.lastIndexOf(')')
      const fields = stat.slice(close + 2).split(' ')
      out.set(Number(entry), { ticks: Number(fields[11]) + Number(fields[12]), comm: stat.slice(stat.indexOf('(') + 1, close) })
    } catch {} // the process exited meanwhile
  }
  return out
}

function commandLine (pid: number, comm: string): string {
  try {
    const args = readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0').filter((a) => a !== '')
    return args.length === 0 ? comm : args.map((a) => a.replace(/^.*\/(node_modules\/|dist\/)/, '$1')).join(' ').slice(0, 80)
  } catch {
    return comm
  }
}

/**
 * The `n` processes that used the most CPU over the next `ms` milliseconds (this one and `exclude` left out), as a
 * percentage of one core. Falls back to `ps` (CPU averaged over each process's lifetime) without /proc.
 */
export async function busiest (n = 3, ms = 1000, exclude: readonly number[] = []): Promise<{ how: string, top: Busy[] }> {
  if (platform() !== 'linux') return { how: 'ps, lifetime average', top: fromPs(n) }
  const before = ticks()
  await new Promise((resolve) => setTimeout(resolve, ms))
  const after = ticks()
  const top: Busy[] = []
  for (const [pid, a] of after) {
    if (pid === process.pid || exclude.includes(pid)) continue
    const used = a.ticks - (before.get(pid)?.ticks ?? a.ticks)
    if (used > 0) top.push({ pid, cpuPercent: Math.round(used / CLOCK_TICKS / (ms / 1000) * 100), command: commandLine(pid, a.comm) })
  }
  return { how: `/proc over ${ms} ms`, top: top.sort((x, y) => y.cpuPercent - x.cpuPercent).slice(0, n) }
}

function fromPs (n: number): Busy[] {
  const ps = spawnSync('ps', ['-eo', 'pid,pcpu,comm', '--sort=-pcpu'], { encoding: 'utf8' })
  if (ps.status !== 0) return []
  return ps.stdout.split('\n').slice(1).map((l) => l.trim().split(/\s+/)).filter((f) => f.length >= 3 && Number(f[0]) !== process.pid)
    .slice(0, n).map((f) => ({ pid: Number(f[0]), cpuPercent: Number(f[1]), command: f.slice(2).join(' ') }))
}

export const showBusy = (b: { how: string, top: Busy[] }): string =>
  b.top.length === 0 ? `nothing else busy (${b.how})` : `${b.top.map((p) => `${p.command} ${p.cpuPercent}%`).join('; ')} (${b.how}, % of one core)`

export function machine () {
  const cpu = cpus()
  return { node: process.version, platform: platform(), cpus: cpu.length, cpuModel: cpu[0]?.model ?? '?', loadAvg: loadavg().map((x) => Math.round(x * 100) / 100) }
}
