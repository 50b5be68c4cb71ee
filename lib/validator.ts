import { TypeCompiler, type TypeCheck } from '@sinclair/typebox/compiler'
import type { ValueError } from '@sinclair/typebox/errors'
import type { TSchema } from '@sinclair/typebox'
import type { FastifySchemaCompiler } from 'fastify'

/** The first error of a value `check` refused. TypeBox's Errors() yields at least one whenever Check() fails. */
export function firstError (check: TypeCheck<TSchema>, value: unknown): ValueError {
  return check.Errors(value).First() as ValueError
}

/**
 * TypeBox's compiled checker as Fastify's validator inside the proxy scope. Unlike Fastify's default Ajv
 * it never coerces (`"0.5"` stays a string and fails), never injects defaults and never strips: the body
 * we forward is the body the client sent. Only the first error is collected, so a 10k-item invalid array
 * costs one error, not 10k.
 */
export const typeboxValidator: FastifySchemaCompiler<TSchema> = ({ schema }) => {
  const check = TypeCompiler.Compile(schema)
  return (value: unknown) => {
    if (check.Check(value)) return { value }
    const first = firstError(check, value)
    return {
      error: [{
        keyword: 'typebox',
        instancePath: first.path,
        schemaPath: '',
        params: {},
        message: first.message
      }]
    }
  }
}
