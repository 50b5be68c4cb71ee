import t from 'tap'
import { rawRequest } from './helper.js'

/* The example page's static server only serves its own directory and the SDK build, GET only. */
const { serveBrowserChat } = await import('../examples/browser-chat/serve.js' as string) as { serveBrowserChat: (o: { port: number }) => Promise<{ url: string, close: () => Promise<void> }> }

t.test('the example static server serves the page and refuses everything else', async (t) => {
  const s = await serveBrowserChat({ port: 0 })
  t.teardown(s.close)
  const port = Number(new URL(s.url).port)
  const page = await fetch(`${s.url}/`)
  t.equal(page.status, 200)
  t.match(page.headers.get('content-type'), /^text\/html/)
  t.match(await page.text(), /<html/i)
  const sdk = await fetch(`${s.url}/vendor/openai/index.mjs`)
  t.equal(sdk.status, 200, 'the SDK build is served for the import map')
  await sdk.arrayBuffer()
  for (const path of ['/missing.js', '/serve.js', '/%zz', '/vendor/openai/package.json']) {
    const res = await fetch(`${s.url}${path}`)
    t.equal(res.status, 404, path)
    await res.arrayBuffer()
  }
  const post = await fetch(`${s.url}/`, { method: 'POST', body: 'x' })
  t.equal(post.status, 404, 'GET only')
  await post.arrayBuffer()
  // URL parsing resolves plain dot segments; encoded slashes survive it and are what `inside` stops.
  for (const path of ['/../../package.json', '/%2e%2e/%2e%2e/package.json', '/..%2f..%2fpackage.json', '/vendor/openai/..%2f..%2f..%2fpackage.json']) {
    const raw = await rawRequest(port, `GET ${path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n`)
    t.match(raw, /^HTTP\/1\.1 404 /, `${path} stays inside`)
  }
})
