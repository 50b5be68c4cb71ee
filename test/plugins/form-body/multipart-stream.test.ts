import { createHash } from 'node:crypto'
import { Readable } from 'node:stream'
import { isDeepStrictEqual } from 'node:util'
import v8 from 'node:v8'
import vm from 'node:vm'
import fc from 'fast-check'
import t from 'tap'
import { multipartBody, pngBytes, readUploadedForm, wavBytes } from '../../../testing/fake-uploads.js'
import { IMAGES, LIMITS, cut, forward, open, wavChunks } from '../../multipart-helper.js'
import { openForm, type FormSpec } from '../../../plugins/form-body/multipart.js'

/* Uploads stream with bounded memory; any valid form survives the round trip; throughput. */

v8.setFlagsFromString('--expose-gc')
const gc = vm.runInNewContext('gc') as () => void
const MB = 1_000_000
const MiB = 1024 * 1024
const sha = (b: Buffer): string => createHash('sha256').update(b).digest('hex')
const limits = { ...LIMITS, streamAfterBytes: MiB, holdBytes: 25 * MiB, maxFileBytes: 25 * MiB }
const AUDIO_ONLY: FormSpec = { fields: { model: 'string' }, files: { file: { multiple: false, types: ['wav'] as const } }, decisive: ['model'] }

/** A client form: the model, then a generated WAV file of `bytes` bytes, never held whole (multipartBody streams it). */
const bigForm = (bytes: number): Readable => multipartBody([{ name: 'model', value: 'whisper-1' }, { name: 'file', filename: 'a.wav', contentType: 'audio/wav', data: wavChunks(bytes) }], 'b')

const used = (): number => { const m = process.memoryUsage(); return m.heapUsed + m.arrayBuffers }

t.test('a 25 MB upload streams into a slow upstream with held() and the heap far below 25 MB', async (t) => {
  gc()
  const before = used()
  const opened = await openForm(bigForm(25 * MB), 'multipart/form-data; boundary=b', AUDIO_ONLY, limits)
  const atDecision = opened.held()
  t.ok(atDecision >= MiB && atDecision < MiB + 128 * 1024, `held ${atDecision} bytes at the decision`)
  const { body, contentType } = opened.upstream(opened.head.fields)
  let maxHeld = 0
  let maxGrowth = 0
  let reads = 0
  async function * slow (): AsyncGenerator<Buffer> {
    for await (const chunk of body) {
      if (++reads % 8 === 0) {
        await new Promise((resolve) => setTimeout(resolve, 1))
        gc()
        maxGrowth = Math.max(maxGrowth, used() - before)
      }
      maxHeld = Math.max(maxHeld, opened.held())
      yield chunk as Buffer
    }
  }
  const seen = await readUploadedForm(Object.assign(slow(), { headers: { 'content-type': contentType } }))
  t.equal(seen.files[0]?.bytes, 25 * MB)
  t.ok(maxHeld < 1.5 * MiB, `held() at most ${maxHeld} bytes (the ${MiB} held before the decision, then a few chunks)`)
  t.ok(maxGrowth < 8 * MiB, `heap + buffers grew by at most ${(maxGrowth / MiB).toFixed(1)} MiB`)
  t.comment(`25 MB via a slow sink: held() ${(atDecision / MiB).toFixed(2)} MiB at the decision, then max ${(maxHeld / MiB).toFixed(2)} MiB, heap+arrayBuffers growth max ${(maxGrowth / MiB).toFixed(1)} MiB over ${reads} reads`)
})

t.test('throughput: a 25 MB form read, re-written and hashed', async (t) => {
  const started = performance.now()
  const opened = await openForm(bigForm(25 * MB), 'multipart/form-data; boundary=b', AUDIO_ONLY, limits)
  let total = 0
  for await (const chunk of opened.upstream(opened.head.fields).body) total += (chunk as Buffer).length
  const s = (performance.now() - started) / 1000
  t.ok(total > 25 * MB)
  t.ok(25 / s > 50, `${(25 / s).toFixed(0)} MB/s`)
  t.comment(`25 MB form through openForm + upstream(): ${(s * 1000).toFixed(0)} ms, ${(25 / s).toFixed(0)} MB/s`)
})

interface Entry { name: string, wire: string, value: string | Buffer, file: boolean }

