#!/usr/bin/env node
/* c8 ignore start -- a CI script .ci/run runs on its own; test/deploy.test.ts runs only its --plan (tap's process tracking then counts this file) */
/*
 * The Dockerfile's runtime stage, run on the host the way the image runs it, for CI machines without a
 * container engine. It reads the Dockerfile itself (so the two cannot drift apart) and refuses any
 * instruction it does not know how to reproduce:
 *
 *   build stage   the build context (the working tree less .dockerignore) copied to a temp dir, the
 *                 repository's node_modules standing in for `RUN npm ci` (same lockfile), then the
 *                 stage's other RUN lines verbatim (`npm run build && rm … && find …`);
 *   runtime stage a temp root with WORKDIR inside it; COPY from the context and from the build stage as
 *                 written; `npm ci --omit=dev --ignore-scripts` for real (production dependencies only,
 *                 checked: no dev package installed); `mkdir`/`chown` mapped into the temp root;
 *   run           the image's ENV (NODE_ENV=production included), a fake upstream and a client key made
 *                 with the CLI in /data as the runtime user, the server started as uid/gid 1000 (the
 *                 image's `node` user, and the uid Hugging Face Spaces run containers as) with `setpriv`,
 *                 the HEALTHCHECK command run verbatim as that user until it passes (within its start
 *                 period), a chat request (JSON and SSE) through it, then SIGTERM and a clean exit.
 *
 * Usage: node .ci/runtime-stage.mjs          (as root; RUNTIME_NODE=/path/to/node picks the Node binary
 *                                              that runs the server, CLI and healthcheck: the image's is 22)
 *        node .ci/runtime-stage.mjs --plan   (print the parsed stages as JSON; no root needed)
 * KEEP_RUNTIME_STAGE=1 keeps the temp dirs. Exits non-zero, naming the step, when anything fails.
 */
import { spawn, spawnSync } from 'node:child_process'
import { chmodSync, chownSync, cpSync, existsSync, lstatSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, symlinkSync } from 'node:fs'
import { createServer } from 'node:net'
import { tmpdir } from 'node:os'
import { dirname, join, relative, resolve } from 'node:path'
import { fileURLToPath, pathToFileURL } from 'node:url'

import { GID, StageError, UID, USERS, dockerignore, fail, parseDockerfile } from './dockerfile.mjs'

const REPO = resolve(dirname(fileURLToPath(import.meta.url)), '..')

const log = (msg) => process.stdout.write(`runtime-stage: ${msg}\n`)

function copyContext (to) {
  const ignored = dockerignore(existsSync(join(REPO, '.dockerignore')) ? readFileSync(join(REPO, '.dockerignore'), 'utf8') : '')
  const walk = (rel) => {
    for (const name of readdirSync(join(REPO, rel))) {
      const path = rel === '' ? name : `${rel}/${name}`
      if (ignored(path)) continue
      const st = lstatSync(join(REPO, path))
      if (st.isDirectory()) walk(path)
      else {
        mkdirSync(dirname(join(to, path)), { recursive: true })
        cpSync(join(REPO, path), join(to, path))
      }
    }
  }
  walk('')
}

// ---- Reproduction ------------------------------------------------------------------------------------

function sh (command, cwd, what, opts = {}) {
  const r = spawnSync('sh', ['-c', command], { cwd, stdio: opts.quiet === true ? 'pipe' : 'inherit', env: opts.env ?? process.env, encoding: 'utf8' })
  if (r.status !== 0) fail(`${what}: \`${command}\` exited ${r.status ?? r.signal}${opts.quiet === true ? `\n${r.stdout}${r.stderr}` : ''}`)
  return r
}

