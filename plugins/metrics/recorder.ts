import type { Socket } from 'node:net'
import type { Readable } from 'node:stream'
import type { FastifyReply, FastifyRequest } from 'fastify'
import { endpoints } from '../../schemas/endpoints.js'
import { BoundedLabels, CounterTable, HistogramTable, fixed } from './series.js'

/*
 * What one request adds to the metrics, and the few calls the proxy route makes (upstream request sent,
 * answered, last byte). Times come from `reply.elapsedTime` (Fastify's clock, started when the request
 * arrived) and are kept as numbers on the request; nothing here runs per chunk, and nothing allocates a
 * closure per request except the one `end` listener of a streamed answer.
 */

declare module 'fastify' {
  interface FastifyRequest {
    /** ms after arrival when the first upstream attempt was sent; -1: never sent. */
    oaiProxySentAt: number
    /** ms after arrival when upstream's answer (its headers) arrived; -1: none. */
    oaiProxyAnsweredAt: number
    /** ms after arrival when the last upstream byte arrived (or the call failed); -1: not seen. */
    oaiProxyUpstreamDoneAt: number
    /** Bit flags: STREAMING, RECORDED. */
    oaiProxyMetricsFlags: number
  }
  interface FastifyContextConfig {
    /** The endpoint label of a route, set once when the route is added (plugins/metrics). */
    oaiProxyMetricsRow?: number
  }
}

const STREAMING = 1
const RECORDED = 2

/** Proxy's own routes, by the label they get; any other route of the suite is `other`, an unmatched path `unmatched`. */
const LOCAL_LABELS = ['realtime', 'proxy.usage', 'health', 'status', 'metrics', 'admin', 'other', 'unmatched'] as const
const ENDPOINT_LABELS = [...endpoints.map((e) => e.id), ...LOCAL_LABELS]
export const ENDPOINTS = fixed(ENDPOINT_LABELS)
export const rowOf = (label: string): number => ENDPOINT_LABELS.indexOf(label)
const UNMATCHED = rowOf('unmatched')

const STATUS = fixed(['1xx', '2xx', '3xx', '4xx', '5xx', 'aborted'])
const ABORTED = 5
/** `none`: the request never reached auth (an unknown path, a refusal before it, the proxy's own routes). */
const CLIENTS = fixed(['none', 'anonymous', 'proxy-key', 'client-key', 'browser-token', 'host'])
const CLIENT_INDEX: Record<string, number> = { anonymous: 1, 'proxy-key': 2, 'client-key': 3, 'browser-token': 4, host: 5 }
export const LIMIT_KINDS = fixed(['requests', 'tokens', 'concurrency', 'quota', 'ban'])
const STAGES = fixed(['prompt', 'output'])
const OUTPUT = 1

/** Seconds. Overhead is sub-millisecond when all is well; upstream calls and first bytes take up to minutes. */
const OVERHEAD_BUCKETS = [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1]
const UPSTREAM_BUCKETS = [0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300]

/** The wire bytes a connection had read and written when its previous answer ended. */
const READ_MARK = Symbol('oaiProxyReadMark')
const WRITTEN_MARK = Symbol('oaiProxyWrittenMark')
type MarkedSocket = Socket & { [READ_MARK]?: number, [WRITTEN_MARK]?: number }

export interface RecorderOptions {
  /** Filter rule ids get their own label up to this many (then `_other`). */
  maxRuleLabels: number
  /** Per-client series for up to this many client ids (0: none). */
  perClientLabels: number
}

export class ProxyMetrics {
  readonly endpoint = { name: 'endpoint', labels: ENDPOINTS }
  readonly requests = new CounterTable('oai_proxy_requests_total', 'Requests answered, by endpoint id, status class (aborted: the client left first) and client class.', [this.endpoint, { name: 'status_class', labels: STATUS }, { name: 'client_class', labels: CLIENTS }])
  readonly bytesIn = new CounterTable('oai_proxy_received_bytes_total', 'Bytes received from clients on the wire (headers included), by endpoint id.', [this.endpoint])
  readonly bytesOut = new CounterTable('oai_proxy_sent_bytes_total', 'Bytes sent to clients on the wire (headers included), by endpoint id.', [this.endpoint])
  readonly overhead = new HistogramTable('oai_proxy_overhead_seconds', 'Time spent in the proxy on a forwarded request: before the upstream request was sent plus after its last byte.', this.endpoint, OVERHEAD_BUCKETS)
  readonly upstream = new HistogramTable('oai_proxy_upstream_seconds', 'Time from sending the upstream request to its last byte (key retries included).', this.endpoint, UPSTREAM_BUCKETS)
  readonly firstByte = new HistogramTable('oai_proxy_time_to_first_byte_seconds', "Time from the request's arrival to upstream's answer (its headers), when the proxy starts answering.", this.endpoint, UPSTREAM_BUCKETS)
  readonly limits = new CounterTable('oai_proxy_limit_rejections_total', 'Requests refused by a limit, by kind (ban: the failed-request guard).', [{ name: 'kind', labels: LIMIT_KINDS }])
  readonly rules: BoundedLabels
  readonly filtered: CounterTable
  readonly tokensReserved = new CounterTable('oai_proxy_tokens_reserved_total', 'Tokens reserved at admission by the token budget, by endpoint id.', [this.endpoint])
  readonly tokensSettled = new CounterTable('oai_proxy_tokens_settled_total', "Tokens finally charged: upstream's usage, 0 when it refused, the reservation when unknown (aborted).", [this.endpoint])
  readonly clients: BoundedLabels | null
  readonly clientRequests: CounterTable | null
  readonly clientTokens: CounterTable | null
  /** Streamed answers being sent right now. */
  streamsOpen = 0

