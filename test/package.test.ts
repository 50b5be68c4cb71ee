import { execFile } from 'node:child_process'
import { copyFileSync, cpSync, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { createRequire } from 'node:module'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { promisify } from 'node:util'
import t from 'tap'

/*
 * The library as a user gets it: build into a staging copy (the working tree's dist/ is left alone),
 * `npm pack`, install the tarball into a scratch project next to fastify and typescript, type-check an ESM
 * host (.mts) and a CommonJS host (.cjs, checkJs) with the scratch project's own tsc, then run both and
 * the examples/host-app example, each serving a proxied request against the packaged fake upstream.
 * KEEP_PACK_DIR=1 keeps the scratch directory for debugging.
 */

const run = promisify(execFile)
const root = fileURLToPath(new URL('..', import.meta.url))
const fixtures = fileURLToPath(new URL('./fixtures/package/', import.meta.url))
const version = (name: string): string => (createRequire(join(root, 'package.json'))(`${name}/package.json`) as { version: string }).version
// Children run without tap's loaders and coverage hooks, and without npm's per-script configuration.
const env = Object.fromEntries(Object.entries(process.env).filter(([k]) => !/^(_?TAP|NODE_V8_COVERAGE$|NODE_OPTIONS$|npm_)/i.test(k)))
const sh = (cmd: string, args: string[], cwd: string) => run(cmd, args, { cwd, env, maxBuffer: 16 * 1024 * 1024, timeout: 45_000 })

t.test('npm pack -> install -> tsc -> import from ESM and CommonJS -> serve', { timeout: 90_000 }, async (t) => {
  const work = mkdtempSync(join(tmpdir(), 'oai-proxy-pack-'))
  t.teardown(() => { if (process.env.KEEP_PACK_DIR !== '1') rmSync(work, { recursive: true, force: true }) })

  const stage = join(work, 'stage')
  mkdirSync(stage)
  for (const f of ['package.json', 'README.md', 'LICENSE']) if (existsSync(join(root, f))) copyFileSync(join(root, f), join(stage, f))
  // tsc emits even when it reports errors: record them as a failure, then check the rest anyway.
  const build = await sh(process.execPath, [join(root, 'node_modules/typescript/bin/tsc'), '-p', join(root, 'tsconfig.build.json'), '--outDir', join(stage, 'dist')], root).catch((err: { stdout: string }) => err)
  t.equal(build.stdout, '', 'the library builds without errors')

  const [packed] = JSON.parse((await sh('npm', ['pack', '--json', '--pack-destination', work], stage)).stdout) as Array<{ filename: string, files: Array<{ path: string }> }>
  const files = packed?.files.map((f) => f.path).sort() ?? []
  t.strictSame(files.filter((f) => !/^dist\/.+\.(js|d\.ts)$/.test(f) && !['package.json', 'README.md', 'LICENSE'].includes(f)), [], 'only compiled code, types, README, LICENSE')
  t.strictSame(files.filter((f) => /\.map$|^dist\/(test|bench)\/|\.tsbuildinfo$/.test(f)), [], 'no source maps, tests or benchmarks')
  for (const f of ['README.md', 'LICENSE', 'dist/index.js', 'dist/index.d.ts', 'dist/testing/fake-openai.js', 'dist/testing/fake-openai.d.ts', 'dist/server.js', 'dist/plugins/cors/index.js']) {
    t.ok(files.includes(f), `packs ${f}`)
  }

  const scratch = join(work, 'host')
  cpSync(fixtures, scratch, { recursive: true })
  cpSync(join(root, 'examples/host-app/app.js'), join(scratch, 'example-app.mjs'))
  writeFileSync(join(scratch, 'package.json'), JSON.stringify({
    name: 'scratch-host',
    private: true,
    dependencies: {
      'oai-reverse-proxy': `file:${join(work, packed?.filename ?? '')}`,
      fastify: version('fastify'),
      typescript: version('typescript'),
      '@types/node': version('@types/node')
    }
  }, null, 2))
  await sh('npm', ['install', '--prefer-offline', '--no-audit', '--no-fund', '--ignore-scripts', '--loglevel=error'], scratch)
  const installed = JSON.parse(readFileSync(join(scratch, 'node_modules/oai-reverse-proxy/package.json'), 'utf8')) as { version: string }
  t.equal(installed.version, (JSON.parse(readFileSync(join(root, 'package.json'), 'utf8')) as { version: string }).version)

  const tsc = join(scratch, 'node_modules/typescript/bin/tsc')
  const check = await sh(process.execPath, [tsc, '--noEmit', '-p', '.'], scratch).catch((err: { stdout: string }) => err)
  t.equal(check.stdout, '', 'the ESM and CommonJS hosts type-check against the published types')
  await sh(process.execPath, [tsc, '-p', 'tsconfig.emit.json'], scratch)

  const hosts = [{ label: 'ESM', file: 'out/host.mjs' }, { label: 'CommonJS', file: 'host.cjs' }, { label: 'examples/host-app', file: 'run-example.mjs' }]
  for (const { label, file } of hosts) {
    const { stdout, stderr } = await sh(process.execPath, [file], scratch)
    const result = JSON.parse(stdout.trim().split('\n').at(-1) ?? '{}') as Record<string, unknown>
    t.match(result, { status: 200, content: /You said: from (esm|cjs|the example)/, upstream: 1 }, `${label} host serves a proxied request`)
    t.notMatch(stderr, /Error/, `${label}: nothing on stderr but warnings`)
    if (label === 'ESM') t.match(result, { acao: 'https://app.example.com', seen: ['alice'], refused: 401, code: 'OAI_PROXY_INVALID_KEY' })
    if (label === 'CommonJS') t.match(result, { sameDefault: true, testingLoaded: true })
  }
})
