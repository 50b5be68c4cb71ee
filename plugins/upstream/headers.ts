import type { IncomingHttpHeaders } from 'node:http'

/*
 * Headers cross the proxy from allowlists, never denylists (openai-wire.md §1.4, §1.5). Whatever the
 * client sent that is not named here (its Authorization, x-api-key, cookies, X-Forwarded-*, Origin,
 * OpenAI-Organization, hop-by-hop headers, x-stainless-* telemetry) stays on our side.
 */

/** Printable ASCII only: no CR, LF, NUL or other control bytes can ride along into upstream. */
const SAFE_VALUE = /^[\x20-\x7e]{1,512}$/
const BETA_VALUE = /^[A-Za-z0-9._=,; -]{1,256}$/

export interface UpstreamIdentity {
  key: string
  organization?: string | undefined
  project?: string | undefined
  userAgent: string
}

/** `contentType`: the body's (JSON, or a form we rebuilt with our own boundary); undefined without a body. */
export function upstreamRequestHeaders (client: IncomingHttpHeaders, id: UpstreamIdentity, contentType: string | undefined): Record<string, string> {
  const headers: Record<string, string> = {
    authorization: `Bearer ${id.key}`,
    // We inspect error bodies and redact all bodies, so we must see plain bytes.
    'accept-encoding': 'identity',
    'user-agent': id.userAgent
  }
  if (contentType !== undefined) headers['content-type'] = contentType
  if (id.organization) headers['openai-organization'] = id.organization
  if (id.project) headers['openai-project'] = id.project
  copyIf(headers, 'accept', client.accept, SAFE_VALUE)
  copyIf(headers, 'openai-beta', client['openai-beta'], BETA_VALUE)
  copyIf(headers, 'x-client-request-id', client['x-client-request-id'], SAFE_VALUE)
  return headers
}

function copyIf (to: Record<string, string>, name: string, value: string | string[] | undefined, pattern: RegExp): void {
  if (typeof value === 'string' && pattern.test(value)) to[name] = value
}

/** Upstream response headers a client may see. Everything else (org/project ids, cookies, cf-*, limits) is dropped. */
const RESPONSE_ALLOWLIST = ['content-type', 'x-request-id', 'openai-processing-ms', 'openai-version', 'retry-after', 'retry-after-ms', 'x-should-retry'] as const

const CALL_LOCATION = /^\/v1\/realtime\/calls\/[A-Za-z0-9_-]{1,128}$/

export function clientResponseHeaders (upstream: Record<string, string | string[] | undefined>): Record<string, string> {
  const out: Record<string, string> = {}
  for (const name of RESPONSE_ALLOWLIST) {
    const value = upstream[name]
    if (typeof value === 'string' && SAFE_VALUE.test(value)) out[name] = value
  }
  // A WebRTC call's id (`/v1/realtime/calls/rtc_…`): the one place a client needs upstream's Location.
  const location = upstream.location
  if (typeof location === 'string' && CALL_LOCATION.test(location)) out.location = location
  if (out['content-type']?.startsWith('text/event-stream')) {
    // Defeat buffering in nginx and other reverse proxies in front of us (openai-wire.md §1.6).
    out['cache-control'] = 'no-cache'
    out['x-accel-buffering'] = 'no'
  }
  return out
}

/** The first value of a header undici may give as a list. */
export function firstHeader (value: string | string[] | undefined): string | undefined {
  return Array.isArray(value) ? value[0] : value
}
