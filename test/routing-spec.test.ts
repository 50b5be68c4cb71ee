import { readFileSync } from 'node:fs'
import t from 'tap'
import { assertNoLeak, chatBody, proxyTest, rawRequest, seenByClient } from './helper.js'
import { ALLOWLISTED, FORM_ROUTES, expectOpenAIError, parseRaw, rawHttp, servedMethods } from './routing-shared.js'

/*
 * Threat catalogue R01: every operation in OpenAI's published API that we do not serve is refused
 * locally, whatever its path parameters hold. The list is a copy of /work/shared/openai-operations.tsv
 * (method, path, class, operationId); refresh the fixture when the spec moves.
 */

interface Operation { method: string, path: string, cls: string, id: string }

const operations: Operation[] = readFileSync(new URL('./fixtures/openai-operations.tsv', import.meta.url), 'utf8')
  .split('\n')
  .filter((line) => line.trim().length > 0 && !line.startsWith('#'))
  .map((line) => {
    const [method = '', path = '', cls = '', id = ''] = line.split('\t')
    return { method, path, cls, id }
  })

const served = new Set([...ALLOWLISTED, ...FORM_ROUTES].map((e) => `${e.method} ${e.path.replace('gpt-4o-mini', '{model}')}`))
const unserved = [...new Map(operations.filter((o) => !served.has(`${o.method} ${o.path}`)).map((o) => [`${o.method} ${o.path}`, o])).values()]

t.test('the spec fixture is what we think it is', async (t) => {
  t.ok(operations.length > 250, `${operations.length} operations listed`)
  t.strictSame(operations.filter((o) => o.cls !== 'forward' && o.cls !== 'reject'), [], 'every row is forward or reject')
  t.strictSame([...served].filter((pair) => !operations.some((o) => `${o.method} ${o.path}` === pair)), [], 'every allowlisted pair is in the spec')
  const forwardUnserved = unserved.filter((o) => o.cls === 'forward').map((o) => `${o.method} ${o.path}`).sort()
  t.strictSame(forwardUnserved, [], 'every forwardable operation is served')
  t.ok(unserved.some((o) => o.method === 'GET' && o.path === '/chat/completions'), 'the stored-completions list is among the refused')
  t.ok(unserved.some((o) => o.method === 'DELETE' && o.path === '/models/{model}'), 'deleting a model is among the refused')
})

/** Values for `{param}`: a plain id, and ones that try to climb out of their segment. */
const PARAM_VALUES = ['abc123', '..%2F..%2Forganization', '%2e%2e', 'gpt-4o%3Bx']

proxyTest(t, 'R01: every unserved operation in the spec is refused locally (404 or 405), never forwarded', {}, async (h, t) => {
  let sent = 0
  for (const op of unserved) {
    for (const value of PARAM_VALUES) {
      if (value !== PARAM_VALUES[0] && !op.path.includes('{')) continue
      const path = op.path.replace(/\{[a-z_]+\}/g, value)
      for (const prefix of ['/v1', '']) {
        const url = prefix + path
        const what = `${op.method} ${url} (${op.id})`
        const res = await h.app.inject({
          method: op.method as 'GET',
          url,
          headers: h.auth,
          ...(op.method === 'POST' ? { payload: chatBody({ input: 'hello', prompt: 'hello' }) } : {})
        })
        sent++
        // Independent oracle: 405 only where the literal path is one of ours under another method.
        // (inject resolves a `%2e%2e` segment as `..` before routing, hence resolving it here too.)
        const routed = new URL(url, 'http://x').pathname
        const allow = servedMethods(routed)
        if (routed === '/' && op.method === 'GET') {
          // `/x/%2e%2e` resolved to `/`: the proxy's own status page answers (over real sockets, below, it is a 404).
          t.equal(res.statusCode, 200, `${what}: the status page`)
          t.match(res.headers['content-type'], /^text\/html/, `${what}: the status page`)
        } else if (allow.length > 0) {
          expectOpenAIError(t, res, 405, 'method_not_allowed', what)
          t.equal(res.headers.allow, allow.join(', '), `${what}: Allow header`)
        } else {
          expectOpenAIError(t, res, 404, 'unknown_url', what)
          t.equal(res.headers.allow, undefined, `${what}: no Allow header on 404`)
        }
        assertNoLeak(t, seenByClient(res), h.secrets, `response to ${what}`)
      }
    }
  }
  t.ok(sent > 700, `${sent} requests sent`)
  t.equal(h.upstream.requests.length, 0, 'no request reached upstream')

  const res = await h.app.inject({ method: 'POST', url: '/v1/chat/completions', headers: h.auth, payload: chatBody() })
  t.equal(res.statusCode, 200, 'a normal request still works afterwards')
  t.equal(h.upstream.requests.length, 1)
})

proxyTest(t, 'R01: without a proxy key, unserved operations are still 404/405 (the router answers before auth)', {}, async (h, t) => {
  for (const op of unserved) {
    const url = '/v1' + op.path.replace(/\{[a-z_]+\}/g, 'abc123')
    const res = await h.app.inject({ method: op.method as 'GET', url, ...(op.method === 'POST' ? { payload: chatBody() } : {}) })
    const what = `unauthenticated ${op.method} ${url}`
    if (servedMethods(url).length > 0) expectOpenAIError(t, res, 405, 'method_not_allowed', what)
    else expectOpenAIError(t, res, 404, 'unknown_url', what)
    assertNoLeak(t, seenByClient(res), h.secrets, 'response')
  }
  const served = await h.app.inject({ method: 'POST', url: '/v1/chat/completions', payload: chatBody() })
  t.equal(served.statusCode, 401, 'a served route without a key is 401')
  t.equal(h.upstream.requests.length, 0)
})

proxyTest(t, 'R01 over real sockets: the same refusals through Node\'s parser (no URL normalisation)', { listen: true }, async (h, t) => {
  const port = Number(new URL(h.url).port)
  const body = JSON.stringify(chatBody({ input: 'hello' }))
  for (const op of unserved) {
    for (const value of op.path.includes('{') ? ['abc123', '..%2F..%2Forganization', '%2e%2e'] : ['']) {
      const url = '/v1' + op.path.replace(/\{[a-z_]+\}/g, value)
      const text = await rawRequest(port, rawHttp(op.method, url, h.auth, op.method === 'POST' ? body : undefined))
      const seen = parseRaw(text)
      const allow = servedMethods(url)
      const what = `raw ${op.method} ${url}`
      if (allow.length > 0) {
        expectOpenAIError(t, seen, 405, 'method_not_allowed', what)
        t.equal(seen.headers.allow, allow.join(', '), `${what}: Allow header`)
      } else {
        expectOpenAIError(t, seen, 404, 'unknown_url', what)
      }
      assertNoLeak(t, text, h.secrets, `response to ${what}`)
    }
  }
  t.equal(h.upstream.requests.length, 0, 'no request reached upstream')
})
