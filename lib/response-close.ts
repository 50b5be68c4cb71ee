import type { ServerResponse } from 'node:http'

/*
 * "Run this when the response closes" that cannot miss the event. A client may leave while an async hook
 * is awaiting (a store round trip); a 'close' listener added after that would never fire and a slot or
 * an upstream call would leak. So the suite starts watching in its first onRequest hook, and later
 * callers either queue behind the watcher or, if the response already closed, run at once.
 */

interface Watch { closed: boolean, fns: Array<() => void> }
const watches = new WeakMap<ServerResponse, Watch>()

export function watchClose (res: ServerResponse): void {
  if (watches.has(res)) return
  const w: Watch = { closed: res.socket?.destroyed === true, fns: [] }
  watches.set(res, w)
  res.once('close', () => {
    w.closed = true
    for (const fn of w.fns.splice(0)) fn()
  })
}

export function onResponseClose (res: ServerResponse, fn: () => void): void {
  const w = watches.get(res)
  if (w === undefined) res.once('close', fn)
  else if (w.closed) setImmediate(fn)
  else w.fns.push(fn)
}
