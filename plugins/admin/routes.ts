import type { FastifyPluginAsync, FastifyRequest } from 'fastify'
import { proxyError } from '../../errors.js'
import { addKey, draftKey, KeyInputError, KeyNotFoundError, keyView, removeKey, rotateKey, setDisabled, updateKey, type KeyRecordChange } from '../client-keys/operations.js'
import { KeysFileError } from '../client-keys/records.js'
import type { OaiProxyClientKeys } from '../client-keys/store.js'
import type { ClientKeyRecord } from '../client-keys/schema.js'
import { CreateKeyBodySchema, DeletedKeySchema, KeyIdParamsSchema, KeyListSchema, KeyUsageSchema, KeyViewSchema, KeyWithSecretSchema, UpdateKeyBodySchema, type CreateKeyBody, type KeyIdParams, type UpdateKeyBody } from './schema.js'

export interface AdminRoutesOptions {
  /** The client key records; undefined when the proxy has none configured (every key route answers 400). */
  keys: OaiProxyClientKeys | undefined
}

/** The operations' and the store's errors, as the catalogue's answers. */
export function answer (err: unknown): unknown {
  if (err instanceof KeyInputError) return proxyError('INVALID_BODY', [err.message], { param: err.field })
  if (err instanceof KeyNotFoundError) return proxyError('ADMIN_KEY_NOT_FOUND', [err.id])
  if (err instanceof KeysFileError) return proxyError('ADMIN_STORE_FAILED', [err.message])
  return err
}

/**
 * The key routes (docs/admin-api.md). Every change goes through the store's atomic read-change-write, so
 * when a route answers, this proxy's index already holds the change (a disabled key is refused on its next
 * request). Each change is logged with who, what, which key and which fields: never a value.
 */
const adminRoutes: FastifyPluginAsync<AdminRoutesOptions> = async (app, opts) => {
  const store = (): OaiProxyClientKeys => {
    if (opts.keys === undefined) throw proxyError('ADMIN_NO_KEYS_STORE')
    return opts.keys
  }
  const read = async (): Promise<ClientKeyRecord[]> => {
    try {
      return await store().list()
    } catch (err) {
      throw answer(err)
    }
  }
  const change = async <T>(fn: (records: ClientKeyRecord[]) => KeyRecordChange<T>): Promise<T> => {
    const keys = store()
    try {
      return await keys.update(fn)
    } catch (err) {
      throw answer(err)
    }
  }
  const find = async (id: string): Promise<ClientKeyRecord> => {
    const found = (await read()).find((r) => r.id === id)
    if (found === undefined) throw proxyError('ADMIN_KEY_NOT_FOUND', [id])
    return found
  }
  const logChange = (request: FastifyRequest, action: string, key: string, fields: string[]): void => {
    request.log.info({ actor: 'admin', action, key, fields }, 'oai-proxy: admin change')
  }
  const byId = { params: KeyIdParamsSchema }

  app.post<{ Body: CreateKeyBody }>('/keys', { schema: { body: CreateKeyBodySchema, response: { 201: KeyWithSecretSchema } } }, async (request, reply) => {
    store()
    const { name, scopes, expires, limits, metadata } = request.body
    let draft
    try {
      draft = draftKey({ name, models: scopes?.models, endpoints: scopes?.endpoints, expires, limits, metadata })
    } catch (err) {
      throw answer(err)
    }
    const { record, secret } = await change((records) => addKey(records, draft))
    logChange(request, 'create', record.id, Object.keys(request.body))
    return reply.code(201).send({ ...keyView(record), secret })
  })

  app.get('/keys', { schema: { response: { 200: KeyListSchema } } }, async () => ({ object: 'list', data: (await read()).map(keyView) }))

  app.get<{ Params: KeyIdParams }>('/keys/:id', { schema: { ...byId, response: { 200: KeyViewSchema } } }, async (request) => keyView(await find(request.params.id)))

  app.patch<{ Params: KeyIdParams, Body: UpdateKeyBody }>('/keys/:id', { schema: { ...byId, body: UpdateKeyBodySchema, response: { 200: KeyViewSchema } } }, async (request) => {
    const { record, changed } = await change((records) => updateKey(records, request.params.id, request.body))
    logChange(request, 'update', record.id, changed)
    return keyView(record)
  })

  for (const [action, disabled] of [['disable', true], ['enable', false]] as const) {
    app.post<{ Params: KeyIdParams }>(`/keys/:id/${action}`, { schema: { ...byId, response: { 200: KeyViewSchema } } }, async (request) => {
      const { record } = await change((records) => setDisabled(records, request.params.id, disabled))
      logChange(request, action, record.id, ['disabled'])
      return keyView(record)
    })
  }

  app.post<{ Params: KeyIdParams }>('/keys/:id/rotate', { schema: { ...byId, response: { 200: KeyWithSecretSchema } } }, async (request) => {
    const { record, secret } = await change((records) => rotateKey(records, request.params.id))
    logChange(request, 'rotate', record.id, ['hash', 'prefix'])
    return { ...keyView(record), secret }
  })

  app.delete<{ Params: KeyIdParams }>('/keys/:id', { schema: { ...byId, response: { 200: DeletedKeySchema } } }, async (request) => {
    const { record } = await change((records) => removeKey(records, request.params.id))
    logChange(request, 'delete', record.id, [])
    return { id: record.id, deleted: true }
  })

  app.get<{ Params: KeyIdParams }>('/keys/:id/usage', { schema: { ...byId, response: { 200: KeyUsageSchema } } }, async (request) => {
    const record = await find(request.params.id)
    const { tokensPerDay, tokensPerMonth, requestsPerDay } = record.limits ?? {}
    // The quota account of a client key is its record id (plugins/auth/index.ts).
    const usage = await app.oaiProxyLimits.store.quotaUsage(record.id, Date.now())
    return { id: record.id, quotas: { tokensPerDay, tokensPerMonth, requestsPerDay }, usage }
  })
}

export default adminRoutes
