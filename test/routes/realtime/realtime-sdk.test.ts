import OpenAI from 'openai'
import { OpenAIRealtimeWS } from 'openai/realtime/ws'
import type { OpenAIRealtimeError } from 'openai/realtime/internal-base'
import type { FastifyServerOptions } from 'fastify'
import t from 'tap'
import { assertNoLeak } from '../../helper.js'
import { makeCerts, rtTest } from '../../realtime-helper.js'

/*
 * The official openai SDK's server client, `OpenAIRealtimeWS`, pointed at the proxy with `baseURL` and the
 * proxy key as its API key. The SDK always dials `wss://`, so the proxy listens with TLS here (a test CA
 * the client is told to trust).
 */

const certs = makeCerts()
const tls = { fastify: { https: certs.loopback } as unknown as FastifyServerOptions }

function realtime (url: string, apiKey: string, model = 'gpt-realtime'): OpenAIRealtimeWS {
  const client = new OpenAI({ apiKey, baseURL: `${url}/v1`, maxRetries: 0 })
  return new OpenAIRealtimeWS({ model, options: { ca: certs.ca } }, client)
}

const once = <T>(rt: OpenAIRealtimeWS, type: string): Promise<T> => new Promise((resolve) => { rt.once(type as 'session.created', resolve as (e: unknown) => void) })

rtTest(t, 'OpenAIRealtimeWS works through the proxy, with the proxy key as its API key', { ...tls, proxy: { policy: { allowedModels: ['gpt-realtime'] } } }, async (h, t) => {
  t.match(h.url, /^https:/)
  const rt = realtime(h.url, h.proxyKey)
  t.equal(rt.url.toString(), `${h.url.replace('https', 'wss')}/v1/realtime?model=gpt-realtime`)
  const seen: unknown[] = []
  rt.on('event', (e) => seen.push(e))
  const errors: OpenAIRealtimeError[] = []
  rt.on('error', (err) => errors.push(err))
  await once(rt, 'session.created')

  rt.send({ type: 'session.update', session: { type: 'realtime', instructions: 'Be brief.' } })
  await once(rt, 'session.updated')
  rt.send({ type: 'response.create' })
  const done = await once<{ response: { usage: { total_tokens: number } } }>(rt, 'response.done')
  t.equal(done.response.usage.total_tokens, 120)
  t.ok(seen.some((e) => (e as { type: string }).type === 'response.output_text.delta'), 'text deltas arrived')

  // A refused event is an `error` event: the SDK raises it as OpenAIRealtimeError with the details.
  rt.send({ type: 'session.update', event_id: 'evt_sdk', session: { type: 'realtime', model: 'gpt-4o-realtime-preview' } })
  for (let i = 0; i < 100 && errors.length === 0; i++) await new Promise((resolve) => setTimeout(resolve, 10))
  t.match(errors[0], { error: { code: 'model_not_allowed', param: 'session.model', event_id: 'evt_sdk' }, message: /code=model_not_allowed param=session.model/ })

  const closed = new Promise((resolve) => rt.socket.once('close', resolve))
  rt.close()
  t.equal(await closed, 1000)
  t.equal(h.fake.handshakes[0]?.headers.authorization, `Bearer ${h.keys[0]}`)
  assertNoLeak(t, JSON.stringify(seen), h.secrets, 'what the SDK saw')
})

rtTest(t, 'OpenAIRealtimeWS with a wrong key or a refused model gets the HTTP refusal as an error', tls, async (h, t) => {
  for (const [key, model, status] of [['sk-wrong', 'gpt-realtime', 401], [h.proxyKey, 'not a model', 400]] as const) {
    const rt = realtime(h.url, key, model)
    const err = await new Promise<Error>((resolve) => rt.once('error', resolve as (e: unknown) => void))
    t.match(err.message, new RegExp(`Unexpected server response: ${status}`))
  }
  t.equal(h.fake.handshakes.length, 0)
})
