import { createHash } from 'node:crypto'
import { PassThrough } from 'node:stream'
import { setTimeout as sleep } from 'node:timers/promises'
import OpenAI, { toFile } from 'openai'
import t from 'tap'
import { pngBytes, readUploadedForm, TEST_BOUNDARY, wavBytes } from '../../../testing/fake-uploads.js'
import { AUDIO, CT, IMAGES, LIMITS, chunked, cut, form, forward, open, refusal } from '../../multipart-helper.js'

/*
 * plugins/form-body/multipart.ts: a client's form read up to the decision point and re-written for upstream. Upstream's
 * view is read back with testing/fake-uploads.ts, a separate parser.
 */

const sha = (b: Buffer): string => createHash('sha256').update(b).digest('hex')
const wav = wavBytes(0.5)
const png = pngBytes(3, 2)
const events = ['readable', 'end', 'error', 'close'] as const
const listeners = (s: NodeJS.EventEmitter): number[] => events.map((e) => s.listenerCount(e))

t.test('fields then a file (the Python SDK order): typed fields, a sniffed file, a clean form upstream', async (t) => {
  const body = form([
    { name: 'model', value: 'whisper-1' },
    { name: 'temperature', value: '0.25' },
    { name: 'stream', value: 'false' },
    { name: 'include[]', value: 'logprobs' },
    { name: 'include', value: 'x' },
    { name: 'timestamp_granularities[]', value: 'word' },
    { name: 'chunking_strategy', value: 'auto' },
    { name: 'file', filename: '../../etc/passwd.mp3', contentType: 'text/html', data: wav }
  ])
  const opened = await open(body)
  t.strictSame(opened.head, {
    fields: { model: 'whisper-1', temperature: 0.25, stream: false, include: ['logprobs', 'x'], timestamp_granularities: ['word'], chunking_strategy: 'auto' },
    files: [{ field: 'file', type: 'wav', name: 'upload.wav' }]
  })
  t.ok(opened.held() >= wav.length, 'the whole small form is held')
  const seen = await forward(opened)
  t.match(seen.boundary, /^oai-proxy-[0-9a-f]{32}$/, 'our boundary, not the client\'s')
  t.strictSame(seen.fields, { model: ['whisper-1'], temperature: ['0.25'], stream: ['false'], 'include[]': ['logprobs', 'x'], 'timestamp_granularities[]': ['word'], chunking_strategy: ['auto'] })
  t.strictSame(seen.files, [{ field: 'file', filename: 'upload.wav', contentType: 'audio/wav', bytes: wav.length, sha256: sha(wav) }])
  t.strictSame(seen.rawHeaderBlocks.at(-1), 'Content-Disposition: form-data; name="file"; filename="upload.wav"\r\nContent-Type: audio/wav')
  t.equal(opened.failure(), null)
  t.equal(opened.held(), 0, 'nothing held once forwarded')
})

/** The bytes the openai Node SDK sends for a call (its own form encoding, captured by a fake fetch). */
async function sdkForm (call: (client: OpenAI) => Promise<unknown>): Promise<{ body: Buffer, contentType: string }> {
  let sent: { body: Buffer, contentType: string } | undefined
  const fetch = async (url: string | URL | Request, init?: RequestInit): Promise<Response> => {
    const req = new Request(url, init)
    sent = { body: Buffer.from(await req.arrayBuffer()), contentType: req.headers.get('content-type') ?? '' }
    return new Response(JSON.stringify({ text: 'ok', created: 0, data: [] }), { headers: { 'content-type': 'application/json' } })
  }
  await call(new OpenAI({ apiKey: 'sk-test', baseURL: 'http://upstream.invalid/v1', fetch, maxRetries: 0 }))
  return sent as { body: Buffer, contentType: string }
}

