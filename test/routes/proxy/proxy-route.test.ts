import t from 'tap'
import { analyse } from '../../../lib/request-analysis.js'
import { estimatePrompt } from '../../../lib/token-estimate.js'
import { endpoints } from '../../../schemas/endpoints.js'
import { chatBody, proxyTest, sleep, type Harness } from '../../helper.js'

/* Edge cases of the forwarding route (routes/proxy/index.ts) that the per-concern suites do not reach. */

const LIMIT = 10_000
const OUTPUT = 500
const budget = { rateLimit: { tokensPerMinute: LIMIT, defaultOutputTokens: OUTPUT } }
const chat = endpoints.find((e) => e.id === 'chat.completions') as (typeof endpoints)[number]
const reservation = estimatePrompt(analyse(chat, chatBody())) + OUTPUT

const post = (h: Harness, url = '/v1/chat/completions') => h.app.inject({ method: 'POST', url, headers: h.auth, payload: chatBody() })
const remaining = (res: { headers: Record<string, unknown> }) => Number(res.headers['x-ratelimit-remaining-tokens'])
/** Settlement runs when the response closes; give it a turn of the event loop. */
const settled = () => sleep(20)

proxyTest(t, 'a success body that is neither JSON nor SSE is relayed as is and charged its estimate', { proxy: budget }, async (h, t) => {
  h.upstream.script(() => ({ kind: 'raw', headers: { 'content-type': 'text/plain' }, body: 'plain words, "usage": {"total_tokens": 1}' }))
  const res = await post(h)
  t.equal(res.statusCode, 200)
  t.equal(res.headers['content-type'], 'text/plain')
  t.equal(res.body, 'plain words, "usage": {"total_tokens": 1}')
  await settled()
  h.upstream.script(undefined)
  t.equal(remaining(await post(h)), LIMIT - 2 * reservation, 'no usage was read, so the reservation stands')
})

proxyTest(t, 'when the last key is taken out mid-request the 503 refunds the token reservation', { proxy: budget }, async (h, t) => {
  h.upstream.script(() => ({ kind: 'json', status: 401, body: { error: { message: 'Incorrect API key provided.', type: 'invalid_request_error', param: null, code: 'invalid_api_key' } } }))
  const res = await post(h)
  t.equal(res.statusCode, 503)
  t.equal(res.json().error.code, 'upstream_keys_exhausted')
  await settled()
  t.equal(remaining(await post(h)), LIMIT - reservation, 'only the new request is reserved')
})

proxyTest(t, 'an upstream error body cut off mid-way is a 502, not a hang or a 500', {}, async (h, t) => {
  h.upstream.script(() => ({ kind: 'sse', status: 500, frames: ['{"error": {"message": "part', 'ial"}}'], delayMs: 100, resetAfter: 1 }))
  const res = await post(h)
  t.equal(res.statusCode, 502)
  t.strictSame(res.json(), { error: { message: 'The proxy could not reach the upstream API.', type: 'server_error', param: null, code: 'upstream_unreachable' } })
  t.match(h.logs.join(''), /"code":"OAI_PROXY_UPSTREAM_UNREACHABLE"/)
})

proxyTest(t, 'with unprefixedRoutes off only /v1 paths are served, and 405 answers follow suit', { proxy: { unprefixedRoutes: false } }, async (h, t) => {
  t.equal((await post(h)).statusCode, 200)
  const bare = await post(h, '/chat/completions')
  t.equal(bare.statusCode, 404)
  t.equal(bare.json().error.code, 'unknown_url')
  const wrongMethod = await h.app.inject({ method: 'GET', url: '/v1/chat/completions?x=1', headers: h.auth })
  t.equal(wrongMethod.statusCode, 405)
  t.equal(wrongMethod.headers.allow, 'POST')
  const bareWrongMethod = await h.app.inject({ method: 'GET', url: '/chat/completions', headers: h.auth })
  t.equal(bareWrongMethod.statusCode, 404, 'not ours at all without the prefix')
  t.equal(h.upstream.requests.length, 1)
})

proxyTest(t, 'a legacy completions stream is relayed frame by frame', {}, async (h, t) => {
  const res = await h.app.inject({ method: 'POST', url: '/v1/completions', headers: h.auth, payload: { model: 'gpt-3.5-turbo-instruct', prompt: 'say hi', stream: true } })
  t.equal(res.statusCode, 200)
  t.match(res.headers['content-type'], /^text\/event-stream/)
  const frames = res.body.split('\n\n').filter((f) => f.length > 0)
  t.equal(frames.at(-1), 'data: [DONE]')
  const chunks = frames.slice(0, -1).map((f) => JSON.parse(f.replace(/^data: /, '')) as { object: string, choices: Array<{ text: string, finish_reason: string | null }> })
  t.match(chunks, Array.from({ length: chunks.length }, () => ({ object: 'text_completion' })))
  t.equal(chunks.map((c) => c.choices[0]?.text).join(''), 'Hello from the fake upstream! You said: say hi')
  t.equal(chunks.at(-1)?.choices[0]?.finish_reason, 'stop')
})
