import { createRequire } from 'node:module'
import t from 'tap'
import { Agent, request } from '../../../plugins/upstream/undici-core.js'

t.test('the pieces loaded on their own are the package\'s own Agent and request', async (t) => {
  const undici = await import('undici')
  t.equal(Agent, undici.Agent, 'Agent')
  // Loading the index copies the API onto Dispatcher.prototype: it must be the file we call.
  const require = createRequire(import.meta.url)
  t.equal((undici.Dispatcher.prototype as unknown as { request: unknown }).request, require('undici/lib/api/api-request.js'), 'request')
  t.type(request, 'function')
})

t.test('the proxy process never loads undici\'s index', async (t) => {
  const { execFileSync } = await import('node:child_process')
  // A fresh process: load the suite the way a host does and list what undici files it required.
  const out = execFileSync(process.execPath, [...process.execArgv, '-e', `
    const Module = require('node:module');
    import('${new URL('../../../app.ts', import.meta.url).pathname.replace(/\\/g, '/')}').then(() => {
      const files = Object.keys(require.cache).filter((f) => f.includes('/node_modules/undici/'));
      process.stdout.write(JSON.stringify(files.map((f) => f.slice(f.indexOf('/node_modules/undici/') + 21))));
    });
  `], { encoding: 'utf8' })
  const files = JSON.parse(out) as string[]
  t.ok(files.includes('lib/dispatcher/agent.js'), 'the Agent is loaded')
  t.notOk(files.includes('index.js'), 'not the index')
  t.notOk(files.some((f) => f.startsWith('lib/web/')), 'nor fetch, WebSocket or their relatives')
})