t.test('the openai Node SDK\'s forms, file first as in its README, are read and forwarded whole', async (t) => {
  const audio = await sdkForm(async (c) => c.audio.transcriptions.create({
    file: await toFile(wav, 'speech.wav'),
    model: 'gpt-4o-transcribe-diarize',
    chunking_strategy: { type: 'server_vad', threshold: 0.5 },
    include: ['logprobs']
  }))
  t.ok(audio.body.indexOf('name="file"') < audio.body.indexOf('name="model"'), 'the SDK writes the file first')
  const a = await open(audio.body, AUDIO, LIMITS, audio.contentType)
  t.strictSame(a.head.fields, { model: 'gpt-4o-transcribe-diarize', chunking_strategy: { type: 'server_vad', threshold: '0.5' }, include: ['logprobs'] })
  const seenA = await forward(a)
  t.strictSame(seenA.fields, { model: ['gpt-4o-transcribe-diarize'], 'chunking_strategy[type]': ['server_vad'], 'chunking_strategy[threshold]': ['0.5'], 'include[]': ['logprobs'] })
  t.equal(seenA.files[0]?.sha256, sha(wav))

  const big = pngBytes(200, 200)
  const images = await sdkForm(async (c) => c.images.edit({ image: [await toFile(png, 'a.png'), await toFile(big, 'b.png')], prompt: 'a cat', model: 'gpt-image-1', n: 2 }))
  const i = await open(images.body, IMAGES, LIMITS, images.contentType)
  t.strictSame(i.head, { fields: { prompt: 'a cat', model: 'gpt-image-1', n: 2 }, files: [{ field: 'image', type: 'png', name: 'upload.png' }, { field: 'image', type: 'png', name: 'upload.png' }] })
  const seenI = await forward(i)
  t.strictSame(seenI.files.map((f) => [f.field, f.sha256]), [['image[]', sha(png)], ['image[]', sha(big)]])
})

t.test('a small form cut at every byte, and byte by byte, reads the same', async (t) => {
  const body = form([{ name: 'model', value: 'whisper-1' }, { name: 'include[]', value: 'é\r\n--x' }, { name: 'file', filename: 'a', contentType: 'x', data: png.subarray(0, 40) }])
  const spec = { ...AUDIO, files: { file: { multiple: false, types: ['png'] as const } } }
  const whole = await forward(await open(body, spec))
  for (let at = 0; at <= body.length; at++) {
    const seen = await forward(await open(cut(body, [at]), spec))
    if (JSON.stringify({ ...seen, boundary: '' }) !== JSON.stringify({ ...whole, boundary: '' })) t.fail(`cut at ${at}`)
  }
  const bytes = await forward(await open(cut(body, [...Array(body.length).keys()].slice(1)), spec))
  t.strictSame({ ...bytes, boundary: '' }, { ...whole, boundary: '' }, 'one byte per chunk')
  t.strictSame(whole.fields, { model: ['whisper-1'], 'include[]': ['é\r\n--x'] })
  t.equal(whole.files[0]?.sha256, sha(png.subarray(0, 40)))
})

t.test('file first under holdBytes: held until the model arrives, then forwarded (the Node SDK order)', async (t) => {
  const audio = wavBytes(8) // 256 KB: over streamAfterBytes (64 KiB), under holdBytes (512 KiB)
  const body = form([{ name: 'file', filename: 'a.wav', contentType: 'audio/wav', data: audio }, { name: 'model', value: 'whisper-1' }])
  const opened = await open(cut(body, [...Array(Math.floor(body.length / 16384)).keys()].map((i) => (i + 1) * 16384)))
  t.strictSame(opened.head.fields, { model: 'whisper-1' }, 'the decisive field was read before the decision')
  const seen = await forward(opened)
  t.equal(seen.files[0]?.sha256, sha(audio))
})

t.test('file first over holdBytes: refused with the field to move, before anything is forwarded', async (t) => {
  const audio = wavBytes(20) // 640 KB > holdBytes
  const body = form([{ name: 'file', filename: 'a.wav', contentType: 'audio/wav', data: audio }, { name: 'model', value: 'whisper-1' }])
  const err = await refusal(open(cut(body, [100_000, 300_000, 600_000])))
  t.match(err, { code: 'OAI_PROXY_MULTIPART_FIELD_ORDER', statusCode: 400, param: 'model', message: /^Field 'model' must come before the file parts: .*524288-byte limit; send the text fields before the file parts\.$/ })
})

t.test('a small form is decided only when it has ended (a)', async (t) => {
  const body = form([{ name: 'model', value: 'whisper-1' }, { name: 'file', filename: 'a', contentType: 'x', data: wav }])
  const source = new PassThrough()
  let decided = false
  const opening = open(source).then((f) => { decided = true; return f })
  source.write(body.subarray(0, body.length - 10))
  await sleep(20)
  t.equal(decided, false, 'not decided before the close delimiter')
  source.end(body.subarray(body.length - 10))
  const seen = await forward(await opening)
  t.equal(seen.files[0]?.sha256, sha(wav))
})

