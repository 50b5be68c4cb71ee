/*
 * Child side of the tiny IPC protocol between `run.ts` and its children: the child announces
 * `{ type: 'ready', url }`, then answers `{ id, cmd }` with `{ id, result }`. A child whose parent goes
 * away exits, so an interrupted benchmark leaves no process behind.
 */

export type Handlers = Record<string, () => unknown>

export function serveIpc (url: string, handlers: Handlers): void {
  const send = process.send?.bind(process)
  if (send === undefined) throw new Error('bench child: must be started with an IPC channel (child_process.fork)')
  process.on('message', (raw: unknown) => {
    const { id, cmd } = raw as { id: number, cmd: string }
    const handler = handlers[cmd]
    Promise.resolve(handler === undefined ? { error: `unknown command ${cmd}` } : handler()).then(
      (result) => send({ id, result }),
      (err: unknown) => send({ id, result: { error: (err as Error).message } })
    )
  })
  process.on('disconnect', () => process.exit(0))
  send({ type: 'ready', url })
}
