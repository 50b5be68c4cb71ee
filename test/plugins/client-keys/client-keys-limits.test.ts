import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import t from 'tap'
import { writeKeysFile } from '../../../plugins/client-keys/file-io.js'
import { hashSecret, newKeyId, newSecret } from '../../../plugins/client-keys/records.js'
import type { ClientKeyRecord } from '../../../plugins/client-keys/schema.js'
import { assertNoLeak, chatBody, proxyTest, seenByClient, sleep, type Harness } from '../../helper.js'
import { open, rtTest } from '../../realtime-helper.js'

/*
 * Issue 13: a client key's own limits (requests per window, tokens per minute, concurrency) replace the
 * suite's for that key, and hold even where the suite sets none; other keys keep the suite's.
 */

const dir = mkdtempSync(join(tmpdir(), 'oai-keys-limits-'))
t.teardown(() => rmSync(dir, { recursive: true, force: true }))

function record (secret: string, limits: ClientKeyRecord['limits']): ClientKeyRecord {
  return { id: newKeyId(), name: 'limited', hash: hashSecret(secret), prefix: secret.slice(0, 12), created: new Date().toISOString(), disabled: false, scopes: {}, metadata: {}, ...(limits === undefined ? {} : { limits }) }
}

const tight = newSecret()
const loose = newSecret()
const single = newSecret()
const voice = newSecret()
const file = join(dir, 'keys.jsonl')
await writeKeysFile(file, [
  record(tight, { requestsPerWindow: 2, tokensPerMinute: 100_000, maxConcurrent: 1, tokensPerDay: 10_000_000 }),
  record(loose, undefined),
  record(single, { maxConcurrent: 1, tokensPerMinute: 100_000 }),
  record(voice, { tokensPerMinute: 1000 })
])
const secrets = [tight, loose, single, voice]

const chat = (h: Harness, key: string, extra: Record<string, unknown> = {}) =>
  h.app.inject({ method: 'POST', url: '/v1/chat/completions', headers: { 'content-type': 'application/json', authorization: `Bearer ${key}` }, payload: JSON.stringify(chatBody(extra)) })
const codeOf = (res: { body: string }) => (JSON.parse(res.body) as { error?: { code?: string } }).error?.code

proxyTest(t, 'a key\'s own request window holds with no suite-wide limit; a key without one is unlimited', { proxy: { keysFile: file } }, async (h, t) => {
  const answers = [await chat(h, tight), await chat(h, tight), await chat(h, tight)]
  t.strictSame(answers.map((r) => r.statusCode), [200, 200, 429], 'the third request in the window is refused')
  t.equal(codeOf(answers[2] as { body: string }), 'rate_limit_exceeded')
  t.equal(answers[2]?.headers['x-ratelimit-limit-requests'], '2')
  for (let i = 0; i < 5; i++) t.equal((await chat(h, loose)).statusCode, 200, `the other key, request ${i + 1}`)
  t.equal(h.upstream.requests.length, 7, 'the refused request never went upstream')
  for (const r of answers) assertNoLeak(t, seenByClient(r), [...h.secrets, ...secrets], 'answer')
})

proxyTest(t, 'a key\'s own limits replace the suite\'s: its window, its token budget, its concurrency', {
  listen: true,
  proxy: { keysFile: file, rateLimit: { requestsPerWindow: 100, tokensPerMinute: 50, maxConcurrent: 10 } }
}, async (h, t) => {
  // The suite's 50 tokens a minute would refuse any chat request; the key's own 100,000 admits it.
  const ok = await chat(h, tight)
  t.equal(ok.statusCode, 200)
  t.equal(ok.headers['x-ratelimit-limit-tokens'], '100000', 'the key\'s budget, not the suite\'s')
  const suite = await chat(h, loose)
  t.equal(suite.statusCode, 429, 'a key without its own budget gets the suite\'s 50')
  t.equal(codeOf(suite), 'rate_limit_exceeded')

  // Concurrency 1: while one stream is open, the next request is refused; afterwards it is admitted.
  h.upstream.script(() => ({ kind: 'sse', frames: ['data: {"choices":[]}\n\n', 'data: [DONE]\n\n'], firstByteDelayMs: 400 }))
  const open = fetch(`${h.url}/v1/chat/completions`, { method: 'POST', headers: { 'content-type': 'application/json', authorization: `Bearer ${single}` }, body: JSON.stringify(chatBody({ stream: true })) })
  await sleep(100)
  const second = await chat(h, single)
  t.equal(second.statusCode, 429, 'a second request while the first is open')
  t.match(JSON.parse(second.body).error.message, /concurrent requests: Limit 1/)
  const first = await open
  t.equal(first.status, 200)
  await first.text()
  await sleep(50)
  h.upstream.script(undefined)
  t.equal((await chat(h, single)).statusCode, 200, 'the slot came back when the stream ended')
})

rtTest(t, 'a Realtime session is held to its key\'s own token budget', {
  proxy: { keysFile: file },
  realtime: { tokensPerResponse: 400 }
}, async (h, t) => {
  const c = await open(t, h.wsUrl, { headers: { authorization: `Bearer ${voice}` } })
  for (let i = 0; i < 3; i++) {
    c.send({ type: 'response.create' })
    await c.next('response.done')
  }
  await sleep(50)
  c.send({ type: 'response.create', event_id: 'evt_over' })
  t.match(await c.next('error'), { error: { code: 'rate_limit_exceeded', event_id: 'evt_over', message: /Limit 1000, Used 1200/ } }, 'the key\'s 1,000, with no suite-wide budget')
  c.ws.close()
  await c.closed
})
