#!/usr/bin/env node
import { realpathSync } from 'node:fs'
import { pathToFileURL } from 'node:url'

/*
 * The `oai-reverse-proxy` command: `keys …` manages the keys file (plugins/client-keys/cli.ts); anything
 * else starts the server exactly as `node dist/server.js` does (`npm start` still runs server.js).
 */

/** Resolves with the exit code of a `keys` command, or undefined once the server has started. */
export async function dispatch (argv: readonly string[], env: Record<string, string | undefined>, start?: () => Promise<void>): Promise<number | undefined> {
  if (argv[0] === 'keys') {
    // Loaded only here: starting the server never pays for the CLI, nor the CLI for Fastify.
    const { runKeysCli } = await import('./plugins/client-keys/cli.js')
    return await runKeysCli(argv.slice(1), env, { out: (s) => process.stdout.write(s), err: (s) => process.stderr.write(s) })
  }
  /* c8 ignore next -- the real server: started through the command (a child) in test/plugins/client-keys/client-keys-e2e.test.ts */
  await (start ?? (await import('./server.js')).main)()
  return undefined
}

/* c8 ignore start -- the command itself: run as a child (no coverage hooks) by test/plugins/client-keys/client-keys-e2e.test.ts */
if (process.argv[1] !== undefined && import.meta.url === pathToFileURL(realpathSync(process.argv[1])).href) {
  const code = await dispatch(process.argv.slice(2), process.env)
  if (code !== undefined) process.exitCode = code
}
/* c8 ignore stop */
