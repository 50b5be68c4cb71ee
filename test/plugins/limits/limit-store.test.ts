import { IncomingMessage, ServerResponse } from 'node:http'
import { Socket } from 'node:net'
import { PassThrough, Readable } from 'node:stream'
import t from 'tap'
import { MemoryLimitStore } from '../../../plugins/limits/limit-store.js'
import { onResponseClose, watchClose } from '../../../lib/response-close.js'
import { chain } from '../../../routes/proxy/stream-chain.js'

t.test('memory token windows: reserve, refuse, settle, clamp', async (t) => {
  const now = 1_000_000
  const store = new MemoryLimitStore(() => now)
  const a = await store.reserveTokens('c', 600, 1000, 60_000)
  t.match(a, { admitted: true, used: 600, limit: 1000, resetMs: 60_000 - (now % 60_000) })
  const refused = await store.reserveTokens('c', 500, 1000, 60_000)
  t.match(refused, { admitted: false, used: 600 })
  await refused.settle(10_000)
  await a.settle(100)
  t.match(await store.reserveTokens('c', 900, 1000, 60_000), { admitted: true, used: 1000 }, 'settled down to the real 100')
  const b = await store.reserveTokens('other', 50, 1000, 60_000)
  await b.settle(-500)
  t.match(await store.reserveTokens('other', 1000, 1000, 60_000), { admitted: true, used: 1000 }, 'a refund never goes below zero')
})

t.test('memory token windows: late settlements land in the current window once the old one is swept', async (t) => {
  let now = 0
  const store = new MemoryLimitStore(() => now)
  const overrun = await store.reserveTokens('c', 100, 1000, 1000)
  const refund = await store.reserveTokens('c', 100, 1000, 1000)
  now = 120_000 // past the old window's expiry and the next sweep
  t.match(await store.reserveTokens('c', 10, 1000, 1000), { admitted: true, used: 10 }, 'a fresh window')
  await overrun.settle(400)
  await refund.settle(0)
  t.match(await store.reserveTokens('c', 10, 1000, 1000), { used: 320 }, 'the +300 overrun was charged here; the old refund was dropped')
})

t.test('memory slots: a client holds at most max, released slots come back', async (t) => {
  const store = new MemoryLimitStore()
  const one = await store.acquireSlot('c', 's1', 2)
  const two = await store.acquireSlot('c', 's2', 2)
  t.strictSame([one.admitted, two.admitted, (await store.acquireSlot('c', 's3', 2)).admitted], [true, true, false])
  await one.release()
  t.equal((await store.acquireSlot('c', 's4', 2)).admitted, true)
  await two.release()
  await two.release()
  t.equal((await store.acquireSlot('d', 's1', 1)).admitted, true, 'clients are independent')
})

const response = () => new ServerResponse(new IncomingMessage(new Socket()))

t.test('onResponseClose runs once on close, watched or not, and at once when already closed', async (t) => {
  const calls: string[] = []
  const unwatched = response()
  onResponseClose(unwatched, () => calls.push('unwatched'))
  unwatched.emit('close')
  const watched = response()
  watchClose(watched)
  watchClose(watched)
  onResponseClose(watched, () => calls.push('queued'))
  watched.emit('close')
  onResponseClose(watched, () => calls.push('late'))
  await new Promise((resolve) => setImmediate(resolve))
  t.strictSame(calls, ['unwatched', 'queued', 'late'])
})

t.test('chain: data flows, an error cuts the chain, an early close destroys the source', async (t) => {
  const ok = chain(Readable.from(['a', 'b']), [new PassThrough(), new PassThrough()], (err) => { t.fail('no error'); return err })
  let text = ''
  for await (const c of ok) text += String(c)
  t.equal(text, 'ab')

  const errors: string[] = []
  const src = new PassThrough()
  const last = chain(src, [new PassThrough()], (err) => {
    errors.push(err.message)
    return new Error(`mapped: ${err.message}`)
  })
  const lastError = new Promise<Error>((resolve) => last.once('error', resolve))
  src.write('x')
  src.destroy(new Error('upstream reset'))
  t.equal((await lastError).message, 'mapped: upstream reset', 'the last stage fails with the error the caller mapped the source error to')
  t.strictSame(errors, ['upstream reset'])

  const upstream = new PassThrough()
  const stage = chain(upstream, [new PassThrough()], (err) => {
    errors.push(err.message)
    return err
  })
  stage.once('error', () => {})
  stage.destroy(new Error('stage failed'))
  await new Promise((resolve) => setImmediate(resolve))
  t.equal(upstream.destroyed, true, 'a failing stage destroys the source too')
  t.strictSame(errors, ['upstream reset', 'stage failed'])

  const source = new PassThrough()
  const tail = chain(source, [new PassThrough()], (err) => err)
  tail.destroy()
  await new Promise((resolve) => setImmediate(resolve))
  t.equal(source.destroyed, true, 'the client leaving destroys the upstream body')
})
