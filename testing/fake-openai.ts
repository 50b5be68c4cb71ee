import { createServer as createHttpServer, type IncomingHttpHeaders, type IncomingMessage, type Server, type ServerResponse } from 'node:http'
import { createServer as createHttpsServer } from 'node:https'
import type { AddressInfo, Socket } from 'node:net'
import * as R from './fake-responses.js'
import * as M from './fake-media.js'
import { readUploadedForm, type UploadRecord } from './fake-uploads.js'
import { attachFakeRealtime, type FakeRealtime } from './fake-realtime.js'

/*
 * A fake OpenAI API for tests, benchmarks and the no-key demo. It records every request it receives (raw
 * path, headers, body bytes, whether the client aborted) and answers like OpenAI by default; a test can
 * script any answer: a status and body, an SSE stream with delays, a reset mid-stream, a stall.
 */

export interface RecordedRequest {
  method: string
  /** The request target exactly as received (path and query, undecoded). */
  url: string
  headers: IncomingHttpHeaders
  rawHeaders: string[]
  body: Buffer
  json: unknown
  receivedAt: number
  /** Set when the client went away before the answer was complete. */
  abortedAt?: number
  /** Bytes of a scripted SSE stream handed to the socket so far (the stream waits when the reader is behind). */
  sseBytes: number
  /** A multipart upload as it arrived (fields, and each file's size and hash: files are never held). */
  form?: UploadRecord
}

export type Plan =
  | { kind: 'json', status?: number, headers?: Record<string, string | string[]>, body: unknown }
  | { kind: 'raw', status?: number, headers?: Record<string, string | string[]>, body: string | Buffer }
  | { kind: 'sse', status?: number, headers?: Record<string, string | string[]>, frames: string[], delayMs?: number, firstByteDelayMs?: number, resetAfter?: number }
  | { kind: 'stall' }
  | { kind: 'reset' }
  | { kind: 'delay', ms: number, then: Plan }

export type Script = (req: RecordedRequest) => Plan | undefined

export interface FakeOpenAIOptions {
  /** Serve HTTPS with this certificate (PEM). */
  tls?: { key: string, cert: string }
  /** Keys the fake accepts; others get OpenAI's 401 with a masked key. Default: any Bearer token. */
  validKeys?: readonly string[]
  /** Delay between default stream frames, to look like generation. Default 0. */
  chunkDelayMs?: number
  host?: string
  port?: number
}

export interface FakeOpenAI {
  url: string
  port: number
  requests: RecordedRequest[]
  /** Answer with this plan for every request it returns one for (undefined: the default answer). */
  script: (fn: Script | undefined) => void
  /** The Realtime WebSocket side (`/v1/realtime`): handshakes, connections and scripts (testing/fake-realtime.ts). */
  realtime: FakeRealtime
  /** Wait until a recorded request satisfies `predicate`. */
  waitFor: (predicate: (r: RecordedRequest) => boolean, timeoutMs?: number) => Promise<RecordedRequest>
  close: () => Promise<void>
}

const mask = (key: string): string => `${key.slice(0, 8)}${'*'.repeat(Math.max(0, key.length - 12))}${key.slice(-4)}`

