import { Worker } from 'node:worker_threads'
import type { FastifyBaseLogger } from 'fastify'
import type { RuleMatch, RuleSet } from './filter-rules.js'
import { yieldTurn } from '../../lib/loop-budget.js'

/*
 * One worker thread that runs the filter's RE2 automaton over large texts. re2js matches at ~150 MB/s in
 * JavaScript and a match pass cannot be cut into slices (a match may span the cut), so on the event loop a
 * 1 MB prompt that gets past the screen would stall every stream in flight for ~7 ms, a 10 MB one for ~70.
 * Started on first use; requests queue in the thread. If the thread dies, the requests in flight fail and
 * the next one starts a new thread, so the caller can fall back to matching on its own thread.
 */

type Pending = { worker: Worker, resolve: (hit: RuleMatch | null) => void, reject: (err: Error) => void }

// Source (.ts under the test runner's loader) or build output (.js): the thread file sits beside this one.
const THREAD = new URL(`./rule-worker-thread${import.meta.url.slice(import.meta.url.lastIndexOf('.'))}`, import.meta.url)

export class RuleWorker {
  readonly #rules: { phrases: readonly string[], patterns: readonly string[] }
  #worker: Worker | null = null
  /** The current thread has compiled its rules and answers at once. */
  #ready = false
  #next = 1
  readonly #pending = new Map<number, Pending>()

  constructor (phrases: readonly string[] = [], patterns: readonly string[] = []) {
    this.#rules = { phrases, patterns }
  }

  /**
   * Whether the thread is up with its rules compiled; if not, it is started. Until then callers match on
   * their own thread: compiling many rules takes seconds (1,000 phrases: ~6 s), which no request should wait for.
   */
  get ready (): boolean {
    if (this.#worker === null) this.#start()
    return this.#ready
  }

  /** The first rule matching any of `texts` (normalised), in the order given, as RuleSet.first would find it. */
  async first (texts: readonly string[]): Promise<RuleMatch | null> {
    const worker = this.#worker ?? this.#start()
    const id = this.#next++
    return await new Promise<RuleMatch | null>((resolve, reject) => {
      this.#pending.set(id, { worker, resolve, reject })
      worker.postMessage({ id, texts })
    })
  }

  #start (): Worker {
    const worker = new Worker(THREAD, { workerData: this.#rules })
    // An idle thread must not keep a process alive (tests, a host app shutting down without close()).
    worker.unref()
    worker.on('message', ({ id, hit, ready }: { id: number, hit: RuleMatch | null, ready?: true }) => {
      if (ready === true) {
        this.#ready = this.#worker === worker
        return
      }
      this.#pending.get(id)?.resolve(hit)
      this.#pending.delete(id)
    })
    // Only this thread's requests fail: a thread that exits after its replacement started must not take the
    // new thread's requests with it.
    const fail = (err: Error): void => {
      if (this.#worker === worker) {
        this.#worker = null
        this.#ready = false
      }
      for (const [id, p] of this.#pending) {
        if (p.worker !== worker) continue
        p.reject(err)
        this.#pending.delete(id)
      }
    }
    worker.on('error', fail)
    worker.on('exit', (code) => { fail(new Error(`rule worker exited with code ${code}`)) })
    this.#worker = worker
    return worker
  }

  /**
   * Stop the thread: asked to finish its queue and exit (so it shuts down cleanly, coverage and all), and
   * terminated if it has not within `graceMs` (a thread still starting under load, or a very long match).
   */
  async close (graceMs = 5000): Promise<void> {
    const worker = this.#worker
    this.#worker = null
    this.#ready = false
    if (worker === null) return
    const exited = new Promise<void>((resolve) => worker.once('exit', () => resolve()))
    worker.postMessage({ close: true })
    const timer = setTimeout(() => worker.terminate(), graceMs)
    await exited
    clearTimeout(timer)
  }
}

/** Texts at least this long (in total) go to the worker: below it, the pass costs less than the hand-off. */
export const WORKER_MIN_CHARS = 64 * 1024

/**
 * The first rule matching any of `views` (normalised, in order): the screen runs here; the automaton runs in
 * `worker` when the texts it must read are large and the worker is ready, and here otherwise, or when the
 * worker fails (logged as a warning: a verdict is never skipped).
 */
export async function firstMatch (rules: RuleSet, worker: RuleWorker | null, views: readonly string[], log: FastifyBaseLogger): Promise<RuleMatch | null> {
  const texts = views.filter((v) => rules.mayMatch(v))
  if (texts.length === 0) return null
  if (worker !== null && texts.reduce((n, v) => n + v.length, 0) >= WORKER_MIN_CHARS && worker.ready) {
    try {
      return await worker.first(texts)
    } catch (err) {
      log.warn({ err }, 'oai-proxy: filter worker failed; matching on the event loop')
    }
  }
  for (const text of texts) {
    await yieldTurn(text.length)
    const hit = rules.first(text)
    if (hit !== null) return hit
  }
  return null
}
