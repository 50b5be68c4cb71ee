import type { FastifyBaseLogger } from 'fastify'
import { ruleSetFor, type RuleSet } from '../../plugins/prompt-filter/filter-rules.js'
import { countScript, scriptMatcher, scriptOf } from '../../plugins/prompt-filter/script-rule.js'
import { yieldTurn } from '../../lib/loop-budget.js'
import { ModerationClient } from '../../plugins/prompt-filter/moderation.js'
import { normaliseLong } from '../../plugins/prompt-filter/normalise.js'
import type { EventText } from './events.js'
import { refusal, type Refusal } from './policy.js'
import { firstMatch } from '../../plugins/prompt-filter/rule-worker.js'
import type { PromptFilterConfig } from '../../plugins/prompt-filter/schema.js'

/*
 * The prompt filter for Realtime events: the same compiled rule set (`ruleSetFor` shares it with the HTTP
 * filter), the same normalisation and views, the same script rule, non-text refusal and moderation check,
 * run on the text a client event carries (routes/realtime/events.ts `contentOf`). Events are small, so the
 * rules run on the event loop (yielding between slices) rather than in the HTTP filter's worker thread.
 */

export interface RealtimeFilterOptions extends PromptFilterConfig {
  /** What a refused client is told (the HTTP filter's message). */
  message: string
}

/** What the moderation call needs: the upstream agent and key pool (as the HTTP filter's), and our User-Agent. */
export interface ModerationAccess {
  upstream: ConstructorParameters<typeof ModerationClient>[0]
  keys: ConstructorParameters<typeof ModerationClient>[1]
  userAgent: string
}

export class RealtimeFilter {
  readonly #opts: RealtimeFilterOptions
  readonly #rules: RuleSet
  readonly #scripts: RegExp | null
  readonly #scriptNames: readonly string[]
  readonly #message: string
  readonly #moderation: ModerationClient | undefined

  constructor (opts: RealtimeFilterOptions, access: ModerationAccess) {
    this.#opts = opts
    this.#rules = ruleSetFor(opts.phrases, opts.patterns)
    this.#scriptNames = opts.scripts ?? []
    this.#scripts = scriptMatcher(this.#scriptNames)
    this.#message = opts.message
    const m = opts.moderation
    // The HTTP filter's defaults (plugins/prompt-filter/index.ts); a cache of its own.
    this.#moderation = m === undefined
      ? undefined
      : new ModerationClient(access.upstream, access.keys, { model: m.model ?? 'omni-moderation-latest', timeoutMs: m.timeoutMs ?? 10_000, cacheSize: m.cacheSize ?? 10_000, cacheTtlMs: m.cacheTtlMs ?? 3600_000, userAgent: access.userAgent })
  }

  /** The first rule the content breaks, or null. Throws nothing: a failed moderation call follows `failMode`. */
  async check (content: { texts: readonly EventText[], media: readonly string[] }, log: FastifyBaseLogger): Promise<Refusal | null> {
    const { texts, media } = content
    if (this.#opts.nonText === 'reject' && media.length > 0) return refusal('NON_TEXT_NOT_ALLOWED', [], media[0] as string, 'non_text')
    const first = texts[0]
    if (first === undefined) return null
    const blocked = (rule: string, param: string): Refusal => refusal('CONTENT_FILTER', [this.#message], param, rule)
    if (this.#scripts !== null) {
      const min = this.#opts.scriptMinChars ?? 1
      let seen = 0
      for (const t of texts) {
        seen += countScript(this.#scripts, t.text, min - seen)
        if (seen >= min) return blocked(`script:${scriptOf(this.#scriptNames, t.text, this.#scripts)}`, t.param)
      }
    }
    if (this.#rules.size > 0) {
      const each: string[] = []
      for (const t of texts) {
        await yieldTurn(t.text.length)
        each.push(await normaliseLong(t.text))
      }
      // As the HTTP filter reads a prompt: every text on its own line, and the parts of one message glued.
      const views = [each.join('\n')]
      if (texts.some((t) => t.joinsPrevious)) views.push(texts.map((t, i) => (i > 0 && !t.joinsPrevious ? '\n' : '') + (each[i] as string)).join(''))
      const hit = await firstMatch(this.#rules, null, views, log)
      if (hit !== null) {
        const at = await this.#rules.locate(hit, each)
        // A match only across texts: the top-level parameter they share (as the HTTP filter answers).
        return blocked(hit.id, texts[at]?.param ?? (first.param.split(/[.[]/)[0] as string))
      }
    }
    const moderation = this.#moderation
    if (moderation === undefined) return null
    const verdict = await moderation.check(texts.map((t) => t.text).join('\n'), log)
    if (!verdict.ok) {
      log.warn({ reason: verdict.reason, failMode: this.#opts.moderation?.failMode }, 'oai-proxy: moderation unavailable')
      return this.#opts.moderation?.failMode === 'open' ? null : refusal('FILTER_UNAVAILABLE', [], null, 'moderation_unavailable')
    }
    return verdict.flagged ? blocked('moderation', first.param) : null
  }
}