function defaultPlan (req: RecordedRequest, opts: FakeOpenAIOptions): Plan {
  const auth = /^Bearer (.+)$/.exec(req.headers.authorization ?? '')?.[1]
  if (auth === undefined) return { kind: 'json', status: 401, body: R.errorBody("You didn't provide an API key.", 'invalid_request_error', null) }
  if (opts.validKeys !== undefined && !opts.validKeys.includes(auth)) {
    return { kind: 'json', status: 401, body: R.errorBody(`Incorrect API key provided: ${mask(auth)}. You can find your API key at https://platform.openai.com/account/api-keys.`, 'invalid_request_error', 'invalid_api_key') }
  }
  const body = (req.form === undefined ? req.json ?? {} : M.formFields(req.form.fields)) as Record<string, unknown>
  const path = req.url.replace(/\?.*$/s, '')
  const stream = body.stream === true
  const delayMs = opts.chunkDelayMs ?? 0
  const modelName = typeof body.model === 'string' ? body.model : ''
  if (req.method === 'POST' && modelName.startsWith('unknown-')) {
    return { kind: 'json', status: 404, body: R.errorBody(`The model \`${modelName}\` does not exist or you do not have access to it.`, 'invalid_request_error', 'model_not_found') }
  }
  const route = `${req.method} ${path}`
  switch (route) {
    case 'POST /v1/chat/completions':
      return stream ? { kind: 'sse', frames: R.chatCompletionFrames(body), delayMs } : { kind: 'json', body: R.chatCompletion(body) }
    case 'POST /v1/completions':
      return stream ? { kind: 'sse', frames: R.completionFrames(body), delayMs } : { kind: 'json', body: R.completion(body) }
    case 'POST /v1/responses':
      return stream ? { kind: 'sse', frames: R.responseFrames(body), delayMs } : { kind: 'json', body: R.response(body) }
    case 'POST /v1/embeddings':
      return { kind: 'json', body: R.embeddings(body) }
    case 'POST /v1/moderations':
      return { kind: 'json', body: R.moderation(body) }
    case 'GET /v1/models':
      return { kind: 'json', body: R.modelList() }
    case 'POST /v1/images/generations':
      return stream ? { kind: 'sse', frames: M.imageFrames(body), delayMs } : { kind: 'json', body: M.images(body) }
    case 'POST /v1/audio/speech':
      return body.stream_format === 'sse'
        ? { kind: 'sse', frames: M.speechFrames(body), delayMs }
        : { kind: 'raw', headers: { 'content-type': 'audio/mpeg' }, body: M.speechBytes(body) }
    case 'POST /v1/responses/input_tokens':
      return { kind: 'json', body: M.inputTokens(body) }
    case 'POST /v1/responses/compact':
      return { kind: 'json', body: M.compaction(body) }
    case 'POST /v1/audio/transcriptions':
      return stream ? { kind: 'sse', frames: M.transcriptFrames(req), delayMs } : { kind: 'json', body: M.transcript(req, true) }
    case 'POST /v1/audio/translations':
      return { kind: 'json', body: M.transcript(req, false) }
    case 'POST /v1/images/edits':
    case 'POST /v1/images/variations':
      return stream ? { kind: 'sse', frames: M.imageFrames(body), delayMs } : { kind: 'json', body: M.images(body) }
    case 'POST /v1/realtime/calls':
      return { kind: 'raw', status: 201, headers: { 'content-type': 'application/sdp', location: '/v1/realtime/calls/rtc_fake123' }, body: M.sdpAnswer(body) }
  }
  const id = /^\/v1\/models\/([^/]+)$/.exec(path)?.[1]
  if (req.method === 'GET' && id !== undefined) {
    const name = decodeURIComponent(id)
    return R.FAKE_MODELS.includes(name)
      ? { kind: 'json', body: R.model(name) }
      : { kind: 'json', status: 404, body: R.errorBody(`The model '${name}' does not exist`, 'invalid_request_error', 'model_not_found', 'model') }
  }
  return { kind: 'json', status: 404, body: R.errorBody(`Invalid URL (${req.method} ${path})`, 'invalid_request_error', 'unknown_url') }
}

// Unref'd: a scripted delay must not keep a test process alive after the fake is closed.
const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms).unref())

/** Resolves when `res` can take more, or has closed (so a writer never waits on a dead socket). */
const drained = (res: ServerResponse) => new Promise<void>((resolve) => {
  const done = () => {
    res.off('drain', done)
    res.off('close', done)
    resolve()
  }
  res.once('drain', done)
  res.once('close', done)
})

