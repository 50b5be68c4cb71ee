import Fastify from 'fastify'
import OpenAI from 'openai'
import t from 'tap'
import oaiProxy from '../../../app.js'
import { globMatch } from '../../../plugins/request-policy/policy-rules.js'
import { analyse } from '../../../lib/request-analysis.js'
import keyInjection from '../../../plugins/upstream/key-injection.js'
import promptFilter from '../../../plugins/prompt-filter/index.js'
import requestPolicy from '../../../plugins/request-policy/index.js'
import upstream from '../../../plugins/upstream/index.js'
import { endpoints } from '../../../schemas/endpoints.js'
import { startFakeOpenAI } from '../../../testing/fake-openai.js'
import { assertNoLeak, canaryKey, chatBody, proxyTest, seenByClient, type Harness } from '../../helper.js'

/*
 * The request policy: what a shared key may be used for. Refusals are local (zero upstream requests) and
 * name rule and parameter; clamps are visible in the body the fake upstream received.
 */

const post = (h: Harness, url: string, payload: unknown) =>
  h.app.inject({ method: 'POST', url, headers: h.auth, payload: payload as Record<string, unknown> })
const sent = (h: Harness): Record<string, unknown> => h.upstream.requests.at(-1)?.json as Record<string, unknown>
const responsesBody = (extra: Record<string, unknown> = {}) => ({ model: 'gpt-4o-mini', input: 'hi', ...extra })

proxyTest(t, 'model allowlist: exact names and globs; everything else is a local 403', { proxy: { policy: { allowedModels: ['gpt-4o-mini', 'text-embedding-*', 'ft:gpt-4o-mini:*'] } } }, async (h, t) => {
  t.equal((await post(h, '/v1/chat/completions', chatBody())).statusCode, 200)
  t.equal((await post(h, '/v1/embeddings', { model: 'text-embedding-3-small', input: 'x' })).statusCode, 200)
  t.equal((await post(h, '/v1/moderations', { input: 'x' })).statusCode, 200, 'moderations may leave the model to upstream')
  const before = h.upstream.requests.length
  for (const [url, body] of [
    ['/v1/chat/completions', chatBody({ model: 'gpt-4o' })],
    ['/v1/chat/completions', chatBody({ model: 'gpt-4o-mini-2024-07-18' })],
    ['/v1/responses', responsesBody({ model: 'o1-pro' })],
    ['/v1/completions', { model: 'gpt-3.5-turbo-instruct', prompt: 'x' }],
    ['/v1/moderations', { model: 'omni-moderation-latest', input: 'x' }]
  ] as const) {
    const res = await post(h, url, body)
    t.equal(res.statusCode, 403, `${url} ${body.model}`)
    t.strictSame(res.json(), { error: { message: 'This model is not available on this proxy (rule: allowed_models).', type: 'invalid_request_error', param: 'model', code: 'model_not_allowed' } })
  }
  t.equal(h.upstream.requests.length, before, 'refused locally')
  t.match(h.logs.join(''), /"rule":"allowed_models","param":"model".*refused by policy/)
})

proxyTest(t, '/v1/models lists only allowed models; a disallowed model cannot be retrieved', { proxy: { policy: { allowedModels: ['gpt-4o*'] } } }, async (h, t) => {
  const list = await h.app.inject({ method: 'GET', url: '/v1/models', headers: h.auth })
  t.equal(list.statusCode, 200)
  t.strictSame((list.json() as { data: Array<{ id: string }> }).data.map((m) => m.id), ['gpt-4o-mini', 'gpt-4o'])
  t.match(list.json(), { object: 'list' })
  t.equal(list.headers['x-request-id'], 'req_fake', 'allowlisted headers still pass')
  t.equal((await h.app.inject({ method: 'GET', url: '/models', headers: h.auth })).json().data.length, 2, 'without /v1 too')
  t.equal((await h.app.inject({ method: 'GET', url: '/v1/models/gpt-4o', headers: h.auth })).statusCode, 200)
  const calls = h.upstream.requests.length
  const hidden = await h.app.inject({ method: 'GET', url: '/v1/models/text-embedding-3-small', headers: h.auth })
  t.equal(hidden.statusCode, 403)
  t.match(hidden.json(), { error: { code: 'model_not_allowed', param: 'model' } })
  t.equal(h.upstream.requests.length, calls, 'zero upstream requests')
  assertNoLeak(t, seenByClient(list) + seenByClient(hidden), h.secrets, 'responses')
})

