import { execFile } from 'node:child_process'
import { existsSync, readFileSync } from 'node:fs'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { promisify } from 'node:util'
import t from 'tap'
import { parse } from 'yaml'
import { readConfig } from '../plugins/config/read-config.js'
import { EnvSchema } from '../plugins/config/options.js'
import { IMAGE_ENV } from '../bench/deployed-env.js'

/*
 * The deploy files, checked without a container engine: compose.yaml parses and every variable it sets is
 * one the server reads, with values the server accepts; the balancer config it mounts exists and names its
 * replicas; the Hugging Face guide's front matter is valid YAML that agrees with the port it sets; and
 * .ci/runtime-stage.mjs reads the Dockerfile's runtime stage as the Dockerfile says it (HEALTHCHECK command,
 * COPY list, user, CMD). `yaml` is tap's own YAML parser (already installed), not a dependency of ours.
 */

const root = fileURLToPath(new URL('..', import.meta.url))
const read = (path: string): string => readFileSync(join(root, path), 'utf8')
const envNames = new Set(Object.keys(EnvSchema.properties))

interface Service { build?: unknown, image?: string, environment?: Record<string, string>, ports?: string[], volumes?: string[], depends_on?: unknown, stop_grace_period?: string }
const compose = parse(read('compose.yaml'), { merge: true }) as { services: Record<string, Service> }
const replicas = ['proxy-a', 'proxy-b']

/** Compose's interpolation with the values the guide exports: `${X:-default}`, `${X:?message}`, `${X}`. */
const sample: Record<string, string> = { ADMIN_KEY: 'a'.repeat(64), PROXY_KEY: 'p'.repeat(48) }
const interpolate = (value: string): string => value.replace(/\$\{([A-Z0-9_]+)(?::([-?])([^}]*))?\}/g, (_m, name: string, kind?: string, rest?: string) =>
  sample[name] ?? (kind === '-' ? rest ?? '' : kind === '?' ? `<${name} required>` : ''))

t.test('compose.yaml: Redis, two replicas built from the Dockerfile, a balancer', async (t) => {
  t.strictSame(Object.keys(compose.services).sort(), ['balancer', 'proxy-a', 'proxy-b', 'redis'])
  for (const name of replicas) {
    const s = compose.services[name] as Service
    t.equal(s.build, '.', `${name} is built from the repository's Dockerfile`)
    t.match(s.depends_on, { redis: { condition: 'service_healthy' } })
    t.equal(s.stop_grace_period, '15s', 'longer than SHUTDOWN_GRACE_MS (10 s)')
    t.match(s.ports, [/^127\.0\.0\.1:\d+:8080$/], 'the image listens on 8080')
  }
  t.match(compose.services.redis?.image, /^redis:/)
  t.match(compose.services.balancer?.image, /^nginx:/)
})

