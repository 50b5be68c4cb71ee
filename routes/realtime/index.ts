import type { Socket } from 'node:net'
import type { FastifyPluginAsync, FastifyReply, FastifyRequest } from 'fastify'
import { WebSocketServer, type WebSocket } from 'ws'
import { proxyError } from '../../errors.js'
import { retryHeaders } from '../../lib/durations.js'
import { upstreamRequestHeaders } from '../../plugins/upstream/headers.js'
import { compileOrigins } from '../../lib/origins.js'
import { redactText } from '../../plugins/upstream/redact.js'
import { RealtimeFilter, type RealtimeFilterOptions } from './filter.js'
import { modelAllowed } from './policy.js'
import { Relay } from './relay.js'
import { budgetRefusal, SessionEvents, TPM_WINDOW_MS } from './session.js'
import { connectUpstream } from './upstream.js'
import { listenForUpgrades, takeUpgrade } from '../../lib/realtime-upgrade.js'
import { clientId } from '../../lib/client-address.js'
import type { RequestPolicyConfig } from '../../plugins/request-policy/schema.js'

export interface RealtimeRouteOptions {
  /** Serve `/realtime` as well as `/v1/realtime`. */
  unprefixedRoutes: boolean
  /** Largest message either way, in bytes; a larger one closes the session with 1009. */
  maxFrameBytes: number
  /** Close a session whose client sent nothing for this long (ms; 0 = never). */
  idleTimeoutMs: number
  /** Longest session (ms; 0 = no cap). */
  maxDurationMs: number
  /** Time to open the upstream WebSocket (TCP, TLS and its answer). */
  handshakeTimeoutMs: number
  /** Extra CA certificate(s) for the upstream TLS connection. */
  ca?: string | undefined
  userAgent: string
  maxJsonDepth: number
  policy: RequestPolicyConfig
  /** The prompt filter's options (null: off). */
  filter: RealtimeFilterOptions | null
  /** Browser origins allowed (the CORS list): a handshake from any other page is refused. */
  origins: readonly string[]
  tokensPerMinute: number
  logPrompts: boolean
}

const MODEL_ID = /^[A-Za-z0-9][A-Za-z0-9._:-]{0,255}$/
/** Subprotocols a client may offer besides its key: the one we answer with, and the beta flag (a header upstream). */
const PROTOCOLS = ['realtime', 'openai-beta.realtime-v1']
/** Upstream handshake headers: our credentials and identity, and the client's vetted `OpenAI-Beta`. Nothing else of the client's. */
const UPSTREAM_HEADERS = ['authorization', 'user-agent', 'openai-organization', 'openai-project', 'openai-beta']
/** Bytes waiting to be written to one side before the other side is no longer read. */
const HIGH_WATER_BYTES = 1024 * 1024

/**
 * `GET /v1/realtime?model=…`: the Realtime API over WebSocket. The handshake is an ordinary request of the
 * pipeline (lib/realtime-upgrade.ts); once it is admitted, upstream is opened with a pool key, then the
 * client's handshake is answered and the two are relayed (routes/realtime/relay.ts), every client event
 * checked against the model allowlist, the tool and stored-prompt rules and the prompt filter, every
 * upstream event redacted and its usage charged to the client's token budget. See docs/realtime.md.
 */
