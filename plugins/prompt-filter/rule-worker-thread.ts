import { parentPort, workerData } from 'node:worker_threads'
import { RuleSet } from './filter-rules.js'

/*
 * The prompt filter's automaton in a worker thread (see rule-worker.ts): the same rules, compiled here once,
 * run over large texts so that a long match pass never stalls the proxy's event loop.
 */

const { phrases, patterns } = workerData as { phrases: string[], patterns: string[] }
const rules = new RuleSet(phrases, patterns)
rules.warm()
parentPort?.postMessage({ ready: true })

parentPort?.on('message', ({ id, texts, close }: { id: number, texts: string[], close?: true }) => {
  // Asked to stop: with the port closed the thread has nothing left to wait for and exits.
  if (close === true) {
    parentPort?.close()
    return
  }
  let hit = null
  for (const text of texts) {
    hit = rules.first(text)
    if (hit !== null) break
  }
  parentPort?.postMessage({ id, hit })
})
