import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import OpenAI from 'openai'
import t from 'tap'
import { request } from 'undici'
import { assertNoLeak, proxyTest, seenByClient, sleep, type Harness } from './helper.js'
import { speechBytes } from '../testing/fake-media.js'

/*
 * The JSON endpoints beyond text: image generation (whole and streamed), speech (audio bytes and SSE),
 * input-token counting and compaction. Each through the official SDK, the pipeline's checks on each, and
 * the audio answer streamed through with backpressure.
 */

const client = (h: Harness) => new OpenAI({ baseURL: `${h.url}/v1`, apiKey: h.proxyKey, maxRetries: 0 })
const PNG_MAGIC = '89504e470d0a1a0a'

proxyTest(t, 'the SDK generates images, streamed and not, through the proxy', { listen: true }, async (h, t) => {
  const openai = client(h)
  const image = await openai.images.generate({ model: 'gpt-image-1', prompt: 'a lighthouse', n: 1 })
  t.equal(Buffer.from(image.data?.[0]?.b64_json ?? '', 'base64').subarray(0, 8).toString('hex'), PNG_MAGIC, 'a PNG came back')
  t.equal(image.usage?.total_tokens, 281)

  const events: string[] = []
  const stream = await openai.images.generate({ model: 'gpt-image-1', prompt: 'a lighthouse at dusk', stream: true, partial_images: 2 })
  for await (const ev of stream) events.push(ev.type)
  t.strictSame(events, ['image_generation.partial_image', 'image_generation.partial_image', 'image_generation.completed'])
  const plain: string[] = []
  for await (const ev of await openai.images.generate({ model: 'gpt-image-1', prompt: 'no partials', stream: true })) plain.push(ev.type)
  t.strictSame(plain, ['image_generation.completed'])

  const seen = h.upstream.requests.map((r) => `${r.method} ${r.url} ${r.headers.authorization === `Bearer ${h.keys[0]}`}`)
  t.strictSame(seen, Array(3).fill('POST /v1/images/generations true'), 'upstream got each with the real key')
  t.equal((h.upstream.requests[1]?.json as { stream?: unknown }).stream, true)
  assertNoLeak(t, JSON.stringify([image, events]), h.secrets, 'SDK results')
})

proxyTest(t, 'speech: the SDK writes the audio to a file, byte for byte; SSE speech streams its deltas', { listen: true }, async (h, t) => {
  const openai = client(h)
  const input = 'the quick brown fox jumps over the lazy dog '.repeat(20)
  const res = await openai.audio.speech.create({ model: 'gpt-4o-mini-tts', voice: 'alloy', input })
  t.equal(res.headers.get('content-type'), 'audio/mpeg')
  const dir = await mkdtemp(join(tmpdir(), 'oaip-speech-'))
  try {
    const file = join(dir, 'speech.mp3')
    await writeFile(file, Buffer.from(await res.arrayBuffer()))
    const written = await readFile(file)
    t.ok(written.equals(speechBytes({ input })), `the file holds exactly upstream's ${written.length} bytes`)
  } finally {
    await rm(dir, { recursive: true, force: true })
  }

  const sse = await openai.audio.speech.create({ model: 'gpt-4o-mini-tts', voice: 'alloy', input: 'hello there', stream_format: 'sse' })
  const text = await sse.text()
  t.match(text, /event: speech\.audio\.delta/)
  t.match(text, /"type":"speech\.audio\.done"/)
  assertNoLeak(t, text, h.secrets, 'SSE speech')
  t.equal(h.upstream.requests.length, 2)
})

proxyTest(t, 'input-token counting and compaction through the SDK', { listen: true }, async (h, t) => {
  const openai = client(h)
  const count = await openai.responses.inputTokens.count({ model: 'gpt-4o-mini', input: 'how many tokens is this' })
  t.equal(count.object, 'response.input_tokens')
  t.ok(count.input_tokens > 0)
  const compacted = await openai.responses.compact({ model: 'gpt-4o-mini', input: [{ role: 'user', content: 'a long conversation' }] })
  t.equal(compacted.object, 'response.compaction')
  const empty = await openai.responses.inputTokens.count({ model: 'gpt-4o-mini' })
  t.equal(empty.input_tokens, 4, 'no input: the fake counts its overhead')
  t.strictSame(h.upstream.requests.map((r) => r.url), ['/v1/responses/input_tokens', '/v1/responses/compact', '/v1/responses/input_tokens'])
  assertNoLeak(t, JSON.stringify([count, compacted]), h.secrets, 'SDK results')
})

proxyTest(t, 'the request policy applies: model allowlist (images must name one), n capped, stored state refused', {
  proxy: { policy: { allowedModels: ['gpt-image-1', 'gpt-4o-mini-tts', 'gpt-4o-mini'], maxN: 2 } }
}, async (h, t) => {
  const post = (url: string, payload: Record<string, unknown>) => h.app.inject({ method: 'POST', url, headers: h.auth, payload })
  const unnamed = await post('/v1/images/generations', { prompt: 'a cat' })
  t.equal(unnamed.statusCode, 403, 'upstream would pick a default model the allowlist may not hold')
  t.equal(JSON.parse(unnamed.body).error.code, 'model_not_allowed')
  t.equal((await post('/v1/images/generations', { model: 'dall-e-3', prompt: 'a cat' })).statusCode, 403)
  t.equal((await post('/v1/audio/speech', { model: 'tts-1-hd', input: 'hi', voice: 'alloy' })).statusCode, 403)
  t.equal((await post('/v1/responses/compact', { model: 'o3', input: 'hi' })).statusCode, 403)
  const stored = await post('/v1/responses/compact', { model: 'gpt-4o-mini', previous_response_id: 'resp_abc' })
  t.equal(stored.statusCode, 403, 'compacting a stored response reads the key owner\'s data')
  t.equal(JSON.parse(stored.body).error.param, 'previous_response_id')
  t.equal(h.upstream.requests.length, 0, 'nothing refused went upstream')

  const many = await post('/v1/images/generations', { model: 'gpt-image-1', prompt: 'a cat', n: 8 })
  t.equal(many.statusCode, 200)
  t.equal(JSON.parse(many.body).data.length, 2, 'n clamped to maxN')
  t.equal((h.upstream.requests[0]?.json as { n?: unknown }).n, 2)
  t.equal((await post('/v1/responses/input_tokens', { input: 'no model named' })).statusCode, 200, 'counting without a model is free and allowed')
})

