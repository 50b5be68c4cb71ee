import t, { type Test } from 'tap'
import { addKey, draftKey, KeyInputError, KeyNotFoundError, keyView, removeKey, rotateKey, setDisabled, updateKey } from '../../../plugins/client-keys/operations.js'
import { hashSecret } from '../../../plugins/client-keys/records.js'
import type { ClientKeyRecord } from '../../../plugins/client-keys/schema.js'

/*
 * The record operations the CLI and the admin API share, called directly: what each returns, and the
 * field each refusal names (the CLI turns it into a flag, the API into `param`).
 */

const NOW = Date.parse('2030-01-01T00:00:00Z')

function refusal (t: Test, fn: () => unknown): KeyInputError {
  const err = t.throws(fn) as KeyInputError
  t.type(err, KeyInputError)
  return err
}

t.test('create, then every change; the records array is never mutated', async (t) => {
  const draft = draftKey({ name: '  ann  ', models: ['gpt-4o*'], expires: '2031-01-01', limits: { tokensPerDay: 5 }, metadata: { a: 'b' } }, NOW)
  t.match(draft.fields, { name: 'ann', created: '2030-01-01T00:00:00.000Z', expires: '2031-01-01T00:00:00.000Z', scopes: { models: ['gpt-4o*'] }, limits: { tokensPerDay: 5 } })
  t.equal(draft.fields.hash, hashSecret(draft.secret))
  const none: ClientKeyRecord[] = []
  const { records, result } = addKey(none, draft)
  t.equal(none.length, 0)
  t.strictSame(Object.keys(result.record), ['id', 'name', 'hash', 'prefix', 'created', 'expires', 'disabled', 'scopes', 'limits', 'metadata'], 'the file\'s field order')
  const id = result.record.id
  const many = Array.from({ length: 200 }, () => addKey([], draftKey({ name: 'x' }, NOW)).result.record)
  t.equal(new Set(many.map((r) => r.id)).size, 200)

  const updated = updateKey(records, id, { expires: '2032-02-02T10:00:00Z', limits: { requestsPerDay: 3 } }, NOW)
  t.match(updated.result, { record: { id, expires: '2032-02-02T10:00:00.000Z', limits: { requestsPerDay: 3 } }, changed: ['expires', 'limits'] })
  t.equal(records[0]?.expires, '2031-01-01T00:00:00.000Z', 'the input is untouched')
  const cleared = updateKey(updated.records, id, { expires: null, limits: {}, name: undefined }, NOW)
  t.strictSame(cleared.result.changed, ['expires', 'limits'], 'undefined fields are not changes')
  t.notOk('expires' in cleared.result.record || 'limits' in cleared.result.record)

  t.equal(setDisabled(records, id, true).result.record.disabled, true)
  const rotated = rotateKey(records, id)
  t.equal(rotated.result.record.hash, hashSecret(rotated.result.secret))
  t.equal(rotated.result.record.prefix, rotated.result.secret.slice(0, 12))
  t.strictSame(removeKey(records, id).records, [])
  t.notOk('hash' in keyView(result.record))
  for (const fn of [() => setDisabled(records, 'key_bbbbbbbbbbbb', true), () => rotateKey([], id), () => removeKey([], id), () => updateKey([], id, {})]) {
    const err = t.throws(fn) as KeyNotFoundError
    t.type(err, KeyNotFoundError)
    t.match(err.message, /^no key key_/)
  }
})

t.test('refusals name the record field; describe() words it for the caller', async (t) => {
  const base = addKey([], draftKey({ name: 'x' }, NOW)).records
  const id = base[0]?.id as string
  const cases: Array<[() => unknown, string, string]> = [
    [() => draftKey({ name: '' }), 'name', 'name is required (1 to 200 characters)'],
    [() => draftKey({ name: 'x'.repeat(201) }), 'name', 'name is required (1 to 200 characters)'],
    [() => draftKey({ name: 'x', limits: { tokensPerDay: -1 } }), 'limits.tokensPerDay', 'limits.tokensPerDay: Expected integer to be greater or equal to 0'],
    [() => draftKey({ name: 'x', endpoints: ['nope'] }), 'scopes.endpoints', 'scopes.endpoints: unknown endpoint id "nope"; known: '],
    [() => draftKey({ name: 'x', expires: '2029-01-01' }, NOW), 'expires', 'expires: that date has passed'],
    [() => updateKey(base, id, { scopes: { models: ['m'.repeat(300)] } }), 'scopes.models', 'scopes.models: Expected string length less or equal to 256'],
    [() => updateKey(base, id, { metadata: { k: 'v'.repeat(2001) } }), 'metadata', 'metadata: Expected string length'],
    [() => updateKey(base, id, { expires: 'Monday' }), 'expires', 'expires: give an ISO 8601 date']
  ]
  for (const [fn, field, message] of cases) {
    const err = refusal(t, fn)
    t.equal(err.field, field)
    t.ok(err.message.startsWith(message), err.message)
  }
  t.equal(refusal(t, () => draftKey({ name: ' ' })).describe('--name'), '--name is required (1 to 200 characters)')
  t.equal(refusal(t, () => draftKey({ name: 'x', models: [] })).describe('--models'), '--models: give at least one model or glob')
})
