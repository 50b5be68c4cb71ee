import { ESLint } from 'eslint'
import t from 'tap'

/*
 * Threat A03: the lint rule that refuses `==`/`===` on secrets (eslint.config.js) still catches what it is
 * for, and lets through what is not a comparison of two secrets.
 */

t.test('A03: equality on key-, secret- and token-named values is a lint error in shipped code', async (t) => {
  const eslint = new ESLint()
  const lint = async (code: string, filePath = 'lib/probe.ts') => (await eslint.lintText(code, { filePath }))[0]?.messages.filter((m) => m.ruleId === 'no-restricted-syntax').map((m) => m.line) ?? []
  const bad = [
    'export const a = (apiKey: string, candidate: string): boolean => apiKey === candidate',
    'export const b = (o: { secret: string }, s: string): boolean => o.secret !== s',
    'export const c = (token: string, t: string): boolean => t == token',
    'export const d = (h: { authorization: string }, x: string): boolean => h.authorization === x'
  ]
  for (const code of bad) t.strictSame(await lint(code), [1], code)
  const fine = [
    'export const e = (key: string | undefined): boolean => key === undefined',
    "export const f = (key: unknown): boolean => typeof key === 'string'",
    "export const g = (key: string): boolean => key === 'x-api-key'",
    'export const h = (key: string): boolean => key.length === 3'
  ]
  for (const code of fine) t.strictSame(await lint(code), [], code)
  t.strictSame(await lint(bad[0] as string, 'test/probe.test.ts'), [], 'tests may compare fake keys')
})
