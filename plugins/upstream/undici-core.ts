import { createRequire } from 'node:module'
import type { Agent as UndiciAgent, Dispatcher } from 'undici'

/*
 * The two pieces of undici the proxy uses, loaded on their own. `import 'undici'` loads all of it (fetch,
 * WebSocket, EventSource, caches, mocks, proxies): ~9 MiB of resident memory and 3.6 MiB of heap in every
 * process, a tenth of an idle proxy, for code it never runs. undici has no `exports` map, so these paths
 * are public files; test/plugins/upstream/undici-core.test.ts checks that they are the very Agent and `request` the
 * package's index exports, so an upgrade that moves them fails loudly.
 *
 * `request` is called on the dispatcher rather than as a method: the index is what copies the API onto
 * Dispatcher.prototype, and a process that never loads it (ours) has no `dispatcher.request`.
 */

const require = createRequire(import.meta.url)

export const Agent = require('undici/lib/dispatcher/agent.js') as typeof UndiciAgent

/**
 * undici's options, with the async iterable body its runtime takes (docs/api/Dispatcher.md lists
 * `Iterable | AsyncIterable` among the body types; its .d.ts leaves them out of `request`'s options).
 */
export type RequestOptions = Omit<Dispatcher.RequestOptions, 'body'> & { body?: Dispatcher.RequestOptions['body'] | AsyncIterable<Buffer> }

const apiRequest = require('undici/lib/api/api-request.js') as (this: Dispatcher, opts: RequestOptions) => Promise<Dispatcher.ResponseData>

/** `dispatcher.request(opts)`, whether or not undici's index was loaded in this process. */
export function request (dispatcher: Dispatcher, opts: RequestOptions): Promise<Dispatcher.ResponseData> {
  return apiRequest.call(dispatcher, opts)
}