proxyTest(t, 'the model list is redacted and capped like any upstream body', { proxy: { policy: { allowedModels: ['*'] } } }, async (h, t) => {
  h.upstream.script(() => ({ kind: 'json', body: { object: 'list', data: [{ id: 'gpt-4o', object: 'model', owned_by: h.organization }, { id: `ft:gpt-4o:${h.keys[0] as string}` }] } }))
  const res = await h.app.inject({ method: 'GET', url: '/v1/models', headers: h.auth })
  t.equal(res.statusCode, 200)
  assertNoLeak(t, seenByClient(res), h.secrets, 'rewritten list')
  h.upstream.script(() => ({ kind: 'raw', headers: { 'content-type': 'application/json' }, body: `{"object":"list","data":[${'{"id":"gpt-4o"},'.repeat(80_000)}{"id":"x"}]}` }))
  t.equal((await h.app.inject({ method: 'GET', url: '/v1/models', headers: h.auth })).statusCode, 502, 'over 1 MiB is not a model list')
  h.upstream.script(() => ({ kind: 'raw', headers: { 'content-type': 'application/json' }, body: 'not json' }))
  t.equal((await h.app.inject({ method: 'GET', url: '/v1/models', headers: h.auth })).statusCode, 502)
  h.upstream.script(() => ({ kind: 'sse', headers: { 'content-type': 'application/json' }, frames: ['{"object":"list",', '"data":[]}'], delayMs: 20, resetAfter: 1 }))
  t.equal((await h.app.inject({ method: 'GET', url: '/v1/models', headers: h.auth })).statusCode, 502, 'cut off mid-body')
})

proxyTest(t, 'a model list without a data array comes back as an empty list', { proxy: { policy: { allowedModels: ['gpt-4o*'] } } }, async (h, t) => {
  for (const body of [{ object: 'list' }, { object: 'list', data: 'gpt-4o' }, null]) {
    h.upstream.script(() => ({ kind: 'json', body }))
    const res = await h.app.inject({ method: 'GET', url: '/v1/models', headers: h.auth })
    t.equal(res.statusCode, 200, JSON.stringify(body))
    t.strictSame(res.json(), { ...(body ?? {}), object: 'list', data: [] }, JSON.stringify(body))
  }
})

proxyTest(t, 'without an allowlist the model list is streamed through untouched', {}, async (h, t) => {
  const res = await h.app.inject({ method: 'GET', url: '/v1/models', headers: h.auth })
  t.equal((res.json() as { data: unknown[] }).data.length, 6)
})

