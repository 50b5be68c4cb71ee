import fp from 'fastify-plugin'
import { watch, type FSWatcher } from 'node:fs'
import { readFile, stat } from 'node:fs/promises'
import { basename, dirname, resolve } from 'node:path'
import type { FastifyPluginAsync } from 'fastify'
import { readKeysFile, updateKeysFile } from './file-io.js'
import { buildIndex, KeysFileError, parseKeysFile, type ClientKeyIndex } from './records.js'
import { clientKeysView } from './store.js'

export interface ClientKeyFileOptions {
  /** The JSON Lines file of client key records (`KEYS_FILE`). It must exist: `keys create` makes it. */
  file: string
  /** How often the file's stat is compared, as a fallback for file systems where fs.watch is silent. Default 1000 ms. */
  pollMs?: number
  /** Wait after the first change event before reading, so a burst of events (editors write in steps) is one read. Default 50 ms. */
  debounceMs?: number
  /** Use fs.watch. Default true. */
  watch?: boolean
}

/**
 * The file store: loaded at registration (a missing or corrupt file stops start-up, naming the line), then
 * re-read when it changes. A new index replaces the old one in one assignment, so requests already past
 * auth keep the entry they were admitted with and none is dropped. A file that turns unusable while
 * running is logged and the last good index stays in force.
 */
const clientKeyFile: FastifyPluginAsync<ClientKeyFileOptions> = async (app, opts) => {
  const file = resolve(opts.file)
  const fail = (why: string): Error => new Error(`oai-proxy: invalid option /keysFile (KEYS_FILE): ${file}: ${why}`)
  let records
  try {
    records = readKeysFile(file)
  } catch (err) {
    throw fail((err as Error).message)
  }
  if (records === null) throw fail('no such file; create it with `npx oai-reverse-proxy keys create --name <name>`')
  let index: ClientKeyIndex = buildIndex(records)
  let lastText: string | null = null
  let lastStat = ''
  app.log.info({ keys: index.size }, 'oai-proxy: client keys loaded')

  async function load (): Promise<boolean> {
    let text: string
    try {
      text = await readFile(file, 'utf8')
    } catch (err) {
      if (lastText !== '\0missing') app.log.warn({ code: (err as NodeJS.ErrnoException).code }, 'oai-proxy: keys file unreadable; the last good keys stay in force')
      lastText = '\0missing'
      return false
    }
    if (text === lastText) return false
    lastText = text
    try {
      index = buildIndex(parseKeysFile(text))
    } catch (err) {
      app.log.warn({ reason: (err as Error).message }, 'oai-proxy: keys file is corrupt; the last good keys stay in force')
      return false
    }
    app.log.info({ keys: index.size }, 'oai-proxy: client keys reloaded')
    return true
  }

  // One load at a time; events during a load queue one more.
  let chain = Promise.resolve(false)
  const reload = (): Promise<boolean> => (chain = chain.then(load, load))
  let timer: NodeJS.Timeout | undefined
  // Coalesce a burst of events into one read, without restarting the wait on each event: a file written
  // every few ms would otherwise never be read. A change during a read schedules the next one.
  const schedule = (): void => {
    if (timer !== undefined) return
    timer = setTimeout(() => {
      timer = undefined
      // Neither reload() nor signature() rejects: each catches every failure it can meet.
      reload()
    }, opts.debounceMs ?? 50)
  }

  const signature = async (): Promise<string> => {
    try {
      const s = await stat(file)
      return `${s.ino}:${s.size}:${s.mtimeMs}`
    } catch {
      return 'missing'
    }
  }
  lastStat = await signature()
  const poller = setInterval(() => {
    signature().then((sig) => {
      if (sig === lastStat) return
      lastStat = sig
      schedule()
    })
  }, opts.pollMs ?? 1000)
  poller.unref()

  // The directory, not the file: the CLI replaces the file by rename, and a watch on the old inode would go quiet.
  let watcher: FSWatcher | undefined
  if (opts.watch !== false) {
    const name = basename(file)
    watcher = watch(dirname(file), { persistent: false }, (_event, changed) => {
      if (changed === null || changed === name) schedule()
    })
    /* c8 ignore next -- a watch that fails (inotify limits, a removed directory) leaves the poll doing the job */
    watcher.on('error', (err) => { app.log.warn({ code: (err as NodeJS.ErrnoException).code }, 'oai-proxy: cannot watch the keys file; checking it every poll') })
  }

  const keys = clientKeysView('file', () => index, {
    list: async () => {
      const records = readKeysFile(file)
      if (records === null) throw new KeysFileError('no such file')
      return records
    },
    update: async (change) => await updateKeysFile(file, change)
  }, reload)
  app.decorate('oaiProxyClientKeys', keys)
  app.addHook('onClose', async () => {
    clearInterval(poller)
    clearTimeout(timer)
    watcher?.close()
    await chain
  })
}

export default fp(clientKeyFile, { name: 'oai-proxy-client-keys', fastify: '5.x' })
