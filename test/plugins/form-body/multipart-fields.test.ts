import t from 'tap'
import { pngBytes, wavBytes } from '../../../testing/fake-uploads.js'
import { AUDIO, IMAGES, LIMITS, chunked, forward, open, refusal } from '../../multipart-helper.js'

/* Text values by kind, repeats, slots (file or text), file types and sizes, and the text caps. */

const B = 'multipart/form-data; boundary=b'
const raw = (parts: Array<[string, string | Buffer, string?]>): Buffer => Buffer.concat([
  ...parts.map(([name, value, filename]) => Buffer.concat([
    Buffer.from(`--b\r\nContent-Disposition: form-data; name="${name}"${filename === undefined ? '' : `; filename="${filename}"`}\r\n\r\n`),
    Buffer.from(value),
    Buffer.from('\r\n')
  ])),
  Buffer.from('--b--')
])
const fields = async (parts: Array<[string, string | Buffer, string?]>, spec = AUDIO, limits = LIMITS): Promise<Record<string, unknown>> => (await open(raw(parts), spec, limits, B)).head.fields
const refuse = async (parts: Array<[string, string | Buffer, string?]>, spec = AUDIO, limits = LIMITS): ReturnType<typeof refusal> => await refusal(open(raw(parts), spec, limits, B))
const png = pngBytes(1, 1)

t.test('values are converted by kind, strictly', async (t) => {
  t.strictSame(await fields([['temperature', '-0.5e1'], ['stream', 'true']]), { temperature: -5, stream: true })
  t.strictSame(await fields([['n', '-3'], ['model', 'm'], ['prompt', '']], IMAGES), { n: -3, model: 'm', prompt: '' })
  const refused: Array<[string, string, RegExp]> = [
    ['temperature', 'abc', /must be a number/],
    ['temperature', '1e400', /must be a number/],
    ['temperature', '.5', /must be a number/],
    ['temperature', ' 1', /must be a number/],
    ['stream', 'yes', /must be 'true' or 'false'/],
    ['stream', 'True', /must be 'true' or 'false'/]
  ]
  for (const [name, value, message] of refused) t.match(await refuse([[name, value]]), { code: 'OAI_PROXY_MULTIPART_INVALID', statusCode: 400, param: name, message }, `${name}=${value}`)
  for (const value of ['1.5', '01', '9007199254740993', '', '1e3']) t.match(await refuse([['n', value]], IMAGES), { param: 'n', message: /must be an integer/ }, `n=${value}`)
})

t.test('json fields: a string, a JSON object, or name[key] parts as the SDKs send them', async (t) => {
  t.strictSame(await fields([['chunking_strategy', 'auto']]), { chunking_strategy: 'auto' })
  t.strictSame(await fields([['chunking_strategy', '[1]']]), { chunking_strategy: '[1]' }, 'only an object is parsed')
  t.strictSame(await fields([['chunking_strategy', ' {"type":"server_vad","threshold":0.5,"on":true}']]), { chunking_strategy: { type: 'server_vad', threshold: 0.5, on: true } })
  t.strictSame(await fields([['chunking_strategy[type]', 'server_vad'], ['chunking_strategy[prefix_padding_ms]', '300']]), { chunking_strategy: { type: 'server_vad', prefix_padding_ms: '300' } })
  for (const value of ['{bad', '{}', '{"a":[1]}', '{"a":{"b":1}}', '{"a":null}', '{"a-b":1}']) t.match(await refuse([['chunking_strategy', value]]), { param: 'chunking_strategy', message: /must be a string or a JSON object/ }, value)
  const repeats: Array<Array<[string, string]>> = [
    [['chunking_strategy[type]', 'a'], ['chunking_strategy[type]', 'b']],
    [['chunking_strategy', 'auto'], ['chunking_strategy[type]', 'b']],
    [['chunking_strategy[type]', 'a'], ['chunking_strategy', 'auto']],
    [['model', 'a'], ['model', 'b']]
  ]
  for (const parts of repeats) t.match(await refuse(parts), { code: 'OAI_PROXY_MULTIPART_INVALID', message: /is given more than once/ }, JSON.stringify(parts))
})