proxyTest(t, 'output tokens: set when absent, clamped when larger, on every endpoint that generates', { proxy: { policy: { maxOutputTokens: 500 } } }, async (h, t) => {
  const cases: Array<[string, Record<string, unknown>, Record<string, unknown>]> = [
    ['/v1/chat/completions', chatBody(), { max_completion_tokens: 500 }],
    ['/v1/chat/completions', chatBody({ max_tokens: 1e9 }), { max_tokens: 500 }],
    ['/v1/chat/completions', chatBody({ max_completion_tokens: 100 }), { max_completion_tokens: 100 }],
    ['/v1/chat/completions', chatBody({ max_tokens: 9000, max_completion_tokens: 20 }), { max_tokens: 500, max_completion_tokens: 20 }],
    ['/v1/chat/completions', chatBody({ max_tokens: null }), { max_completion_tokens: 500 }],
    ['/v1/completions', { model: 'gpt-3.5-turbo-instruct', prompt: 'x', max_tokens: 4096 }, { max_tokens: 500 }],
    ['/v1/completions', { model: 'gpt-3.5-turbo-instruct', prompt: 'x' }, { max_tokens: 500 }],
    ['/v1/responses', responsesBody(), { max_output_tokens: 500 }],
    ['/v1/responses', responsesBody({ max_output_tokens: 100_000 }), { max_output_tokens: 500 }]
  ]
  for (const [url, body, expected] of cases) {
    t.equal((await post(h, url, body)).statusCode, 200)
    const got = sent(h)
    t.match(got, expected, `${url} ${JSON.stringify(body).slice(0, 80)}`)
    if (!('max_tokens' in expected)) t.notOk('max_tokens' in got, 'no null left beside the cap')
  }
  t.equal((await post(h, '/v1/embeddings', { model: 'text-embedding-3-small', input: 'x' })).statusCode, 200)
  t.notOk('max_tokens' in sent(h), 'embeddings have no output to cap')
  const before = h.upstream.requests.length
  for (const bad of ['1000', -1, 1.5, true]) {
    const res = await post(h, '/v1/chat/completions', chatBody({ max_tokens: bad }))
    t.equal(res.statusCode, 400)
    t.strictSame(res.json(), { error: { message: 'Parameter max_tokens must be a non-negative integer (rule: max_output_tokens).', type: 'invalid_request_error', param: 'max_tokens', code: 'invalid_value' } })
  }
  t.equal(h.upstream.requests.length, before)
})

proxyTest(t, '`n` and `best_of` are capped (default 1)', {}, async (h, t) => {
  await post(h, '/v1/chat/completions', chatBody({ n: 8 }))
  t.equal(sent(h).n, 1)
  await post(h, '/v1/completions', { model: 'gpt-3.5-turbo-instruct', prompt: 'x', n: 3, best_of: 5 })
  t.match(sent(h), { n: 1, best_of: 1 })
  await post(h, '/v1/chat/completions', chatBody())
  t.notOk('n' in sent(h), 'absent stays absent')
  const res = await post(h, '/v1/chat/completions', chatBody({ n: '2' }))
  t.equal(res.statusCode, 400)
  t.match(res.json(), { error: { param: 'n', code: 'invalid_value', message: 'Parameter n must be a positive integer (rule: max_n).' } })
})

proxyTest(t, '`n` up to the configured cap passes', { proxy: { policy: { maxN: 4 } } }, async (h, t) => {
  await post(h, '/v1/chat/completions', chatBody({ n: 3 }))
  t.equal(sent(h).n, 3)
  await post(h, '/v1/chat/completions', chatBody({ n: 9 }))
  t.equal(sent(h).n, 4)
})

proxyTest(t, '`store` is forced off: Responses always, chat when the client asks for it', {}, async (h, t) => {
  await post(h, '/v1/responses', responsesBody())
  t.equal(sent(h).store, false, 'Responses stores by default: we say no')
  await post(h, '/v1/responses', responsesBody({ store: true }))
  t.equal(sent(h).store, false)
  await post(h, '/v1/chat/completions', chatBody({ store: true, metadata: { a: 'b' } }))
  t.equal(sent(h).store, false)
  await post(h, '/v1/chat/completions', chatBody())
  t.strictSame(sent(h), chatBody(), 'a chat body without store is forwarded as sent')
})

