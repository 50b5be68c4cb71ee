import { Type, type Static } from '@sinclair/typebox'

/*
 * Options of the prompt filter (`filter` in the suite's options; REJECT_* and MODERATION_* in the
 * environment). Defaults live in `plugins/prompt-filter/index.ts`, so this stays a pure check.
 */

const Millis = Type.Integer({ minimum: 1, maximum: 3600 * 1000 })

export const ModerationOptionsSchema = Type.Object({
  /** What happens when the moderation call fails (timeout, upstream error): `open` lets the request through, `closed` refuses it with 503. Required: there is no safe default for everyone. */
  failMode: Type.Union([Type.Literal('open'), Type.Literal('closed')]),
  /** Moderation model. Default `omni-moderation-latest`. */
  model: Type.Optional(Type.String({ minLength: 1, maxLength: 256 })),
  /** Longest wait for the moderation answer. Default 10 s. */
  timeoutMs: Type.Optional(Millis),
  /** Verdicts kept (LRU), keyed by a hash of the text. Default 10,000. */
  cacheSize: Type.Optional(Type.Integer({ minimum: 0, maximum: 10_000_000 })),
  /** How long a verdict is kept. Default 1 hour. */
  cacheTtlMs: Type.Optional(Millis)
}, { additionalProperties: false })

export const PromptFilterOptionsSchema = Type.Object({
  /** Phrases to refuse: matched as whole words on normalised text (case, width, accents, invisibles and look-alike letters folded), in every field that carries prompt text. */
  phrases: Type.Optional(Type.Array(Type.String({ minLength: 1, maxLength: 1000 }), { maxItems: 10_000 })),
  /** RE2 regular expressions to refuse, matched case-insensitively on the normalised text. Patterns that need backtracking (backreferences, lookaround) or match empty text are refused at start-up. */
  patterns: Type.Optional(Type.Array(Type.String({ minLength: 1, maxLength: 4000 }), { maxItems: 10_000 })),
  /** Unicode scripts whose letters are refused (`Han`, `Hiragana`, `Katakana`, `Hangul`, `Cyrillic`, ...). */
  scripts: Type.Optional(Type.Array(Type.String({ minLength: 1, maxLength: 40 }))),
  /** Characters of those scripts a request must hold to be refused. Default 1. */
  scriptMinChars: Type.Optional(Type.Integer({ minimum: 1, maximum: 1_000_000 })),
  /** Accepted for compatibility with the original proxy's REJECT_SAMPLE_RATE and ignored: every request is scanned in full, which costs less than sampling would save. */
  sampleRate: Type.Optional(Type.Number({ minimum: 0, maximum: 1 })),
  /** Requests carrying images, audio or files, which the filter cannot read: `allow` (default) or `reject`. */
  nonText: Type.Optional(Type.Union([Type.Literal('allow'), Type.Literal('reject')])),
  /** How a refused client is answered: `error` (default; 400 `content_filter`) or `completion` (a fake answer carrying `message`, streamed when a stream was asked for). */
  mode: Type.Optional(Type.Union([Type.Literal('error'), Type.Literal('completion')])),
  /** What a refused client is told. Generic by default; never lists the rules. */
  message: Type.Optional(Type.String({ minLength: 1, maxLength: 2000 })),
  /** Also ask the upstream moderation endpoint (with a pool key) before forwarding. Absent: off. */
  moderation: Type.Optional(ModerationOptionsSchema),
  /** Endpoint ids whose prompt filtering is opt-in in the endpoint table (`moderations`: its input is what someone wants classified) to filter anyway. */
  optInEndpoints: Type.Optional(Type.Array(Type.String({ minLength: 1 })))
}, { additionalProperties: false })

export type PromptFilterConfig = Static<typeof PromptFilterOptionsSchema>
export type ModerationConfig = Static<typeof ModerationOptionsSchema>

/** The output guardrail (`outputFilter`; OUTPUT_REJECT_PHRASES in the environment): rules applied to generated text. */
export const OutputFilterOptionsSchema = Type.Object({
  /** Phrases to stop in generated text, matched as the prompt filter's are (whole words, normalised text). */
  phrases: Type.Optional(Type.Array(Type.String({ minLength: 1, maxLength: 1000 }), { maxItems: 10_000 })),
  /** RE2 regular expressions to stop in generated text, case-insensitive, on the normalised text. */
  patterns: Type.Optional(Type.Array(Type.String({ minLength: 1, maxLength: 4000 }), { maxItems: 10_000 })),
  /** Characters of earlier text of the same output a streamed match may span (across frames). Default 1024. */
  windowChars: Type.Optional(Type.Integer({ minimum: 16, maximum: 65_536 }))
}, { additionalProperties: false })

export type OutputFilterConfig = Static<typeof OutputFilterOptionsSchema>
