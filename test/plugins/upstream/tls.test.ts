import { execFileSync } from 'node:child_process'
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import t from 'tap'
import { chatBody, proxyTest, type Harness } from '../../helper.js'

/** A throwaway test CA and two leaf certificates it signed: one for 127.0.0.1, one for another host. */
function makeCerts () {
  const dir = mkdtempSync(join(tmpdir(), 'oai-proxy-tls-'))
  const run = (...args: string[]) => execFileSync('openssl', args, { cwd: dir, stdio: 'pipe' })
  run('req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-keyout', 'ca.key', '-out', 'ca.pem', '-days', '2', '-subj', '/CN=oai-proxy test CA')
  const leaf = (name: string, san: string) => {
    writeFileSync(join(dir, `${name}.ext`), `subjectAltName=${san}\n`)
    run('req', '-newkey', 'rsa:2048', '-nodes', '-keyout', `${name}.key`, '-out', `${name}.csr`, '-subj', `/CN=${name}`)
    run('x509', '-req', '-in', `${name}.csr`, '-CA', 'ca.pem', '-CAkey', 'ca.key', '-CAcreateserial', '-out', `${name}.pem`, '-days', '2', '-extfile', `${name}.ext`)
    return { key: readFileSync(join(dir, `${name}.key`), 'utf8'), cert: readFileSync(join(dir, `${name}.pem`), 'utf8') }
  }
  const certs = { ca: readFileSync(join(dir, 'ca.pem'), 'utf8'), loopback: leaf('loopback', 'IP:127.0.0.1'), other: leaf('other', 'DNS:other.example') }
  rmSync(dir, { recursive: true, force: true })
  return certs
}

const certs = makeCerts()
const post = (h: Harness) =>
  h.app.inject({ method: 'POST', url: '/v1/chat/completions', headers: h.auth, payload: chatBody() })

proxyTest(t, 'an upstream with a certificate we do not trust is refused before the request is sent', { fake: { tls: certs.loopback } }, async (h, t) => {
  const res = await post(h)
  t.equal(res.statusCode, 502)
  t.equal(res.json().error.code, 'upstream_unreachable')
  t.equal(h.upstream.requests.length, 0, 'the key never left the process')
})

proxyTest(t, 'trusting the upstream CA explicitly makes it work', { fake: { tls: certs.loopback }, proxy: { upstreamCa: certs.ca } }, async (h, t) => {
  const res = await post(h)
  t.equal(res.statusCode, 200)
  t.equal(h.upstream.requests.length, 1)
})

proxyTest(t, 'a trusted CA does not excuse a certificate for another host', { fake: { tls: certs.other }, proxy: { upstreamCa: certs.ca } }, async (h, t) => {
  const res = await post(h)
  t.equal(res.statusCode, 502)
  t.equal(h.upstream.requests.length, 0)
})