const STORED: Array<[string, string, Record<string, unknown>, string]> = [
  ['previous_response_id', '/v1/responses', responsesBody({ previous_response_id: 'resp_abc' }), 'previous_response_id'],
  ['conversation', '/v1/responses', responsesBody({ conversation: 'conv_abc' }), 'conversation'],
  ['conversation', '/v1/responses', responsesBody({ conversation: { id: 'conv_abc' } }), 'conversation'],
  ['background', '/v1/responses', responsesBody({ background: true }), 'background'],
  ['prompt', '/v1/responses', responsesBody({ prompt: { id: 'pmpt_abc', variables: { a: 'b' } } }), 'prompt.id'],
  ['file_id', '/v1/responses', responsesBody({ input: [{ role: 'user', content: [{ type: 'input_file', file_id: 'file-abc' }] }] }), 'input[0].content[0].file_id'],
  ['file_id', '/v1/responses', responsesBody({ input: [{ role: 'user', content: [{ type: 'input_image', file_id: 'file-abc' }] }] }), 'input[0].content[0].file_id'],
  ['file_id', '/v1/chat/completions', chatBody({ messages: [{ role: 'user', content: [{ type: 'file', file: { file_id: 'file-abc' } }] }] }), 'messages[0].content[0].file.file_id'],
  ['item_reference', '/v1/responses', responsesBody({ input: [{ type: 'item_reference', id: 'msg_abc' }] }), 'input[0].type']
]

proxyTest(t, "threat B09: parameters that read the key owner's stored data are refused", {}, async (h, t) => {
  for (const [feature, url, body, param] of STORED) {
    const res = await post(h, url, body)
    t.equal(res.statusCode, 403, `${feature}: ${param}`)
    t.strictSame(res.json(), { error: { message: `Parameter ${param} is not allowed on this proxy (rule: stored_state:${feature}).`, type: 'invalid_request_error', param, code: 'parameter_not_allowed' } })
  }
  t.equal(h.upstream.requests.length, 0)
  t.equal((await post(h, '/v1/responses', responsesBody({ background: false, previous_response_id: null }))).statusCode, 200, 'explicit "no" is fine')
})

proxyTest(t, 'a reference of a refused kind is caught after one of an allowed kind', { proxy: { policy: { allowStoredState: ['file_id'] } } }, async (h, t) => {
  const res = await h.app.inject({ method: 'POST', url: '/v1/responses', headers: h.auth, payload: responsesBody({ input: [{ role: 'user', content: [{ type: 'input_file', file_id: 'file-abc' }] }, { type: 'item_reference', id: 'msg_1' }] }) })
  t.equal(res.statusCode, 403)
  t.match(res.json(), { error: { code: 'parameter_not_allowed', param: 'input[1].type' } })
  t.equal(h.upstream.requests.length, 0)
})

proxyTest(t, 'stored-data features pass when explicitly enabled', { proxy: { policy: { allowStoredState: ['store', 'previous_response_id', 'conversation', 'prompt', 'background', 'file_id', 'item_reference'] } } }, async (h, t) => {
  for (const [, url, body] of STORED) t.equal((await post(h, url, body)).statusCode, 200)
  await post(h, '/v1/responses', responsesBody())
  t.notOk('store' in sent(h), 'store left to the client')
})

proxyTest(t, 'hosted tools are refused unless listed; function and custom tools always pass', {}, async (h, t) => {
  const hosted = ['file_search', 'code_interpreter', 'web_search', 'web_search_preview', 'mcp', 'computer_use_preview', 'image_generation', 'local_shell']
  for (const type of hosted) {
    const res = await post(h, '/v1/responses', responsesBody({ tools: [{ type: 'function', name: 'f', parameters: {} }, { type }] }))
    t.equal(res.statusCode, 403, type)
    t.strictSame(res.json(), { error: { message: 'Parameter tools[1].type is not allowed on this proxy (rule: allowed_tools).', type: 'invalid_request_error', param: 'tools[1].type', code: 'parameter_not_allowed' } })
  }
  const search = await post(h, '/v1/chat/completions', chatBody({ model: 'gpt-4o-mini', web_search_options: {} }))
  t.match(search.json(), { error: { param: 'web_search_options', code: 'parameter_not_allowed' } })
  const tier = await post(h, '/v1/chat/completions', chatBody({ service_tier: 'priority' }))
  t.match(tier.json(), { error: { param: 'service_tier', message: 'Parameter service_tier is not allowed on this proxy (rule: allowed_service_tiers).' } })
  t.equal(h.upstream.requests.length, 0)
  t.equal((await post(h, '/v1/chat/completions', chatBody({ tools: [{ type: 'function', function: { name: 'f' } }, { type: 'custom', custom: { name: 'g' } }], service_tier: 'flex' }))).statusCode, 200)
  t.equal((await post(h, '/v1/responses', responsesBody({ tools: [{ type: 'function', name: 'f', parameters: {} }] }))).statusCode, 200)
})

