import OpenAI from 'openai'
import t from 'tap'
import { assertNoLeak, proxyTest, type Harness } from './helper.js'

const client = (h: Harness, apiKey = h.proxyKey) => new OpenAI({ baseURL: `${h.url}/v1`, apiKey, maxRetries: 0 })

proxyTest(t, 'the official openai SDK works through the proxy', { listen: true }, async (h, t) => {
  const openai = client(h)
  const chat = await openai.chat.completions.create({ model: 'gpt-4o-mini', messages: [{ role: 'user', content: 'ping' }] })
  t.match(chat.choices[0]?.message.content, /You said: ping/)
  t.equal(chat._request_id, 'req_fake', 'x-request-id passes through for support tickets')

  const stream = await openai.chat.completions.create({ model: 'gpt-4o-mini', messages: [{ role: 'user', content: 'stream me' }], stream: true })
  let text = ''
  for await (const chunk of stream) text += chunk.choices[0]?.delta.content ?? ''
  t.match(text, /You said: stream me/)

  const response = await openai.responses.create({ model: 'gpt-4o-mini', input: 'responses api' })
  t.match(response.output_text, /You said: responses api/)

  const events: string[] = []
  for await (const ev of await openai.responses.create({ model: 'gpt-4o-mini', input: 'streamed', stream: true })) events.push(ev.type)
  t.equal(events.at(-1), 'response.completed')

  const emb = await openai.embeddings.create({ model: 'text-embedding-3-small', input: ['a', 'b'] })
  t.equal(emb.data.length, 2)

  const models = await openai.models.list()
  t.ok(models.data.some((m) => m.id === 'gpt-4o-mini'))
  const model = await openai.models.retrieve('gpt-4o-mini')
  t.equal(model.id, 'gpt-4o-mini')

  assertNoLeak(t, JSON.stringify([chat, text, response, emb, models.data, model]), h.secrets, 'SDK results')
})

proxyTest(t, 'the SDK raises the right error classes', { listen: true }, async (h, t) => {
  const bad = client(h, 'sk-wrong')
  const auth = await bad.chat.completions.create({ model: 'gpt-4o-mini', messages: [{ role: 'user', content: 'x' }] }).catch((e: unknown) => e)
  t.type(auth, OpenAI.AuthenticationError)
  t.match(auth, { status: 401, code: 'invalid_api_key', type: 'invalid_request_error' })

  const openai = client(h)
  const notFound = await openai.chat.completions.create({ model: 'unknown-model', messages: [{ role: 'user', content: 'x' }] }).catch((e: unknown) => e)
  t.type(notFound, OpenAI.NotFoundError)
  t.match(notFound, { code: 'model_not_found' })

  const gone = await openai.files.list().catch((e: unknown) => e)
  t.type(gone, OpenAI.NotFoundError, 'non-generation endpoints are a local 404')
  t.match(gone, { code: 'unknown_url' })

  const invalid = await openai.chat.completions.create({ model: 'gpt-4o-mini', messages: [] }).catch((e: unknown) => e)
  t.type(invalid, OpenAI.BadRequestError)
  t.match(invalid, { param: 'messages' })

  h.upstream.script(() => ({ kind: 'json', status: 429, headers: { 'retry-after': '1' }, body: { error: { message: 'Rate limit reached for requests', type: 'requests', param: null, code: 'rate_limit_exceeded' } } }))
  const limited = await openai.chat.completions.create({ model: 'gpt-4o-mini', messages: [{ role: 'user', content: 'x' }] }).catch((e: unknown) => e)
  t.type(limited, OpenAI.RateLimitError)
  t.match(limited, { code: 'rate_limit_exceeded', type: 'requests' })
  t.equal((limited as InstanceType<typeof OpenAI.RateLimitError>).headers?.get('retry-after'), '1')
})