t.test('past streamAfterBytes with the fields in (b): decided early, then the source is read only as upstream reads', async (t) => {
  const source = new PassThrough({ highWaterMark: 16384 })
  const audio = wavBytes(32) // 1 MB
  const body = form([{ name: 'model', value: 'whisper-1' }, { name: 'file', filename: 'a', contentType: 'x', data: audio }])
  source.write(body.subarray(0, 200_000))
  const opened = await open(source)
  t.strictSame(opened.head.fields, { model: 'whisper-1' })
  const held = opened.held()
  t.ok(held >= LIMITS.streamAfterBytes && held <= 200_000, `held ${held}`)
  source.write(body.subarray(200_000, 600_000))
  await sleep(10)
  t.ok(source.readableLength >= 300_000, 'nothing reads the client while upstream() is not pulling')
  t.equal(opened.held(), held)
  const reading = forward(opened)
  source.end(body.subarray(600_000))
  const seen = await reading
  t.equal(seen.files[0]?.sha256, sha(audio))
  t.strictSame(listeners(source), [0, 0, 0, 0], 'no listener left on the source')
})

t.test('a text field after streaming started cuts the upstream body with MULTIPART_FIELD_ORDER', async (t) => {
  const audio = wavBytes(8)
  const body = form([{ name: 'model', value: 'whisper-1' }, { name: 'file', filename: 'a', contentType: 'x', data: audio }, { name: 'prompt', value: 'late' }])
  const opened = await open(cut(body, [70_000, 140_000, 210_000]))
  const err = await refusal(forward(opened))
  t.match(err, { code: 'OAI_PROXY_MULTIPART_FIELD_ORDER', param: 'prompt', message: `Field 'prompt' arrived after ${audio.length} bytes of file data that were already being forwarded; send the text fields before the file parts.` })
  t.equal(opened.failure(), err)
  t.equal(opened.held(), 0)
})

t.test('more file parts after streaming started are checked and streamed', async (t) => {
  const big = Buffer.concat([png, Buffer.alloc(100_000, 7)])
  const body = form([{ name: 'model', value: 'm' }, { name: 'prompt', value: 'p' }, { name: 'image[]', filename: 'a', contentType: 'x', data: big }, { name: 'image', filename: 'b', contentType: 'x', data: png }, { name: 'mask', filename: 'c', contentType: 'x', data: png }])
  const opened = await open(cut(body, [80_000]), IMAGES)
  t.equal(opened.head.files.length, 1, 'decided in the first file')
  const seen = await forward(opened)
  t.strictSame(seen.files.map((f) => [f.field, f.filename, f.sha256]), [['image[]', 'upload.png', sha(big)], ['image', 'upload.png', sha(png)], ['mask', 'upload.png', sha(png)]])
  t.equal(opened.head.files.length, 3, 'head.files grows as files arrive')
})

t.test('upstream() writes the fields it is given: changed, removed, typed; bad values throw', async (t) => {
  const opened = await open(form([{ name: 'model', value: 'whisper-1' }, { name: 'prompt', value: 'x' }, { name: 'file', filename: 'a', contentType: 'x', data: wav }]))
  t.throws(() => opened.upstream({ model: null }), TypeError)
  t.throws(() => opened.upstream({ include: [Number.NaN] }), TypeError)
  t.throws(() => opened.upstream({ chunking_strategy: { a: {} } }), TypeError)
  const seen = await forward(opened, { model: 'whisper-2', prompt: undefined, temperature: 1, stream: true, include: ['a', 2], chunking_strategy: { type: 'server_vad', threshold: 0.5 }, 'we"ird\r\n': 'y' })
  t.strictSame(seen.fields, { model: ['whisper-2'], temperature: ['1'], stream: ['true'], 'include[]': ['a', '2'], 'chunking_strategy[type]': ['server_vad'], 'chunking_strategy[threshold]': ['0.5'], 'we%22ird%0D%0A': ['y'] })
  t.throws(() => opened.upstream({}), /called once/)
})

t.test('a form without files: the fields alone, and no fields at all', async (t) => {
  const seen = await forward(await open(form([{ name: 'model', value: 'm' }])))
  t.strictSame([seen.fields, seen.files], [{ model: ['m'] }, []])
  const empty = await forward(await open(form([{ name: 'model', value: 'm' }])), {})
  t.strictSame([empty.fields, empty.files, empty.rawHeaderBlocks], [{}, [], []])
})

t.test('the recorder refuses what is not a whole form', async (t) => {
  const rec = (ct: string, body: string): Promise<unknown> => readUploadedForm(Object.assign(chunked([Buffer.from(body)]), { headers: { 'content-type': ct } }))
  await t.rejects(rec('text/plain', ''), /no multipart boundary/)
  await t.rejects(rec(CT, `--${TEST_BOUNDARY}\r\n\r\nx`), /ended before/)
  await t.rejects(rec('multipart/form-data; boundary="b"', '--bxx'), /bad boundary line/)
})
