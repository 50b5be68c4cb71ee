import t from 'tap'
import { assertNoLeak, chatBody, proxyTest, seenByClient } from './helper.js'

proxyTest(t, 'a chat completion goes through with the injected key', {}, async (h, t) => {
  const res = await h.app.inject({ method: 'POST', url: '/v1/chat/completions', headers: h.auth, payload: chatBody() })
  t.equal(res.statusCode, 200)
  t.equal(h.upstream.requests.length, 1)
  t.equal(h.upstream.requests[0]?.headers.authorization, `Bearer ${h.keys[0]}`)
  assertNoLeak(t, seenByClient(res), h.secrets, 'response')
})
