import v8 from 'node:v8'
import vm from 'node:vm'
import t from 'tap'
import Fastify, { type FastifyRequest } from 'fastify'
import { request } from 'undici'
import oaiProxy from '../app.js'
import { oaiProxyServerOptions } from '../lib/server-options.js'
import { startFakeOpenAI } from '../testing/fake-openai.js'
import { assertNoLeak, canaryKey, isAllowlisted, randomToken } from './helper.js'

/*
 * Once the forwarder has built what goes upstream, the client's body (its bytes, the parsed body, the
 * analysis' strings) is let go, and undici lets go of a large body once written: an answer can stream for
 * minutes, and each one in flight used to hold its prompt three times. Proved with the collector itself:
 * weak references to what the pipeline read are empty while the stream is still open.
 */

v8.setFlagsFromString('--expose-gc')
const gc = vm.runInNewContext('gc') as () => void

const frame = (i: number) => `data: {"choices":[{"index":0,"delta":{"content":"t${i} "}}]}\n\n`

for (const features of ['defaults', 'every feature on'] as const) {
  t.test(`${features}: a streaming request's body is released while its answer streams, and arrives intact`, async (t) => {
    const key = canaryKey()
    const upstream = await startFakeOpenAI({ validKeys: [key] })
    upstream.script(() => ({ kind: 'sse', frames: [...Array.from({ length: 40 }, (_, i) => frame(i)), 'data: [DONE]\n\n'], delayMs: 25 }))
    const proxyKey = `sk-oaip-${randomToken(32)}`
    const logs: string[] = []
    const app = Fastify({ ...oaiProxyServerOptions, logger: { level: 'trace', stream: { write: (s: string) => { logs.push(s) } } } })
    const seen: Array<{ body: WeakRef<object>, bytes: WeakRef<object>, request: FastifyRequest }> = []
    // A root hook runs before the suite's own: it sees the parsed body every feature reads, and the bytes
    // (which are what goes upstream when nothing in them changes, as with the defaults).
    app.addHook('preHandler', async (request) => {
      if (typeof request.body === 'object' && request.body !== null && request.oaiProxyRawBody !== null) {
        seen.push({ body: new WeakRef(request.body), bytes: new WeakRef(request.oaiProxyRawBody.bytes), request })
      }
    })
    const extra = features === 'defaults'
      ? {}
      : {
          rateLimit: { requestsPerWindow: 1000, tokensPerMinute: 1e9, maxConcurrent: 10, failuresPerMinute: 0 },
          filter: { phrases: ['ignore previous instructions'], scripts: ['Han'] },
          policy: { allowedModels: ['gpt-4o*'], maxOutputTokens: 512 },
          outputFilter: { phrases: ['forbidden words'] }
        }
    await app.register(oaiProxy, { upstreamUrl: upstream.url, openaiKeys: [key], proxyKeys: [proxyKey], keyHealth: { intervalMs: 0 }, ...extra })
    const url = await app.listen({ host: '127.0.0.1', port: 0 })
    t.teardown(async () => {
      await app.close()
      await upstream.close()
    })
    // Past WRITTEN_ONCE_BYTES, so undici is handed a body it can let go of.
    const prompt = `lorem ipsum ${randomToken(8)} `.repeat(5000)
    const res = await request(`${url}/v1/chat/completions`, {
      method: 'POST',
      headers: { authorization: `Bearer ${proxyKey}`, 'content-type': 'application/json' },
      body: JSON.stringify({ model: 'gpt-4o-mini', stream: true, messages: [{ role: 'user', content: prompt }] })
    })
    t.equal(res.statusCode, 200)
    const it = res.body[Symbol.asyncIterator]()
    const first = await it.next()
    t.equal(first.done, false, 'the stream is open')
    t.equal(seen.length, 1, 'the hook saw the parsed body')
    const { body, bytes, request: req } = seen[0] as { body: WeakRef<object>, bytes: WeakRef<object>, request: FastifyRequest }
    t.equal(req.body, undefined, 'request.body let go')
    t.equal(req.oaiProxyRawBody, null, 'the raw bytes let go')
    t.equal(req.oaiProxyAnalysis, null, 'the analysis let go')
    gc()
    await new Promise((resolve) => setImmediate(resolve))
    gc()
    t.equal(body.deref(), undefined, 'the parsed body was collected while the answer still streams')
    t.equal(bytes.deref(), undefined, 'so were the bytes, undici\'s copy included')
    let text = (first.value as Buffer).toString()
    for (let n = await it.next(); n.done !== true; n = await it.next()) text += (n.value as Buffer).toString()
    t.match(text, /t39 .*\n\ndata: \[DONE\]\n\n$/s, 'the whole stream arrived')
    // Upstream got the prompt whole.
    const sent = upstream.requests.find((r) => r.url === '/v1/chat/completions')?.json as { messages: Array<{ content: string }> } | undefined
    t.equal(sent?.messages[0]?.content, prompt, 'upstream received the prompt intact')
    const call = upstream.requests.find((r) => r.url === '/v1/chat/completions')
    t.equal(call?.headers['content-length'], String(call?.body.length), 'with its length, not chunked')
    t.equal(call?.headers['transfer-encoding'], undefined)
    assertNoLeak(t, text + JSON.stringify(res.headers), [key], 'stream')
    assertNoLeak(t, logs.join(''), [key], 'logs')
    t.strictSame(upstream.requests.filter((r) => !isAllowlisted(r)).map((r) => `${r.method} ${r.url}`), [], 'upstream saw only allowlisted pairs')
  })
}

t.test('a request answered with an error by the first key is retried on the next with the same body, after the release', async (t) => {
  const keys = [canaryKey(), canaryKey()]
  const upstream = await startFakeOpenAI({ validKeys: [keys[1] as string] })
  const proxyKey = `sk-oaip-${randomToken(32)}`
  const app = Fastify({ ...oaiProxyServerOptions, logger: false })
  await app.register(oaiProxy, { upstreamUrl: upstream.url, openaiKeys: keys, proxyKeys: [proxyKey], keyHealth: { intervalMs: 0 } })
  t.teardown(async () => {
    await app.close()
    await upstream.close()
  })
  const prompt = `dolor sit ${randomToken(8)} `.repeat(5000)
  const res = await app.inject({ method: 'POST', url: '/v1/chat/completions', headers: { authorization: `Bearer ${proxyKey}`, 'content-type': 'application/json' }, payload: { model: 'gpt-4o-mini', messages: [{ role: 'user', content: prompt }] } })
  t.equal(res.statusCode, 200, 'the second key answered')
  const calls = upstream.requests.filter((r) => r.url === '/v1/chat/completions')
  t.equal(calls.length, 2, 'two attempts')
  t.strictSame(calls.map((c) => (c.json as { messages: Array<{ content: string }> }).messages[0]?.content === prompt), [true, true], 'both attempts carried the whole prompt')
  t.strictSame(calls.map((c) => c.headers['content-length'] === String(c.body.length)), [true, true], 'each with its length')
  assertNoLeak(t, res.body + JSON.stringify(res.headers), keys, 'response')
})