proxyTest(t, 'ALLOWED_TOOLS lets listed hosted tools through (globs too)', { proxy: { policy: { allowedTools: ['web_search*', 'code_interpreter'], allowedServiceTiers: ['priority'] } } }, async (h, t) => {
  t.equal((await post(h, '/v1/responses', responsesBody({ tools: [{ type: 'web_search_preview' }, { type: 'code_interpreter', container: { type: 'auto' } }] }))).statusCode, 200)
  t.equal((await post(h, '/v1/chat/completions', chatBody({ web_search_options: {}, service_tier: 'priority' }))).statusCode, 200)
  t.equal((await post(h, '/v1/responses', responsesBody({ tools: [{ type: 'mcp', server_url: 'https://x.example' }] }))).statusCode, 403)
})

proxyTest(t, 'the SDK raises PermissionDeniedError / BadRequestError with the parameter', { listen: true, proxy: { policy: { allowedModels: ['gpt-4o-mini'], maxOutputTokens: 50 } } }, async (h, t) => {
  const openai = new OpenAI({ baseURL: `${h.url}/v1`, apiKey: h.proxyKey, maxRetries: 0 })
  const model = await openai.chat.completions.create({ model: 'gpt-4o', messages: [{ role: 'user', content: 'x' }] }).catch((e: unknown) => e)
  t.type(model, OpenAI.PermissionDeniedError)
  t.match(model, { status: 403, code: 'model_not_allowed', param: 'model' })
  const stored = await openai.responses.create({ model: 'gpt-4o-mini', input: 'x', previous_response_id: 'resp_1' }).catch((e: unknown) => e)
  t.type(stored, OpenAI.PermissionDeniedError)
  t.match(stored, { code: 'parameter_not_allowed', param: 'previous_response_id' })
  const models = await openai.models.list()
  t.strictSame(models.data.map((m) => m.id), ['gpt-4o-mini'])
  const ok = await openai.chat.completions.create({ model: 'gpt-4o-mini', messages: [{ role: 'user', content: 'x' }], max_tokens: 4000 })
  t.match(ok.choices[0]?.message.content, /You said: x/)
  t.equal(sent(h).max_tokens, 50)
})

t.test('policy options are checked at registration, naming the option', async (t) => {
  const cases: Array<[Record<string, unknown>, RegExp]> = [
    [{ maxN: 0 }, /invalid option \/policy\/maxN/],
    [{ allowStoredState: ['everything'] }, /invalid option \/policy\/allowStoredState\/0/],
    [{ allowedModels: ['has space'] }, /invalid option \/policy\/allowedModels\/0/],
    [{ maxOutputTokens: 1.5 }, /invalid option \/policy\/maxOutputTokens/]
  ]
  for (const [policy, message] of cases) {
    const app = Fastify()
    await t.rejects(async () => { await app.register(oaiProxy, { openaiKeys: [canaryKey()], policy } as never).ready() }, message)
    await app.close()
  }
})

t.test('the plugins check their own options when registered on their own', async (t) => {
  const policy = Fastify()
  await t.rejects(async () => { await policy.register(requestPolicy, { maxN: 0 }).ready() }, /invalid option \/policy\/maxN/)
  await policy.close()
  const filter = Fastify()
  await t.rejects(async () => { await filter.register(promptFilter, { moderation: { failMode: 'open' } }).ready() }, /\/filter\/moderation: needs the upstream and key-injection plugins/)
  await filter.close()
  const optIn = Fastify()
  await t.rejects(async () => { await optIn.register(promptFilter, { phrases: ['x y'], optInEndpoints: ['chat.completions'] }).ready() }, /\/filter\/optInEndpoints: chat.completions is not an endpoint whose filtering is opt-in/)
  await optIn.close()
})