const realtimeRoute: FastifyPluginAsync<RealtimeRouteOptions> = async (app, opts) => {
  const { origin, basePath } = app.oaiProxyUpstream
  const keys = app.oaiProxyKeys
  const { store } = app.oaiProxyLimits
  const upstreamUrl = `${origin.replace(/^http/, 'ws')}${basePath}/v1/realtime`
  const filter = opts.filter === null ? null : new RealtimeFilter(opts.filter, { upstream: app.oaiProxyUpstream, keys, userAgent: opts.userAgent })
  const wss = new WebSocketServer({ noServer: true, clientTracking: false, perMessageDeflate: false, maxPayload: opts.maxFrameBytes, handleProtocols: (offered) => PROTOCOLS.find((p) => offered.has(p)) ?? false })
  const sessions = new Set<Relay>()
  let closing = false
  const routes = ['/v1/realtime', ...(opts.unprefixedRoutes ? ['/realtime'] : [])]
  // A handshake gets as long in the pipeline as upstream gets to answer: one stuck in a hook is cut.
  const stop = listenForUpgrades(app.server, new Set(routes.map((r) => app.prefix + r)), (req, res) => app.routing(req, res), 2 * opts.handshakeTimeoutMs)
  app.addHook('preClose', async () => {
    closing = true
    stop()
    for (const s of sessions) s.close('shutdown', 1001, 'server shutting down')
    await Promise.all([...sessions].map(async (s) => await s.done))
  })

  const originAllowed = compileOrigins(opts.origins)

  /**
   * After auth and limits, before the concurrency slot: a browser page's origin is one CORS allows (a
   * WebSocket is not subject to CORS, and a host's cookie-based `resolveClient` would otherwise let any site
   * open sessions as its visitors), and the query names one allowed model.
   */
  async function checkHandshake (request: FastifyRequest): Promise<void> {
    const origin = request.headers.origin
    if (origin !== undefined && !originAllowed(origin)) throw proxyError('ORIGIN_NOT_ALLOWED')
    const model = (request.query as Record<string, unknown>).model
    if (typeof model !== 'string' || !MODEL_ID.test(model)) throw proxyError('INVALID_QUERY', ['model: name one model, e.g. ?model=gpt-realtime'], { param: 'model' })
    if (!modelAllowed(opts.policy, model)) {
      request.log.info({ rule: 'allowed_models', param: 'model' }, 'oai-proxy: request refused by policy')
      throw proxyError('MODEL_NOT_ALLOWED', [], { param: 'model' })
    }
  }

  /** The client's tokens per minute: a client key's own, else the suite's (0: no budget). */
  const tokensPerMinute = (request: FastifyRequest): number => request.oaiProxyClient?.limits?.tokensPerMinute ?? opts.tokensPerMinute

  /** A session cannot reserve tokens ahead (nothing says how long it will talk): it starts only with budget left. */
  async function admitTokens (request: FastifyRequest): Promise<void> {
    const limit = tokensPerMinute(request)
    if (limit <= 0) return
    const grant = await store.reserveTokens(clientId(request), 0, limit, TPM_WINDOW_MS)
    if (grant.used >= limit) {
      const r = budgetRefusal(limit, grant.used, grant.resetMs)
      throw proxyError('TOKENS_LIMITED', [r.message], { headers: retryHeaders(grant.resetMs) })
    }
  }

  async function handler (request: FastifyRequest, reply: FastifyReply): Promise<FastifyReply | undefined> {
    const up = takeUpgrade(request.raw)
    if (up === undefined) throw proxyError('UPGRADE_REQUIRED', [], { headers: { upgrade: 'websocket' } })
    const model = (request.query as { model: string }).model
    const offered = new Set(String(request.headers['sec-websocket-protocol'] ?? '').split(',').map((p) => p.trim()))
    const connected = await connectUpstream({
      url: `${upstreamUrl}?${new URLSearchParams({ model }).toString()}`,
      pool: keys.pool,
      secrets: keys.secrets,
      headers: (key) => {
        const all = upstreamRequestHeaders(request.headers, { key, organization: keys.organization, project: keys.project, userAgent: opts.userAgent }, undefined)
        const picked = Object.fromEntries(Object.entries(all).filter(([name]) => UPSTREAM_HEADERS.includes(name)))
        // The browser client's way of saying `OpenAI-Beta: realtime=v1`.
        if (picked['openai-beta'] === undefined && offered.has('openai-beta.realtime-v1')) picked['openai-beta'] = 'realtime=v1'
        return picked
      },
      timeoutMs: opts.handshakeTimeoutMs,
      ws: { perMessageDeflate: false, maxPayload: opts.maxFrameBytes, ...(opts.ca === undefined ? {} : { ca: opts.ca }) },
      log: request.log
    })
    if ('answer' in connected) return reply.code(connected.answer.status).headers(connected.answer.headers).type('application/json').send(connected.answer.body)
    const upstream = connected.ws
    let upgraded = false
    // ws refuses a malformed handshake (bad key or version) by answering 400 and closing: upstream goes too.
    up.socket.once('close', () => { if (!upgraded) upstream.terminate() })
    reply.hijack()
    wss.handleUpgrade(request.raw, up.socket, up.head, (client) => {
      upgraded = true
      // From here the session, not the socket, ends the request: the concurrency slot is held until both
      // sides have closed (the 'close' emitted when the relay ends).
      reply.raw.detachSocket(up.socket as Socket)
      relay(request, reply, client, upstream, connected.keyId, model)
    })
  }

  function relay (request: FastifyRequest, reply: FastifyReply, client: WebSocket, upstream: WebSocket, keyId: string, model: string): void {
    const who = clientId(request)
    const events = new SessionEvents({ policy: opts.policy, filter, maxJsonDepth: opts.maxJsonDepth, logPrompts: opts.logPrompts, secrets: keys.secrets, tokensPerMinute: tokensPerMinute(request), store, client: who, quota: request.oaiProxyClient?.quota, log: request.log })
    const session = new Relay(client, upstream, {
      idleTimeoutMs: opts.idleTimeoutMs,
      maxDurationMs: opts.maxDurationMs,
      highWaterBytes: HIGH_WATER_BYTES,
      closeGraceMs: 1000,
      fromClient: events.fromClient,
      fromUpstream: events.fromUpstream,
      closeReason: (reason) => redactText(reason, keys.secrets)
    })
    sessions.add(session)
    // A handshake that was already past the pipeline when the server began closing.
    if (closing) session.close('shutdown', 1001, 'server shutting down')
    session.done.then((end) => {
      sessions.delete(session)
      request.log.info({ client: who, key: keyId, model, ms: end.ms, framesIn: end.framesIn, framesOut: end.framesOut, clientCode: end.clientCode, upstreamCode: end.upstreamCode, cause: end.cause, tokens: events.tokens }, 'oai-proxy: realtime session ended')
      reply.raw.emit('close')
    })
  }

  for (const url of routes) {
    app.get(url, { exposeHeadRoute: false, onRequest: checkHandshake, preHandler: admitTokens }, handler)
  }
}

export default realtimeRoute
