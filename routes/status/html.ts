import { createHash } from 'node:crypto'
import type { StatusView } from './view.js'

/*
 * The status page as HTML: one server-rendered document, no script, no external asset, its one style block
 * allowed by hash in a CSP that allows nothing else.
 */

const STYLE = 'body{font:15px/1.5 system-ui,sans-serif;max-width:46rem;margin:2rem auto;padding:0 1rem;color:#1a1a1a}' +
  'h1{font-size:1.4rem}h2{font-size:1.1rem;margin-top:1.6rem}table{border-collapse:collapse}' +
  'td,th{text-align:left;padding:.2rem .9rem .2rem 0;vertical-align:top}code{font-size:.9em}' +
  '.ok{color:#17702f}.degraded{color:#a3301b}'

export const STATUS_CSP = `default-src 'none'; style-src 'sha256-${createHash('sha256').update(STYLE).digest('base64')}'; ` +
  "img-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"

const ESCAPES: Record<string, string> = { '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' }
export const escapeHtml = (value: unknown): string => String(value).replace(/[&<>"']/g, (c) => ESCAPES[c] as string)

const limit = (n: number | null, unit = ''): string => (n === null || n === 0 ? 'none' : `${n.toLocaleString('en-US')}${unit}`)
const rows = (pairs: ReadonlyArray<readonly [string, string]>): string =>
  `<table>${pairs.map(([k, v]) => `<tr><th>${escapeHtml(k)}</th><td>${escapeHtml(v)}</td></tr>`).join('')}</table>`

function uptime (seconds: number): string {
  const d = Math.floor(seconds / 86400)
  const h = Math.floor((seconds % 86400) / 3600)
  const m = Math.floor((seconds % 3600) / 60)
  return d > 0 ? `${d} d ${h} h` : h > 0 ? `${h} h ${m} min` : `${m} min ${seconds % 60} s`
}

function yourUsage (you: NonNullable<StatusView['you']>): string {
  if (!you.metered) return `<h2>Your key</h2><p>A ${escapeHtml(you.kind)}: its use is not metered.</p>`
  // Metered: usage and quotas are both there (routes/usage.ts).
  const q = you.quotas as NonNullable<typeof you.quotas>
  const u = you.usage as NonNullable<typeof you.usage>
  const quota = (name: string, v: { limit: number, used: number, resets_at: string } | null): Array<readonly [string, string]> =>
    v === null ? [] : [[name, `${v.used.toLocaleString('en-US')} of ${v.limit.toLocaleString('en-US')} (resets ${v.resets_at})`]]
  return '<h2>Your key</h2>' + rows([
    ['tokens today', String(u.day.tokens)],
    ['requests today', String(u.day.requests)],
    ['tokens this month', String(u.month.tokens)],
    ...quota('tokens per day', q.tokens_per_day),
    ...quota('tokens per month', q.tokens_per_month),
    ...quota('requests per day', q.requests_per_day)
  ])
}

export function statusHtml (v: StatusView): string {
  const l = v.limits
  const keys = v.upstream_keys
  const limits = rows([
    ['requests', l.requests_per_window === 0 ? 'none' : `${limit(l.requests_per_window)} per ${l.window_seconds} s`],
    ['tokens per minute', limit(l.tokens_per_minute)],
    ['concurrent requests', limit(l.max_concurrent_requests)],
    ['output tokens per request', limit(l.max_output_tokens)],
    ['request body', limit(l.max_body_bytes, ' bytes')]
  ])
  return '<!doctype html><html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width,initial-scale=1">' +
    `<meta name="robots" content="noindex"><title>OpenAI proxy status</title><style>${STYLE}</style></head><body>` +
    `<h1>OpenAI proxy: <span class="${v.status === 'ok' ? 'ok' : 'degraded'}">${v.status === 'ok' ? 'up' : 'up, but no upstream key is usable'}</span></h1>` +
    rows([['version', v.version], ['uptime', uptime(v.uptime_seconds)], ['key required', v.key_required ? "yes: send it as 'Authorization: Bearer <key>'" : 'no']]) +
    '<h2>How to use it</h2><p>Point an OpenAI SDK at this address with <code>/v1</code> appended as its base URL. ' +
    'Machine-readable: <code>?format=json</code>.</p>' +
    `<h2>Endpoints</h2><table>${v.endpoints.map((e) => `<tr><td><code>${escapeHtml(e.method)} ${escapeHtml(e.path)}</code></td></tr>`).join('')}</table>` +
    `<h2>Models</h2><p>${v.models === null ? 'Any model the upstream serves.' : v.models.map((m) => `<code>${escapeHtml(m)}</code>`).join(', ')}</p>` +
    '<h2>Limits per client</h2>' + limits +
    '<h2>Upstream keys</h2>' + rows([['active', String(keys.active)], ['resting', String(keys.resting)], ['disabled', String(keys.disabled)]]) +
    (v.you === null ? '' : yourUsage(v.you)) +
    '</body></html>'
}
