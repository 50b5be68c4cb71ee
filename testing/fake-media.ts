import { replyText } from './fake-responses.js'
import { pngBytes } from './fake-uploads.js'

/*
 * Default answers of the fake upstream for images, speech, token counting and compaction, shaped like
 * OpenAI's. Images are a real (tiny) PNG; speech is deterministic bytes that start like an MP3 frame, sized
 * by the input so tests can ask for a large answer.
 */

type Json = Record<string, unknown>
const created = () => Math.floor(Date.now() / 1000)
const sse = (data: Json): string => `event: ${String(data.type)}\ndata: ${JSON.stringify(data)}\n\n`
const words = (text: string): number => [...text.matchAll(/\S+/g)].length

const tinyPng = (): Buffer => pngBytes(2, 2)

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

/** An upload's text fields as the JSON answers read them: one value each, `stream`, `n` and `partial_images` typed, `session` parsed. */
export function formFields (fields: Record<string, string[]>): Json {
  const out: Json = {}
  for (const [name, values] of Object.entries(fields)) out[name] = values[0]
  if (out.stream !== undefined) out.stream = out.stream === 'true'
  for (const name of ['n', 'partial_images']) if (out[name] !== undefined) out[name] = Number(out[name])
  if (typeof out.session === 'string') out.session = JSON.parse(out.session) as unknown
  return out
}

interface UploadSeen { form?: { fields: Record<string, string[]>, files: Array<{ bytes: number, contentType: string }> } }

function transcriptText (req: UploadSeen): string {
  const file = req.form?.files[0]
  const prompt = req.form?.fields.prompt?.[0]
  return `Heard ${file?.bytes ?? 0} bytes of ${file?.contentType ?? 'nothing'}${prompt === undefined ? '' : `, told: ${prompt}`}`
}

/** Transcriptions report token usage (GPT-4o transcribe models); translations (whisper-1) report none. */
export function transcript (req: UploadSeen, withUsage: boolean): Json {
  const text = transcriptText(req)
  return { text, ...(withUsage ? { usage: { type: 'tokens', input_tokens: 50, output_tokens: words(text), total_tokens: 50 + words(text) } } : {}) }
}

export function transcriptFrames (req: UploadSeen): string[] {
  const text = transcriptText(req)
  const frames = [...text.matchAll(/\S+\s*/g)].map((m) => sse({ type: 'transcript.text.delta', delta: m[0] }))
  frames.push(sse({ type: 'transcript.text.done', text, usage: { type: 'tokens', input_tokens: 50, output_tokens: words(text), total_tokens: 50 + words(text) } }))
  return frames
}

/** A WebRTC answer: enough SDP lines to look like one, naming the model the session asked for. */
export function sdpAnswer (body: Json): string {
  const model = String((body.session as Json | undefined)?.model ?? 'gpt-realtime')
  return `v=0\r\no=- 4227147428 1719357865 IN IP4 127.0.0.1\r\ns=${model}\r\nt=0 0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=setup:active\r\n`
}
