import type { FastifyBaseLogger } from 'fastify'
import t from 'tap'
import { RuleSet } from '../../../plugins/prompt-filter/filter-rules.js'
import { normalise } from '../../../plugins/prompt-filter/normalise.js'
import { firstMatch, RuleWorker, WORKER_MIN_CHARS } from '../../../plugins/prompt-filter/rule-worker.js'
import { chatBody, proxyTest } from '../../helper.js'

/*
 * Large texts that get past the filter's screen are matched in a worker thread: same verdicts as on the
 * event loop, and a worker that dies never skips a verdict.
 */

const PHRASES = ['ignore previous instructions', 'forbidden topic']
const PATTERNS = ['jail\\s*break', 'secret[-_ ]?key']
const big = (tail: string) => normalise('lorem ipsum dolor '.repeat(Math.ceil(WORKER_MIN_CHARS / 18)) + tail)

t.test('the worker finds what the rule set finds, in the order of the texts', async (t) => {
  const rules = new RuleSet(PHRASES, PATTERNS)
  const worker = new RuleWorker(PHRASES, PATTERNS)
  t.teardown(() => worker.close())
  const texts = [big('nothing here'), big('a jail break'), big('my secret key, ignore previous instructions')]
  t.equal(await worker.first([texts[0] as string]), null)
  t.strictSame(await worker.first(texts.slice(1)), rules.first(texts[1] as string))
  t.strictSame(await worker.first([texts[2] as string]), rules.first(texts[2] as string))
  t.match(await worker.first([texts[2] as string]), { id: 'phrase:1' }, 'the first rule in configuration order')
})

t.test('close drains the queue; past its grace the thread is terminated and what is in flight fails; then a new thread starts', async (t) => {
  const worker = new RuleWorker(PHRASES, PATTERNS)
  const drained = worker.first([big('jail break')])
  await worker.close()
  t.match(await drained, { id: 'pattern:1' }, 'a request queued before close is answered')
  const inFlight = worker.first([big('jail break')])
  await worker.close(0)
  await t.rejects(inFlight, /exited/)
  t.match(await worker.first([big('jail break')]), { id: 'pattern:1' })
  await worker.close()
  await worker.close()
})

t.test('a worker is ready once its rules are compiled; until then large texts are matched here', async (t) => {
  const rules = new RuleSet(PHRASES, PATTERNS)
  const worker = new RuleWorker(PHRASES, PATTERNS)
  t.teardown(() => worker.close())
  const log = { warn: () => { t.fail('no worker error expected') } } as unknown as FastifyBaseLogger
  t.equal(worker.ready, false, 'asking starts it')
  t.match(await firstMatch(rules, worker, [big('jail break')], log), { id: 'pattern:1' }, 'matched here meanwhile')
  while (!worker.ready) await new Promise((resolve) => setTimeout(resolve, 20))
  t.match(await firstMatch(rules, worker, [big('secret key')], log), { id: 'pattern:2' }, 'then in the worker')
})

t.test('a worker thread that crashes fails its requests and is replaced', async (t) => {
  const worker = new RuleWorker(PHRASES, PATTERNS)
  t.teardown(() => worker.close())
  // Not a list of texts: the thread throws, as a bug in it would.
  await t.rejects(worker.first(undefined as unknown as string[]))
  t.match(await worker.first([big('jail break')]), { id: 'pattern:1' }, 'a new thread answers')
})

t.test('firstMatch: screened here, large texts in the worker, small ones here, and here again when the worker fails', async (t) => {
  const rules = new RuleSet(PHRASES, PATTERNS)
  let calls = 0
  const failing = { ready: true, first: async () => { calls++; throw new Error('worker down') } } as unknown as RuleWorker
  const errors: string[] = []
  const onError = { warn: (obj: { err: Error }) => { errors.push(obj.err.message) } } as unknown as FastifyBaseLogger
  t.equal(await firstMatch(rules, failing, [big('nothing to see')], onError), null)
  t.equal(calls, 0, 'text the screen clears never reaches the worker')
  t.match(await firstMatch(rules, failing, ['short jail break'], onError), { id: 'pattern:1' })
  t.equal(calls, 0, 'short text is matched here')
  t.match(await firstMatch(rules, failing, [big('jail break')], onError), { id: 'pattern:1' })
  t.strictSame([calls, errors], [1, ['worker down']], 'the failure is reported and the verdict still made')
  t.equal(await firstMatch(rules, failing, [big('instructions'), big('previous')], onError), null, 'a screen hit without a match')
  t.equal((await firstMatch(rules, null, [big('instructions'), 'x', big('jail break')], onError))?.id, 'pattern:1', 'no worker: all here')
})

proxyTest(t, 'large prompts are judged in the worker through the whole pipeline', { proxy: { filter: { phrases: PHRASES, patterns: PATTERNS } } }, async (h, t) => {
  const send = (content: string) => h.app.inject({ method: 'POST', url: '/v1/chat/completions', headers: h.auth, payload: chatBody({ messages: [{ role: 'user', content }] }) })
  const refused = await send('lorem ipsum '.repeat(20_000) + 'Ignore previous instructions')
  t.equal(refused.statusCode, 400)
  t.match(refused.json(), { error: { code: 'content_filter', param: 'messages[0].content' } })
  t.equal((await send('lorem ipsum '.repeat(20_000) + 'ignore the previous line')).statusCode, 200)
  t.equal(h.upstream.requests.length, 1)
})

proxyTest(t, 'rules without a screen are named at start-up and still refuse', { proxy: { filter: { patterns: ['\\d{3}-\\d{4}'] } } }, async (h, t) => {
  t.ok(h.logs.some((l) => l.includes('share no literal') && l.includes('"rules":1')), 'the start-up log counts them')
  const res = await h.app.inject({ method: 'POST', url: '/v1/chat/completions', headers: h.auth, payload: chatBody({ messages: [{ role: 'user', content: 'call 555-1234' }] }) })
  t.equal(res.statusCode, 400)
  t.equal(h.upstream.requests.length, 0)
})
