import { readFileSync } from 'node:fs'
import type { Env, OaiProxyOptions } from './options.js'
import type { OutputFilterConfig, PromptFilterConfig } from '../prompt-filter/schema.js'
import { STORED_STATE, type RequestPolicyConfig, type StoredStateFeature } from '../request-policy/schema.js'
import { compileRules, RuleError } from '../prompt-filter/filter-rules.js'
import { scriptMatcher } from '../prompt-filter/script-rule.js'

/*
 * REJECT_*, MODERATION_*, ALLOWED_* and friends -> the `filter`, `policy` and `logPrompts` options. Used by
 * `plugins/config/read-config.ts` only. Each rule is checked here already, so a bad line stops start-up with the
 * variable and line number in the message, not an option path the operator never wrote.
 */

/** The original proxy's REJECT_DISALLOWED=true refused Chinese, Japanese and Korean text. */
export const CJK_SCRIPTS = ['Han', 'Hiragana', 'Katakana', 'Hangul']

const REGEX_LINE = /^\/(.+)\/([ims]*)$/
const list = (value: string | undefined): string[] => (value ?? '').split(/[,\n]/).map((s) => s.trim()).filter((s) => s.length > 0)

interface Rules { phrases: string[], patterns: string[], lineOf: { phrases: number[], patterns: number[] } }

/**
 * REJECT_PHRASES: one rule per line (blank lines and `#` comments skipped); `/regex/flags` lines are RE2
 * patterns (`i` is implied, `s` and `m` are honoured), everything else is a phrase. A single line that is a
 * path (`/…`, `./…`, `../…`, not a `/regex/`) names a file holding the lines.
 */
export function parseRejectPhrases (value: string, variable = 'REJECT_PHRASES'): Rules {
  let text = value
  let where = variable
  const single = value.trim()
  if (!single.includes('\n') && /^\.{0,2}\//.test(single) && !REGEX_LINE.test(single)) {
    try {
      text = readFileSync(single, 'utf8')
    } catch {
      throw new Error(`${variable}: looks like a file path, but the file cannot be read`)
    }
    where = `${variable} file`
  }
  const rules: Rules = { phrases: [], patterns: [], lineOf: { phrases: [], patterns: [] } }
  text.split(/\r?\n/).forEach((raw, i) => {
    const line = raw.trim()
    if (line.length === 0 || line.startsWith('#')) return
    const regex = REGEX_LINE.exec(line)
    if (regex === null) {
      rules.phrases.push(line)
      rules.lineOf.phrases.push(i + 1)
      return
    }
    // Both groups always take part in a match of REGEX_LINE.
    const flags = regex[2] as string
    const inline = (flags.includes('s') ? 's' : '') + (flags.includes('m') ? 'm' : '')
    rules.patterns.push((inline.length > 0 ? `(?${inline})` : '') + (regex[1] as string))
    rules.lineOf.patterns.push(i + 1)
  })
  try {
    compileRules(rules.phrases, rules.patterns)
  } catch (err) {
    // compileRules throws only a RuleError for one of the phrases or patterns it was given.
    const e = err as RuleError
    const lines = e.option === 'patterns' ? rules.lineOf.patterns : rules.lineOf.phrases
    throw new Error(`${where} line ${lines[e.index] as number}: ${e.message}`)
  }
  return rules
}

function scriptsOf (value: string | undefined): string[] {
  const v = (value ?? '').trim()
  if (v === '' || v === 'false' || v === '0') return []
  const names = v === 'true' || v === '1' ? CJK_SCRIPTS : list(v)
  try {
    scriptMatcher(names)
  } catch (err) {
    throw new Error(`REJECT_DISALLOWED: entry ${(err as RuleError).index + 1} ${(err as Error).message}`)
  }
  return names
}