t.test('compose.yaml: every variable is one the server reads, and the environment starts it', async (t) => {
  for (const name of replicas) {
    const env = compose.services[name]?.environment ?? {}
    const unknown = Object.keys(env).filter((k) => !envNames.has(k))
    t.strictSame(unknown, [], `${name}: variables not in EnvSchema (plugins/config/options.ts)`)
    const values = Object.fromEntries(Object.entries(env).map(([k, v]) => [k, interpolate(String(v))]))
    const config = readConfig(values)
    t.equal(config.demo, true, 'keyless by default: demo mode, NODE_ENV=development')
    t.equal(config.proxy.keysStore, 'redis')
    t.equal(config.proxy.redisUrl, 'redis://redis:6379')
    t.equal(config.proxy.rateLimit?.requestsPerWindow, 5)
    t.equal(config.proxy.rateLimit?.onStoreError, 'closed')
    t.equal(config.server.trustProxy, 1)
    t.strictSame(config.proxy.proxyKeys, [sample.PROXY_KEY])
    t.equal(config.proxy.admin?.key, sample.ADMIN_KEY)
    // With a real key it would proxy OpenAI, keyless or not.
    t.equal(readConfig({ ...values, OPENAI_KEY: 'sk-real', NODE_ENV: 'production' }).demo, false)
  }
  const env = compose.services['proxy-a']?.environment ?? {}
  t.match(env.ADMIN_KEY, /^\$\{ADMIN_KEY:\?/, 'no admin key is baked into the file')
  t.match(env.PROXY_KEY, /^\$\{PROXY_KEY:\?/, 'no proxy key is baked into the file')
  t.match(env.OPENAI_KEY, /^\$\{OPENAI_KEY:-\}$/, 'no upstream key is baked into the file')
})

t.test('the balancer config is present, mounted, and round-robins over both replicas', async (t) => {
  const mount = (compose.services.balancer?.volumes ?? []).find((v) => v.endsWith(':/etc/nginx/conf.d/default.conf:ro'))
  t.ok(mount, 'mounted as nginx default.conf, read-only')
  const file = (mount as string).split(':')[0] as string
  t.ok(existsSync(join(root, file)), `${file} exists`)
  const conf = read(file)
  const servers = [...conf.matchAll(/^\s*server\s+([\w.-]+):(\d+)/gm)].map((m) => `${m[1]}:${m[2]}`)
  t.strictSame(servers, replicas.map((r) => `${r}:8080`))
  t.notMatch(conf, /^\s*(least_conn|ip_hash|hash|random)\b/m, 'round-robin: nginx\'s default method')
  t.match(conf, /location \/admin \{\s*return 404;/, 'the admin API is not served through the balancer')
  t.match(conf, /proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;/, 'one hop, as TRUST_PROXY=1 says')
  t.match(conf, /proxy_buffering off;/, 'streams pass as they come')
  t.match(compose.services.balancer?.ports, ['127.0.0.1:8080:8080'])
})

t.test('docs/deploy/huggingface.md: the Space front matter parses and agrees with the port', async (t) => {
  const guide = read('docs/deploy/huggingface.md')
  const block = /```yaml\n(---\n[\s\S]*?\n---)\n```/.exec(guide)
  t.ok(block, 'a ```yaml block holding the README front matter')
  const front = parse((block?.[1] ?? '').replace(/^---\n|\n---$/g, '')) as Record<string, unknown>
  t.match(front, { sdk: 'docker', app_port: 7860, title: String, emoji: String, colorFrom: String, colorTo: String, pinned: Boolean })
  for (const color of ['colorFrom', 'colorTo']) {
    t.ok(['red', 'yellow', 'green', 'blue', 'indigo', 'purple', 'pink', 'gray'].includes(front[color] as string), `${color} is one of the Hub's colours`)
  }
  t.notMatch(block?.[1], /OPENAI_KEY|sk-/, 'no secret in the front matter')
  t.match(guide, /`PORT`\s*\|\s*`7860`/, 'the guide sets PORT to app_port')
  // The Space's variables, as the guide lists them, start the server.
  const config = readConfig({ PORT: '7860', HOST: '0.0.0.0', TRUST_PROXY: '1', NODE_ENV: 'production', OPENAI_KEY: 'sk-space', PROXY_KEY: 'k'.repeat(40) })
  t.equal(config.server.port, 7860)
})

t.test('.ci/runtime-stage.mjs reads the runtime stage as the Dockerfile writes it', async (t) => {
  const dockerfile = read('Dockerfile')
  const runtimeText = dockerfile.slice(dockerfile.search(/^FROM .* AS runtime$/m))
  // Children run without tap's loaders and coverage hooks.
  const env = Object.fromEntries(Object.entries(process.env).filter(([k]) => !/^(_?TAP|NODE_V8_COVERAGE$|NODE_OPTIONS$|npm_)/i.test(k)))
  const { stdout } = await promisify(execFile)(process.execPath, [join(root, '.ci', 'runtime-stage.mjs'), '--plan'], { env, timeout: 20_000 })
  const { stages } = JSON.parse(stdout) as { stages: Array<{ name: string, user: string, cmd: string[], env: Record<string, string>, healthcheck: { argv: string[], startPeriod: number }, steps: Array<{ op: string, from?: string, sources?: string[], dest?: string, command?: string }> }> }
  const runtime = stages.at(-1)
  t.equal(runtime?.name, 'runtime')

  const hcLine = /^HEALTHCHECK [^\n]*\\\n\s*CMD (\[.*\])$/m.exec(runtimeText)
  t.ok(hcLine, 'the Dockerfile has an exec-form HEALTHCHECK')
  t.strictSame(runtime?.healthcheck.argv, JSON.parse(hcLine?.[1] ?? 'null'), 'the same HEALTHCHECK command, verbatim')
  t.strictSame(runtime?.cmd, JSON.parse(/^CMD (\[.*\])$/m.exec(runtimeText)?.[1] ?? 'null'), 'the same CMD')
  t.equal(runtime?.user, 'node', 'the node user: uid 1000 in node:*-bookworm-slim')

  const copies = [...runtimeText.matchAll(/^COPY (.*)$/gm)].map((m) => m[1])
  const planned = (runtime?.steps ?? []).filter((s) => s.op === 'COPY').map((s) => `${s.from === undefined ? '' : `--from=${s.from} `}${(s.sources ?? []).join(' ')} ${s.dest ?? ''}`)
  t.strictSame(planned, copies, 'the same COPY list, in order')
  t.strictSame(planned, ['package.json package-lock.json ./', '--from=build /app/dist ./dist'])
  const runs = (runtime?.steps ?? []).filter((s) => s.op === 'RUN').map((s) => s.command)
  t.ok(runs.includes('npm ci --omit=dev --ignore-scripts && npm cache clean --force'), 'production dependencies only')
  t.match(runtime?.env, { NODE_ENV: 'production', HOST: '0.0.0.0', PORT: '8080' })
  t.strictSame({ MALLOC_MMAP_THRESHOLD_: runtime?.env.MALLOC_MMAP_THRESHOLD_ }, IMAGE_ENV, 'the bench runs its proxies with the image\'s glibc setting')

  t.match(read('.ci/run'), /node \.ci\/runtime-stage\.mjs/, '.ci/run runs it')
})

t.test('.ci/run: the Node 22 file list names test files that exist', async (t) => {
  const list = /^node22_files=\(\n([\s\S]*?)\n\)$/m.exec(read('.ci/run'))?.[1] ?? ''
  const files = list.split('\n').filter((l) => !l.trim().startsWith('#')).join(' ').split(/\s+/).filter((f) => f !== '')
  t.ok(files.length >= 10, `${files.length} files`)
  t.strictSame(files.filter((f) => !/^test\/(?:[a-z0-9-]+\/)*[a-z0-9-]+\.test\.ts$/.test(f) || !existsSync(join(root, f))), [], 'every entry is an existing test file')
  t.ok(files.includes('test/deploy.test.ts') && files.includes('test/protocol-raw.test.ts'))
})
