import { createHash } from 'node:crypto'
import { Readable } from 'node:stream'
import OpenAI, { toFile } from 'openai'
import t from 'tap'
import { request } from 'undici'
import { assertNoLeak, proxyTest, seenByClient, type Harness } from '../../helper.js'
import { resolveOptions } from '../../../app.js'
import { formContentType, multipartBody, pngBytes, wavBytes, type FormPart } from '../../../testing/fake-uploads.js'

/*
 * The upload endpoints (audio transcriptions and translations, image edits and variations, WebRTC calls)
 * through the whole pipeline: the official SDK, the checks on their fields, and the abuse cases of the
 * threat catalogue (MP01-MP06) answered locally with nothing sent upstream.
 */

const client = (h: Harness) => new OpenAI({ baseURL: `${h.url}/v1`, apiKey: h.proxyKey, maxRetries: 0 })
const sha = (b: Buffer) => createHash('sha256').update(b).digest('hex')

/** POST a form through inject; parts as the test builds them. */
function postForm (h: Harness, url: string, parts: FormPart[], extra: Record<string, string> = {}) {
  return h.app.inject({ method: 'POST', url, headers: { ...h.auth, 'content-type': formContentType(), ...extra }, payload: multipartBody(parts as Parameters<typeof multipartBody>[0]) })
}
const errorOf = (res: { body: string }) => (JSON.parse(res.body) as { error: { code: string, param: string | null, message: string } }).error

proxyTest(t, 'the SDK transcribes a generated WAV (file before model, as its README writes it) and translates one', { listen: true }, async (h, t) => {
  const openai = client(h)
  const wav = wavBytes(1)
  const result = await openai.audio.transcriptions.create({ file: await toFile(wav, 'my voice memo.wav'), model: 'gpt-4o-transcribe', prompt: 'names: Zoë' })
  t.equal(result.text, `Heard ${wav.length} bytes of audio/wav, told: names: Zoë`)
  const seen = h.upstream.requests[0]
  t.equal(seen?.headers.authorization, `Bearer ${h.keys[0]}`, 'the real key was injected')
  t.match(seen?.headers['content-type'], /^multipart\/form-data; boundary=oai-proxy-[0-9a-f]{32}$/, 'a form rebuilt with our boundary')
  t.strictSame(seen?.form?.fields, { model: ['gpt-4o-transcribe'], prompt: ['names: Zoë'] })
  t.strictSame(seen?.form?.files.map((f) => [f.field, f.filename, f.contentType, f.bytes, f.sha256]), [['file', 'upload.wav', 'audio/wav', wav.length, sha(wav)]], 'the file arrived whole, under a name the proxy chose')

  const streamed: string[] = []
  const stream = await openai.audio.transcriptions.create({ model: 'gpt-4o-transcribe', file: await toFile(wav, 'a.wav'), stream: true })
  for await (const ev of stream) streamed.push(ev.type)
  t.equal(streamed.at(-1), 'transcript.text.done')

  const translated = await openai.audio.translations.create({ file: await toFile(wav, 'b.wav'), model: 'whisper-1' })
  t.match(translated.text, /^Heard \d+ bytes of audio\/wav$/)
  assertNoLeak(t, JSON.stringify([result, streamed, translated]), h.secrets, 'SDK results')
})

proxyTest(t, 'the SDK edits images (several, and a mask) and makes variations', { listen: true }, async (h, t) => {
  const openai = client(h)
  const a = pngBytes(4, 4)
  const b = pngBytes(8, 8)
  const edit = await openai.images.edit({ model: 'gpt-image-1', image: [await toFile(a, 'a.png'), await toFile(b, 'b.png')], mask: await toFile(a, 'm.png'), prompt: 'add a hat' })
  t.equal(edit.data?.length, 1)
  const files = h.upstream.requests[0]?.form?.files ?? []
  t.strictSame(files.map((f) => [f.field, f.sha256]), [['image[]', sha(a)], ['image[]', sha(b)], ['mask', sha(a)]], 'every image and the mask, in order')
  t.strictSame(h.upstream.requests[0]?.form?.fields, { model: ['gpt-image-1'], prompt: ['add a hat'] })
  const events: string[] = []
  for await (const ev of await openai.images.edit({ model: 'gpt-image-1', image: await toFile(b, 'b.png'), prompt: 'a scarf too', stream: true, partial_images: 1 })) events.push(ev.type)
  t.strictSame(events, ['image_generation.partial_image', 'image_generation.completed'], 'a streamed edit arrives as SSE events')
  t.strictSame(h.upstream.requests[1]?.form?.fields.stream, ['true'])
  const variation = await openai.images.createVariation({ image: await toFile(a, 'v.png'), model: 'dall-e-2', n: 1 })
  t.equal(variation.data?.length, 1)
  assertNoLeak(t, JSON.stringify([edit, variation]), h.secrets, 'SDK results')
})

