import type { Readable } from 'node:stream'
import type { FastifyReply } from 'fastify'
import { proxyError } from '../../errors.js'
import { clientResponseHeaders } from '../../plugins/upstream/headers.js'
import { redactText } from '../../plugins/upstream/redact.js'
import { readCapped } from '../../plugins/upstream/upstream-errors.js'

/** A rewritable answer is a small document (the model list is a few KB); anything larger is refused. */
const REWRITE_LIMIT = 1024 * 1024

export interface UpstreamAnswer {
  statusCode: number
  headers: Record<string, string | string[] | undefined>
  body: Readable
}

/**
 * Buffer a small 2xx JSON answer, let `rewrite` change it (the request policy drops disallowed models from
 * `/v1/models`), redact it like any upstream body and send it. Only endpoints whose table row says
 * `rewritableResponse` get here, so no stream is ever buffered.
 */
export async function sendRewritten (reply: FastifyReply, res: UpstreamAnswer, rewrite: (body: unknown) => unknown, secrets: readonly string[]): Promise<FastifyReply> {
  let text: string | null
  try {
    text = await readCapped(res.body, REWRITE_LIMIT)
  } catch {
    throw proxyError('UPSTREAM_UNREACHABLE')
  }
  let value: unknown
  try {
    value = JSON.parse(text ?? '')
  } catch {
    throw proxyError('UPSTREAM_BAD_RESPONSE')
  }
  const out = redactText(JSON.stringify(rewrite(value)), secrets)
  return reply.code(res.statusCode).headers(clientResponseHeaders(res.headers)).type('application/json').send(out)
}