proxyTest(t, 'the prompt filter reads image prompts and speech input; token counting only when opted in', {
  proxy: { filter: { phrases: ['forbidden lighthouse'] } }
}, async (h, t) => {
  const post = (url: string, payload: Record<string, unknown>) => h.app.inject({ method: 'POST', url, headers: h.auth, payload })
  for (const [url, payload] of [
    ['/v1/images/generations', { model: 'gpt-image-1', prompt: 'Draw the FORBIDDEN  lighthouse' }],
    ['/v1/images/generations', { model: 'gpt-image-1', prompt: 'the f.o.r.b.i.d.d.e.n lighthouse', stream: true }],
    ['/v1/audio/speech', { model: 'gpt-4o-mini-tts', voice: 'alloy', input: 'say forbidden lighthouse' }],
    ['/v1/audio/speech', { model: 'gpt-4o-mini-tts', voice: 'alloy', input: 'ok', instructions: 'speak like the forbidden lighthouse' }],
    ['/v1/responses/compact', { model: 'gpt-4o-mini', input: [{ role: 'user', content: 'forbidden lighthouse' }] }]
  ] as const) {
    const res = await post(url, payload)
    t.equal(res.statusCode, 400, `${url} refused`)
    t.equal(JSON.parse(res.body).error.code, 'content_filter')
  }
  t.equal(h.upstream.requests.length, 0)
  const counted = await post('/v1/responses/input_tokens', { model: 'gpt-4o-mini', input: 'forbidden lighthouse' })
  t.equal(counted.statusCode, 200, 'counting tokens generates nothing: not filtered unless opted in')
})

proxyTest(t, 'token budgets: an image reserves its allowance per image and settles from usage; without usage the reservation stands', {
  proxy: { rateLimit: { tokensPerMinute: 100_000 }, policy: { maxN: 4 } }
}, async (h, t) => {
  const post = (payload: Record<string, unknown>) => h.app.inject({ method: 'POST', url: '/v1/images/generations', headers: h.auth, payload })
  const remaining = (res: { headers: Record<string, unknown> }) => Number(res.headers['x-ratelimit-remaining-tokens'])
  const first = await post({ model: 'gpt-image-1', prompt: 'a cat', n: 3 })
  const reserved = 100_000 - remaining(first)
  t.ok(reserved >= 3 * 6240 && reserved < 3 * 6240 + 50, `three images reserved ${reserved} tokens`)
  // At each admission the earlier calls have closed: the first settled at its usage (9 + 272 x 3).
  const second = await post({ model: 'dall-e-3', prompt: 'a cat' })
  const settled = 9 + 272 * 3
  const dalle = 100_000 - settled - remaining(second)
  t.ok(dalle >= 6240 && dalle < 6240 + 50, `the dall-e image reserved ${dalle}`)
  const third = await post({ model: 'gpt-image-1', prompt: 'a cat' })
  // dall-e answers report no usage: its reservation stands (a per-image meter).
  const next = 100_000 - settled - dalle - remaining(third)
  t.ok(next >= 6240 && next < 6240 + 50, `the next image reserved ${next} on top of the standing ${dalle}`)
})

proxyTest(t, 'a large audio answer streams through with backpressure: a client that stops reading pauses upstream', { listen: true }, async (h, t) => {
  // 40 MiB of "audio" in 64 KiB writes; the fake waits for drain like a real server.
  const frame = 'A'.repeat(64 * 1024)
  h.upstream.script(() => ({ kind: 'sse', headers: { 'content-type': 'audio/mpeg' }, frames: Array.from({ length: 640 }, () => frame) }))
  const res = await request(`${h.url}/v1/audio/speech`, {
    method: 'POST',
    headers: { ...h.auth, 'content-type': 'application/json' },
    body: JSON.stringify({ model: 'gpt-4o-mini-tts', voice: 'alloy', input: 'long' })
  })
  t.equal(res.headers['content-type'], 'audio/mpeg')
  let got = 0
  for await (const chunk of res.body) {
    got += (chunk as Buffer).length
    if (got > 1024 * 1024) break
  }
  // The client has stopped reading: upstream can only get as far as the socket buffers on the way hold.
  await sleep(500)
  const sent = h.upstream.requests[0]?.sseBytes ?? 0
  await sleep(300)
  t.equal(h.upstream.requests[0]?.sseBytes, sent, 'upstream is paused')
  t.ok(sent < 24 * 1024 * 1024, `upstream wrote ${(sent / 1048576).toFixed(1)} MiB of 40 before pausing`)
  res.body.destroy()
  const aborted = await h.upstream.waitFor((r) => r.abortedAt !== undefined)
  t.ok(aborted.abortedAt, 'leaving aborts the upstream call')
  assertNoLeak(t, seenByClient({ statusCode: res.statusCode, headers: res.headers, body: '' }), h.secrets, 'headers')
})
