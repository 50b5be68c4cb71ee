#!/usr/bin/env node
import { randomBytes } from 'node:crypto'
import { realpathSync } from 'node:fs'
import { pathToFileURL } from 'node:url'
import Fastify, { type FastifyInstance } from 'fastify'
import oaiProxy from './app.js'
import { limitConnections, oaiProxyExpectationHandler, oaiProxyServerOptions } from './lib/server-options.js'
import { ConfigError, readConfig, type LoadedConfig } from './plugins/config/read-config.js'
import { startFakeOpenAI, type FakeOpenAI } from './testing/fake-openai.js'

/*
 * The standalone server: environment -> options -> Fastify -> oaiProxy -> listen. The only file that reads
 * process.env. Without OPENAI_KEY (and outside production) it fronts the built-in fake upstream, loudly.
 */

export interface RunningServer {
  app: FastifyInstance
  url: string
  config: LoadedConfig
  /** The built-in fake upstream, in demo mode. */
  fake?: FakeOpenAI
  /** Stop accepting, let in-flight requests drain for SHUTDOWN_GRACE_MS, then cut the rest. */
  shutdown: () => Promise<void>
}

const DEMO_BANNER = 'DEMO MODE: no OPENAI_KEY is set, so this proxy fronts a built-in FAKE OpenAI upstream. ' +
  'Answers are canned. Set OPENAI_KEY to proxy the real API (NODE_ENV=production refuses to start without it).'

const hops = (n: number) => (_addr: string, i: number): boolean => i < n

export async function startServer (env: Record<string, string | undefined> = process.env): Promise<RunningServer> {
  const config = readConfig(env)
  const { server } = config
  const app = Fastify({
    logger: {
      level: server.logLevel,
      // Belt and braces: our code never logs headers, but a host or a debug session might.
      redact: { paths: ['req.headers.authorization', 'req.headers["x-api-key"]', 'req.headers["api-key"]', 'req.headers.cookie', 'headers.authorization'], censor: '[redacted]' }
    },
    // A hop count becomes proxy-addr's own rule (trust the i nearest hops); Fastify's types omit numbers.
    trustProxy: typeof server.trustProxy === 'number' ? hops(server.trustProxy) : server.trustProxy,
    requestTimeout: server.requestTimeoutMs,
    keepAliveTimeout: server.keepAliveTimeoutMs,
    maxRequestsPerSocket: server.maxRequestsPerSocket,
    // Node checks the header and request timeouts only this often (its default is 30 s, which let
    // trickling sockets live twice as long as the timeout said).
    http: { connectionsCheckingInterval: 1000 },
    ...oaiProxyServerOptions,
    return503OnClosing: true
  })
  // A client must finish sending its headers well within the request timeout (Node's default is 60 s).
  app.server.headersTimeout = Math.min(server.headersTimeoutMs, server.requestTimeoutMs)
  limitConnections(app.server, server, app.log)
  app.server.on('checkExpectation', oaiProxyExpectationHandler)

  let fake: FakeOpenAI | undefined
  let proxy = config.proxy
  if (config.demo) {
    fake = await startFakeOpenAI({ chunkDelayMs: 30 })
    proxy = { ...proxy, upstreamUrl: fake.url, openaiKeys: [`sk-demo-${randomBytes(16).toString('hex')}`], demo: true }
    app.log.warn(DEMO_BANNER)
    process.stderr.write(`\n*** ${DEMO_BANNER} ***\n\n`)
  }
  await app.register(oaiProxy, proxy)

  // A deep accept queue: a burst of 1000 stream openings overflowed Node's default 511 (bench, 1000 SSE).
  const url = await app.listen({ host: server.host, port: server.port, backlog: 4096 })

  let closing: Promise<void> | undefined
  const shutdown = (): Promise<void> => {
    closing ??= (async () => {
      const timer = setTimeout(() => {
        app.log.warn('oai-proxy: shutdown grace period over, closing remaining connections')
        app.server.closeAllConnections()
      }, server.shutdownGraceMs)
      await app.close()
      clearTimeout(timer)
      await fake?.close()
    })()
    return closing
  }
  return { app, url, config, shutdown, ...(fake === undefined ? {} : { fake }) }
}

export async function main (): Promise<void> {
  let running: RunningServer
  try {
    running = await startServer()
  } catch (err) {
    const message = err instanceof ConfigError ? err.message : `start-up failed: ${(err as Error).message}`
    process.stderr.write(`oai-reverse-proxy: ${message}\n`)
    process.exit(1)
  }
  for (const signal of ['SIGTERM', 'SIGINT'] as const) {
    process.once(signal, () => {
      running.app.log.info({ signal }, 'oai-proxy: shutting down')
      running.shutdown().then(() => process.exit(0), () => process.exit(1))
    })
  }
}

// Run when executed directly, including through npm's bin symlink (hence realpath).
if (process.argv[1] !== undefined && import.meta.url === pathToFileURL(realpathSync(process.argv[1])).href) {
  // main() never rejects: a start-up failure is reported and exits inside it.
  await main()
}
