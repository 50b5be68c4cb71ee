import { ServerResponse, type IncomingMessage, type Server } from 'node:http'
import type { Socket } from 'node:net'
import type { Duplex } from 'node:stream'

/*
 * The Realtime route's way in. Node hands a WebSocket handshake to 'upgrade' listeners, never to Fastify;
 * this listener sends it through Fastify's router anyway (as @fastify/http-proxy's `handleUpgrade` does),
 * with a response bound to the socket, so the handshake walks the suite's pipeline like any request and a
 * refusal (401, 403, 429) is an ordinary HTTP answer after which the socket is closed.
 *
 * For the realtime paths it also takes two things out of the request before any hook or logger sees it: the
 * `openai-insecure-api-key.<key>` subprotocol a browser authenticates with (kept here for auth, gone from
 * the headers, so it is never logged, selected or sent upstream), and the `Upgrade` header, which the
 * request guard refuses on every other route; the route puts it back for the WebSocket handshake.
 */

const KEY_PROTOCOL = 'openai-insecure-api-key.'

export interface PendingUpgrade {
  socket: Duplex
  head: Buffer
  /** The proxy key from the subprotocol; '' when the client offered more than one. */
  key: string | undefined
  upgrade: string
  timer: NodeJS.Timeout
}

const pending = new WeakMap<IncomingMessage, PendingUpgrade>()

/** The proxy key a client offered as a subprotocol on a realtime handshake (undefined: none). */
export function subprotocolKey (raw: IncomingMessage): string | undefined {
  return pending.get(raw)?.key
}

/** The handshake of this request, handed over once, with its `Upgrade` header restored for the WebSocket server. */
export function takeUpgrade (raw: IncomingMessage): PendingUpgrade | undefined {
  const up = pending.get(raw)
  if (up === undefined) return undefined
  pending.delete(raw)
  clearTimeout(up.timer)
  raw.headers.upgrade = up.upgrade
  return up
}

const isKey = (protocol: string): boolean => protocol.startsWith(KEY_PROTOCOL)
const offered = (value: string): string[] => value.split(',').map((p) => p.trim())

/** Take every key subprotocol out of the request's headers (raw ones too: a host's debug logger may print them). */
function takeKey (req: IncomingMessage): string | undefined {
  const joined = req.headers['sec-websocket-protocol']
  const keys = joined === undefined ? [] : offered(joined).filter(isKey)
  if (keys.length === 0) return undefined
  const rest = offered(joined as string).filter((p) => !isKey(p)).join(', ')
  if (rest.length > 0) req.headers['sec-websocket-protocol'] = rest
  else delete req.headers['sec-websocket-protocol']
  for (let i = 0; i < req.rawHeaders.length; i += 2) {
    if (req.rawHeaders[i]?.toLowerCase() === 'sec-websocket-protocol') req.rawHeaders[i + 1] = offered(req.rawHeaders[i + 1] as string).filter((p) => !isKey(p)).join(', ')
  }
  return keys.length === 1 ? (keys[0] as string).slice(KEY_PROTOCOL.length) : ''
}

/**
 * Listen for handshakes on `paths` (exact request paths, before `?`). Other upgrades are left to other
 * 'upgrade' listeners; when there are none, they are routed like any request (Node would have done the
 * same without our listener), so the pipeline refuses them as before. A request not answered (or, on our
 * paths, not taken by the route) within `timeoutMs` is cut: after an upgrade Node applies no request
 * timeout to the socket. Returns the function that stops listening.
 */
export function listenForUpgrades (server: Server, paths: ReadonlySet<string>, routing: (req: IncomingMessage, res: ServerResponse) => void, timeoutMs: number): () => void {
  const listener = (req: IncomingMessage, socket: Duplex, head: Buffer): void => {
    const url = req.url as string
    const q = url.indexOf('?')
    const ours = paths.has(q === -1 ? url : url.slice(0, q))
    if (!ours && server.listenerCount('upgrade') > 1) return
    const timer = setTimeout(() => socket.destroy(), timeoutMs).unref()
    socket.once('close', () => clearTimeout(timer))
    if (ours) {
      pending.set(req, { socket, head, key: takeKey(req), upgrade: req.headers.upgrade as string, timer })
      delete req.headers.upgrade
    }
    const res = new ServerResponse(req)
    res.assignSocket(socket as Socket)
    res.on('finish', () => socket.destroy())
    routing(req, res)
  }
  server.on('upgrade', listener)
  return () => { server.off('upgrade', listener) }
}
