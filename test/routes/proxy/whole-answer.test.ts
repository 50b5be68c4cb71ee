import { Readable } from 'node:stream'
import { text } from 'node:stream/consumers'
import t from 'tap'
import { WHOLE_ANSWER_LIMIT, mayReadWhole, readSmall } from '../../../routes/proxy/whole-answer.js'

const chunks = (sizes: number[]) => sizes.map((n, i) => Buffer.alloc(n, 97 + (i % 26)))

t.test('mayReadWhole: JSON without a declared length past the limit', async (t) => {
  t.ok(mayReadWhole('application/json', undefined), 'chunked JSON')
  t.ok(mayReadWhole('application/json; charset=utf-8', '1234'))
  t.ok(mayReadWhole('application/json', String(WHOLE_ANSWER_LIMIT)))
  t.notOk(mayReadWhole('application/json', String(WHOLE_ANSWER_LIMIT + 1)), 'declared too long: streamed from the start')
  t.notOk(mayReadWhole('text/event-stream', undefined), 'SSE')
  t.notOk(mayReadWhole('audio/mpeg', '100'), 'other media')
  t.notOk(mayReadWhole(undefined, '100'))
})

t.test('readSmall: a body within the limit comes back whole, one chunk without a copy', async (t) => {
  const one = chunks([1000])
  t.equal(await readSmall(Readable.from(one), 4096), one[0], 'the same buffer')
  const several = chunks([1000, 2000, 1096])
  t.same(await readSmall(Readable.from(several), 4096), Buffer.concat(several), 'exactly at the limit')
  t.same(await readSmall(Readable.from([]), 4096), Buffer.alloc(0), 'empty')
})

t.test('readSmall: past the limit, everything read is put back and the body streams on, in order', async (t) => {
  const parts = chunks([3000, 3000, 3000, 3000])
  const body = Readable.from(parts)
  t.equal(await readSmall(body, 4096), null)
  t.equal(body.isPaused(), true, 'left paused for the caller')
  t.equal(await text(body), Buffer.concat(parts).toString(), 'no byte lost, duplicated or reordered')
  const single = chunks([5000])
  const big = Readable.from(single)
  t.equal(await readSmall(big, 4096), null, 'a single chunk past the limit')
  t.equal(await text(big), single[0]?.toString())
})

t.test('readSmall: a body that fails or closes before its end rejects, and a later error has a listener', async (t) => {
  const failing = new Readable({ read () {} })
  const read = readSmall(failing, 4096)
  failing.push(Buffer.from('{"partial":'))
  failing.destroy(new Error('other side closed'))
  await t.rejects(read, /other side closed/)

  const closing = new Readable({ read () {} })
  const read2 = readSmall(closing, 4096)
  closing.push(Buffer.from('{'))
  closing.destroy()
  await t.rejects(read2, /closed before its end/)

  const body = new Readable({ read () {} })
  const read3 = readSmall(body, 4)
  body.push(Buffer.from('0123456789'))
  t.equal(await read3, null)
  // Between the answer and the caller's own listeners an error must not crash the process.
  body.destroy(new Error('late'))
  await new Promise((resolve) => setImmediate(resolve))
  t.equal(body.destroyed, true)
})