proxyTest(t, 'a WebRTC call: SDP offer in, SDP answer and call id out; the session model is checked', {
  listen: true,
  proxy: { policy: { allowedModels: ['gpt-realtime'] }, realtime: { enabled: true } }
}, async (h, t) => {
  const offer = 'v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\n'
  const call = async (session: unknown) => {
    const form = new FormData()
    form.set('sdp', offer)
    if (session !== undefined) form.set('session', JSON.stringify(session))
    return await fetch(`${h.url}/v1/realtime/calls`, { method: 'POST', headers: h.auth, body: form })
  }
  const session = { type: 'realtime', model: 'gpt-realtime', instructions: 'be brief', audio: { output: { voice: 'marin', speed: 1.1 } } }
  const ok = await call(session)
  t.equal(ok.status, 201)
  t.equal(ok.headers.get('content-type'), 'application/sdp')
  t.equal(ok.headers.get('location'), '/v1/realtime/calls/rtc_fake123', 'the call id, so the page can refer to its call')
  t.match(await ok.text(), /^v=0\r\n[\s\S]*s=gpt-realtime\r\n/)
  t.strictSame(h.upstream.requests[0]?.form?.fields.sdp, [offer], 'the offer went upstream exactly')
  t.strictSame(JSON.parse(h.upstream.requests[0]?.form?.fields.session?.[0] ?? ''), session, 'the session, nested, as JSON text')

  for (const session of [{ model: 'gpt-4o-realtime-preview' }, { type: 'realtime' }, undefined]) {
    const res = await call(session)
    t.equal(res.status, 403, `session ${JSON.stringify(session)}: refused`)
    t.equal(((await res.json()) as { error: { code: string } }).error.code, 'model_not_allowed')
  }
  for (const [text, what] of [['not json', 'not JSON'], ['["gpt-realtime"]', 'an array'], ['{"__proto__":{"model":"gpt-realtime"}}', 'a prototype key']]) {
    const form = new FormData()
    form.set('sdp', offer)
    form.set('session', text)
    const res = await fetch(`${h.url}/v1/realtime/calls`, { method: 'POST', headers: h.auth, body: form })
    t.equal(res.status, 400, `a session that is ${what}: 400`)
    t.equal(((await res.json()) as { error: { param: string } }).error.param, 'session')
  }
  t.equal(h.upstream.requests.length, 1, 'refused calls never went upstream')
})

const WAV = wavBytes(0.2)
const audioFile: FormPart = { name: 'file', filename: '../../etc/passwd', contentType: 'text/plain', data: WAV }

proxyTest(t, 'MP05 and the policy: a form is judged on its fields before anything goes upstream', {
  proxy: { filter: { phrases: ['forbidden lighthouse'] }, policy: { allowedModels: ['gpt-4o-transcribe', 'gpt-image-1'] } }
}, async (h, t) => {
  const filtered = await postForm(h, '/v1/audio/transcriptions', [{ name: 'model', value: 'gpt-4o-transcribe' }, { name: 'prompt', value: 'the FORBIDDEN lighthouse' }, audioFile])
  t.equal(filtered.statusCode, 400)
  t.equal(errorOf(filtered).code, 'content_filter', 'a blocked phrase in the multipart prompt is blocked as in JSON')
  const fileFirst = await postForm(h, '/v1/audio/transcriptions', [audioFile, { name: 'model', value: 'whisper-1' }])
  t.equal(fileFirst.statusCode, 403, 'a model named after the file is still checked')
  const edit = await postForm(h, '/v1/images/edits', [{ name: 'prompt', value: 'forbidden lighthouse' }, { name: 'model', value: 'gpt-image-1' }, { name: 'image', filename: 'x.png', contentType: 'image/png', data: pngBytes(2, 2) }])
  t.equal(errorOf(edit).code, 'content_filter')
  t.equal(h.upstream.requests.length, 0, 'nothing went upstream')
  t.equal(filtered.headers.connection, 'close', 'a refused upload closes its connection (the rest of it is not read)')

  const ok = await postForm(h, '/v1/audio/transcriptions', [audioFile, { name: 'model', value: 'gpt-4o-transcribe' }])
  t.equal(ok.statusCode, 200)
  t.equal(h.upstream.requests[0]?.form?.files[0]?.filename, 'upload.wav', 'the client\'s file name never goes upstream')
})

