import t from 'tap'
import { ConfigError, readConfig } from '../../../plugins/config/read-config.js'

/* METRICS, METRICS_KEY, METRICS_PORT, METRICS_CLIENT_LABELS and STATUS_PAGE -> options (plugins/config/metrics-env.ts). */

const KEY = 'metrics-key-0123456789abcdef'
const proxy = (env: Record<string, string>) => readConfig(env).proxy
const fails = (env: Record<string, string>) => {
  try {
    readConfig(env)
  } catch (err) {
    if (err instanceof ConfigError) return err.message
  }
  throw new Error('accepted')
}

t.test('off unless METRICS=true; the status page on unless STATUS_PAGE=false', async (t) => {
  t.equal(proxy({}).metrics, undefined)
  t.equal(proxy({}).statusPage, undefined)
  t.equal(proxy({ METRICS: 'false', METRICS_KEY: KEY }).metrics, undefined)
  t.equal(proxy({ STATUS_PAGE: 'false' }).statusPage, false)
  t.equal(proxy({ STATUS_PAGE: 'true' }).statusPage, true)
})

t.test('a key, a port on HOST, per-client labels', async (t) => {
  t.strictSame(proxy({ METRICS: 'true', METRICS_KEY: KEY }).metrics, { enabled: true, key: KEY })
  t.strictSame(proxy({ METRICS: 'true', METRICS_PORT: '9100' }).metrics, { enabled: true, port: 9100, host: '127.0.0.1' })
  t.strictSame(proxy({ METRICS: 'true', METRICS_PORT: '9100', HOST: '0.0.0.0', METRICS_KEY: '', METRICS_CLIENT_LABELS: '50' }).metrics, { enabled: true, port: 9100, host: '0.0.0.0', perClientLabels: 50 })
})

t.test('refused: neither key nor port, a short key, the proxy port; the key is never printed', async (t) => {
  t.match(fails({ METRICS: 'true' }), /METRICS=true needs METRICS_KEY .* or METRICS_PORT/)
  const short = 'short-key'
  const message = fails({ METRICS: 'true', METRICS_KEY: short })
  t.match(message, /^METRICS_KEY: needs 16 to 512 printable ASCII characters$/)
  t.notMatch(message, short)
  t.match(fails({ METRICS: 'true', METRICS_KEY: `${KEY} x` }), /METRICS_KEY/)
  t.match(fails({ METRICS: 'true', METRICS_PORT: '8080' }), /METRICS_PORT: must differ from PORT/)
  t.match(fails({ METRICS: 'true', METRICS_PORT: '9000', PORT: '9000' }), /METRICS_PORT: must differ from PORT/)
  t.match(fails({ METRICS: 'true', METRICS_PORT: '70000' }), /METRICS_PORT/)
})
