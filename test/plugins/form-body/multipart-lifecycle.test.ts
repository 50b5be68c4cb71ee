import { PassThrough, Readable } from 'node:stream'
import { setTimeout as sleep } from 'node:timers/promises'
import t from 'tap'
import { openForm } from '../../../plugins/form-body/multipart.js'
import { multipartBody, pngBytes, wavBytes } from '../../../testing/fake-uploads.js'
import { AUDIO, IMAGES, LIMITS, cut, form, forward, open, refusal } from '../../multipart-helper.js'

/* plugins/form-body/multipart.ts after the decision: held(), discard(), aborts on either side, and errors while streaming. */

const png = pngBytes(3, 2)
const events = ['readable', 'end', 'error', 'close'] as const
const listeners = (s: NodeJS.EventEmitter): number[] => events.map((e) => s.listenerCount(e))

t.test('a spec whose decisive field is not one of its fields is a programming error', async (t) => {
  await t.rejects(openForm(Readable.from([]), 'multipart/form-data; boundary=b', { ...AUDIO, decisive: ['model', 'modle'] }, LIMITS), new TypeError('FormSpec.decisive names modle, which is not one of its fields'))
})

t.test('held() counts the queued parts, the text, the splitter\'s tail and a file still being sniffed', async (t) => {
  const big = Buffer.concat([png, Buffer.alloc(70_000)])
  const start = Buffer.from('\r\n--b\r\nContent-Disposition: form-data; name="image"; filename="z"\r\n\r\n0123456789')
  const parts = [{ name: 'model', value: 'm' }, { name: 'prompt', value: 'p' }, { name: 'image', filename: 'a', contentType: 'x', data: big }]
  const body = Buffer.concat([multipartBody(parts, 'b').subarray(0, -9), start])
  const source = new PassThrough()
  source.write(body)
  const opened = await open(source, IMAGES, LIMITS, 'multipart/form-data; boundary=b')
  const header = `--oai-proxy-${'0'.repeat(32)}\r\nContent-Disposition: form-data; name="image"; filename="upload.png"\r\nContent-Type: image/png\r\n\r\n`
  // Queued: the first file's part and CRLF; text: "m" and "p"; the splitter's tail: 4 bytes; sniffing: 10 - 4 bytes.
  t.equal(opened.held(), header.length + big.length + 2 + 2 + 4 + 6)
  opened.discard()
})

t.test('discard() stops reading and releases the form', async (t) => {
  const source = new PassThrough()
  const body = form([{ name: 'model', value: 'm' }, { name: 'file', filename: 'a', contentType: 'x', data: wavBytes(8) }])
  source.write(body.subarray(0, 100_000))
  const opened = await open(source)
  t.ok(opened.held() > 0)
  opened.discard()
  t.equal(opened.held(), 0)
  t.strictSame(listeners(source), [0, 0, 0, 0])
  t.throws(() => opened.upstream(opened.head.fields), /not after discard/)
  source.on('error', () => {}).destroy(new Error('later'))
  t.equal(opened.failure(), null, 'the source is the caller\'s after discard()')
})

t.test('a client abort after the decision destroys the upstream body with the stream\'s error', async (t) => {
  const source = new PassThrough()
  const body = form([{ name: 'model', value: 'm' }, { name: 'file', filename: 'a', contentType: 'x', data: wavBytes(8) }])
  source.write(body.subarray(0, 100_000))
  const waiting = await open(source)
  source.destroy(new Error('aborted'))
  await sleep(1)
  t.match(waiting.failure(), { message: 'aborted' })
  t.match(await refusal(forward(waiting)), { message: 'aborted' })

  const source2 = new PassThrough()
  source2.write(body.subarray(0, 100_000))
  const streaming = await open(source2)
  const reading = refusal(forward(streaming))
  await sleep(1)
  source2.destroy()
  t.match(await reading, { code: 'OAI_PROXY_MULTIPART_INVALID', message: /closed the connection before the form ended/ })
})

t.test('upstream giving up (its body destroyed) stops reading the client', async (t) => {
  const source = new PassThrough()
  source.write(form([{ name: 'model', value: 'm' }, { name: 'file', filename: 'a', contentType: 'x', data: wavBytes(8) }]).subarray(0, 100_000))
  const opened = await open(source)
  const { body } = opened.upstream(opened.head.fields)
  body.resume()
  await sleep(1)
  body.destroy()
  await sleep(1)
  t.strictSame(listeners(source), [0, 0, 0, 0])
  t.equal(opened.failure(), null)
  t.equal(opened.held(), 0)
})

t.test('a file over maxFileBytes after the decision ends the upstream body with 413', async (t) => {
  const body = form([{ name: 'model', value: 'm' }, { name: 'file', filename: 'a', contentType: 'x', data: wavBytes(8) }])
  const opened = await open(cut(body, [70_000]), AUDIO, { ...LIMITS, maxFileBytes: 200_000 })
  t.match(await refusal(forward(opened)), { code: 'OAI_PROXY_FILE_TOO_LARGE', statusCode: 413, param: 'file', message: "Uploaded files are too large: 'file' is over 200000 bytes." })
})
