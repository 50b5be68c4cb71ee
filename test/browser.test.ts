import { copyFileSync, existsSync, mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { chromium, type BrowserContext, type Page } from 'playwright-core'
import t from 'tap'
import { assertNoLeak, proxyTest, type Harness } from './helper.js'

/*
 * The real thing: Debian's headless Chromium loads examples/browser-chat from one loopback origin and
 * streams chat completions from the proxy on another, with fetch and with the openai SDK's browser build.
 * The same page served from a third origin is blocked by CORS and nothing reaches upstream.
 * UPDATE_SCREENSHOT=1 refreshes docs/browser-chat.png.
 */

const CHROMIUM = '/usr/bin/chromium'
const ARGS = ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync']
const SCREENSHOT = fileURLToPath(new URL('../docs/browser-chat.png', import.meta.url))

interface StaticServer { url: string, close: () => Promise<void> }
// A plain-JS example; typed here rather than giving the examples a declaration file.
const { serveBrowserChat } = await import('../examples/browser-chat/serve.js' as string) as { serveBrowserChat: (o: { port: number }) => Promise<StaticServer> }

const skip = existsSync(CHROMIUM) ? false : `${CHROMIUM} is missing (apt-get install -y chromium; .ci/run installs it)`

t.test('Chromium against the example page', { skip }, async (t) => {
  const allowed = await serveBrowserChat({ port: 0 })
  const refused = await serveBrowserChat({ port: 0 })
  t.teardown(async () => { await allowed.close(); await refused.close() })

  await proxyTest(t, 'a page on an allowed origin streams through the proxy; another origin is blocked by CORS', {
    listen: true,
    proxy: { cors: { origins: [allowed.url] }, rateLimit: { requestsPerWindow: 50 } },
    fake: { chunkDelayMs: 25 }
  }, async (h, t) => {
    const profile = mkdtempSync(join(tmpdir(), 'oai-proxy-chromium-'))
    const context = await chromium.launchPersistentContext(profile, { executablePath: CHROMIUM, headless: true, args: ARGS, viewport: { width: 820, height: 760 } })
    t.teardown(async () => { await context.close(); rmSync(profile, { recursive: true, force: true }) })

    const page = await openChat(context, allowed.url, h)
    const consoleErrors: string[] = []
    page.on('console', (m) => { if (m.type() === 'error') consoleErrors.push(m.text()) })

    for (const [i, which] of ['fetch', 'sdk'].entries()) {
      const prompt = `Hello from Chromium via ${which}`
      await page.fill('#prompt', prompt)
      const { text, updates, state } = await send(page, which)
      t.equal(state, 'done', `${which}: finished (${await page.textContent(`#status-${which}`)})`)
      t.match(text, `You said: ${prompt}`, `${which}: the streamed text is rendered`)
      t.ok(updates > 3, `${which}: rendered incrementally (${updates} updates), not in one piece`)
      // Browsers hide every response header not listed in Access-Control-Expose-Headers.
      t.equal(await page.textContent('[data-header="x-ratelimit-remaining-requests"]'), String(49 - i), `${which}: the rate-limit header is readable by the page`)
      t.equal(await page.textContent('[data-header="x-ratelimit-limit-requests"]'), '50')
      t.equal(await page.textContent('[data-header="x-request-id"]'), 'req_fake', `${which}: OpenAI's request id too`)
      t.match(await page.textContent('[data-header="x-proxy-request-id"]'), /^req-/, `${which}: the proxy's request id too`)
    }
    t.strictSame(consoleErrors, [])
    t.equal(h.upstream.requests.length, 2)
    for (const r of h.upstream.requests) {
      t.equal(r.headers.authorization, `Bearer ${h.keys[0]}`)
      t.equal(r.headers.origin, undefined, 'the browser origin is not forwarded')
      t.match(r.json, { stream: true })
    }
    t.match(h.logs.join(''), /"method":"OPTIONS"/, 'the browser really sent a preflight')
    assertNoLeak(t, await page.content(), h.secrets, 'the page')

    const shot = await page.screenshot({ fullPage: true })
    t.ok(shot.length > 10_000, 'screenshot taken')
    if (process.env.UPDATE_SCREENSHOT === '1') {
      const tmp = join(profile, 'shot.png')
      await page.screenshot({ path: tmp, fullPage: true })
      copyFileSync(tmp, SCREENSHOT)
    }

    // The same page from an origin the proxy does not list: the browser refuses to send the call.
    const other = await openChat(context, refused.url, h)
    const blocked: string[] = []
    other.on('console', (m) => { if (m.type() === 'error') blocked.push(m.text()) })
    for (const which of ['fetch', 'sdk']) {
      const { text, state } = await send(other, which)
      t.equal(state, 'error', `${which}: refused`)
      t.equal(text, '', `${which}: nothing rendered`)
    }
    t.match(await other.textContent('#status-fetch'), /Failed to fetch/)
    t.match(await other.textContent('#status-sdk'), /Connection error/)
    t.ok(blocked.some((m) => m.includes('blocked by CORS policy') && m.includes(refused.url)), 'Chromium reports the CORS block')
    t.equal(h.upstream.requests.length, 2, 'nothing from the refused origin reached upstream')
  })
})

async function openChat (context: BrowserContext, origin: string, h: Harness): Promise<Page> {
  const page = await context.newPage()
  await page.goto(`${origin}/?baseURL=${encodeURIComponent(`${h.url}/v1`)}`)
  await page.waitForSelector('body[data-ready="true"]')
  await page.fill('#api-key', h.proxyKey)
  return page
}

/** Click one of the two buttons, count how often the output changed, wait for the end. */
async function send (page: Page, which: string): Promise<{ text: string, updates: number, state: string | undefined }> {
  // Runs in the page (a string, so this Node-side file needs no DOM types).
  await page.evaluate(`(() => {
    window.updates = 0
    new MutationObserver(() => { window.updates++ }).observe(document.getElementById('output-${which}'), { childList: true, characterData: true, subtree: true })
  })()`)
  await page.click(`#send-${which}`)
  await page.waitForSelector(`#status-${which}[data-state="done"], #status-${which}[data-state="error"]`, { timeout: 15_000 })
  return {
    text: await page.locator(`#output-${which}`).textContent() ?? '',
    updates: await page.evaluate('window.updates') as number,
    state: await page.locator(`#status-${which}`).getAttribute('data-state') ?? undefined
  }
}
