import { setTimeout as pause } from 'node:timers/promises'
import { newTally, type Tally } from './load.js'
import type { LoopDelay, ProbeStats } from './probe.js'
import { cpuMicros, type Side } from './sse-phase.js'

/*
 * Targets taking turns: `rounds` rounds in which every side takes one turn, the order rotating each round,
 * so drift on a noisy machine hits every side alike (run.ts's phases, feature-cost.ts).
 */

export interface Rounds {
  /** Every turn's requests together. */
  tally: Tally
  /** The proxy's CPU time over its turns (0 for a side without a child). */
  cpuUs: number
  /** The proxy's CPU µs per completed request, turn by turn. */
  cpuPerReq: number[]
  /** With `loopDelay`: the proxy's event-loop delay, turn by turn. */
  delays: LoopDelay[]
}

/** Counts each proxy's CPU time during its own turns and, with `loopDelay`, its event-loop delay per turn. */
export async function inRounds (sides: readonly Side[], rounds: number, run: (s: Side, tally: Tally) => Promise<void>, loopDelay = false): Promise<Map<string, Rounds>> {
  const out = new Map(sides.map((s) => [s.name, { tally: newTally(), cpuUs: 0, cpuPerReq: [], delays: [] } as Rounds]))
  for (let r = 0; r < rounds; r++) {
    for (let i = 0; i < sides.length; i++) {
      const s = sides[(i + r) % sides.length] as Side
      const acc = out.get(s.name) as Rounds
      if (loopDelay) await s.child?.call('delay')
      const before = await s.child?.call<ProbeStats>('stats')
      const okBefore = acc.tally.ok
      await run(s, acc.tally)
      if (s.child !== undefined && before !== undefined) {
        const us = cpuMicros(before.cpu, (await s.child.call<ProbeStats>('stats')).cpu)
        acc.cpuUs += us
        acc.cpuPerReq.push(us / Math.max(1, acc.tally.ok - okBefore))
        if (loopDelay) acc.delays.push(await s.child.call<LoopDelay>('delay'))
      }
      await pause(100)
    }
  }
  return out
}
