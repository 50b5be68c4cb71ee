import { randomBytes } from 'node:crypto'
import { closeSync, copyFileSync, fsyncSync, openSync, readFileSync, renameSync, rmSync, statSync, writeSync } from 'node:fs'
import { basename, dirname, join } from 'node:path'
import type { ClientKeyRecord } from './schema.js'
import { KeysFileError, parseKeysFile, serializeKeys } from './records.js'

/*
 * Writing the keys file: under a lock file, read -> change -> write atomically. A reader (the server's
 * watcher) only ever sees the old file or the new one, never half of one; the previous version is kept as
 * `<file>.bak`; a file that does not parse is never overwritten.
 */

const isMissing = (err: unknown): boolean => (err as NodeJS.ErrnoException).code === 'ENOENT'

/** The records in `file`; `null` when it does not exist. Throws `KeysFileError` when it cannot be used. */
export function readKeysFile (file: string): ClientKeyRecord[] | null {
  let text: string
  try {
    text = readFileSync(file, 'utf8')
  } catch (err) {
    if (isMissing(err)) return null
    throw new KeysFileError(`cannot read the file (${(err as NodeJS.ErrnoException).code as string})`)
  }
  return parseKeysFile(text)
}

/** Write: a temp file beside the target, fsync, keep the old file as `.bak`, rename over, fsync the directory. */
export function writeKeysFile (file: string, records: readonly ClientKeyRecord[]): void {
  const dir = dirname(file)
  const tmp = join(dir, `.${basename(file)}.${process.pid}.${randomBytes(4).toString('hex')}.tmp`)
  // 0600: the file holds no secret, but its hashes and scopes are nobody else's business.
  const fd = openSync(tmp, 'wx', 0o600)
  try {
    writeSync(fd, serializeKeys(records))
    fsyncSync(fd)
  } finally {
    closeSync(fd)
  }
  try {
    copyFileSync(file, `${file}.bak`)
  } catch (err) {
    if (!isMissing(err)) {
      rmSync(tmp, { force: true })
      throw err
    }
  }
  renameSync(tmp, file)
  // The rename is durable only once the directory entry is on disk.
  const dirFd = openSync(dir, 'r')
  try {
    fsyncSync(dirFd)
  } finally {
    closeSync(dirFd)
  }
}

const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms))

/** A lock older than this is taken to be left by a crashed writer. */
const STALE_LOCK_MS = 30_000

/**
 * Run `fn` holding `<file>.lock` (created exclusively), so two CLI runs never lose each other's change.
 * Waits up to `waitMs` for another writer.
 */
export async function withLock<T> (file: string, fn: () => T, waitMs = 5000): Promise<T> {
  const lock = `${file}.lock`
  const deadline = Date.now() + waitMs
  for (;;) {
    try {
      closeSync(openSync(lock, 'wx', 0o600))
      break
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err
    }
    // Gone since the open failed: simply retried. A lock we cannot stat (a dangling link) is never stale.
    const info = statSync(lock, { throwIfNoEntry: false })
    if (info !== undefined && Date.now() - info.mtimeMs > STALE_LOCK_MS) {
      rmSync(lock, { force: true })
      continue
    }
    if (Date.now() > deadline) throw new KeysFileError(`another writer holds ${lock}; try again (or remove it if no writer is running)`)
    await sleep(20)
  }
  try {
    return fn()
  } finally {
    rmSync(lock, { force: true })
  }
}

/**
 * Read, change and write the file under the lock. A missing file counts as empty only when `create` is
 * set; a corrupt one is refused (never overwritten).
 */
export async function updateKeysFile<T> (file: string, change: (records: ClientKeyRecord[]) => { records: ClientKeyRecord[], result: T }, create = false): Promise<T> {
  return await withLock(file, () => {
    const current = readKeysFile(file)
    if (current === null && !create) throw new KeysFileError('no such file (`keys create` makes it)')
    const { records, result } = change(current ?? [])
    writeKeysFile(file, records)
    return result
  })
}
