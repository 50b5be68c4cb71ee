import t from 'tap'
import { compileOrigins } from '../../lib/origins.js'
import { ConfigError, readConfig } from '../../plugins/config/read-config.js'
import { canaryKey } from '../helper.js'

t.test('exact origins are normalised once and then matched byte for byte', async (t) => {
  const allowed = compileOrigins(['HTTPS://App.Example.com:443/', 'http://127.0.0.1:5173', 'http://[::1]:3000', 'https://bücher.example'])
  for (const origin of ['https://app.example.com', 'http://127.0.0.1:5173', 'http://[::1]:3000', 'https://xn--bcher-kva.example']) {
    t.equal(allowed(origin), true, origin)
  }
  for (const origin of ['https://App.Example.com', 'https://app.example.com:443', 'https://app.example.com/', 'http://app.example.com',
    'http://127.0.0.1:5174', 'http://localhost:5173', 'https://app.example.com.', ' https://app.example.com', 'null', '', undefined]) {
    t.equal(allowed(origin), false, String(origin))
  }
})

t.test('subdomain patterns are anchored at both ends and keep scheme and port', async (t) => {
  const allowed = compileOrigins(['https://*.example.com', '*.preview.example.org', 'http://*.dev.example.net:8080'])
  const yes = ['https://a.example.com', 'https://a.b.example.com', 'https://x-1.example.com', 'https://a.preview.example.org', 'http://a.dev.example.net:8080']
  const no = [
    'https://example.com', 'https://evil-example.com', 'https://example.com.evil.net', 'https://a.example.com.evil.net',
    'https://aexample.com', 'http://a.example.com', 'https://a.example.com:8443', 'https://-a.example.com', 'https://a_b.example.com',
    'https://A.example.com', 'https://.example.com', 'https://a..example.com', 'http://a.preview.example.org', 'https://a.dev.example.net:8080',
    'http://a.dev.example.net', 'https://a.example.com/', 'https://a.example.com/x', `https://${'a'.repeat(64)}.example.com`, 'null'
  ]
  for (const origin of yes) t.equal(allowed(origin), true, origin)
  for (const origin of no) t.equal(allowed(origin), false, origin)
})

t.test('malformed entries are refused with the reason', async (t) => {
  const cases: Array<[string, RegExp]> = [
    ['*', /any origin/],
    ['null', /not an origin/],
    ['https://*.com', /at least two labels/],
    ['*.com', /at least two labels/],
    ['https://app-*.example.com', /whole first label/],
    ['https://*.*.example.com', /whole first label/],
    ['https://a.*.example.com', /whole first label/],
    ['https://example.com/path', /path, query/],
    ['https://example.com?x=1', /path, query/],
    ['https://example.com#x', /path, query/],
    ['https://user:pw@example.com', /path, query/],
    ['ftp://example.com', /only http and https/],
    ['chrome-extension://abc', /only http and https/],
    ['https://exa mple.com', /spaces/],
    ['https://', /not a valid origin/],
    ['https://*.1.2.3', /not a valid origin|two labels/]
  ]
  for (const [entry, reason] of cases) t.throws(() => compileOrigins([entry]), reason, entry)
})

t.test('CORS_ORIGINS becomes cors.origins; a bad entry stops start-up naming the variable', async (t) => {
  const c = readConfig({ OPENAI_KEY: canaryKey(), CORS_ORIGINS: 'https://app.example.com, https://*.example.org' })
  t.strictSame(c.proxy.cors, { origins: ['https://app.example.com', 'https://*.example.org'] })
  t.equal(readConfig({ OPENAI_KEY: canaryKey() }).proxy.cors, undefined, 'unset: no CORS')
  t.throws(() => readConfig({ OPENAI_KEY: canaryKey(), CORS_ORIGINS: 'https://app.example.com,https://*.com' }), new ConfigError('CORS_ORIGINS: "https://*.com": a pattern needs a domain with at least two labels after "*." (https://*.example.com, not https://*.com)'))
  t.throws(() => readConfig({ OPENAI_KEY: canaryKey(), CORS_ORIGINS: '*' }), /^CORS_ORIGINS: /)
})
