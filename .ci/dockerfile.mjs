/* c8 ignore start -- CI tooling: .ci/runtime-stage.mjs runs it; test/deploy.test.ts only reads its --plan output */
/*
 * Reading the Dockerfile and .dockerignore as Docker does, as far as this repository uses them: the
 * instructions of each stage (refusing any this tooling cannot reproduce) and the build context's matcher.
 * Split from .ci/runtime-stage.mjs, which reproduces what this reads.
 */

import { join } from 'node:path'

export const UID = 1000
export const GID = 1000
/** The runtime user named in the Dockerfile, and the ids it has in node:*-bookworm-slim. */
export const USERS = { node: { uid: UID, gid: GID } }

export class StageError extends Error {}
export const fail = (msg) => { throw new StageError(msg) }

// ---- Dockerfile parsing ------------------------------------------------------------------------------

/** Logical instructions: comments dropped, `\` continuations joined. */
export function instructions (text) {
  const out = []
  let current = ''
  for (const raw of text.split('\n')) {
    const line = raw.trimEnd()
    if (current === '' && (line.trim() === '' || line.trimStart().startsWith('#'))) continue
    if (current !== '' && line.trimStart().startsWith('#')) continue
    if (line.endsWith('\\')) {
      current += line.slice(0, -1) + ' '
      continue
    }
    current += line
    const m = /^\s*([A-Za-z]+)\s+([\s\S]*)$/.exec(current)
    if (m === null) fail(`cannot read the Dockerfile line: ${current}`)
    out.push({ op: m[1].toUpperCase(), args: m[2].replace(/\s+/g, ' ').trim() })
    current = ''
  }
  return out
}

/** `--name=value` flags in front of an instruction's arguments. */
function flags (args) {
  const found = {}
  let rest = args
  for (let m = /^--([a-z-]+)=(\S+)\s+/.exec(rest); m !== null; m = /^--([a-z-]+)=(\S+)\s+/.exec(rest)) {
    found[m[1]] = m[2]
    rest = rest.slice(m[0].length)
  }
  return { flags: found, rest }
}

function envPairs (args) {
  const pairs = {}
  for (const m of args.matchAll(/([A-Za-z_][A-Za-z0-9_]*)=("[^"]*"|\S*)/g)) pairs[m[1]] = m[2].replace(/^"(.*)"$/, '$1')
  if (Object.keys(pairs).length === 0) fail(`ENV ${args}: only the KEY=value form is supported`)
  return pairs
}

function execForm (what, args) {
  let argv
  try { argv = JSON.parse(args) } catch { argv = undefined }
  if (!Array.isArray(argv) || argv.length === 0 || !argv.every((a) => typeof a === 'string')) fail(`${what} must be in exec form (a JSON array): ${args}`)
  return argv
}

const seconds = (v) => {
  const m = /^(\d+(?:\.\d+)?)(ms|s|m)$/.exec(v ?? '')
  if (m === null) fail(`HEALTHCHECK: cannot read the duration ${v}`)
  return Number(m[1]) * { ms: 0.001, s: 1, m: 60 }[m[2]]
}

/** The stages of the Dockerfile, each as the facts this script reproduces. */
export function parseDockerfile (text) {
  const stages = []
  let stage
  for (const { op, args } of instructions(text)) {
    if (op === 'ARG' && stage === undefined) continue
    if (op === 'FROM') {
      const m = /^(\S+)(?:\s+AS\s+(\S+))?$/i.exec(args)
      if (m === null) fail(`FROM ${args}: unexpected form`)
      stage = { name: m[2] ?? String(stages.length), from: m[1], workdir: '/', env: {}, steps: [], user: 'root', expose: [] }
      stages.push(stage)
      continue
    }
    if (stage === undefined) fail(`${op} before the first FROM`)
    switch (op) {
      case 'WORKDIR':
        stage.workdir = args.startsWith('/') ? args : join(stage.workdir, args)
        stage.steps.push({ op, dir: stage.workdir })
        break
      case 'ENV':
        Object.assign(stage.env, envPairs(args))
        break
      case 'COPY': {
        const { flags: f, rest } = flags(args)
        const unknown = Object.keys(f).filter((k) => k !== 'from')
        if (unknown.length > 0) fail(`COPY --${unknown[0]} is not reproduced by this script`)
        const parts = rest.split(' ')
        if (parts.length < 2 || rest.startsWith('[')) fail(`COPY ${args}: expected sources and a destination`)
        stage.steps.push({ op, from: f.from, sources: parts.slice(0, -1), dest: parts.at(-1), workdir: stage.workdir })
        break
      }
      case 'RUN':
        if (args.startsWith('[')) fail(`RUN in exec form is not reproduced: ${args}`)
        stage.steps.push({ op, command: args, workdir: stage.workdir })
        break
      case 'USER':
        stage.user = args
        break
      case 'EXPOSE':
        stage.expose.push(...args.split(' '))
        break
      case 'HEALTHCHECK': {
        const { flags: f, rest } = flags(args)
        const m = /^CMD\s+(.*)$/.exec(rest)
        if (m === null) fail(`HEALTHCHECK ${args}: expected HEALTHCHECK [options] CMD [...]`)
        stage.healthcheck = {
          argv: execForm('HEALTHCHECK CMD', m[1]),
          interval: seconds(f.interval ?? '30s'),
          timeout: seconds(f.timeout ?? '30s'),
          startPeriod: seconds(f['start-period'] ?? '0s'),
          retries: Number(f.retries ?? 3)
        }
        break
      }
      case 'CMD':
        stage.cmd = execForm('CMD', args)
        break
      default:
        fail(`the Dockerfile instruction ${op} is not reproduced by .ci/runtime-stage.mjs: teach it, or the image and CI drift apart`)
    }
  }
  const runtime = stages.at(-1)
  if (runtime === undefined) fail('no FROM in the Dockerfile')
  if (runtime.cmd === undefined || runtime.healthcheck === undefined) fail('the runtime stage needs a CMD and a HEALTHCHECK')
  if (USERS[runtime.user] === undefined) fail(`USER ${runtime.user}: only ${Object.keys(USERS).join(', ')} is known (with its uid)`)
  return { stages, runtime }
}

// ---- .dockerignore -----------------------------------------------------------------------------------

/** Docker's matching, enough for this repository's file: anchored at the context root, `**`, `*`, `?`, `!`. */
export function dockerignore (text) {
  const rules = text.split('\n').map((l) => l.trim()).filter((l) => l !== '' && !l.startsWith('#')).map((l) => {
    const negate = l.startsWith('!')
    const pattern = (negate ? l.slice(1) : l).replace(/^\/+/, '').replace(/\/+$/, '')
    const source = pattern.split('/').map((seg) => seg === '**'
      ? '.*'
      : seg.replace(/[.+^${}()|[\]\\]/g, '\\$&').replace(/\*/g, '[^/]*').replace(/\?/g, '[^/]')).join('/')
    return { negate, re: new RegExp(`^${source.replace(/^\.\*\//, '(?:.*/)?')}(?:/.*)?$`) }
  })
  return (path) => {
    let excluded = false
    for (const r of rules) if (r.re.test(path)) excluded = !r.negate
    return excluded
  }
}
/* c8 ignore stop */
