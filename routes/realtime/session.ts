import type { FastifyBaseLogger } from 'fastify'
import type { LimitStore } from '../../plugins/limits/limit-store.js'
import type { QuotaUsage, Quotas } from '../../plugins/client-keys/quota-store.js'
import { contentOf, errorEvent, parseClientEvent, upstreamEvent, type ClientEvent } from './events.js'
import type { RealtimeFilter } from './filter.js'
import { checkSettings, refusal, type Refusal } from './policy.js'
import type { Verdict } from './relay.js'
import type { RequestPolicyConfig } from '../../plugins/request-policy/schema.js'
import type { ClientQuota } from '../../plugins/client-keys/schema.js'

/*
 * What one Realtime session does with each message (the relay's `fromClient` and `fromUpstream`): client
 * events checked in order (policy, token budget, prompt filter; a refusal is answered with an `error`
 * event and the event dropped), upstream events redacted and their usage charged to the client's budget.
 */

export const TPM_WINDOW_MS = 60_000
/**
 * Events that can start a billed response: asking for one, and audio (under server voice detection a turn
 * of speech starts a response by itself). Refused while the client's token window is spent.
 */
const STARTS_RESPONSE = new Set(['response.create', 'input_audio_buffer.append', 'input_audio_buffer.commit'])

/** The token budget's refusal, in the words of plugins/limits/token-budget.ts. */
export function budgetRefusal (limit: number, used: number, resetMs: number): Refusal {
  return refusal('TOKENS_LIMITED', [`Rate limit reached on tokens per min (TPM): Limit ${limit}, Used ${used}. Please try again in ${Math.ceil(resetMs / 1000)}s.`], null, 'tokens_per_minute')
}

/** A token quota used up by `usage`, as the refusal the client gets and when it lifts; null while some is left. */
export function quotaSpent (quotas: Quotas, usage: QuotaUsage): { refusal: Refusal, resetAt: number } | null {
  const spent = quotas.tokensPerDay !== undefined && usage.day.tokens >= quotas.tokensPerDay
    ? { name: 'tokens per day', limit: quotas.tokensPerDay, used: usage.day.tokens, reset: usage.day.resetAt }
    : quotas.tokensPerMonth !== undefined && usage.month.tokens >= quotas.tokensPerMonth
      ? { name: 'tokens per month', limit: quotas.tokensPerMonth, used: usage.month.tokens, reset: usage.month.resetAt }
      : null
  if (spent === null) return null
  return { refusal: refusal('QUOTA_EXCEEDED', [spent.name, spent.limit, spent.used, spent.reset], null, 'quota'), resetAt: Date.parse(spent.reset) }
}

export interface SessionEventsOptions {
  policy: RequestPolicyConfig
  /** The prompt filter; null: off. */
  filter: RealtimeFilter | null
  maxJsonDepth: number
  /** Log the refused text with a refusal. */
  logPrompts: boolean
  /** Every value the client must never see. */
  secrets: readonly string[]
  /** Tokens per minute (0: no budget), the store that counts them and the client's key in it. */
  tokensPerMinute: number
  store: Pick<LimitStore, 'reserveTokens' | 'reserveQuota' | 'quotaUsage'>
  client: string
  /** The account the session's tokens are charged to and its quotas (a client key's record); absent: not metered. */
  quota?: ClientQuota | undefined
  log: FastifyBaseLogger
}

export class SessionEvents {
  /** Tokens upstream reported so far. */
  tokens = 0
  readonly #opts: SessionEventsOptions
  #blocked: Refusal | null = null
  #blockedUntil = 0

  constructor (opts: SessionEventsOptions) {
    this.#opts = opts
  }

  readonly fromClient = async (data: Buffer, binary: boolean): Promise<Verdict> => {
    const o = this.#opts
    const parsed = parseClientEvent(data, binary, o.maxJsonDepth)
    if ('refused' in parsed) return { answer: errorEvent({ type: 'invalid_request_error', code: 'invalid_event', message: parsed.refused, param: null }, undefined) }
    const event = parsed.event
    const content = o.filter === null ? null : contentOf(event)
    const spent = STARTS_RESPONSE.has(event.type) && Date.now() < this.#blockedUntil ? this.#blocked : null
    const refused = checkSettings(o.policy, event) ?? spent ?? (content === null ? null : await (o.filter as RealtimeFilter).check(content, o.log))
    if (refused === null) return { forward: data }
    this.#logRefusal(event, refused, content)
    return { answer: errorEvent(refused, event.event_id) }
  }

  readonly fromUpstream = (data: Buffer): Buffer | string => {
    const { out, usage } = upstreamEvent(data, this.#opts.secrets)
    if (usage !== null) this.#charge(usage)
    return out
  }

  /** Usage is charged as it is reported; once the window is spent, events that start responses are refused until it resets. */
  #charge (usage: number): void {
    const o = this.#opts
    this.tokens += usage
    if (o.quota !== undefined) this.#chargeQuota(o.quota, usage)
    if (o.tokensPerMinute <= 0) return
    // The limit only decides admission; tokens already used are recorded whatever it is.
    o.store.reserveTokens(o.client, usage, Number.MAX_SAFE_INTEGER, TPM_WINDOW_MS).then((grant) => {
      if (grant.used < o.tokensPerMinute) return
      this.#blocked = budgetRefusal(o.tokensPerMinute, grant.used, grant.resetMs)
      this.#blockedUntil = Date.now() + grant.resetMs
    }, (err: unknown) => o.log.warn({ err }, 'oai-proxy: realtime usage not recorded'))
  }

  /**
   * The account's day and month: tokens already used are recorded whatever the quota (a charge of no
   * request); once a token quota is used up, responses are refused until it resets, as at the handshake.
   */
  #chargeQuota (quota: ClientQuota, usage: number): void {
    const o = this.#opts
    const now = Date.now()
    o.store.reserveQuota(quota.account, usage, {}, now, 0)
      .then(async () => quotaSpent(quota.quotas, await o.store.quotaUsage(quota.account, now)))
      .then((spent) => {
        if (spent === null) return
        this.#blocked = spent.refusal
        this.#blockedUntil = spent.resetAt
      }, (err: unknown) => o.log.warn({ err }, 'oai-proxy: realtime usage not recorded'))
  }

  #logRefusal (event: ClientEvent, r: Refusal, content: ReturnType<typeof contentOf> | null): void {
    const text = this.#opts.logPrompts ? content?.texts.find((t) => t.param === r.param)?.text.slice(0, 500) : undefined
    this.#opts.log.info({ rule: r.rule, param: r.param, event: event.type, ...(text === undefined ? {} : { prompt: text }) }, 'oai-proxy: realtime event refused')
  }
}
