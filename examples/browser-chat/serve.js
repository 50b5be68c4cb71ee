import { readFile } from 'node:fs/promises'
import { createServer } from 'node:http'
import { dirname, extname, join, normalize, sep } from 'node:path'
import { fileURLToPath, pathToFileURL } from 'node:url'

/*
 * A tiny static server for the example page: this directory at `/`, and the openai SDK's ESM build from
 * node_modules at `/vendor/openai/` (the page's import map points there). The page's origin is this
 * server's `http://host:port`; put it in the proxy's CORS_ORIGINS.
 *   node examples/browser-chat/serve.js            # http://127.0.0.1:5173
 *   PORT=5174 node examples/browser-chat/serve.js
 */

const here = dirname(fileURLToPath(import.meta.url))
const TYPES = { '.html': 'text/html; charset=utf-8', '.js': 'text/javascript; charset=utf-8', '.mjs': 'text/javascript; charset=utf-8', '.css': 'text/css; charset=utf-8', '.png': 'image/png' }

/** Resolve a URL path inside `root`, or undefined when it would leave it. */
function inside (root, urlPath) {
  const file = normalize(join(root, decodeURIComponent(urlPath)))
  return file.startsWith(root + sep) ? file : undefined
}

/**
 * @param {{ host?: string, port?: number }} [opts]
 * @returns {Promise<{ url: string, close: () => Promise<void> }>}
 */
export async function serveBrowserChat ({ host = '127.0.0.1', port = 5173 } = {}) {
  const sdkRoot = dirname(fileURLToPath(import.meta.resolve('openai')))
  const server = createServer(async (req, res) => {
    const path = new URL(String(req.url), 'http://x').pathname
    let file
    try {
      file = path === '/' ? join(here, 'index.html') : path.startsWith('/vendor/openai/') ? inside(sdkRoot, path.slice('/vendor/openai/'.length)) : inside(here, path.slice(1))
    } catch {
      file = undefined
    }
    const type = file === undefined ? undefined : TYPES[extname(file)]
    if (req.method !== 'GET' || file === undefined || type === undefined || file.endsWith('serve.js')) {
      res.writeHead(404, { 'content-type': 'text/plain' }).end('not found')
      return
    }
    try {
      const body = await readFile(file)
      res.writeHead(200, { 'content-type': type, 'cache-control': 'no-store', 'x-content-type-options': 'nosniff' }).end(body)
    } catch {
      res.writeHead(404, { 'content-type': 'text/plain' }).end('not found')
    }
  })
  await new Promise((resolve) => server.listen(port, host, () => resolve(undefined)))
  const address = /** @type {import('node:net').AddressInfo} */ (server.address())
  return {
    url: `http://${host}:${address.port}`,
    close: () => new Promise((resolve) => { server.closeAllConnections(); server.close(() => resolve()) })
  }
}

/* c8 ignore start -- the command-line entry; tests import serveBrowserChat instead */
if (process.argv[1] !== undefined && import.meta.url === pathToFileURL(process.argv[1]).href) {
  const { url } = await serveBrowserChat({ port: Number(process.env.PORT ?? 5173) })
  console.log(`Browser chat page on ${url}/ (start the proxy with CORS_ORIGINS=${url})`)
}
/* c8 ignore stop */