/** The build stage: the context copied, node_modules linked for `npm ci`, every other RUN verbatim. */
function reproduceBuild (stage, root) {
  for (const step of stage.steps) {
    if (step.op === 'WORKDIR') mkdirSync(join(root, step.dir), { recursive: true })
    else if (step.op === 'COPY') {
      if (step.from !== undefined) fail(`build stage: COPY --from=${step.from} is not reproduced`)
      const dest = join(root, step.workdir, step.dest)
      if (step.sources.length === 1 && step.sources[0] === '.') copyContext(dest)
      else for (const src of step.sources) cpSync(join(REPO, src), join(dest, src))
    } else if (step.command === 'npm ci') {
      if (!existsSync(join(REPO, 'node_modules'))) fail('build stage: run `npm ci` in the repository first (its node_modules stand in for the stage\'s)')
      symlinkSync(join(REPO, 'node_modules'), join(root, step.workdir, 'node_modules'))
    } else {
      if (/(^|[\s=])\//.test(step.command)) fail(`build stage: RUN with an absolute path is not reproduced on the host: ${step.command}`)
      log(`build stage: RUN ${step.command}`)
      sh(step.command, join(root, step.workdir), 'build stage', { env: { ...process.env, ...stage.env } })
    }
  }
}

/** One `a && b && c` RUN line of the runtime stage, part by part, mapped into the temp root. */
function reproduceRuntimeRun (command, root, workdir, bin) {
  for (const part of command.split('&&').map((s) => s.trim())) {
    let m
    if (part === 'npm ci --omit=dev --ignore-scripts') {
      log(`runtime stage: RUN ${part}`)
      // With the runtime's node first on PATH, npm itself runs on it (the image's npm is the one its Node bundles).
      sh(`${part} --no-audit --no-fund`, join(root, workdir), 'runtime stage', { env: { ...process.env, PATH: `${bin}:${process.env.PATH}` } })
    } else if (part === 'npm cache clean --force') {
      // An image layer's cache; on the host it would empty the machine's npm cache for nothing.
    } else if ((m = /^mkdir -p ((?:\/\S+ ?)+)$/.exec(part)) !== null) {
      for (const dir of m[1].trim().split(' ')) mkdirSync(join(root, dir), { recursive: true, mode: 0o755 })
    } else if ((m = /^chown (\w+):(\w+) ((?:\/\S+ ?)+)$/.exec(part)) !== null) {
      const user = USERS[m[1]]
      if (user === undefined || USERS[m[2]] === undefined) fail(`runtime stage: chown to an unknown user: ${part}`)
      for (const path of m[3].trim().split(' ')) chownSync(join(root, path), user.uid, user.gid)
    } else {
      fail(`runtime stage: RUN \`${part}\` is not reproduced by .ci/runtime-stage.mjs: teach it`)
    }
  }
}

function reproduceRuntime (runtime, roots) {
  const root = roots.runtime
  for (const step of runtime.steps) {
    if (step.op === 'WORKDIR') mkdirSync(join(root, step.dir), { recursive: true, mode: 0o755 })
    else if (step.op === 'RUN') reproduceRuntimeRun(step.command, root, step.workdir, roots.bin)
    else {
      const base = step.from === undefined ? REPO : roots[step.from] ?? fail(`COPY --from=${step.from}: no such stage`)
      const dest = join(root, step.workdir, step.dest)
      for (const src of step.sources) {
        const from = step.from === undefined ? join(REPO, src) : join(base, src)
        if (!existsSync(from)) fail(`COPY ${src}: not found (${from})`)
        const target = step.dest.endsWith('/') || step.sources.length > 1 ? join(dest, src.split('/').at(-1)) : dest
        mkdirSync(dirname(target), { recursive: true })
        cpSync(from, target, { recursive: true, dereference: true })
      }
      log(`runtime stage: COPY ${step.from === undefined ? '' : `--from=${step.from} `}${step.sources.join(' ')} ${step.dest}`)
    }
  }
}

// ---- Running it --------------------------------------------------------------------------------------

const freePort = () => new Promise((resolve, reject) => {
  const s = createServer().listen(0, '127.0.0.1', () => {
    const { port } = s.address()
    s.close(() => resolve(port))
  }).on('error', reject)
})

/** Found on the orchestrator's PATH: the runtime user's PATH is the image's. */
const which = (cmd) => (process.env.PATH ?? '').split(':').map((d) => join(d, cmd)).find((p) => existsSync(p)) ?? fail(`${cmd} not found on PATH (util-linux)`)
let setpriv
const asUser = (argv) => {
  setpriv ??= which('setpriv')
  return [setpriv, `--reuid=${UID}`, `--regid=${GID}`, '--clear-groups', '--', ...argv]
}

function runAsUser (argv, env, cwd, timeoutMs) {
  const [cmd, ...args] = asUser(argv)
  return spawnSync(cmd, args, { env, cwd, encoding: 'utf8', timeout: timeoutMs })
}

async function exercise (runtime, roots) {
  const root = roots.runtime
  const app = join(root, runtime.workdir)
  const { node, bin } = roots
  for (const dir of [roots.base, root]) chmodSync(dir, 0o755)
  const version = runAsUser(['node', '--version'], { PATH: bin }, '/', 10_000)
  if (version.status !== 0) fail(`uid ${UID} cannot run ${node} (a binary under a private home?): ${version.stderr ?? version.error}`)

  // Production dependencies only: npm marks every dev-only package in the hidden lockfile it writes.
  const hidden = JSON.parse(readFileSync(join(app, 'node_modules', '.package-lock.json'), 'utf8'))
  const dev = Object.entries(hidden.packages ?? {}).filter(([, p]) => p.dev === true).map(([k]) => k)
  if (dev.length > 0) fail(`dev dependencies in the runtime stage: ${dev.slice(0, 5).join(', ')}`)
  for (const name of Object.keys(JSON.parse(readFileSync(join(REPO, 'package.json'), 'utf8')).devDependencies ?? {})) {
    // A devDependency that a production package also needs (@types/node under @types/ws) is listed, not dev:
    // the check above judges it. Installed and not listed at all means it came from somewhere npm did not put it.
    if (existsSync(join(app, 'node_modules', name)) && hidden.packages[`node_modules/${name}`] === undefined) fail(`dev dependency ${name} installed in the runtime stage`)
  }
  log(`runtime stage: ${Object.keys(hidden.packages ?? {}).length} production packages, no dev package`)

  const { startFakeOpenAI } = await import(pathToFileURL(join(roots.build, 'app', 'dist', 'testing', 'fake-openai.js')).href)
  const upstreamKey = `sk-ci-runtime-${process.pid}`
  const fake = await startFakeOpenAI({ validKeys: [upstreamKey] })
  const port = await freePort()
  const env = {
    PATH: `${bin}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin`,
    HOME: '/home/node',
    ...runtime.env,
    PORT: String(port),
    OPENAI_KEY: upstreamKey,
    UPSTREAM_URL: fake.url,
    KEYS_FILE: join(root, 'data', 'keys.jsonl'),
    LOG_LEVEL: 'warn'
  }
  let server
  try {
    // A client key made with the CLI as the runtime user: /data must be writable by it (the image chowns it).
    const made = runAsUser(['node', 'dist/cli.js', 'keys', 'create', '--name', 'ci-runtime-stage', '--json'], env, app, 20_000)
    if (made.status !== 0) fail(`keys create as uid ${UID} in ${env.KEYS_FILE} exited ${made.status}: ${made.stderr}`)
    const clientKey = JSON.parse(made.stdout).secret
    log(`keys create as uid ${UID}: ok (${relative(root, env.KEYS_FILE)})`)

    const [cmd, ...args] = asUser(runtime.cmd)
    server = spawn(cmd, args, { env, cwd: app, stdio: ['ignore', 'inherit', 'inherit'] })
    const running = server
    // A CI timeout (SIGTERM to this script) must not leave the server behind.
    for (const signal of ['SIGTERM', 'SIGINT']) process.once(signal, () => { running.kill('SIGKILL'); process.exit(1) })
    const exited = new Promise((resolve) => server.once('exit', (code, signal) => resolve({ code, signal })))
    log(`CMD ${JSON.stringify(runtime.cmd)} as uid ${UID}, pid ${server.pid}, node ${version.stdout.trim()}, NODE_ENV=${env.NODE_ENV}, PORT=${port}`)

    // The HEALTHCHECK, verbatim, as the runtime user: within the start period it may fail; then it must pass.
    const hc = runtime.healthcheck
    const deadline = Date.now() + (hc.startPeriod + hc.interval) * 1000
    let last
    for (;;) {
      const t0 = Date.now()
      last = runAsUser(hc.argv, env, app, hc.timeout * 1000)
      if (last.status === 0) break
      if (Date.now() > deadline) fail(`HEALTHCHECK did not pass within ${hc.startPeriod + hc.interval} s (last exit ${last.status ?? last.signal}) ${last.stderr}`)
      await new Promise((resolve) => setTimeout(resolve, Math.max(0, 500 - (Date.now() - t0))))
    }
    log(`HEALTHCHECK ${JSON.stringify(hc.argv)} as uid ${UID}: exit 0`)

    const status = readFileSync(`/proc/${server.pid}/status`, 'utf8')
    if (!new RegExp(`^Uid:\\s+${UID}\\s+${UID}\\s+${UID}\\s+${UID}$`, 'm').test(status)) fail(`the server does not run as uid ${UID}: ${/^Uid:.*$/m.exec(status)?.[0]}`)
    const touch = runAsUser(['sh', '-c', `: > ${join(app, 'written-by-runtime-user')}`], env, app, 5000)
    if (touch.status === 0) fail(`${runtime.workdir} is writable by uid ${UID}; the image keeps it root-owned`)
    log(`server runs as uid ${UID}; ${runtime.workdir} is read-only to it`)

    const base = `http://127.0.0.1:${port}`
    const chat = (body, key) => fetch(`${base}/v1/chat/completions`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', ...(key === undefined ? {} : { authorization: `Bearer ${key}` }) },
      body: JSON.stringify({ model: 'gpt-4o-mini', messages: [{ role: 'user', content: 'Hello from CI' }], ...body }),
      signal: AbortSignal.timeout(15_000)
    })
    const anonymous = await chat({})
    if (anonymous.status !== 401) fail(`a request without a key got ${anonymous.status}, expected 401`)
    await anonymous.arrayBuffer()
    const whole = await chat({}, clientKey)
    const json = await whole.json()
    if (whole.status !== 200 || typeof json.choices?.[0]?.message?.content !== 'string') fail(`chat completion: ${whole.status} ${JSON.stringify(json).slice(0, 300)}`)
    const streamed = await chat({ stream: true }, clientKey)
    const sse = await streamed.text()
    if (streamed.status !== 200 || !sse.trimEnd().endsWith('data: [DONE]')) fail(`streamed chat completion: ${streamed.status} ${sse.slice(-200)}`)
    const upstreamCalls = fake.requests.filter((r) => r.url === '/v1/chat/completions')
    if (upstreamCalls.length !== 2 || upstreamCalls.some((r) => r.headers.authorization !== `Bearer ${upstreamKey}`)) fail('the upstream did not receive exactly two chat calls carrying the configured OPENAI_KEY')
    log('chat completion through it: 401 without a key, 200 JSON and 200 SSE ending in [DONE] with the client key, upstream called with OPENAI_KEY')

    // docker stop: SIGTERM to the CMD's process (PID 1 in the image); the server drains and exits 0.
    process.kill(server.pid, 'SIGTERM')
    const end = await Promise.race([exited, new Promise((resolve) => setTimeout(() => resolve(undefined), 15_000))])
    if (end === undefined) fail('the server did not exit within 15 s of SIGTERM')
    if (end.code !== 0) fail(`the server exited with ${end.code ?? end.signal} after SIGTERM, expected 0`)
    server = undefined
    log('SIGTERM: exit 0')
  } finally {
    if (server !== undefined && server.exitCode === null) server.kill('SIGKILL')
    await fake.close()
  }
}

