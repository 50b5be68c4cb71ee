import fc from 'fast-check'
import t from 'tap'
import { chatBody, isAllowlisted, proxyTest, rawRequest } from './helper.js'

/*
 * Threat R19: paths built from allowed segments, admin segments and every trick in the book, with random
 * methods and headers. Invariants: the upstream sees only allowlisted (method, path) pairs (checked by
 * proxyTest after the run and per request here), no 5xx without an injected fault, no crash. The seed is
 * printed so a failure can be replayed with FUZZ_SEED.
 */

const segments = ['v1', 'chat', 'completions', 'responses', 'embeddings', 'moderations', 'models', 'gpt-4o-mini',
  'organization', 'users', 'files', 'admin_api_keys', 'fine_tuning', 'jobs', 'threads', 'runs', 'batches',
  '.', '..', '%2e', '%2e%2e', '%2f', '%2F', '%5c', '\\', ';x', ';', '', '%00', '%c0%ae', 'V1', 'Chat', 'ü', '%',
  'x?y', '#', '%23', '%3f']
const methods = ['GET', 'POST', 'PUT', 'PATCH', 'DELETE', 'HEAD', 'OPTIONS', 'TRACE', 'PROPFIND', 'FOO']
const seed = Number(process.env.FUZZ_SEED ?? Date.now() % 2 ** 31)
const runs = Number(process.env.FUZZ_RUNS ?? 100_000)

const path = fc.array(fc.constantFrom(...segments), { minLength: 0, maxLength: 7 }).chain((parts) =>
  fc.constantFrom('/', '//', '/v1/', '').map((lead) => lead + parts.join('/')))
const headers = fc.dictionary(fc.constantFrom('x-http-method-override', 'x-original-url', 'x-rewrite-url', 'x-forwarded-host', 'openai-beta', 'content-type', 'host'),
  fc.constantFrom('DELETE', '/v1/organization/users', 'evil.example', 'assistants=v2', 'application/json', 'text/plain'))

proxyTest(t, `R19: ${runs} random requests never reach upstream outside the allowlist (seed ${seed})`, {}, async (h, t) => {
  t.comment(`fast-check seed ${seed} (replay with FUZZ_SEED=${seed})`)
  let checked = 0
  await fc.assert(fc.asyncProperty(fc.constantFrom(...methods), path, headers, fc.boolean(), async (method, url, extra, withBody) => {
    const before = h.upstream.requests.length
    let status: number
    try {
      const res = await h.app.inject({ method: method as 'GET', url: url.startsWith('/') ? url : `/${url}`, headers: { ...extra, ...h.auth }, ...(withBody ? { payload: JSON.stringify(chatBody()) } : {}) })
      status = res.statusCode
    } catch {
      return true // light-my-request refuses some URLs outright: nothing was sent anywhere
    }
    checked++
    const sent = h.upstream.requests.slice(before)
    return status < 500 && sent.every(isAllowlisted) && sent.length <= 1
  }), { seed, numRuns: runs })
  // light-my-request refuses malformed URLs (a lone %) itself; the raw-socket run below covers those.
  t.ok(checked > runs * 0.8, `${checked} of ${runs} requests reached the proxy`)
})

proxyTest(t, 'R19 over raw sockets: 500 random request lines through Node\'s parser', { listen: true }, async (h, t) => {
  const port = Number(new URL(h.url).port)
  await fc.assert(fc.asyncProperty(fc.constantFrom(...methods), path, async (method, url) => {
    const before = h.upstream.requests.length
    const target = url.startsWith('/') ? url : `/${url}`
    const raw = await rawRequest(port, `${method} ${target} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer ${h.proxyKey}\r\nConnection: close\r\n\r\n`)
    const status = Number(/^HTTP\/1\.1 (\d{3})/.exec(raw)?.[1] ?? 0)
    return (status === 0 || status < 500) && h.upstream.requests.slice(before).every(isAllowlisted)
  }), { seed, numRuns: 500 })
  t.equal((await h.app.inject({ method: 'GET', url: '/v1/models', headers: h.auth })).statusCode, 200, 'still serving')
})
