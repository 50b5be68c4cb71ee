import type { Env } from './options.js'
import type { MetricsOptions } from '../metrics/options.js'

/**
 * METRICS, METRICS_KEY, METRICS_PORT, METRICS_CLIENT_LABELS and STATUS_PAGE -> options; read only by
 * plugins/config/read-config.ts. Errors name the variable, never its value.
 */
export function metricsFromEnv (env: Env): { metrics?: MetricsOptions, statusPage?: boolean } {
  const out: { metrics?: MetricsOptions, statusPage?: boolean } = env.STATUS_PAGE === undefined ? {} : { statusPage: env.STATUS_PAGE }
  if (env.METRICS !== true) return out
  const key = env.METRICS_KEY === undefined || env.METRICS_KEY === '' ? undefined : env.METRICS_KEY
  if (key !== undefined && !/^[\x21-\x7e]{16,512}$/.test(key)) throw new Error('METRICS_KEY: needs 16 to 512 printable ASCII characters')
  if (key === undefined && env.METRICS_PORT === undefined) throw new Error('METRICS=true needs METRICS_KEY (a Bearer key for /metrics) or METRICS_PORT (a listener of its own)')
  if (env.METRICS_PORT !== undefined && env.METRICS_PORT === (env.PORT ?? 8080)) throw new Error('METRICS_PORT: must differ from PORT')
  out.metrics = {
    enabled: true,
    ...(key === undefined ? {} : { key }),
    ...(env.METRICS_PORT === undefined ? {} : { port: env.METRICS_PORT, host: env.HOST ?? '127.0.0.1' }),
    ...(env.METRICS_CLIENT_LABELS === undefined ? {} : { perClientLabels: env.METRICS_CLIENT_LABELS })
  }
  return out
}