t.test('text must be UTF-8; control characters and a BOM are kept as sent', async (t) => {
  t.match(await refuse([['prompt', Buffer.from([0x61, 0xc3, 0x28])]]), { param: 'prompt', message: /not valid UTF-8/ })
  t.match(await refuse([['prompt', Buffer.from([0xed, 0xa0, 0x80])]]), { message: /not valid UTF-8/ }, 'a lone surrogate')
  t.strictSame(await fields([['prompt', '\uFEFF\u0000\u0007x\u202e']]), { prompt: '\uFEFF\u0000\u0007x\u202e' })
})

t.test('slots: a file where text goes, text where a file goes, and a single file twice are refused', async (t) => {
  t.match(await refuse([['model', 'm', 'model.txt']]), { param: 'model', message: /field 'model' must be text, not a file/ })
  t.match(await refuse([['file', 'RIFF']]), { param: 'file', message: /field 'file' must be a file/ })
  const wav = wavBytes(0.01)
  t.match(await refuse([['file', wav, 'a'], ['file', wav, 'b']]), { param: 'file', message: /takes one file/ })
  t.match(await refuse([['mask', png, 'a'], ['mask', png, 'b']], IMAGES), { param: 'mask', message: /takes one file/ })
})

t.test('files: sniffed type against the field\'s list, empty files, short files', async (t) => {
  const star = Buffer.concat([Buffer.from('--b\r\nContent-Disposition: form-data; name="file"; filename*=UTF-8\'\'%E2%82%AC.wav\r\n\r\n'), wavBytes(0.01), Buffer.from('\r\n--b--')])
  t.strictSame((await open(star, AUDIO, LIMITS, B)).head.files, [{ field: 'file', type: 'wav', name: 'upload.wav' }], 'filename* alone makes a file part')
  t.match(await refuse([['file', png, 'speech.wav']]), { code: 'OAI_PROXY_FILE_TYPE_NOT_ALLOWED', statusCode: 400, param: 'file', message: "Invalid file format for 'file'. Supported formats: flac, mp3, mp4, m4a, ogg, wav, webm." })
  t.match(await refuse([['file', 'hello, this is text', 'a.mp3']]), { code: 'OAI_PROXY_FILE_TYPE_NOT_ALLOWED' })
  t.match(await refuse([['file', 'abcde', 'a.mp3']]), { code: 'OAI_PROXY_FILE_TYPE_NOT_ALLOWED' }, 'short and unknown')
  t.match(await refuse([['model', 'm'], ['prompt', 'p'], ['mask', Buffer.from([0xff, 0xd8, 0xff, 0xe0]), 'm.png']], IMAGES), { param: 'mask', message: /Supported formats: png\./ })
  t.match(await refuse([['file', '', 'a.wav']]), { code: 'OAI_PROXY_MULTIPART_INVALID', param: 'file', message: /field 'file' is an empty file/ })
  const jpeg = Buffer.from([0xff, 0xd8, 0xff])
  const opened = await open(raw([['model', 'm'], ['prompt', 'p'], ['image', jpeg, 'x.png']]), IMAGES, LIMITS, B)
  t.strictSame(opened.head.files, [{ field: 'image', type: 'jpeg', name: 'upload.jpg' }])
  const seen = await forward(opened)
  t.strictSame(seen.files.map((f) => [f.filename, f.contentType, f.bytes]), [['upload.jpg', 'image/jpeg', 3]])
})

t.test('text caps: one field over maxFieldBytes, all fields over maxFieldsBytes (413)', async (t) => {
  const limits = { ...LIMITS, maxFieldBytes: 100, maxFieldsBytes: 150 }
  t.strictSame(await fields([['prompt', 'x'.repeat(100)]], AUDIO, limits), { prompt: 'x'.repeat(100) })
  t.match(await refuse([['prompt', 'x'.repeat(101)]], AUDIO, limits), { code: 'OAI_PROXY_MULTIPART_FIELD_TOO_LARGE', statusCode: 413, param: 'prompt', message: "Text fields are too large: 'prompt' is over 100 bytes." })
  t.match(await refuse([['prompt', 'x'.repeat(100)], ['language', 'y'.repeat(60)]], AUDIO, limits), { statusCode: 413, param: 'language', message: /all text fields together are over 150 bytes/ })
})

t.test('string chunks from a text-mode source are read as UTF-8 bytes', async (t) => {
  const text = raw([['prompt', 'é']]).toString('utf8')
  const opened = await open(chunked([text.slice(0, 20), text.slice(20)]), AUDIO, LIMITS, B)
  t.strictSame(opened.head.fields, { prompt: 'é' })
})
