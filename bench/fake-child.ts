import { startFakeOpenAI } from '../testing/fake-openai.js'
import { serveIpc } from './ipc.js'
import { LONG_STREAM_MODEL } from './features.js'

/*
 * The fake OpenAI upstream in its own process, so that neither the proxy nor the load generator shares
 * its event loop. Both the proxy and the "direct" measurements hit this same process.
 */

const chunkDelayMs = Number(process.env.BENCH_CHUNK_DELAY_MS ?? '10')
const fake = await startFakeOpenAI({ chunkDelayMs })

// The soak's long stream: one frame a second, as many as the request's max_tokens, then [DONE].
fake.script((req) => {
  const body = req.json as { model?: unknown, max_tokens?: unknown } | undefined
  if (body?.model !== LONG_STREAM_MODEL || typeof body.max_tokens !== 'number') return undefined
  const frame = (i: number) => `data: ${JSON.stringify({ id: 'chatcmpl-long', object: 'chat.completion.chunk', model: LONG_STREAM_MODEL, choices: [{ index: 0, delta: { content: ` w${i}` }, finish_reason: null }] })}\n\n`
  return { kind: 'sse', frames: [...Array.from({ length: body.max_tokens }, (_, i) => frame(i)), 'data: [DONE]\n\n'], delayMs: 1000 }
})

// The fake records every request (body included) for tests; a benchmark sends hundreds of thousands.
setInterval(() => { fake.requests.length = 0 }, 100).unref()

serveIpc(fake.url, {
  stats: () => ({ rss: process.memoryUsage().rss, cpu: process.cpuUsage() }),
  stop: async () => {
    setImmediate(() => { fake.close().finally(() => process.exit(0)) })
    return { stopping: true }
  }
})
