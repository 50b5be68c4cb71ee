import { createHash, timingSafeEqual } from 'node:crypto'
import { createServer, type IncomingMessage, type Server } from 'node:http'
import type { AddressInfo } from 'node:net'
import type { Registry } from 'prom-client'

/*
 * How `/metrics` is reached: with METRICS_KEY as a Bearer key, or on a listener of its own (METRICS_PORT)
 * that a firewall or the container network keeps private. Never with a proxy key.
 */

const digest = (s: string): Buffer => createHash('sha256').update(s).digest()

/** A check of `Authorization: Bearer <key>` in constant time (both sides hashed to 32 bytes first); always true without a key. */
export function keyCheck (key: string | undefined): (authorization: string | undefined) => boolean {
  if (key === undefined) return () => true
  const expected = digest(key)
  return (authorization) => {
    const m = typeof authorization === 'string' ? /^Bearer[ \t]+([\x21-\x7e]{1,1024})[ \t]*$/i.exec(authorization) : null
    return timingSafeEqual(digest(m === null ? '' : m[1] as string), expected)
  }
}

/** The separate listener: GET (or HEAD) /metrics and nothing else; no body is read. */
export function metricsServer (registry: Registry, authorised: (authorization: string | undefined) => boolean): Server {
  const server = createServer((req: IncomingMessage, res) => {
    // A server's request always has a URL.
    const path = (req.url as string).replace(/\?.*$/s, '')
    if (path !== '/metrics' || (req.method !== 'GET' && req.method !== 'HEAD')) {
      res.writeHead(404, { 'content-type': 'text/plain; charset=utf-8', connection: 'close' }).end('Not Found\n')
      return
    }
    if (!authorised(req.headers.authorization)) {
      res.writeHead(401, { 'content-type': 'text/plain; charset=utf-8', 'www-authenticate': 'Bearer' }).end('Missing or incorrect metrics key\n')
      return
    }
    registry.metrics().then((text) => {
      res.writeHead(200, { 'content-type': registry.contentType, 'cache-control': 'no-store' }).end(req.method === 'HEAD' ? undefined : text)
    }, () => {
      res.writeHead(500, { 'content-type': 'text/plain; charset=utf-8' }).end('metrics unavailable\n')
    })
  })
  // Scrapes are small and rare: a slow or idle client is not kept around.
  server.headersTimeout = 10_000
  server.requestTimeout = 30_000
  server.keepAliveTimeout = 5_000
  return server
}

export async function listen (server: Server, port: number, host: string): Promise<AddressInfo> {
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject)
    server.listen(port, host, () => {
      server.off('error', reject)
      resolve()
    })
  })
  return server.address() as AddressInfo
}
