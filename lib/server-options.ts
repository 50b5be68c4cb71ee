import { STATUS_CODES } from 'node:http'
import type { Socket } from 'node:net'
import type { FastifyError, FastifyReply, FastifyRequest } from 'fastify'
import { envelope } from '../errors.js'

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
  if (error.code === 'ECONNRESET' || !socket.writable) {
    socket.destroy()
    return
  }
  const [status, message, code] = error.code === 'HPE_HEADER_OVERFLOW'
    ? [431, 'The request headers are too large.', 'headers_too_large'] as const
    : [400, 'The request is malformed.', 'bad_request'] as const
  const body = JSON.stringify(envelope(message, 'invalid_request_error', code))
  socket.end(`HTTP/1.1 ${status} ${STATUS_CODES[status]}\r\nContent-Type: application/json\r\nContent-Length: ${Buffer.byteLength(body)}\r\nConnection: close\r\n\r\n${body}`)
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
