import { readFileSync } from 'node:fs'

/*
 * Linux TCP counters that explain a slow connection burst: a full accept queue drops SYNs
 * (ListenOverflows/ListenDrops) and the client retries ~1 s later (TCPSynRetrans). They are system-wide,
 * so other work on the machine can add to them. Elsewhere they read as undefined.
 */

const NAMES = ['ListenOverflows', 'ListenDrops', 'TCPSynRetrans'] as const
export type TcpCounters = Partial<Record<typeof NAMES[number], number>>

export function tcpCounters (): TcpCounters {
  try {
    const lines = readFileSync('/proc/net/netstat', 'utf8').split('\n').filter((l) => l.startsWith('TcpExt:'))
    const names = lines[0]?.split(/\s+/) ?? []
    const values = lines[1]?.split(/\s+/) ?? []
    const out: TcpCounters = {}
    for (const n of NAMES) {
      const i = names.indexOf(n)
      if (i > 0 && values[i] !== undefined) out[n] = Number(values[i])
    }
    return out
  } catch {
    return {}
  }
}

export function tcpDelta (before: TcpCounters, after: TcpCounters): TcpCounters {
  const out: TcpCounters = {}
  for (const n of NAMES) {
    const a = before[n]
    const b = after[n]
    if (a !== undefined && b !== undefined) out[n] = b - a
  }
  return out
}

export const showTcp = (d: TcpCounters): string => (d.ListenOverflows === undefined ? 'n/a' : `${d.ListenOverflows}/${d.TCPSynRetrans ?? 0}`)