t.test('registered on their own in a host app, the plugins act on proxy endpoints only', async (t) => {
  const key = canaryKey()
  const fake = await startFakeOpenAI({ validKeys: [key] })
  const app = Fastify()
  await app.register(keyInjection, { openaiKeys: [key] })
  await app.register(upstream, { upstreamUrl: fake.url, connectTimeoutMs: 1000, headersTimeoutMs: 1000, idleTimeoutMs: 1000 })
  await app.register(requestPolicy, { maxN: 1 })
  await app.register(promptFilter, { phrases: ['forbidden fruit'], moderation: { failMode: 'closed' } })
  const chat = endpoints.find((e) => e.id === 'chat.completions')
  app.post('/chat', { config: { oaiProxyEndpoint: chat } }, async (request) => request.body)
  app.post('/echo', async (request) => request.body)
  try {
    const own = chatBody({ n: 5, messages: [{ role: 'user', content: 'the forbidden fruit' }] })
    const echo = await app.inject({ method: 'POST', url: '/echo', payload: own })
    t.equal(echo.statusCode, 200)
    t.strictSame(echo.json(), own, "the host's own route: no refusal, no clamp")
    t.equal(fake.requests.length, 0, 'and no moderation call')
    const res = await app.inject({ method: 'POST', url: '/chat', payload: chatBody({ n: 5 }) })
    t.equal(res.statusCode, 200)
    t.equal((res.json() as { n: number }).n, 1, 'a proxy endpoint is clamped')
    t.strictSame(fake.requests.map((r) => [r.url, r.headers['user-agent']]), [['/v1/moderations', 'oai-reverse-proxy']], 'and checked, with the default User-Agent')
    t.equal((await app.inject({ method: 'POST', url: '/chat', payload: chatBody({ messages: [{ role: 'user', content: 'the forbidden fruit' }] }) })).statusCode, 400)
  } finally {
    await app.close()
    await fake.close()
  }
})

t.test('globs match in linear time and only where they should', async (t) => {
  t.ok(globMatch('gpt-4o*', 'gpt-4o-mini'))
  t.ok(globMatch('*', ''))
  t.ok(globMatch('ft:*:acme:*', 'ft:gpt-4o-mini:acme:v2:abc'))
  t.notOk(globMatch('gpt-4o', 'gpt-4o-mini'), 'exact means exact')
  t.notOk(globMatch('gpt-4o*', 'xgpt-4o'), 'anchored')
  const started = performance.now()
  t.notOk(globMatch('*a*a*a*a*a*a*a*a*b', 'a'.repeat(256)))
  t.ok(performance.now() - started < 20, 'no backtracking blow-up')
})

t.test('the stored-data walk is iterative and finds references at any depth, one of each kind', async (t) => {
  const responses = endpoints.find((e) => e.id === 'responses') as (typeof endpoints)[number]
  const refs = (body: unknown) => analyse(responses, body).storedRefs
  let deep: unknown = { file_id: 'file-1' }
  for (let i = 0; i < 10_000; i++) deep = [deep]
  t.throws(() => refs({ metadata: deep }), /nested too deeply/, 'fails closed past the body depth cap')
  t.strictSame(refs({ tools: [{ type: 'code_interpreter', container: { file_ids: ['file-1'] } }] }), [{ feature: 'file_id', param: 'tools[0].container.file_ids' }])
  t.strictSame(refs({ file_ids: [] }), [])
  t.strictSame(refs({ file_id: 'file-0', input: [{ type: 'input_file', file_id: 'file-1' }, { type: 'item_reference', id: 'msg_1' }] }), [
    { feature: 'file_id', param: 'file_id' },
    { feature: 'item_reference', param: 'input[1].type' }
  ], 'a reference of another kind after the first is still seen')
})
