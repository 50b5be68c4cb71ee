import { deflateSync } from 'node:zlib'
import { replyText } from './fake-responses.js'

/*
 * Default answers of the fake upstream for images, speech, token counting and compaction, shaped like
 * OpenAI's. Images are a real (tiny) PNG; speech is deterministic bytes that start like an MP3 frame, sized
 * by the input so tests can ask for a large answer.
 */

type Json = Record<string, unknown>
const created = () => Math.floor(Date.now() / 1000)
const sse = (data: Json): string => `event: ${String(data.type)}\ndata: ${JSON.stringify(data)}\n\n`
const words = (text: string): number => [...text.matchAll(/\S+/g)].length

function crc32 (bytes: Buffer): number {
  let c = ~0
  for (const b of bytes) {
    c ^= b
    for (let k = 0; k < 8; k++) c = (c >>> 1) ^ (0xedb88320 & -(c & 1))
  }
  return ~c >>> 0
}

function chunk (type: string, data: Buffer): Buffer {
  const head = Buffer.alloc(8)
  head.writeUInt32BE(data.length, 0)
  head.write(type, 4, 'latin1')
  const crc = Buffer.alloc(4)
  crc.writeUInt32BE(crc32(Buffer.concat([head.subarray(4), data])), 0)
  return Buffer.concat([head, data, crc])
}

/** A valid `size` x `size` grey RGB PNG. */
export function tinyPng (size = 2): Buffer {
  const ihdr = Buffer.alloc(13)
  ihdr.writeUInt32BE(size, 0)
  ihdr.writeUInt32BE(size, 4)
  ihdr.set([8, 2, 0, 0, 0], 8)
  const rows = Buffer.alloc((size * 3 + 1) * size, 0x80)
  for (let y = 0; y < size; y++) rows[y * (size * 3 + 1)] = 0
  return Buffer.concat([Buffer.from('89504e470d0a1a0a', 'hex'), chunk('IHDR', ihdr), chunk('IDAT', deflateSync(rows)), chunk('IEND', Buffer.alloc(0))])
}

const isGptImage = (body: Json): boolean => typeof body.model === 'string' && body.model.startsWith('gpt-image')
const imageUsage = (body: Json, n: number) => ({ total_tokens: 9 + 272 * n, input_tokens: 9, output_tokens: 272 * n, input_tokens_details: { text_tokens: 9, image_tokens: 0 } })
const count = (body: Json): number => (typeof body.n === 'number' && body.n > 1 ? Math.min(body.n, 10) : 1)

export function images (body: Json): Json {
  const n = count(body)
  const b64 = tinyPng().toString('base64')
  const data = Array.from({ length: n }, () => ({ b64_json: b64, revised_prompt: replyText(body) }))
  return { created: created(), data, ...(isGptImage(body) ? { usage: imageUsage(body, n), output_format: 'png' } : {}) }
}

/** `stream: true`: `partial_images` partial frames, then the completed image with usage. */
export function imageFrames (body: Json): string[] {
  const partials = typeof body.partial_images === 'number' ? body.partial_images : 0
  const b64 = tinyPng().toString('base64')
  const frames: string[] = []
  for (let i = 0; i < partials; i++) frames.push(sse({ type: 'image_generation.partial_image', b64_json: b64, partial_image_index: i, created_at: created(), output_format: 'png' }))
  frames.push(sse({ type: 'image_generation.completed', b64_json: b64, created_at: created(), output_format: 'png', usage: imageUsage(body, 1) }))
  return frames
}

/** Speech bytes: 1 KiB per input word (so a long input makes a long answer), starting like an MP3 frame. */
export function speechBytes (body: Json): Buffer {
  const size = Math.max(1, words(String(body.input))) * 1024
  const out = Buffer.alloc(size)
  for (let i = 0; i < size; i++) out[i] = (i * 31 + 7) & 0xff
  out.set([0xff, 0xfb, 0x90, 0x64], 0)
  return out
}

/** `stream_format: "sse"`: the audio as base64 deltas of 4 KiB, then `speech.audio.done` with usage. */
export function speechFrames (body: Json): string[] {
  const audio = speechBytes(body)
  const frames: string[] = []
  for (let at = 0; at < audio.length; at += 4096) frames.push(sse({ type: 'speech.audio.delta', audio: audio.subarray(at, at + 4096).toString('base64') }))
  const input = words(String(body.input))
  frames.push(sse({ type: 'speech.audio.done', usage: { input_tokens: input, output_tokens: input * 10, total_tokens: input * 11 } }))
  return frames
}

export const inputTokens = (body: Json): Json => ({ object: 'response.input_tokens', input_tokens: 3 + words(JSON.stringify(body.input ?? '')) })

export function compaction (body: Json): Json {
  return {
    id: 'cmp_fake',
    object: 'response.compaction',
    created_at: created(),
    output: [{ id: 'cmp_item_fake', type: 'compaction', encrypted_content: Buffer.from(replyText(body)).toString('base64') }],
    usage: { input_tokens: 20, output_tokens: 5, total_tokens: 25 }
  }
}
