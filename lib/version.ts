import { createRequire } from 'node:module'

/*
 * The package's version, read from its own package.json by the package's name (a self-reference, which its
 * `exports` allow), so the same line finds it from the sources, from dist/ and from an installed copy, and
 * never takes a host app's package.json for ours.
 */
export const VERSION = (createRequire(import.meta.url)('oai-reverse-proxy/package.json') as { version: string }).version
