import { STATUS_CODES, type IncomingMessage, type Server, type ServerResponse } from 'node:http'
import type { Socket } from 'node:net'
import type { FastifyBaseLogger, FastifyError, FastifyReply, FastifyRequest } from 'fastify'
import { envelope } from '../errors.js'
import { addressKey } from './client-address.js'

/*
 * Two answers Fastify gives before any plugin runs: a URL it cannot decode (`%zz`, an over-long path
 * parameter) and a request Node's parser refuses (bad method, control bytes, oversized headers). They are
 * constructor options, so the standalone server passes these, and a host app may pass them too, to keep
 * every answer in OpenAI's envelope without echoing the request.
 */

export function oaiProxyFrameworkErrors (error: FastifyError, _request: FastifyRequest, reply: FastifyReply): void {
  const status = typeof error.statusCode === 'number' && error.statusCode >= 400 && error.statusCode < 500 ? error.statusCode : 400
  reply.code(status).type('application/json').send(envelope('The request URL is malformed.', 'invalid_request_error', 'invalid_url'))
}

export function oaiProxyClientErrorHandler (error: Error & { code?: string }, socket: Socket): void {
  // A response already under way on this socket (bytes that are not a request arrived behind a stream):
  // a status line written now would land inside its body. Cut the connection instead, as Node's own
  // handler does (it checks the same internal `_httpMessage`).
  const inFlight = (socket as Socket & { _httpMessage?: { headersSent?: boolean } | null })._httpMessage?.headersSent === true
  if (error.code === 'ECONNRESET' || !socket.writable || inFlight) {
    socket.destroy()
    return
  }
  const [status, message, code] = error.code === 'HPE_HEADER_OVERFLOW'
    ? [431, 'The request headers are too large.', 'headers_too_large'] as const
    : error.code === 'ERR_HTTP_REQUEST_TIMEOUT'
      ? [408, 'The request did not arrive in time.', 'request_timeout'] as const
      : [400, 'The request is malformed.', 'bad_request'] as const
  const body = JSON.stringify(envelope(message, 'invalid_request_error', code))
  socket.end(`HTTP/1.1 ${status} ${STATUS_CODES[status]}\r\nContent-Type: application/json\r\nContent-Length: ${Buffer.byteLength(body)}\r\nConnection: close\r\n\r\n${body}`)
}

/**
 * `Expect` values other than `100-continue` get 417 in OpenAI's envelope: without a `checkExpectation`
 * listener Node answers them itself, with an empty body. Register with `server.on('checkExpectation', …)`.
 */
export function oaiProxyExpectationHandler (_req: IncomingMessage, res: ServerResponse): void {
  const body = JSON.stringify(envelope('Only "Expect: 100-continue" is supported.', 'invalid_request_error', 'expectation_failed'))
  res.writeHead(417, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body), connection: 'close' })
  res.end(body)
}

/**
 * Fastify constructor options the standalone server uses and a host app should consider: OpenAI-shaped
 * framework and parser errors, model ids up to 256 characters, prototype poisoning as an error.
 */
export const oaiProxyServerOptions = {
  routerOptions: { maxParamLength: 256 },
  frameworkErrors: oaiProxyFrameworkErrors,
  clientErrorHandler: oaiProxyClientErrorHandler,
  onProtoPoisoning: 'error',
  onConstructorPoisoning: 'error'
} as const

export interface ConnectionLimits {
  /** Open connections in total; more are closed on accept (0: no limit). */
  maxConnections: number
  /** Open connections per client address (IPv6 by /64); more are closed on accept (0: no limit). */
  maxConnectionsPerAddress: number
}

/** How often refused connections are summed up in the log: one line per interval at most, not one per socket. */
const REFUSALS_LOG_MS = 10_000

/**
 * Caps on open connections for an HTTP server. Over either cap a new connection is closed as it is
 * accepted, before a byte is read: a flood of idle or trickling sockets costs a file descriptor for an
 * instant, not a parser, buffers and a timer each. Refusals are counted and logged at `warn`, at most once
 * per REFUSALS_LOG_MS, with the busiest address. The per-address count uses the TCP peer: behind a trusted
 * load balancer every connection comes from it, so leave that cap off there.
 */
export function limitConnections (server: Server, limits: ConnectionLimits, log: FastifyBaseLogger): void {
  if (limits.maxConnections > 0) server.maxConnections = limits.maxConnections
  const open = new Map<string, number>()
  let refused = 0
  let overTotal = 0
  const byAddress = new Map<string, number>()
  let loggedAt = 0
  const count = (address: string | null): void => {
    refused++
    if (address === null) overTotal++
    else byAddress.set(address, (byAddress.get(address) ?? 0) + 1)
    const now = Date.now()
    if (now - loggedAt < REFUSALS_LOG_MS) return
    loggedAt = now
    const busiest = [...byAddress].sort((a, b) => b[1] - a[1])[0]
    log.warn({ refused, overTotal, overPerAddress: refused - overTotal, busiest: busiest?.[0], busiestRefused: busiest?.[1] }, 'oai-proxy: connections refused over the connection limits')
    refused = 0
    overTotal = 0
    byAddress.clear()
  }
  // Node closes connections over maxConnections itself and says so with 'drop'.
  server.on('drop', () => { count(null) })
  const perAddress = limits.maxConnectionsPerAddress
  if (perAddress <= 0) return
  server.on('connection', (socket: Socket) => {
    // The same address rule as the limits (lib/client-address.ts); a socket already gone has no address
    // and lands in the shared bucket of unparsable ones.
    const address = addressKey(`${socket.remoteAddress}`)
    const n = (open.get(address) ?? 0) + 1
    if (n > perAddress) {
      socket.destroy()
      count(address)
      return
    }
    open.set(address, n)
    socket.once('close', () => {
      const left = (open.get(address) as number) - 1
      if (left <= 0) open.delete(address)
      else open.set(address, left)
    })
  })
}