  constructor (opts: RecorderOptions) {
    this.rules = new BoundedLabels(opts.maxRuleLabels)
    this.filtered = new CounterTable('oai_proxy_filter_refusals_total', 'Prompts refused and answers cut by the content filter, by rule id and stage.', [{ name: 'rule', labels: this.rules }, { name: 'stage', labels: STAGES }])
    this.clients = opts.perClientLabels > 0 ? new BoundedLabels(opts.perClientLabels) : null
    const client = this.clients === null ? null : [{ name: 'client', labels: this.clients }]
    this.clientRequests = client === null ? null : new CounterTable('oai_proxy_client_requests_total', 'Requests by client id (opt-in, capped; anonymous callers are never labelled).', client)
    this.clientTokens = client === null ? null : new CounterTable('oai_proxy_client_tokens_settled_total', 'Tokens finally charged, by client id (opt-in, capped).', client)
  }

  /** Called by the proxy route before each upstream attempt: the first one starts upstream time. */
  sent (request: FastifyRequest, reply: FastifyReply): void {
    if (request.oaiProxySentAt < 0) request.oaiProxySentAt = reply.elapsedTime
  }

  /** Upstream's answer (status and headers) arrived. */
  answered (request: FastifyRequest, reply: FastifyReply): void {
    request.oaiProxyAnsweredAt = reply.elapsedTime
  }

  /** The last upstream byte arrived, or the call failed. */
  upstreamDone (request: FastifyRequest, reply: FastifyReply): void {
    request.oaiProxyUpstreamDoneAt = reply.elapsedTime
  }

  /** A streamed answer starts: counted open until the response closes; its upstream time ends with its body. */
  streaming (request: FastifyRequest, reply: FastifyReply, source: Readable): void {
    request.oaiProxyMetricsFlags |= STREAMING
    this.streamsOpen++
    source.once('end', () => { request.oaiProxyUpstreamDoneAt = reply.elapsedTime })
  }

  /** The client left before its answer ended (onResponse never runs then): the proxy route's close watch calls this. */
  aborted (request: FastifyRequest): void {
    this.record(request, null)
  }

  outputFiltered (rule: string): void {
    this.filtered.add(this.filtered.cell(this.rules.indexOf(rule), OUTPUT))
  }

  /** Everything a request adds once its answer is finished, or (reply null) once the client left first. */
  record (request: FastifyRequest, reply: FastifyReply | null): void {
    const flags = request.oaiProxyMetricsFlags
    if ((flags & RECORDED) !== 0) return
    request.oaiProxyMetricsFlags = flags | RECORDED
    if ((flags & STREAMING) !== 0) this.streamsOpen--
    const row = request.routeOptions.config.oaiProxyMetricsRow ?? UNMATCHED
    const client = request.oaiProxyClient
    const status = reply === null ? ABORTED : Math.min(Math.max(Math.floor(reply.statusCode / 100), 1), 5) - 1
    this.requests.add(this.requests.cell(row, status, client == null ? 0 : CLIENT_INDEX[client.kind] as number))
    this.#bytes(request.raw.socket as MarkedSocket | null, row)
    const rule = request.oaiProxyFilterRule
    if (rule != null) this.filtered.add(this.filtered.cell(this.rules.indexOf(rule)))
    const usage = request.oaiProxyUsage
    let settled = 0
    if (usage != null) {
      settled = usage.totalTokens ?? usage.reserved
      this.tokensReserved.add(row, usage.reserved)
      this.tokensSettled.add(row, settled)
    }
    if (this.clients !== null && client != null && client.kind !== 'anonymous') {
      const at = this.clients.indexOf(client.id)
      ;(this.clientRequests as CounterTable).add(at)
      if (settled > 0) (this.clientTokens as CounterTable).add(at, settled)
    }
    const sentAt = request.oaiProxySentAt
    if (reply === null || sentAt < 0) return
    const total = reply.elapsedTime
    const done = request.oaiProxyUpstreamDoneAt
    const upstream = (done < 0 ? total : done) - sentAt
    this.overhead.observe(row, (total - upstream) / 1000)
    this.upstream.observe(row, upstream / 1000)
    const answered = request.oaiProxyAnsweredAt
    if (answered >= 0) this.firstByte.observe(row, answered / 1000)
  }

  /** Wire bytes since the connection's previous answer ended: exact for HTTP/1.1, no per-chunk counting. */
  #bytes (socket: MarkedSocket | null, row: number): void {
    const read = socket?.bytesRead
    // inject()'s stand-in socket counts nothing.
    if (socket == null || typeof read !== 'number') return
    const written = socket.bytesWritten
    this.bytesIn.add(row, read - (socket[READ_MARK] ?? 0))
    this.bytesOut.add(row, written - (socket[WRITTEN_MARK] ?? 0))
    socket[READ_MARK] = read
    socket[WRITTEN_MARK] = written
  }
}
