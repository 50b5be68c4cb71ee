import { openaiShapeByCode, proxyError, type ProxyErrorName } from '../../errors.js'
import { anyGlob } from '../../plugins/request-policy/policy-rules.js'
import { settingsOf, transcriptionsOf, type ClientEvent } from './events.js'
import type { RequestPolicyConfig } from '../../plugins/request-policy/schema.js'

/*
 * The request policy's rules, applied to the settings a Realtime client sends mid-session
 * (`session.update`'s `session`, `response.create`'s `response`): the model allowlist, hosted tools and
 * stored prompts, with the same options and the same answers (as `error` events) as on the HTTP routes.
 */

/** A client event refused: the `error` event's fields, and the rule for the log. */
export interface Refusal { type: string, code: string, message: string, param: string | null, rule: string }

/** A refusal from the error catalogue, so a Realtime client reads what an HTTP client would. */
export function refusal (name: ProxyErrorName, args: unknown[], param: string | null, rule: string): Refusal {
  const err = proxyError(name, args) as Error & { code: string }
  const shape = openaiShapeByCode.get(err.code) as { type: string, code: string }
  return { type: shape.type, code: shape.code, message: err.message, param, rule }
}

/** Tool types that run in the client's own code (as plugins/request-policy/index.ts). */
const CLIENT_TOOLS = new Set(['function', 'custom'])

export function modelAllowed (policy: RequestPolicyConfig, id: unknown): boolean {
  return policy.allowedModels === undefined || (typeof id === 'string' && anyGlob(policy.allowedModels, id))
}

/** The first policy rule a `session.update` or `response.create` breaks; null for any other event, or none. */
export function checkSettings (policy: RequestPolicyConfig, event: ClientEvent): Refusal | null {
  const settings = settingsOf(event)
  if (settings === undefined) return null
  const { value, path } = settings
  if (value.model !== undefined && !modelAllowed(policy, value.model)) return refusal('MODEL_NOT_ALLOWED', [], `${path}.model`, 'allowed_models')
  // The input transcription model is billed too: the same allowlist.
  for (const [at, t] of transcriptionsOf(value, path)) {
    if (t.model !== undefined && !modelAllowed(policy, t.model)) return refusal('MODEL_NOT_ALLOWED', [], `${at}.model`, 'allowed_models')
  }
  const tools = Array.isArray(value.tools) ? value.tools as unknown[] : []
  for (const [i, tool] of tools.entries()) {
    const type = (tool as { type?: unknown } | null)?.type
    if (typeof type === 'string' && (CLIENT_TOOLS.has(type) || anyGlob(policy.allowedTools ?? [], type))) continue
    return refusal('PARAM_NOT_ALLOWED', [`${path}.tools[${i}].type`, 'allowed_tools'], `${path}.tools[${i}].type`, 'allowed_tools')
  }
  const prompt = value.prompt
  if (prompt !== undefined && prompt !== null && !(policy.allowStoredState ?? []).includes('prompt')) {
    return refusal('PARAM_NOT_ALLOWED', [`${path}.prompt`, 'stored_state:prompt'], `${path}.prompt`, 'stored_state:prompt')
  }
  return null
}
