import { createServer } from 'node:http'
import type { AddressInfo } from 'node:net'
import t from 'tap'
import { assertNoLeak, chatBody, proxyTest, randomToken, seenByClient, type Harness } from './helper.js'

const post = (h: Harness) => h.app.inject({ method: 'POST', url: '/v1/chat/completions', headers: h.auth, payload: chatBody() })

proxyTest(t, 'response headers come back from an allowlist only', {}, async (h, t) => {
  h.upstream.script(() => ({
    kind: 'json',
    headers: {
      'openai-organization': h.organization,
      'openai-project': h.project,
      'openai-version': '2020-10-01',
      'x-ratelimit-limit-requests': '10000',
      'x-ratelimit-remaining-tokens': '29000',
      'set-cookie': ['__cf_bm=abc; path=/; domain=.api.openai.com', '_cfuvid=xyz'],
      'access-control-allow-origin': '*',
      'access-control-allow-credentials': 'true',
      'cf-ray': '8f00000000-AMS',
      server: 'cloudflare',
      'alt-svc': 'h3=":443"',
      'strict-transport-security': 'max-age=31536000',
      via: '1.1 google',
      'x-envoy-upstream-service-time': '12'
    },
    body: { ok: true }
  }))
  const res = await post(h)
  t.equal(res.statusCode, 200)
  const names = Object.keys(res.headers).filter((n) => !['date', 'connection', 'keep-alive', 'transfer-encoding', 'content-length'].includes(n)).sort()
  t.strictSame(names, ['content-type', 'openai-processing-ms', 'openai-version', 'x-proxy-request-id', 'x-request-id'])
  assertNoLeak(t, seenByClient(res), h.secrets, 'response')
})

proxyTest(t, 'upstream error bodies keep OpenAI\'s envelope with keys and account ids redacted', {}, async (h, t) => {
  const foreignKey = `sk-${randomToken(48)}`
  h.upstream.script(() => ({
    kind: 'json',
    status: 403,
    headers: { 'content-type': 'text/html' },
    body: {
      error: {
        message: `Key ${foreignKey} (masked sk-proj-abcd****************wxyz, ${h.keys[0]}) in ${h.organization} / ${h.project} and org-Zq81kLmPq0 proj_AAAAbbbbCCCC is not allowed`,
        type: 'invalid_request_error',
        param: null,
        code: 'unsupported_country_region_territory',
        internal_debug: h.keys[0]
      }
    }
  }))
  const res = await post(h)
  t.equal(res.statusCode, 403)
  t.equal(res.headers['content-type'], 'application/json; charset=utf-8')
  const { error } = res.json()
  t.strictSame(Object.keys(error).sort(), ['code', 'message', 'param', 'type'], 'only the four envelope fields are relayed')
  t.equal(error.code, 'unsupported_country_region_territory')
  t.notMatch(error.message, /sk-(?!\[redacted\])|org-(?!\[redacted\])|proj_(?!\[redacted\])/)
  t.notMatch(res.body, new RegExp(foreignKey.slice(3)))
  assertNoLeak(t, seenByClient(res), h.secrets, 'response')
})

proxyTest(t, 'error bodies that are not OpenAI errors, or too large, become a generic envelope', {}, async (h, t) => {
  h.upstream.script(() => ({ kind: 'raw', status: 502, headers: { 'content-type': 'text/html' }, body: `<html>Bad gateway ${h.keys[0]}</html>` }))
  let res = await post(h)
  t.equal(res.statusCode, 502)
  t.strictSame(res.json(), { error: { message: 'The upstream API returned an error (HTTP 502).', type: 'server_error', param: null, code: null } })
  h.upstream.script(() => ({ kind: 'json', status: 400, body: { error: { message: 'x'.repeat(100_000), type: 'invalid_request_error', param: null, code: null } } }))
  res = await post(h)
  t.equal(res.statusCode, 400)
  t.strictSame(res.json(), { error: { message: 'The upstream API returned an error (HTTP 400).', type: 'upstream_error', param: null, code: null } })
  assertNoLeak(t, seenByClient(res), h.secrets, 'response')
})

proxyTest(t, 'an upstream that echoes our request headers has the key cut out (catch-all)', {}, async (h, t) => {
  h.upstream.script((r) => ({ kind: 'json', body: { echoed_headers: r.headers, note: `key=${h.keys[0]}` } }))
  const res = await post(h)
  t.equal(res.statusCode, 200)
  assertNoLeak(t, seenByClient(res), h.secrets, 'response')
  t.match(res.json().echoed_headers.authorization, 'Bearer [redacted]')
})

proxyTest(t, 'a compressed success body is refused rather than relayed unscanned', {}, async (h, t) => {
  h.upstream.script(() => ({ kind: 'raw', headers: { 'content-type': 'application/json', 'content-encoding': 'gzip' }, body: Buffer.from([0x1f, 0x8b, 0, 0]) }))
  const res = await post(h)
  t.equal(res.statusCode, 502)
  t.equal(res.json().error.code, 'upstream_bad_response')
})