async function main () {
  const dockerfile = readFileSync(join(REPO, 'Dockerfile'), 'utf8')
  const { stages, runtime } = parseDockerfile(dockerfile)
  if (process.argv.includes('--plan')) {
    process.stdout.write(JSON.stringify({ stages }, null, 2) + '\n')
    return
  }
  if (process.getuid?.() !== 0) fail('run as root: the server is started as uid 1000 with setpriv')
  const base = mkdtempSync(join(tmpdir(), 'oai-runtime-stage-'))
  // The image resolves `node` on its PATH; here that is RUNTIME_NODE, so HEALTHCHECK and CMD run verbatim.
  const node = process.env.RUNTIME_NODE ?? process.execPath
  const bin = join(base, 'usr-local-bin')
  mkdirSync(bin, { mode: 0o755 })
  symlinkSync(node, join(bin, 'node'))
  const roots = { base, bin, node }
  try {
    for (const stage of stages) {
      roots[stage.name] = join(base, stage.name)
      mkdirSync(roots[stage.name], { recursive: true })
      // COPY --from=<stage> /app/dist reads the stage's file system: roots[name] stands for its /.
      if (stage === runtime) reproduceRuntime(stage, roots)
      else reproduceBuild(stage, roots[stage.name])
    }
    await exercise(runtime, roots)
    log('ok')
  } finally {
    if (process.env.KEEP_RUNTIME_STAGE === '1') log(`kept ${base}`)
    else rmSync(base, { recursive: true, force: true })
  }
}

if (process.argv[1] !== undefined && resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  main().catch((err) => {
    process.stderr.write(`runtime-stage: FAILED: ${err instanceof StageError ? err.message : err.stack}\n`)
    process.exit(1)
  })
}
/* c8 ignore stop */
