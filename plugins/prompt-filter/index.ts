import fp from 'fastify-plugin'
import type { FastifyBaseLogger, FastifyPluginAsync, FastifyReply, FastifyRequest } from 'fastify'
import { proxyError } from '../../errors.js'
import { RuleError, ruleSetFor, type RuleMatch, type RuleSet } from './filter-rules.js'
import { countScript, scriptMatcher, scriptOf } from './script-rule.js'
import { ModerationClient } from './moderation.js'
import { yieldTurn } from '../../lib/loop-budget.js'
import { normaliseLong } from './normalise.js'
import { analysisOf, decorateAnalysis, topField, type PromptSegment } from '../../lib/request-analysis.js'
import { refusalReply } from './refusal-reply.js'
import { firstMatch, RuleWorker } from './rule-worker.js'
import { endpoints as allEndpoints, type EndpointDefinition } from '../../schemas/endpoints.js'
import type { PromptFilterConfig } from './schema.js'

export interface PromptFilterOptions extends PromptFilterConfig {
  /** Log an excerpt of the refused text with each refusal. Default false: rule id and parameter only. */
  logPrompts?: boolean
  /** User-Agent of the moderation call. */
  userAgent?: string
}

export const DEFAULT_REJECT_MESSAGE = "This request was refused by this proxy's content filter."
const EXCERPT_CHARS = 500

declare module 'fastify' {
  interface FastifyRequest {
    /** The rule that refused this prompt (error or fake completion), for the metrics; null when none did. */
    oaiProxyFilterRule: string | null
  }
}

type Refusal = { rule: string, param: string | null, excerpt?: string, categories?: string[], error: 'CONTENT_FILTER' | 'NON_TEXT_NOT_ALLOWED' }

function invalid (path: string, reason: string): Error {
  return new Error(`oai-proxy: invalid option /filter/${path}: ${reason}`)
}

/** Compile and check everything at registration: a rule that cannot work stops start-up, naming the option. */
function settingsOf (opts: PromptFilterOptions) {
  let rules: RuleSet
  let scripts: RegExp | null
  try {
    rules = ruleSetFor(opts.phrases, opts.patterns)
    scripts = scriptMatcher(opts.scripts ?? [])
  } catch (err) {
    throw err instanceof RuleError ? invalid(`${err.option}/${err.index}`, err.message) : err
  }
  const optIn = new Set(opts.optInEndpoints ?? [])
  for (const id of optIn) {
    if (allEndpoints.find((e) => e.id === id)?.prompt?.optIn !== true) throw invalid('optInEndpoints', `${id} is not an endpoint whose filtering is opt-in`)
  }
  const readsText = rules.size > 0 || scripts !== null || opts.moderation !== undefined
  return {
    rules,
    scripts,
    scriptNames: opts.scripts ?? [],
    scriptMinChars: opts.scriptMinChars ?? 1,
    rejectNonText: opts.nonText === 'reject',
    completionMode: opts.mode === 'completion',
    message: opts.message ?? DEFAULT_REJECT_MESSAGE,
    optIn,
    readsText,
    active: readsText || opts.nonText === 'reject'
  }
}

/**
 * The normalised text of all segments, plus each segment's own form. `views` are the texts the rules run
 * on: every segment on its own line; and, when a content array holds several text parts, those parts glued
 * together as well, because the model reads them as one run (`ign` + `ore` is `ignore`) while a phrase's
 * first word still needs a boundary a glued view may hide (`a` + `bomb`).
 */
async function normalised (segments: readonly PromptSegment[]): Promise<{ views: string[], each: string[] }> {
  const each: string[] = []
  for (const seg of segments) {
    await yieldTurn(seg.text.length)
    each.push(await normaliseLong(seg.text))
  }
  return { views: viewsOf(segments, each), each }
}

function viewsOf (segments: readonly PromptSegment[], each: readonly string[]): string[] {
  const views = [each.length === 1 ? each[0] as string : each.join('\n')]
  if (segments.some((seg) => seg.joinsPrevious)) views.push(each.map((n, i) => (i > 0 && segments[i]?.joinsPrevious !== true ? `\n${n}` : n)).join(''))
  return views
}

/**
 * The prompt filter (ARCHITECTURE §3, step 6): a preHandler that reads every piece of prompt text the
 * endpoint table locates, normalised, against phrase, regex and script rules, optionally asks the upstream
 * moderation endpoint, and refuses before anything goes upstream — as an error or a fake completion.
 */