proxyTest(t, 'MP06, MP03 and bad parts: clear 4xx in OpenAI\'s shape, nothing upstream', {}, async (h, t) => {
  const model = { name: 'model', value: 'whisper-1' }
  const cases: Array<[string, () => ReturnType<typeof postForm>, number, string]> = [
    ['multipart to a JSON route', () => postForm(h, '/v1/chat/completions', [model]), 415, 'unsupported_media_type'],
    ['JSON to an upload route', () => h.app.inject({ method: 'POST', url: '/v1/audio/transcriptions', headers: h.auth, payload: { model: 'whisper-1' } }), 415, 'unsupported_media_type'],
    ['no boundary', () => postForm(h, '/v1/audio/transcriptions', [model, audioFile], { 'content-type': 'multipart/form-data' }), 400, 'invalid_multipart'],
    ['multipart/mixed', () => postForm(h, '/v1/audio/transcriptions', [model, audioFile], { 'content-type': 'multipart/mixed; boundary=x' }), 415, 'unsupported_media_type'],
    ['an unknown field', () => postForm(h, '/v1/audio/transcriptions', [model, { name: 'purpose', value: 'fine-tune' }, audioFile]), 400, 'unknown_parameter'],
    ['a __proto__ field', () => postForm(h, '/v1/audio/transcriptions', [{ name: '__proto__', value: '{"admin":true}' }, model, audioFile]), 400, 'unknown_parameter'],
    ['a constructor field', () => postForm(h, '/v1/audio/transcriptions', [{ name: 'constructor', value: 'x' }, model, audioFile]), 400, 'unknown_parameter'],
    ['no file', () => postForm(h, '/v1/audio/transcriptions', [model]), 400, 'invalid_multipart'],
    ['text posing as audio', () => postForm(h, '/v1/audio/transcriptions', [model, { name: 'file', filename: 'a.mp3', contentType: 'audio/mpeg', data: Buffer.from('not audio at all') }]), 400, 'invalid_file_format'],
    ['a JPEG where variations take PNG only', () => postForm(h, '/v1/images/variations', [{ name: 'image', filename: 'a.png', contentType: 'image/png', data: Buffer.from([0xff, 0xd8, 0xff, 0xe0, 0, 0, 0, 0, 0, 0, 0, 0]) }]), 400, 'invalid_file_format'],
    ['a non-integer n', () => postForm(h, '/v1/images/variations', [{ name: 'n', value: '2.5' }, { name: 'image', filename: 'a.png', contentType: 'image/png', data: pngBytes(2, 2) }]), 400, 'invalid_multipart'],
    ['a required field missing', () => postForm(h, '/v1/images/edits', [{ name: 'image', filename: 'a.png', contentType: 'image/png', data: pngBytes(2, 2) }]), 400, 'invalid_request_body']
  ]
  for (const [what, send, status, code] of cases) {
    const res = await send()
    t.equal(res.statusCode, status, `${what}: ${status}`)
    t.equal(errorOf(res).code, code, `${what}: ${code}`)
    assertNoLeak(t, seenByClient(res), h.secrets, what)
  }
  t.equal(h.upstream.requests.length, 0, 'nothing went upstream')
})

proxyTest(t, 'MP01, MP04: part floods and oversized files are refused early; a cap set by the operator holds', { proxy: { maxUploadBytes: 64 * 1024 } }, async (h, t) => {
  const model = { name: 'model', value: 'whisper-1' }
  const flood = Array.from({ length: 10_000 }, () => ({ name: 'include[]', value: '' }))
  const started = Date.now()
  const parts = await postForm(h, '/v1/audio/transcriptions', [model, ...flood, audioFile])
  t.equal(parts.statusCode, 413, '10,000 parts')
  t.equal(errorOf(parts).code, 'too_many_parts')
  t.ok(Date.now() - started < 2000, `refused in ${Date.now() - started} ms`)
  const big = await postForm(h, '/v1/audio/transcriptions', [model, { ...audioFile, data: wavBytes(3) }])
  t.equal(big.statusCode, 413, 'a 96 KB file over a 64 KiB cap')
  t.equal(errorOf(big).code, 'file_too_large')
  t.equal(h.upstream.requests.length, 0)
})

