import t from 'tap'
import { request } from 'undici'
import { startFakeOpenAI } from '../testing/fake-openai.js'

/* The fake upstream is published (`oai-reverse-proxy/testing`): its own answers, outside the proxy. */

t.test('without a key, or with a key it does not know, the fake answers like OpenAI', async (t) => {
  const fake = await startFakeOpenAI({ validKeys: ['sk-good-0123456789abcdef'] })
  t.teardown(fake.close)
  const none = await request(`${fake.url}/v1/models`)
  t.equal(none.statusCode, 401)
  t.strictSame(await none.body.json(), { error: { message: "You didn't provide an API key.", type: 'invalid_request_error', param: null, code: null } })
  const wrongKey = 'sk-wrong-0123456789abcdef'
  const wrong = await request(`${fake.url}/v1/models`, { headers: { authorization: `Bearer ${wrongKey}` } })
  t.equal(wrong.statusCode, 401)
  const { error } = await wrong.body.json() as { error: { message: string, code: string } }
  t.equal(error.code, 'invalid_api_key')
  t.match(error.message, /^Incorrect API key provided: sk-wrong\*{13}cdef\. /, 'the key is masked as OpenAI masks it')
  t.notMatch(error.message, wrongKey)
  const good = await request(`${fake.url}/v1/models`, { headers: { authorization: 'Bearer sk-good-0123456789abcdef' } })
  t.equal(good.statusCode, 200)
  await good.body.dump()
})

t.test('unknown URLs are 404 unknown_url; a body that is not JSON is still recorded', async (t) => {
  const fake = await startFakeOpenAI()
  t.teardown(fake.close)
  const res = await request(`${fake.url}/v1/nope?x=1`, { method: 'POST', headers: { authorization: 'Bearer sk-any', 'content-type': 'text/plain' }, body: 'not json' })
  t.equal(res.statusCode, 404)
  t.strictSame(await res.body.json(), { error: { message: 'Invalid URL (POST /v1/nope)', type: 'invalid_request_error', param: null, code: 'unknown_url' } })
  t.match(fake.requests, [{ method: 'POST', url: '/v1/nope?x=1', json: undefined }])
  t.equal(fake.requests[0]?.body.toString(), 'not json')
})

t.test('a scripted first-byte delay holds back the response headers', async (t) => {
  const fake = await startFakeOpenAI()
  t.teardown(fake.close)
  fake.script(() => ({ kind: 'sse', frames: ['data: [DONE]\n\n'], firstByteDelayMs: 200 }))
  const start = Date.now()
  const res = await request(`${fake.url}/v1/chat/completions`, { method: 'POST', body: '{}' })
  const waited = Date.now() - start
  t.equal(res.statusCode, 200)
  t.equal(await res.body.text(), 'data: [DONE]\n\n')
  t.ok(waited >= 180, `headers after ${waited} ms`)
})

t.test('waitFor gives up after its timeout', async (t) => {
  const fake = await startFakeOpenAI()
  t.teardown(fake.close)
  await t.rejects(fake.waitFor(() => true, 50), { message: 'fake-openai: timed out waiting for a request' })
})

t.test('upload endpoints called with JSON (no form) still answer: nothing heard, the default realtime model', async (t) => {
  const fake = await startFakeOpenAI()
  t.teardown(fake.close)
  const post = async (path: string) => {
    const res = await request(`${fake.url}${path}`, { method: 'POST', headers: { authorization: 'Bearer sk-any', 'content-type': 'application/json' }, body: '{}' })
    return { status: res.statusCode, text: await res.body.text() }
  }
  t.strictSame(JSON.parse((await post('/v1/audio/translations')).text), { text: 'Heard 0 bytes of nothing' })
  const call = await post('/v1/realtime/calls')
  t.equal(call.status, 201)
  t.match(call.text, /\r\ns=gpt-realtime\r\n/)
  const bad = await request(`${fake.url}/v1/audio/transcriptions`, { method: 'POST', headers: { authorization: 'Bearer sk-any', 'content-type': 'multipart/form-data' }, body: 'no boundary' })
  t.equal(bad.statusCode, 400, 'a form the fake cannot read is a 400')
  await bad.body.dump()
})