function filterOf (env: Env): PromptFilterConfig | undefined {
  const rules = env.REJECT_PHRASES === undefined ? undefined : parseRejectPhrases(env.REJECT_PHRASES)
  const scripts = scriptsOf(env.REJECT_DISALLOWED)
  if (env.MODERATION_FAIL_MODE !== undefined && env.MODERATION_CHECK !== true) {
    throw new Error('MODERATION_FAIL_MODE is set but MODERATION_CHECK is not true: turn the check on or remove the setting')
  }
  const filter: PromptFilterConfig = {
    ...(rules === undefined || rules.phrases.length === 0 ? {} : { phrases: rules.phrases }),
    ...(rules === undefined || rules.patterns.length === 0 ? {} : { patterns: rules.patterns }),
    ...(scripts.length === 0 ? {} : { scripts }),
    ...(env.REJECT_SCRIPT_MIN_CHARS === undefined ? {} : { scriptMinChars: env.REJECT_SCRIPT_MIN_CHARS }),
    ...(env.REJECT_SAMPLE_RATE === undefined ? {} : { sampleRate: env.REJECT_SAMPLE_RATE }),
    ...(env.REJECT_NON_TEXT === undefined ? {} : { nonText: env.REJECT_NON_TEXT ? 'reject' : 'allow' }),
    ...(env.REJECT_MODE === undefined ? {} : { mode: env.REJECT_MODE }),
    ...(env.REJECT_MESSAGE === undefined ? {} : { message: env.REJECT_MESSAGE }),
    ...(env.FILTER_MODERATIONS_INPUT === true ? { optInEndpoints: ['moderations'] } : {}),
    ...(env.MODERATION_CHECK === true
      ? { moderation: { failMode: env.MODERATION_FAIL_MODE ?? 'closed', ...(env.MODERATION_MODEL === undefined ? {} : { model: env.MODERATION_MODEL }) } }
      : {})
  }
  return Object.keys(filter).length === 0 ? undefined : filter
}

function policyOf (env: Env): RequestPolicyConfig | undefined {
  const stored = list(env.ALLOW_STORED_STATE)
  const unknown = stored.filter((s) => !(STORED_STATE as readonly string[]).includes(s))
  if (unknown.length > 0) throw new Error(`ALLOW_STORED_STATE: unknown feature ${unknown.join(', ')} (known: ${STORED_STATE.join(', ')})`)
  const models = list(env.ALLOWED_MODELS)
  const tools = list(env.ALLOWED_TOOLS)
  const tiers = list(env.ALLOWED_SERVICE_TIERS)
  const bad = [...models, ...tools, ...tiers].find((s) => !/^[\x21-\x7e]{1,256}$/.test(s))
  if (bad !== undefined) throw new Error('ALLOWED_MODELS / ALLOWED_TOOLS / ALLOWED_SERVICE_TIERS: entries must be printable ASCII without spaces')
  const policy: RequestPolicyConfig = {
    ...(models.length === 0 ? {} : { allowedModels: models }),
    ...(env.MAX_OUTPUT_TOKENS === undefined ? {} : { maxOutputTokens: env.MAX_OUTPUT_TOKENS }),
    ...(env.MAX_N === undefined ? {} : { maxN: env.MAX_N }),
    ...(tools.length === 0 ? {} : { allowedTools: tools }),
    ...(tiers.length === 0 ? {} : { allowedServiceTiers: tiers }),
    ...(stored.length === 0 ? {} : { allowStoredState: stored as StoredStateFeature[] })
  }
  return Object.keys(policy).length === 0 ? undefined : policy
}

/** OUTPUT_REJECT_PHRASES (the REJECT_PHRASES syntax) and OUTPUT_FILTER_WINDOW_CHARS. */
function outputFilterOf (env: Env): OutputFilterConfig | undefined {
  if (env.OUTPUT_REJECT_PHRASES === undefined) {
    if (env.OUTPUT_FILTER_WINDOW_CHARS !== undefined) throw new Error('OUTPUT_FILTER_WINDOW_CHARS is set but OUTPUT_REJECT_PHRASES is not: set the rules or remove the setting')
    return undefined
  }
  const rules = parseRejectPhrases(env.OUTPUT_REJECT_PHRASES, 'OUTPUT_REJECT_PHRASES')
  return {
    ...(rules.phrases.length === 0 ? {} : { phrases: rules.phrases }),
    ...(rules.patterns.length === 0 ? {} : { patterns: rules.patterns }),
    ...(env.OUTPUT_FILTER_WINDOW_CHARS === undefined ? {} : { windowChars: env.OUTPUT_FILTER_WINDOW_CHARS })
  }
}

/** The filter and policy options the environment asks for; only keys that were set. Throws naming the variable. */
export function filterAndPolicyFromEnv (env: Env): Pick<OaiProxyOptions, 'filter' | 'outputFilter' | 'policy' | 'logPrompts'> {
  const filter = filterOf(env)
  const outputFilter = outputFilterOf(env)
  const policy = policyOf(env)
  return {
    ...(filter === undefined ? {} : { filter }),
    ...(outputFilter === undefined ? {} : { outputFilter }),
    ...(policy === undefined ? {} : { policy }),
    ...(env.LOG_PROMPTS === true ? { logPrompts: true } : {})
  }
}