proxyTest(t, 'a text field after file bytes already streaming cuts the upload: 400, and upstream never gets a whole form', { listen: true }, async (h, t) => {
  const file = Buffer.concat([wavBytes(0), Buffer.alloc(3 * 1024 * 1024)])
  const res = await request(`${h.url}/v1/audio/transcriptions`, {
    method: 'POST',
    headers: { ...h.auth, 'content-type': formContentType() },
    body: multipartBody([{ name: 'model', value: 'whisper-1' }, { name: 'file', filename: 'a.wav', contentType: 'audio/wav', data: file }, { name: 'prompt', value: 'too late' }])
  })
  const body = await res.body.text()
  t.equal(res.statusCode, 400)
  t.equal(errorOf({ body }).code, 'multipart_field_order')
  t.match(errorOf({ body }).message, /prompt/)
  t.equal(h.upstream.requests.length, 0, 'upstream saw no complete request')
})

proxyTest(t, 'an upload refused on a dead key is not replayed on the next one: 503 the SDKs retry, and the retry gets a live key', { keyCount: 2 }, async (h, t) => {
  const dead = h.keys[0] as string
  h.upstream.script((r) => (r.headers.authorization === `Bearer ${dead}` ? { kind: 'json', status: 401, body: { error: { message: `Incorrect API key provided: ${dead.slice(0, 8)}...`, type: 'invalid_request_error', param: null, code: 'invalid_api_key' } } } : undefined))
  const parts: FormPart[] = [{ name: 'model', value: 'whisper-1' }, audioFile]
  const first = await postForm(h, '/v1/audio/transcriptions', parts)
  const second = await postForm(h, '/v1/audio/transcriptions', parts)
  const [a, b] = [first, second].map((res) => res.statusCode).sort()
  t.strictSame([a, b], [200, 503], 'one call met the dead key and could not be replayed; the other used the live one')
  const failed = first.statusCode === 503 ? first : second
  t.equal(errorOf(failed).code, 'upstream_key_failed')
  t.equal(failed.headers['retry-after'], '0')
  t.equal((await postForm(h, '/v1/audio/transcriptions', parts)).statusCode, 200, 'the dead key is out of rotation')
  assertNoLeak(t, seenByClient(failed), h.secrets, 'the 503')
})

proxyTest(t, 'token budgets meter an upload by its declared size (or the cap when undeclared) and settle from usage', { listen: true, proxy: { rateLimit: { tokensPerMinute: 200_000 } } }, async (h, t) => {
  const send = async (chunked: boolean) => {
    const body = multipartBody([{ name: 'model', value: 'gpt-4o-transcribe' }, { name: 'file', filename: 'a.wav', contentType: 'audio/wav', data: wavBytes(1) }])
    const res = await request(`${h.url}/v1/audio/transcriptions`, {
      method: 'POST',
      headers: { ...h.auth, 'content-type': formContentType() },
      body: chunked ? Readable.from((async function * () { yield body })()) : body
    })
    const text = await res.body.text()
    return { remaining: Number(res.headers['x-ratelimit-remaining-tokens']), text }
  }
  const declared = await send(false)
  const reserved = 200_000 - declared.remaining
  // 1,000 tokens for its one (partial) MiB, 1,024 default output, a few for the field strings.
  t.ok(reserved >= 2024 && reserved < 2100, `a 32 KB upload with a length reserved ${reserved}`)
  const usage = (JSON.parse(declared.text) as { usage: { total_tokens: number } }).usage.total_tokens
  const undeclared = await send(true)
  const second = 200_000 - usage - undeclared.remaining
  t.ok(second >= 25 * 1000 + 1024 && second < 25 * 1000 + 1100, `without a length the 25 MiB cap is reserved: ${second}`)
})

proxyTest(t, 'a Location header that is not a call id never reaches the client', { proxy: { realtime: { enabled: true } } }, async (h, t) => {
  h.upstream.script(() => ({ kind: 'raw', status: 201, headers: { 'content-type': 'application/sdp', location: 'https://evil.example/v1/realtime/calls/rtc_1' }, body: 'v=0\r\n' }))
  const res = await postForm(h, '/v1/realtime/calls', [{ name: 'sdp', value: 'v=0' }])
  t.equal(res.statusCode, 201)
  t.equal(res.headers.location, undefined)
})

proxyTest(t, 'WebRTC calls are served only with Realtime on, like the WebSocket route', {}, async (h, t) => {
  const res = await postForm(h, '/v1/realtime/calls', [{ name: 'sdp', value: 'v=0' }])
  t.equal(res.statusCode, 404)
  t.equal(errorOf(res).code, 'unknown_url')
  t.throws(() => resolveOptions({ openaiKeys: ['sk-x'], endpoints: ['realtime.calls'] }), /realtime\.calls needs realtime\.enabled/)
  t.strictSame(resolveOptions({ openaiKeys: ['sk-x'], realtime: { enabled: true } }).endpoints.filter((e) => e.id === 'realtime.calls').length, 1)
  t.equal(h.upstream.requests.length, 0)
})