const promptFilter: FastifyPluginAsync<PromptFilterOptions> = async (app, opts) => {
  const s = settingsOf(opts)
  if (!s.active) return
  s.rules.warm()
  if (s.rules.unscreened > 0) {
    app.log.info({ rules: s.rules.unscreened }, 'oai-proxy: some filter rules share no literal every match holds; they run on every prompt (docs/prompt-filter.md)')
  }
  // Large texts that get past the screen are matched off the event loop (plugins/prompt-filter/rule-worker.ts).
  const worker = s.rules.size > 0 ? new RuleWorker(opts.phrases, opts.patterns) : null
  if (worker !== null) app.addHook('onClose', async () => { await worker.close() })
  if (opts.sampleRate !== undefined) {
    app.log.info('oai-proxy: REJECT_SAMPLE_RATE (filter.sampleRate) is accepted for compatibility and ignored: every request is scanned in full')
  }
  let moderation: ModerationClient | null = null
  let failOpen = false
  if (opts.moderation !== undefined) {
    if (!app.hasDecorator('oaiProxyUpstream') || !app.hasDecorator('oaiProxyKeys')) {
      throw invalid('moderation', 'needs the upstream and key-injection plugins registered first')
    }
    moderation = new ModerationClient(app.oaiProxyUpstream, app.oaiProxyKeys, {
      model: opts.moderation.model ?? 'omni-moderation-latest',
      timeoutMs: opts.moderation.timeoutMs ?? 10_000,
      cacheSize: opts.moderation.cacheSize ?? 10_000,
      cacheTtlMs: opts.moderation.cacheTtlMs ?? 3600_000,
      userAgent: opts.userAgent ?? 'oai-reverse-proxy'
    })
    failOpen = opts.moderation.failMode === 'open'
  }

  function refuse (request: FastifyRequest, reply: FastifyReply, endpoint: EndpointDefinition, r: Refusal): FastifyReply {
    const shape = s.completionMode ? endpoint.replyShape : undefined
    request.oaiProxyFilterRule = r.rule
    request.log.info({
      rule: r.rule,
      param: r.param,
      endpoint: endpoint.id,
      reply: shape === undefined ? 'error' : 'completion',
      ...(r.categories === undefined ? {} : { categories: r.categories }),
      ...(opts.logPrompts === true && r.excerpt !== undefined ? { prompt: r.excerpt } : {})
    }, 'oai-proxy: prompt refused')
    const err = r.error === 'CONTENT_FILTER' ? proxyError('CONTENT_FILTER', [s.message], { param: r.param }) : proxyError(r.error, [], { param: r.param })
    if (shape === undefined) throw err
    // Every endpoint with a reply shape requires `model` in its body schema, checked before this hook.
    const body = request.body as { model: string, stream?: unknown, stream_options?: { include_usage?: unknown } }
    const stream = endpoint.streams && body.stream === true
    const fake = refusalReply({ shape, model: body.model, message: err.message, stream, includeUsage: body.stream_options?.include_usage === true })
    if (stream) reply.header('cache-control', 'no-cache').header('x-accel-buffering', 'no')
    return reply.code(200).header('content-type', fake.contentType).send(fake.body)
  }

  /** The first rule the prompt matches, and the segment it is in (-1: only across segments); null if none. */
  async function matchRules (asciiText: boolean, segments: readonly PromptSegment[], log: FastifyBaseLogger): Promise<{ hit: RuleMatch, at: number } | null> {
    const chars = segments.reduce((n, seg) => n + seg.text.length, 0)
    await yieldTurn(chars)
    // ASCII text without `\u` escapes normalises to its lower case, which the screen can read as is
    // (case-insensitively): when it finds nothing, no rule can match and nothing needs normalising.
    if (asciiText && !viewsOf(segments, segments.map((seg) => seg.text)).some((v) => s.rules.mayMatchAnyCase(v))) return null
    const text = await normalised(segments)
    const hit = await firstMatch(s.rules, worker, text.views, log)
    return hit === null ? null : { hit, at: await s.rules.locate(hit, text.each) }
  }

  decorateAnalysis(app)
  app.decorateRequest('oaiProxyFilterRule', null)
  app.addHook('preHandler', async (request, reply) => {
    const scan = analysisOf(request)
    if (scan === null) return
    const endpoint = scan.endpoint
    if (endpoint.prompt === null || (endpoint.prompt.optIn === true && !s.optIn.has(endpoint.id))) return

    if (scan.tokenIds !== null && s.readsText) {
      const param = topField(scan.tokenIds)
      request.oaiProxyFilterRule = 'token_ids'
      request.log.info({ rule: 'token_ids', param, endpoint: endpoint.id }, 'oai-proxy: prompt refused')
      throw proxyError('TOKEN_IDS_NOT_ALLOWED', [param], { param })
    }
    if (scan.media !== null && s.rejectNonText) return refuse(request, reply, endpoint, { rule: 'non_text', param: scan.media, error: 'NON_TEXT_NOT_ALLOWED' })
    const segments = scan.segments
    const first = segments[0]
    if (first === undefined) return
    const excerpt = (seg: PromptSegment): string => seg.text.slice(0, EXCERPT_CHARS)

    if (s.scripts !== null) {
      let seen = 0
      for (const seg of segments) {
        await yieldTurn(seg.text.length)
        seen += countScript(s.scripts, seg.text, s.scriptMinChars - seen)
        if (seen >= s.scriptMinChars) {
          const rule = `script:${scriptOf(s.scriptNames, seg.text, s.scripts)}`
          return refuse(request, reply, endpoint, { rule, param: seg.path, excerpt: excerpt(seg), error: 'CONTENT_FILTER' })
        }
      }
    }

    const found = s.rules.size > 0 ? await matchRules(scan.asciiText, segments, request.log) : null
    if (found !== null) {
      const seg = found.at === -1 ? undefined : segments[found.at]
      const param = seg?.path ?? topField(first.path)
      return refuse(request, reply, endpoint, { rule: found.hit.id, param, excerpt: excerpt(seg ?? first), error: 'CONTENT_FILTER' })
    }

    if (moderation !== null) {
      const verdict = await moderation.check(segments.map((seg) => seg.text).join('\n'), request.log)
      if (!verdict.ok) {
        request.log.warn({ reason: verdict.reason, failMode: failOpen ? 'open' : 'closed' }, 'oai-proxy: moderation unavailable')
        if (!failOpen) throw proxyError('FILTER_UNAVAILABLE')
      } else if (verdict.flagged) {
        return refuse(request, reply, endpoint, { rule: 'moderation', param: topField(first.path), categories: verdict.categories, excerpt: excerpt(first), error: 'CONTENT_FILTER' })
      }
    }
  })
}

export default fp(promptFilter, { name: 'oai-proxy-prompt-filter', fastify: '5.x' })
