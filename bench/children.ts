import { fork, type ChildProcess } from 'node:child_process'
import { createInterface } from 'node:readline'
import type { Readable } from 'node:stream'
import { fileURLToPath } from 'node:url'
import { IMAGE_ENV } from './deployed-env.js'

/*
 * Parent side of the bench children (see ipc.ts): fork, wait for `ready`, call commands, collect what the
 * child logs (a proxy that logs warnings under load is a finding), stop it by its own pid.
 */

export interface ChildLogs {
  lines: number
  /** pino lines at warn (40) or above, plus any non-JSON line (stack traces, Node warnings). */
  warnings: number
  samples: string[]
}

export interface Child {
  name: string
  url: string
  pid: number
  logs: ChildLogs
  /** Set when the child exited before we stopped it. */
  crashed: () => string | undefined
  call: <T>(cmd: string) => Promise<T>
  stop: () => Promise<unknown>
}

function collect (stream: Readable | null, logs: ChildLogs, name: string): void {
  if (stream === null) return
  createInterface({ input: stream }).on('line', (line) => {
    logs.lines++
    let level = 100
    try { level = (JSON.parse(line) as { level?: number }).level ?? 100 } catch {}
    if (level >= 40) {
      logs.warnings++
      if (logs.samples.length < 5) logs.samples.push(`${name}: ${line.slice(0, 300)}`)
    }
  })
}

/**
 * Every child runs with the image's glibc setting (bench/deployed-env.ts): the proxies are measured as they
 * are deployed, the floor alike. `BENCH_GLIBC_DEFAULTS=1` leaves glibc's defaults, to see what it changes.
 */
const DEPLOYED_ENV: Readonly<Record<string, string>> = process.env.BENCH_GLIBC_DEFAULTS === '1' ? {} : IMAGE_ENV

export async function startChild (name: string, script: string, env: Record<string, string>, readyTimeoutMs = 15_000, execArgv: string[] = []): Promise<Child> {
  const proc: ChildProcess = fork(fileURLToPath(new URL(script, import.meta.url)), [], {
    env: { ...process.env, ...DEPLOYED_ENV, ...env },
    execArgv: [...execArgv, ...(process.env.BENCH_CHILD_FLAGS ?? '').split(' ').filter((f) => f !== '')],
    stdio: ['ignore', 'pipe', 'pipe', 'ipc']
  })
  const logs: ChildLogs = { lines: 0, warnings: 0, samples: [] }
  collect(proc.stdout, logs, name)
  collect(proc.stderr, logs, name)

  let nextId = 1
  const pending = new Map<number, { resolve: (v: unknown) => void, reject: (e: Error) => void }>()
  let exited: string | undefined
  let stopping = false
  const exitedP = new Promise<void>((resolve) => proc.once('exit', (code, signal) => {
    exited = `${name} exited (code ${String(code)}, signal ${String(signal)})`
    for (const p of pending.values()) p.reject(new Error(exited))
    pending.clear()
    resolve()
  }))

  const url = await new Promise<string>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`${name}: not ready after ${readyTimeoutMs} ms`)), readyTimeoutMs)
    exitedP.then(() => reject(new Error(`${name}: exited before ready; ${logs.samples.join(' | ')}`)), () => {})
    proc.on('message', (raw: unknown) => {
      const msg = raw as { type?: string, url?: string, id?: number, result?: unknown }
      if (msg.type === 'ready' && msg.url !== undefined) {
        clearTimeout(timer)
        resolve(msg.url)
      } else if (msg.id !== undefined) {
        pending.get(msg.id)?.resolve(msg.result)
        pending.delete(msg.id)
      }
    })
  }).catch((err: unknown) => {
    proc.kill('SIGKILL')
    throw err
  })

  const call = <T>(cmd: string): Promise<T> => new Promise<T>((resolve, reject) => {
    if (exited !== undefined) return reject(new Error(exited))
    const id = nextId++
    pending.set(id, { resolve: resolve as (v: unknown) => void, reject })
    proc.send({ id, cmd })
  })

  return {
    name,
    url,
    pid: proc.pid as number,
    logs,
    crashed: () => (stopping ? undefined : exited),
    call,
    async stop () {
      if (exited !== undefined) return undefined
      stopping = true
      const last = await Promise.race([call('stop'), new Promise((resolve) => setTimeout(resolve, 3000))]).catch(() => undefined)
      const timer = setTimeout(() => proc.kill('SIGKILL'), 5000)
      await exitedP
      clearTimeout(timer)
      return last
    }
  }
}
