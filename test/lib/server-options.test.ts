import Fastify from 'fastify'
import t from 'tap'
import { oaiProxyServerOptions } from '../../lib/server-options.js'

t.test('a framework error that is not a client error is still a 400 envelope, never an echo or a 5xx shape', async (t) => {
  // A host's async route constraint whose lookup fails: Fastify reports FST_ERR_ASYNC_CONSTRAINT (500).
  // (find-my-way's types describe only synchronous strategies, hence the cast below.)
  const failingLookup = {
    name: 'tenant',
    storage () {
      const routes = new Map()
      return { get: (k: string) => routes.get(k) ?? null, set: (k: string, v: unknown) => { routes.set(k, v) } }
    },
    deriveConstraint (_req: unknown, _ctx: unknown, done: (err: Error | null, value?: string) => void) { done(new Error('tenant lookup failed')) },
    validate () {},
    mustMatchWhenDerived: true
  }
  const app = Fastify({ ...oaiProxyServerOptions, routerOptions: { ...oaiProxyServerOptions.routerOptions, constraints: { tenant: failingLookup as never } } })
  t.teardown(() => app.close())
  app.get('/tenant-only', { constraints: { tenant: 'acme' } }, async () => ({ ok: true }))
  const res = await app.inject({ method: 'GET', url: '/tenant-only?echo=<script>' })
  t.equal(res.statusCode, 400)
  t.match(res.headers['content-type'], /^application\/json/)
  t.strictSame(res.json(), { error: { message: 'The request URL is malformed.', type: 'invalid_request_error', param: null, code: 'invalid_url' } })
})
