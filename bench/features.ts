import { FILTER_RULES } from './filter-scenario.js'

/**
 * "Every feature on", as the bench and the profile run it: a client key (set by the caller), requests,
 * tokens and concurrency limits set high enough that nothing is refused (this measures the checks, not
 * refusals), 50 filter rules and a CJK script rule, a model allowlist, an output-token cap, and the output
 * guardrail with the same 50 rules on every generated frame.
 */
export const ALL_FEATURES = {
  rateLimit: { requestsPerWindow: 1e9, tokensPerMinute: 1e12, maxConcurrent: 1e6, failuresPerMinute: 1e9 },
  filter: { ...FILTER_RULES, scripts: ['Han', 'Hiragana', 'Katakana'] },
  policy: { allowedModels: ['gpt-4o*', 'gpt-4.1*', 'gpt-5*'], maxOutputTokens: 4096 },
  outputFilter: FILTER_RULES
}

/** A model name the bench's fake upstream answers with one stream frame a second, `max_tokens` of them (the soak's long stream). */
export const LONG_STREAM_MODEL = 'gpt-4o-soak-long'
