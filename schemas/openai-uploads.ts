import { Type } from '@sinclair/typebox'
import { ModelName } from './openai.js'

/*
 * The endpoints that take `multipart/form-data`: which parts each accepts (as data: the form reader in
 * plugins/form-body/multipart.ts refuses any other part), and a TypeBox schema of the text fields once read and typed.
 * Unlike JSON bodies, unknown fields are refused here: a form is rebuilt part by part for upstream, so a
 * part nobody checked must not ride along. The lists follow OpenAI's published spec (2026-08).
 */

/** What a file part may hold, judged from its first bytes (never the client's name or type). */
export type FileType = 'flac' | 'mp3' | 'mp4' | 'm4a' | 'ogg' | 'wav' | 'webm' | 'png' | 'jpeg' | 'webp'
export const AUDIO_TYPES: readonly FileType[] = ['flac', 'mp3', 'mp4', 'm4a', 'ogg', 'wav', 'webm']
export const IMAGE_TYPES: readonly FileType[] = ['png', 'jpeg', 'webp']

/**
 * How a text part reads: `strings` repeats (`name[]`); `json` is a flat object, as JSON text or `name[key]`
 * parts (the SDKs' form), or a plain string, and goes upstream as `name[key]` parts; `document` is a JSON
 * object of any depth as JSON text, and goes upstream as JSON text.
 */
export type FieldKind = 'string' | 'integer' | 'number' | 'boolean' | 'strings' | 'json' | 'document'

export interface FormSpec {
  fields: Readonly<Record<string, FieldKind>>
  /** `required`: a form without such a file is refused (when it ends before any file was streamed). */
  files: Readonly<Record<string, { multiple: boolean, types: readonly FileType[], required?: boolean }>>
  /** The required fields: they must have arrived before a file byte is forwarded (the decisions need them). */
  decisive: readonly string[]
}

/** Per-endpoint caps on a form's files, from OpenAI's documented limits; the suite's options can lower them. */
export interface UploadCaps { maxFiles: number, maxFileBytes: number, maxTotalFileBytes: number }

const MiB = 1024 * 1024
export const AUDIO_CAPS: UploadCaps = { maxFiles: 1, maxFileBytes: 25 * MiB, maxTotalFileBytes: 25 * MiB }
/** GPT image edits take up to 16 images under 50 MB each, plus a mask. */
export const IMAGE_EDIT_CAPS: UploadCaps = { maxFiles: 17, maxFileBytes: 50 * MiB, maxTotalFileBytes: 200 * MiB }
/** Variations (DALL-E 2): one square PNG under 4 MB. */
export const IMAGE_VARIATION_CAPS: UploadCaps = { maxFiles: 1, maxFileBytes: 4 * MiB, maxTotalFileBytes: 4 * MiB }
/** A WebRTC offer has no files. */
export const NO_FILES: UploadCaps = { maxFiles: 0, maxFileBytes: 0, maxTotalFileBytes: 0 }

const Str = Type.Optional(Type.String())
const Int = Type.Optional(Type.Integer())
const Num = Type.Optional(Type.Number())
const Bool = Type.Optional(Type.Boolean())
const Strs = Type.Optional(Type.Array(Type.String()))
const Json = Type.Optional(Type.Union([Type.String(), Type.Object({})]))

export const TranscriptionForm: FormSpec = {
  fields: {
    model: 'string',
    language: 'string',
    prompt: 'string',
    response_format: 'string',
    temperature: 'number',
    stream: 'boolean',
    timestamp_granularities: 'strings',
    include: 'strings',
    chunking_strategy: 'json',
    known_speaker_names: 'strings',
    known_speaker_references: 'strings'
  },
  files: { file: { multiple: false, types: AUDIO_TYPES, required: true } },
  decisive: ['model']
}
export const TranscriptionFieldsSchema = Type.Object({
  model: ModelName,
  language: Str,
  prompt: Str,
  response_format: Str,
  temperature: Num,
  stream: Bool,
  timestamp_granularities: Strs,
  include: Strs,
  chunking_strategy: Json,
  known_speaker_names: Strs,
  known_speaker_references: Strs
})

export const TranslationForm: FormSpec = {
  fields: { model: 'string', prompt: 'string', response_format: 'string', temperature: 'number' },
  files: { file: { multiple: false, types: AUDIO_TYPES, required: true } },
  decisive: ['model']
}
export const TranslationFieldsSchema = Type.Object({ model: ModelName, prompt: Str, response_format: Str, temperature: Num })

export const ImageEditForm: FormSpec = {
  fields: {
    prompt: 'string',
    model: 'string',
    n: 'integer',
    size: 'string',
    quality: 'string',
    response_format: 'string',
    output_format: 'string',
    output_compression: 'integer',
    background: 'string',
    input_fidelity: 'string',
    partial_images: 'integer',
    stream: 'boolean',
    user: 'string'
  },
  files: { image: { multiple: true, types: IMAGE_TYPES, required: true }, mask: { multiple: false, types: ['png'] } },
  decisive: ['prompt']
}
export const ImageEditFieldsSchema = Type.Object({
  prompt: Type.String({ minLength: 1 }),
  model: Type.Optional(ModelName),
  n: Type.Optional(Type.Integer({ minimum: 1 })),
  size: Str,
  quality: Str,
  response_format: Str,
  output_format: Str,
  output_compression: Int,
  background: Str,
  input_fidelity: Str,
  partial_images: Type.Optional(Type.Integer({ minimum: 0 })),
  stream: Bool,
  user: Str
})

export const ImageVariationForm: FormSpec = {
  fields: { model: 'string', n: 'integer', response_format: 'string', size: 'string', user: 'string' },
  files: { image: { multiple: false, types: ['png'], required: true } },
  decisive: []
}
export const ImageVariationFieldsSchema = Type.Object({
  model: Type.Optional(ModelName), n: Type.Optional(Type.Integer({ minimum: 1 })), response_format: Str, size: Str, user: Str
})

/** WebRTC: the browser's SDP offer, and the session (model, instructions, voice...) as JSON text. */
export const RealtimeCallForm: FormSpec = {
  fields: { sdp: 'string', session: 'document' },
  files: {},
  decisive: ['sdp']
}
export const RealtimeCallFieldsSchema = Type.Object({
  sdp: Type.String({ minLength: 1, maxLength: 64 * 1024 }),
  session: Type.Optional(Type.Object({ model: Type.Optional(ModelName) }, { additionalProperties: true }))
})
