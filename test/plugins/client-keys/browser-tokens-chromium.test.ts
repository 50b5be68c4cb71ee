import { randomBytes } from 'node:crypto'
import { existsSync, mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { chromium, type BrowserContext, type Page } from 'playwright-core'
import t from 'tap'
import { mintBrowserToken } from '../../../plugins/client-keys/browser-tokens.js'
import { writeKeysFile } from '../../../plugins/client-keys/file-io.js'
import { buildIndex, hashSecret, newKeyId, newSecret } from '../../../plugins/client-keys/records.js'
import type { ClientKeyRecord } from '../../../plugins/client-keys/schema.js'
import { assertNoLeak, proxyTest, type Harness } from '../../helper.js'

/*
 * A real headless Chromium: the example page (examples/browser-chat) on one loopback origin calls the proxy
 * with a browser token minted for that origin, with fetch and with the openai SDK's browser build, and is
 * served. The same token pasted into the same page on another origin (one CORS allows, so the page can read
 * the answer) is refused with 401, because the browser, not the page, sets the Origin header.
 */

const CHROMIUM = '/usr/bin/chromium'
const ARGS = ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync']

interface StaticServer { url: string, close: () => Promise<void> }
const { serveBrowserChat } = await import('../../../examples/browser-chat/serve.js' as string) as { serveBrowserChat: (o: { port: number }) => Promise<StaticServer> }

const skip = existsSync(CHROMIUM) ? false : `${CHROMIUM} is missing (apt-get install -y chromium)`

t.test('Chromium with a browser token', { skip }, async (t) => {
  const home = await serveBrowserChat({ port: 0 })
  const elsewhere = await serveBrowserChat({ port: 0 })
  const dir = mkdtempSync(join(tmpdir(), 'oai-tokens-chromium-'))
  t.teardown(async () => { await home.close(); await elsewhere.close(); rmSync(dir, { recursive: true, force: true }) })
  const keySecret = newSecret()
  const record: ClientKeyRecord = { id: newKeyId(), name: 'web users', hash: hashSecret(keySecret), prefix: keySecret.slice(0, 12), created: new Date().toISOString(), disabled: false, scopes: { endpoints: ['chat.completions'], models: ['gpt-4o-mini'] }, limits: { requestsPerWindow: 20 }, metadata: {} }
  const file = join(dir, 'keys.jsonl')
  writeKeysFile(file, [record])
  const signing = randomBytes(32).toString('base64url')
  // What the operator's backend does for a signed-in user.
  const { token } = mintBrowserToken({ sub: 'user-42', key: record.id, origin: home.url }, [signing], buildIndex([record]).byId)

  await proxyTest(t, 'served from its origin, refused from another', {
    listen: true,
    proxy: { keysFile: file, browserTokens: { secrets: [signing] }, cors: { origins: [home.url, elsewhere.url] } },
    fake: { chunkDelayMs: 10 }
  }, async (h, t) => {
    const profile = mkdtempSync(join(tmpdir(), 'oai-proxy-chromium-'))
    const context = await chromium.launchPersistentContext(profile, { executablePath: CHROMIUM, headless: true, args: ARGS })
    t.teardown(async () => { await context.close(); rmSync(profile, { recursive: true, force: true }) })

    const page = await openChat(context, home.url, h, token)
    for (const which of ['fetch', 'sdk']) {
      await page.fill('#prompt', `Hi via ${which}`)
      const { text, state } = await send(page, which)
      t.equal(state, 'done', `${which}: ${await page.textContent(`#status-${which}`)}`)
      t.match(text, `You said: Hi via ${which}`)
    }
    t.equal(h.upstream.requests.length, 2)
    for (const r of h.upstream.requests) t.equal(r.headers.authorization, `Bearer ${h.keys[0]}`, 'upstream gets the pool key')

    const other = await openChat(context, elsewhere.url, h, token)
    for (const which of ['fetch', 'sdk']) {
      const { text, state } = await send(other, which)
      t.equal(state, 'error', `${which}: refused`)
      t.equal(text, '')
      t.match(await other.textContent(`#status-${which}`), /issued for pages of another origin/, `${which}: the page can read why`)
    }
    t.equal(h.upstream.requests.length, 2, 'nothing from the other origin reached upstream')
    const seen = `${await page.content()}\n${await other.content()}`
    assertNoLeak(t, seen, [...h.secrets, signing, keySecret], 'the pages')
    assertNoLeak(t, h.logs.join(''), [signing, keySecret, token], 'logs')
  })
})

async function openChat (context: BrowserContext, origin: string, h: Harness, key: string): Promise<Page> {
  const page = await context.newPage()
  await page.goto(`${origin}/?baseURL=${encodeURIComponent(`${h.url}/v1`)}`)
  await page.waitForSelector('body[data-ready="true"]')
  await page.fill('#api-key', key)
  return page
}

async function send (page: Page, which: string): Promise<{ text: string, state: string | undefined }> {
  await page.click(`#send-${which}`)
  await page.waitForSelector(`#status-${which}[data-state="done"], #status-${which}[data-state="error"]`, { timeout: 15_000 })
  return {
    text: await page.locator(`#output-${which}`).textContent() ?? '',
    state: await page.locator(`#status-${which}`).getAttribute('data-state') ?? undefined
  }
}
