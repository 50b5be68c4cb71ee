import { Type, type Static } from '@sinclair/typebox'

/** OpenAI's error envelope: the official SDKs build their exception classes from exactly these four fields. */
export const ErrorEnvelopeSchema = Type.Object({
  error: Type.Object({
    message: Type.String(),
    type: Type.String(),
    param: Type.Union([Type.String(), Type.Null()]),
    code: Type.Union([Type.String(), Type.Null()])
  })
})
export type ErrorEnvelope = Static<typeof ErrorEnvelopeSchema>
