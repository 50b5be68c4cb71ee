import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs'
import { createServer, type Server } from 'node:http'
import type { AddressInfo } from 'node:net'
import { tmpdir } from 'node:os'
import { dirname, join, normalize, sep } from 'node:path'
import { fileURLToPath } from 'node:url'
import type { FastifyServerOptions } from 'fastify'
import { chromium, type Page } from 'playwright-core'
import t from 'tap'
import { assertNoLeak } from '../../helper.js'
import { makeCerts, rtTest, type RtHarness } from '../../realtime-helper.js'

/*
 * Real headless Chromium: a page on one loopback origin opens a Realtime session on the proxy (another
 * origin, over TLS: the SDK always dials wss://), once with a bare `WebSocket` and the key as a subprotocol,
 * once with the openai SDK's browser client (`OpenAIRealtimeWebSocket`, served from node_modules). Upstream
 * must see neither the key nor the subprotocol; a page from an origin CORS does not list is refused.
 */

const CHROMIUM = '/usr/bin/chromium'
const ARGS = ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync', '--ignore-certificate-errors']
const skip = existsSync(CHROMIUM) ? false : `${CHROMIUM} is missing (apt-get install -y chromium)`
const certs = makeCerts()
const sdkRoot = dirname(fileURLToPath(import.meta.resolve('openai')))

/** A blank page, and the openai SDK's ESM build at /vendor/openai/. */
async function pageServer (): Promise<{ server: Server, origin: string }> {
  const server = createServer((req, res) => {
    const path = new URL(String(req.url), 'http://x').pathname
    const file = path.startsWith('/vendor/openai/') ? normalize(join(sdkRoot, path.slice('/vendor/openai/'.length))) : undefined
    if (path === '/') {
      res.writeHead(200, { 'content-type': 'text/html; charset=utf-8' }).end('<!doctype html><title>realtime</title><body data-ready="true"></body>')
    } else if (path === '/favicon.ico') {
      res.writeHead(204).end()
    } else if (file !== undefined && file.startsWith(sdkRoot + sep) && file.endsWith('.mjs') && existsSync(file)) {
      res.writeHead(200, { 'content-type': 'text/javascript; charset=utf-8' }).end(readFileSync(file))
    } else {
      res.writeHead(404).end()
    }
  })
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  return { server, origin: `http://127.0.0.1:${(server.address() as AddressInfo).port}` }
}

interface Outcome { protocol?: string, types: string[], text: string, error?: string, closed?: number }

/** In the page: open a session, update it, ask for a response, close after `response.done`. */
function runSession (page: Page, how: 'raw' | 'sdk', base: string, key: string): Promise<Outcome> {
  return page.evaluate(`(async () => {
    const types = []
    let text = ''
    const steps = (send, event, done) => {
      types.push(event.type)
      if (event.type === 'response.output_text.delta') text += event.delta
      if (event.type === 'session.created') {
        send({ type: 'session.update', session: { type: 'realtime', instructions: 'Be brief.' } })
        send({ type: 'response.create' })
      }
      if (event.type === 'response.done') done()
    }
    return await new Promise(async (resolve) => {
      const timer = setTimeout(() => resolve({ types, text, error: 'timeout' }), 10000)
      const finish = (extra) => { clearTimeout(timer); resolve({ types, text, ...extra }) }
      if (${JSON.stringify(how)} === 'raw') {
        const ws = new WebSocket(${JSON.stringify(base.replace(/^https/, 'wss'))} + '/v1/realtime?model=gpt-realtime', ['realtime', 'openai-insecure-api-key.' + ${JSON.stringify(key)}])
        ws.onmessage = (m) => steps((e) => ws.send(JSON.stringify(e)), JSON.parse(m.data), () => { ws.close(); finish({ protocol: ws.protocol }) })
        ws.onclose = (c) => finish({ closed: c.code, error: 'closed' })
      } else {
        const { OpenAI } = await import('/vendor/openai/index.mjs')
        const { OpenAIRealtimeWebSocket } = await import('/vendor/openai/realtime/websocket.mjs')
        const client = new OpenAI({ apiKey: ${JSON.stringify(key)}, baseURL: ${JSON.stringify(base)} + '/v1', dangerouslyAllowBrowser: true })
        const rt = new OpenAIRealtimeWebSocket({ model: 'gpt-realtime' }, client)
        rt.on('event', (e) => steps((x) => rt.send(x), e, () => { rt.close(); finish({ protocol: rt.socket.protocol }) }))
        rt.on('error', (err) => finish({ error: String(err.message) }))
      }
    })
  })()`)
}

t.test('Chromium opens Realtime sessions through the proxy', { skip }, async (t) => {
  const allowed = await pageServer()
  const other = await pageServer()
  t.teardown(() => { allowed.server.close(); other.server.close() })
  const profile = mkdtempSync(join(tmpdir(), 'oai-proxy-chromium-rt-'))
  const context = await chromium.launchPersistentContext(profile, { executablePath: CHROMIUM, headless: true, args: ARGS })
  t.teardown(async () => { await context.close(); rmSync(profile, { recursive: true, force: true }) })

  await rtTest(t, 'a bare WebSocket and the SDK browser client, from an allowed origin; another origin refused', {
    fastify: { https: certs.loopback } as unknown as FastifyServerOptions,
    proxy: { cors: { origins: [allowed.origin] } }
  }, async (h: RtHarness, t) => {
    const page = await context.newPage()
    const consoleErrors: string[] = []
    page.on('console', (m) => { if (m.type() === 'error') consoleErrors.push(m.text()) })
    await page.goto(`${allowed.origin}/`)
    for (const how of ['raw', 'sdk'] as const) {
      const out = await runSession(page, how, h.url, h.proxyKey)
      t.equal(out.error, undefined, `${how}: no error`)
      t.equal(out.protocol, 'realtime', `${how}: the handshake selected 'realtime'`)
      t.match(out.types, ['session.created', 'session.updated', 'response.created', 'response.output_text.delta'], `${how}: the session ran`)
      t.equal(out.types.at(-1), 'response.done')
      t.equal(out.text, 'word0 word1 word2 ', `${how}: the deltas arrived in order`)
    }
    t.strictSame(consoleErrors, [])
    t.equal(h.fake.handshakes.length, 2)
    for (const hs of h.fake.handshakes) {
      t.equal(hs.headers.authorization, `Bearer ${h.keys[0]}`, 'upstream got the pool key')
      t.strictSame(hs.protocols, [], 'and no subprotocol')
      t.equal(hs.headers.origin, undefined, 'nor the page origin')
    }
    assertNoLeak(t, await page.content(), h.secrets, 'the page')

    const refusedPage = await context.newPage()
    const blocked: string[] = []
    refusedPage.on('console', (m) => { if (m.type() === 'error') blocked.push(m.text()) })
    await refusedPage.goto(`${other.origin}/`)
    const out = await runSession(refusedPage, 'raw', h.url, h.proxyKey)
    t.equal(out.closed, 1006, 'the page from another origin could not connect')
    t.ok(blocked.some((m) => m.includes('403')), `Chromium reports the 403 (${blocked.join(' | ')})`)
    t.equal(h.fake.handshakes.length, 2, 'nothing of it reached upstream')
  })
})
