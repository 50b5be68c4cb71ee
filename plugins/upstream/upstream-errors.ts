import type { Readable } from 'node:stream'
import { envelope } from '../../errors.js'
import type { ErrorEnvelope } from '../../schemas/errors.js'
import type { KeyDisableReason } from './key-pool.js'
import { redactText } from './redact.js'

/** Upstream error bodies are small; anything larger is not an OpenAI error and is replaced, not relayed. */
const ERROR_BODY_LIMIT = 64 * 1024

/** Read at most `limit` bytes; `null` (and the stream destroyed) if there is more. */
export async function readCapped (body: Readable, limit = ERROR_BODY_LIMIT): Promise<string | null> {
  const chunks: Buffer[] = []
  let size = 0
  for await (const chunk of body) {
    size += (chunk as Buffer).length
    if (size > limit) {
      body.destroy()
      return null
    }
    chunks.push(chunk as Buffer)
  }
  return Buffer.concat(chunks).toString('utf8')
}

interface UpstreamErrorFields { message: string, type: string | null, code: string | null, param: string | null }

function parseError (text: string | null): UpstreamErrorFields | null {
  if (text === null) return null
  try {
    const value: unknown = JSON.parse(text)
    const e = (value as { error?: unknown } | null)?.error
    if (typeof e !== 'object' || e === null) return null
    const f = e as Record<string, unknown>
    if (typeof f.message !== 'string') return null
    const str = (v: unknown): string | null => (typeof v === 'string' ? v : typeof v === 'number' ? String(v) : null)
    return { message: f.message, type: str(f.type), code: str(f.code), param: str(f.param) }
  } catch {
    return null
  }
}

export interface UpstreamVerdict {
  /** Take the key out of rotation and try the next one (the request was refused, so nothing was billed). */
  disable?: KeyDisableReason
  /** Rest the key for this long (an upstream rate limit). */
  coolDownMs?: number
  /** What the client gets, if we answer (status and redacted envelope). */
  status: number
  body: ErrorEnvelope
}

const MAX_COOL_DOWN_MS = 60_000

/**
 * Decide what an upstream error means for the key and for the client. Only errors that speak of the key
 * itself change its state: a bogus model (404), a bad parameter (400) or a restricted-scope 401 never do,
 * so a client cannot knock keys out of the pool.
 */
export function judgeUpstreamError (status: number, text: string | null, retryAfter: string | undefined, secrets: readonly string[]): UpstreamVerdict {
  const e = parseError(text)
  const scrub = (s: string | null): string | null => (s === null ? null : redactText(s, secrets))
  const body = e === null
    ? envelope(`The upstream API returned an error (HTTP ${status}).`, status >= 500 ? 'server_error' : 'upstream_error', null)
    : envelope(redactText(e.message, secrets), scrub(e.type) ?? 'upstream_error', scrub(e.code), scrub(e.param))

  if (status === 401 && (e?.code === 'invalid_api_key' || e?.code === 'account_deactivated')) {
    return { disable: 'invalid_api_key', status, body }
  }
  if (status === 429 && (e?.code === 'insufficient_quota' || e?.type === 'insufficient_quota')) {
    return { disable: 'insufficient_quota', status, body }
  }
  if (status === 401) {
    // The upstream refused *our* credentials for this call (e.g. a restricted key's scopes). The client's
    // proxy key is fine, so a 401 would mislead it: answer 403 permission_denied.
    return { status: 403, body: envelope(body.error.message, 'permission_denied', body.error.code, body.error.param) }
  }
  if (status === 429) {
    const seconds = Number(retryAfter)
    const coolDownMs = Number.isFinite(seconds) && seconds > 0 ? Math.min(seconds * 1000, MAX_COOL_DOWN_MS) : 1000
    return { coolDownMs, status, body }
  }
  return { status, body }
}

/**
 * A log-friendly code for a failed upstream call: undici errors carry a string code; an abort or a
 * timeout is a DOMException, whose numeric legacy `code` says less than its name.
 */
export function errorCode (err: unknown): string {
  const code = (err as { code?: unknown }).code
  return typeof code === 'string' ? code : (err as Error).name
}