async function play (plan: Plan, res: ServerResponse, record: RecordedRequest): Promise<void> {
  const headers = { 'x-request-id': 'req_fake', 'openai-processing-ms': '1', ...('headers' in plan ? plan.headers : {}) }
  switch (plan.kind) {
    case 'delay':
      await sleep(plan.ms)
      if (res.destroyed) return
      return play(plan.then, res, record)
    case 'stall':
      return
    case 'reset':
      res.socket?.destroy()
      return
    case 'json':
      res.writeHead(plan.status ?? 200, { 'content-type': 'application/json', ...headers })
      res.end(JSON.stringify(plan.body))
      return
    case 'raw':
      res.writeHead(plan.status ?? 200, headers)
      res.end(plan.body)
      return
    case 'sse': {
      if (plan.firstByteDelayMs !== undefined) await sleep(plan.firstByteDelayMs)
      res.writeHead(plan.status ?? 200, { 'content-type': 'text/event-stream; charset=utf-8', 'cache-control': 'no-cache', ...headers })
      for (let i = 0; i < plan.frames.length; i++) {
        if (res.destroyed) return
        if (plan.resetAfter === i) {
          res.socket?.destroy()
          return
        }
        const frame = plan.frames[i] as string
        record.sseBytes += Buffer.byteLength(frame)
        // Like a real server: a reader that is behind pauses the stream instead of piling it up here.
        if (!res.write(frame)) await drained(res)
        if (plan.delayMs !== undefined && plan.delayMs > 0) await sleep(plan.delayMs)
      }
      res.end()
    }
  }
}

export async function startFakeOpenAI (opts: FakeOpenAIOptions = {}): Promise<FakeOpenAI> {
  const requests: RecordedRequest[] = []
  let script: Script | undefined
  const sockets = new Set<Socket>()

  const answer = (req: IncomingMessage, res: ServerResponse, body: Buffer, form?: UploadRecord): void => {
    let json: unknown
    try { json = body.length > 0 ? JSON.parse(body.toString('utf8')) : undefined } catch { json = undefined }
    // A server-side request always has a method and a URL (Node types them optional for client use).
    const record: RecordedRequest = { method: req.method as string, url: req.url as string, headers: req.headers, rawHeaders: req.rawHeaders, body, json, receivedAt: Date.now(), sseBytes: 0, ...(form === undefined ? {} : { form }) }
    requests.push(record)
    res.once('close', () => {
      if (!res.writableFinished) record.abortedAt = Date.now()
    })
    play(script?.(record) ?? defaultPlan(record, opts), res, record).catch(() => res.destroy())
  }

  const onRequest = (req: IncomingMessage, res: ServerResponse): void => {
    // Uploads are read as they stream (a 25 MB file is hashed, never held), then answered from their fields.
    if (req.headers['content-type']?.startsWith('multipart/form-data') === true) {
      readUploadedForm(req).then((form) => { answer(req, res, Buffer.alloc(0), form) }, () => {
        res.writeHead(400, { 'content-type': 'application/json' }).end(JSON.stringify(R.errorBody('Malformed multipart body.', 'invalid_request_error', null)))
      })
      return
    }
    const chunks: Buffer[] = []
    req.on('data', (c: Buffer) => chunks.push(c))
    req.on('end', () => { answer(req, res, Buffer.concat(chunks)) })
  }

  const server: Server = opts.tls === undefined ? createHttpServer(onRequest) : createHttpsServer(opts.tls, onRequest)
  server.on('connection', (s: Socket) => {
    sockets.add(s)
    s.once('close', () => sockets.delete(s))
  })
  const realtime = attachFakeRealtime(server, opts)
  await new Promise<void>((resolve) => server.listen(opts.port ?? 0, opts.host ?? '127.0.0.1', resolve))
  const { port } = server.address() as AddressInfo

  return {
    url: `${opts.tls === undefined ? 'http' : 'https'}://127.0.0.1:${port}`,
    port,
    requests,
    script: (fn) => { script = fn },
    realtime,
    async waitFor (predicate, timeoutMs = 2000) {
      const deadline = Date.now() + timeoutMs
      for (;;) {
        const hit = requests.find(predicate)
        if (hit !== undefined) return hit
        if (Date.now() > deadline) throw new Error('fake-openai: timed out waiting for a request')
        await sleep(10)
      }
    },
    async close () {
      realtime.close()
      for (const s of sockets) s.destroy()
      await new Promise<void>((resolve) => server.close(() => resolve()))
    }
  }
}