t.test('round trip: any valid image-edit form, cut anywhere, reaches upstream with the same fields and file hashes', async (t) => {
  const text = fc.string({ unit: fc.constantFrom('a', 'é', '\r', '\n', '-', '\u0000', '"', 'b', '𝄞'), maxLength: 30 })
  const image = fc.tuple(fc.constantFrom(pngBytes(2, 2), Buffer.from([0xff, 0xd8, 0xff]), Buffer.from('RIFF\0\0\0\0WEBPVP8 ')), fc.uint8Array({ maxLength: 300 }))
    .map(([head, rest]) => Buffer.concat([head, Buffer.from(rest), Buffer.from('\r\n--b')]))
  const entries = fc.record({
    model: text,
    prompt: text,
    n: fc.integer({ min: -1000, max: 1000 }),
    size: fc.option(text, { nil: undefined }),
    images: fc.array(fc.tuple(image, fc.boolean()), { minLength: 0, maxLength: 4 }),
    order: fc.nat(),
    cuts: fc.array(fc.nat(), { maxLength: 5 })
  })
  await fc.assert(fc.asyncProperty(entries, async (e) => {
    const list: Entry[] = [
      { name: 'model', wire: 'model', value: e.model, file: false },
      { name: 'prompt', wire: 'prompt', value: e.prompt, file: false },
      { name: 'n', wire: 'n', value: String(e.n), file: false },
      ...(e.size === undefined ? [] : [{ name: 'size', wire: 'size', value: e.size, file: false }]),
      ...e.images.map(([data, bracket]): Entry => ({ name: 'image', wire: bracket ? 'image[]' : 'image', value: data, file: true }))
    ]
    // Any order: small forms are decided at their end, so a field may come after the files.
    const shift = e.order % list.length
    const ordered = [...list.slice(shift), ...list.slice(0, shift)]
    const body = Buffer.concat([...ordered.map((p) => Buffer.concat([
      Buffer.from(`--x\r\nContent-Disposition: form-data; name="${p.wire}"${p.file ? '; filename="f"' : ''}\r\n\r\n`), Buffer.from(p.value), Buffer.from('\r\n')
    ])), Buffer.from('--x--\r\n')])
    const points = [...new Set(e.cuts.map((c) => c % (body.length + 1)))].sort((a, b) => a - b)
    const opened = await open(cut(body, points), IMAGES, LIMITS, 'multipart/form-data; boundary=x')
    const want = { model: e.model, prompt: e.prompt, n: e.n, ...(e.size === undefined ? {} : { size: e.size }) }
    const seen = await forward(opened)
    const sent = Object.fromEntries(Object.entries(want).map(([k, v]) => [k, [String(v)]]))
    const files = ordered.filter((p) => p.file).map((p) => [p.wire, sha(p.value as Buffer)])
    // A boolean, so fast-check shrinks a failure to its smallest form.
    return isDeepStrictEqual(opened.head.fields, want) && isDeepStrictEqual(seen.fields, sent) && isDeepStrictEqual(seen.files.map((f) => [f.field, f.sha256]), files)
  }), { numRuns: 300 })
  t.pass('300 forms')
})

t.test('the recorder reads headers cut across chunks, a missing Content-Type, and streamed client forms', async (t) => {
  const wav = wavBytes(1)
  const head = '--q\r\nContent-Disposition: form-data; name="file"; filename="a.wav"\r\n\r\n'
  const seen = await readUploadedForm(Object.assign(Readable.from([Buffer.from(head.slice(0, 30)), Buffer.from(head.slice(30)), wav, Buffer.from('\r\n--q--')]), { headers: { 'content-type': 'multipart/form-data; boundary="q"' } }))
  t.strictSame(seen.files, [{ field: 'file', filename: 'a.wav', contentType: '', bytes: wav.length, sha256: sha(wav) }])
  await t.rejects(readUploadedForm(Object.assign(Readable.from([]), { headers: {} })), /no multipart boundary/)
  async function * twice (): AsyncGenerator<Buffer> { yield wav.subarray(0, 10); yield wav.subarray(10) }
  const streamed = multipartBody([{ name: 'a', filename: 'x', contentType: 'audio/wav', data: wav }, { name: 'b', filename: 'y', contentType: 'audio/wav', data: twice() }, { name: 'c', value: 'v' }], 'q')
  const form = await readUploadedForm(Object.assign(streamed, { headers: { 'content-type': 'multipart/form-data; boundary=q' } }))
  t.strictSame([form.fields, form.files.map((f) => [f.field, f.sha256])], [{ c: ['v'] }, [['a', sha(wav)], ['b', sha(wav)]]])
})
