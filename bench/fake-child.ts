import { startFakeOpenAI } from '../testing/fake-openai.js'
import { serveIpc } from './ipc.js'

/*
 * The fake OpenAI upstream in its own process, so that neither the proxy nor the load generator shares
 * its event loop. Both the proxy and the "direct" measurements hit this same process.
 */

const chunkDelayMs = Number(process.env.BENCH_CHUNK_DELAY_MS ?? '10')
const fake = await startFakeOpenAI({ chunkDelayMs })

// The fake records every request (body included) for tests; a benchmark sends hundreds of thousands.
setInterval(() => { fake.requests.length = 0 }, 100).unref()

serveIpc(fake.url, {
  stats: () => ({ rss: process.memoryUsage().rss, cpu: process.cpuUsage() }),
  stop: async () => {
    setImmediate(() => { fake.close().finally(() => process.exit(0)) })
    return { stopping: true }
  }
})
