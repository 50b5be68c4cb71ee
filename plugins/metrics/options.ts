import { Type, type Static } from '@sinclair/typebox'

/** The `metrics` option of the suite (METRICS, METRICS_KEY, METRICS_PORT; docs/metrics.md). */
export const MetricsOptionsSchema = Type.Object({
  /** Serve Prometheus metrics. Default false. */
  enabled: Type.Optional(Type.Boolean()),
  /** METRICS_KEY: a Bearer key of its own for `/metrics` (at least 16 characters, none of the proxy keys). */
  key: Type.Optional(Type.String({ minLength: 16, maxLength: 512, pattern: '^[\\x21-\\x7e]+$' })),
  /** METRICS_PORT: serve `/metrics` on a listener of its own instead of the proxy's port (0: any free port). */
  port: Type.Optional(Type.Integer({ minimum: 0, maximum: 65535 })),
  /** The address that listener binds. Default 127.0.0.1 (the server passes HOST). */
  host: Type.Optional(Type.String({ minLength: 1, maxLength: 255 })),
  /** Per-client series for up to this many client ids (METRICS_CLIENT_LABELS). Default 0: client classes only. */
  perClientLabels: Type.Optional(Type.Integer({ minimum: 0, maximum: 10_000 }))
}, { additionalProperties: false })

export type MetricsOptions = Static<typeof MetricsOptionsSchema>
