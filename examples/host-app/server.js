import { buildApp } from './app.js'

/*
 * Run the example host app: `npm run build && node examples/host-app/server.js` in this repository, or
 * copy app.js and this file into your project (with `fastify` and `oai-reverse-proxy` installed).
 * Without OPENAI_KEY it fronts the built-in fake OpenAI, so you can try it without spending anything.
 */

const port = Number(process.env.PORT ?? 3000)
let openaiKeys = (process.env.OPENAI_KEY ?? '').split(',').filter(Boolean)
let upstreamUrl = process.env.UPSTREAM_URL
if (openaiKeys.length === 0) {
  const { startFakeOpenAI } = await import('oai-reverse-proxy/testing')
  const fake = await startFakeOpenAI({ chunkDelayMs: 40 })
  openaiKeys = ['sk-fake-upstream-key']
  upstreamUrl = fake.url
  console.warn('No OPENAI_KEY: the proxy under /ai answers from a FAKE OpenAI upstream.')
}

const app = await buildApp({
  openaiKeys,
  upstreamUrl,
  corsOrigins: (process.env.CORS_ORIGINS ?? '').split(',').map((s) => s.trim()).filter(Boolean)
})
const url = await app.listen({ host: '127.0.0.1', port })
console.log(`
Host app on ${url}. Try:
  TOKEN=$(curl -s ${url}/login -H 'content-type: application/json' -d '{"name":"Alice"}' | node -pe 'JSON.parse(require("fs").readFileSync(0)).token')
  curl ${url}/api/me -H "authorization: Bearer $TOKEN"
  curl ${url}/ai/v1/chat/completions -H "authorization: Bearer $TOKEN" -H 'content-type: application/json' \\
    -d '{"model":"gpt-4o-mini","messages":[{"role":"user","content":"Hello"}]}'
`)