t.test('upstream redirects are never followed', async (t) => {
  let otherHits = 0
  const other = createServer((_req, res) => {
    otherHits++
    res.end('{}')
  })
  await new Promise<void>((resolve) => other.listen(0, '127.0.0.1', resolve))
  t.teardown(() => new Promise<void>((resolve) => other.close(() => resolve())))
  const target = `http://127.0.0.1:${(other.address() as AddressInfo).port}/v1/organization/users`
  for (const status of [301, 302, 307, 308]) {
    await proxyTest(t, `HTTP ${status}`, {}, async (h, t) => {
      h.upstream.script(() => ({ kind: 'raw', status, headers: { location: target }, body: '' }))
      const res = await post(h)
      t.equal(res.statusCode, 502)
      t.equal(res.json().error.code, 'upstream_bad_response')
      t.notOk('location' in res.headers)
    })
  }
  t.equal(otherHits, 0, 'the redirect target received nothing')
})

proxyTest(t, 'a compressed body is refused even when the encoding comes as two header lines', {}, async (h, t) => {
  h.upstream.script(() => ({ kind: 'raw', headers: { 'content-type': 'application/json', 'content-encoding': ['identity', 'gzip'] }, body: Buffer.from([0x1f, 0x8b, 0, 0]) }))
  const res = await post(h)
  t.equal(res.statusCode, 502)
  t.equal(res.json().error.code, 'upstream_bad_response')
})

proxyTest(t, 'partial upstream envelopes: no error object or no message is generic; a numeric code is kept as text; a missing type is upstream_error', {}, async (h, t) => {
  const answers: Array<{ status: number, body: unknown, expect: unknown }> = [
    { status: 500, body: { detail: `failed for ${h.keys[0]}` }, expect: { message: 'The upstream API returned an error (HTTP 500).', type: 'server_error', param: null, code: null } },
    { status: 400, body: { error: { code: 'bad_thing', type: 'invalid_request_error' } }, expect: { message: 'The upstream API returned an error (HTTP 400).', type: 'upstream_error', param: null, code: null } },
    { status: 422, body: { error: { message: `Unprocessable with ${h.keys[0]}`, code: 1234, param: 'messages' } }, expect: { message: 'Unprocessable with [redacted]', type: 'upstream_error', param: 'messages', code: '1234' } }
  ]
  for (const a of answers) {
    h.upstream.script(() => ({ kind: 'json', status: a.status, body: a.body }))
    const res = await post(h)
    t.equal(res.statusCode, a.status)
    t.strictSame(res.json(), { error: a.expect })
    assertNoLeak(t, seenByClient(res), h.secrets, 'response')
  }
})

proxyTest(t, 'JSON answers: small ones are sent whole with a length, large ones stream; both intact and redacted', {}, async (h, t) => {
  for (const size of [2_000, 200_000, 300_000, 1_500_000]) {
    // The key sits at the start, around the 256 KB mark (where a large answer switches to streaming) and at the end.
    const filler = 'x'.repeat(Math.max(0, Math.floor(size / 3) - 100))
    const content = [h.keys[0], filler, h.keys[0], filler.slice(0, 262_144 % 997), h.keys[0], filler, h.keys[0]].join(' ')
    h.upstream.script(() => ({ kind: 'json', body: { id: 'chatcmpl-1', choices: [{ message: { content } }], usage: { total_tokens: 9 } } }))
    const res = await post(h)
    t.equal(res.statusCode, 200, `${size}: status`)
    assertNoLeak(t, seenByClient(res), h.secrets, `${size}: response`)
    const got = res.json().choices[0].message.content as string
    t.equal(got, content.split(h.keys[0] as string).join('[redacted]'), `${size}: every byte but the keys`)
    if (res.body.length <= 256 * 1024) t.equal(res.headers['content-length'], String(res.rawPayload.length), `${size}: sent whole, with its length`)
    else t.equal(res.headers['transfer-encoding'], 'chunked', `${size}: streamed`)
  }
})

proxyTest(t, 'a JSON answer cut off mid-body becomes a clean 502, never a truncated 200', {}, async (h, t) => {
  h.upstream.script(() => ({ kind: 'sse', headers: { 'content-type': 'application/json' }, frames: ['{"id":"chatcmpl-1","choices":[', '{"index":0}]}'], delayMs: 10, resetAfter: 1 }))
  const res = await post(h)
  t.equal(res.statusCode, 502)
  t.equal(res.json().error.code, 'upstream_unreachable')
  assertNoLeak(t, seenByClient(res), h.secrets, 'response')
  t.ok(h.logs.some((l) => l.includes('upstream body ended abnormally')), 'logged')
})
