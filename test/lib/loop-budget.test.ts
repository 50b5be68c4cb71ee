import t from 'tap'
import { laterTurn, LIGHT_CHARS, overBudget, TURN_BUDGET_MS, yieldTurn } from '../../lib/loop-budget.js'
import { chatBody, proxyTest } from '../helper.js'

/*
 * Heavy work shares one budget per turn of the event loop: past it, work waits for a later turn, after the
 * timers that were due.
 */

const busy = (ms: number) => { const end = performance.now() + ms; while (performance.now() < end); }

t.test('the budget opens with the first heavy work of a turn and is spent after TURN_BUDGET_MS', async (t) => {
  await laterTurn()
  t.equal(overBudget(), false, 'a new turn has budget')
  busy(TURN_BUDGET_MS + 1)
  t.equal(overBudget(), true, 'spent')
  const order: string[] = []
  setTimeout(() => order.push('timer'), 0)
  busy(2) // the timer is due before the turn ends
  await yieldTurn(LIGHT_CHARS)
  order.push('work')
  t.strictSame(order, ['timer', 'work'], 'the waiting heavy work runs after the due timer')
  // (Whether the new window still has budget right now depends on how busy the machine is: not asserted.)
  await laterTurn()
  t.equal(overBudget(), false, 'the first heavy work of a turn always has budget')
})

t.test('light work never waits, even with the budget spent', async (t) => {
  await laterTurn()
  overBudget()
  busy(TURN_BUDGET_MS + 1)
  t.equal(overBudget(), true, 'spent')
  const order: string[] = []
  setTimeout(() => order.push('timer'), 0)
  busy(2)
  await yieldTurn(LIGHT_CHARS - 1)
  order.push('work')
  t.strictSame(order, ['work'], 'went ahead in the same turn, before the due timer')
})

proxyTest(t, 'large bodies arriving together (more than one turn\'s budget of parsing) are all parsed and forwarded intact', {}, async (h, t) => {
  const bodies = Array.from({ length: 16 }, (_, i) => chatBody({ messages: [{ role: 'user', content: `${i} ` + 'lorem ipsum '.repeat(40_000) }] }))
  const responses = await Promise.all(bodies.map((b) => h.app.inject({ method: 'POST', url: '/v1/chat/completions', headers: h.auth, payload: b })))
  t.strictSame(responses.map((r) => r.statusCode), bodies.map(() => 200))
  t.strictSame(h.upstream.requests.map((r) => (r.json as { messages: Array<{ content: string }> }).messages[0]?.content.split(' ')[0]).sort((a, b) => Number(a) - Number(b)), bodies.map((_, i) => String(i)))
})
