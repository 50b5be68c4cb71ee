import { createHash } from 'node:crypto'
import { readFileSync } from 'node:fs'
import { Readable } from 'node:stream'
import t, { type Test } from 'tap'
import { request } from 'undici'
import { canaryKey, listeningUrl, randomToken, sleep, spawnServer } from '../../helper.js'
import { startFakeOpenAI } from '../../../testing/fake-openai.js'
import { formContentType, multipartBody, wavHeader } from '../../../testing/fake-uploads.js'

/*
 * Issue 12: a 25 MB upload streams through. The proxy runs in its own process (server.ts), so its resident
 * memory can be read from /proc while the file goes by; the fake upstream in this process hashes what it
 * receives without holding it.
 */

const MiB = 1024 * 1024
const rssOf = (pid: number): number => Number(/VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))?.[1]) * 1024

/** A WAV file of `bytes`, produced in 64 KiB pieces as it is sent (never whole in this process either). */
function wavStream (bytes: number): { data: AsyncIterable<Buffer>, sha256: Promise<string> } {
  const hash = createHash('sha256')
  let done!: (hex: string) => void
  const sha256 = new Promise<string>((resolve) => { done = resolve })
  async function * gen () {
    const header = wavHeader(bytes - 44)
    hash.update(header)
    yield header
    const piece = Buffer.alloc(64 * 1024, 1)
    for (let left = bytes - 44; left > 0; left -= piece.length) {
      const chunk = left >= piece.length ? piece : piece.subarray(0, left)
      hash.update(chunk)
      yield chunk
    }
    done(hash.digest('hex'))
  }
  return { data: gen(), sha256 }
}

/** Upload `size` bytes through a proxy process started with `nodeOptions`; RSS before and at its peak. */
async function measure (t: Test, size: number, nodeOptions: string): Promise<{ before: number, peak: number }> {
  const key = canaryKey()
  const proxyKey = `sk-oaip-${randomToken(32)}`
  const upstream = await startFakeOpenAI({ validKeys: [key] })
  const child = spawnServer({ OPENAI_KEY: key, PROXY_KEY: proxyKey, UPSTREAM_URL: upstream.url, PORT: '0', LOG_LEVEL: 'info', NODE_ENV: 'test', NODE_OPTIONS: nodeOptions })
  try {
    const url = await listeningUrl(child)
    const pid = child.pid as number
    const send = async (bytes: number) => {
      const file = wavStream(bytes)
      const body = multipartBody([{ name: 'model', value: 'whisper-1' }, { name: 'file', filename: 'big.wav', contentType: 'audio/wav', data: file.data }])
      const res = await request(`${url}/v1/audio/transcriptions`, { method: 'POST', headers: { authorization: `Bearer ${proxyKey}`, 'content-type': formContentType() }, body: Readable.from(body) })
      return { status: res.statusCode, text: await res.body.text(), sha256: await file.sha256 }
    }
    // Warm-up: the route, the parser and undici's connection pool, so the measurement sees only the upload.
    t.equal((await send(2 * MiB)).status, 200)
    await sleep(300)
    const before = rssOf(pid)
    let peak = before
    const sampler = setInterval(() => { peak = Math.max(peak, rssOf(pid)) }, 20)
    const res = await send(size)
    clearInterval(sampler)
    t.equal(res.status, 200, res.text.slice(0, 200))
    const seen = upstream.requests.at(-1)?.form?.files[0]
    t.equal(seen?.bytes, size, 'upstream received the whole file')
    t.equal(seen?.sha256, res.sha256, 'byte for byte')
    t.comment(`${nodeOptions === '' ? 'default heap' : nodeOptions}: proxy RSS ${(before / MiB).toFixed(1)} MiB before, peak ${(peak / MiB).toFixed(1)} MiB during the ${size / MiB} MiB upload (+${((peak - before) / MiB).toFixed(1)} MiB)`)
    return { before, peak }
  } finally {
    child.kill()
    await upstream.close()
  }
}

t.test('a 25 MB upload through a proxy process holds none of it', { skip: process.platform !== 'linux' && 'reads /proc' }, async (t) => {
  const size = 25 * MiB
  // With V8's default young generation (up to 16 MiB per semi-space) the socket's 64 KiB buffers live
  // until a scavenge, so RSS rises by what is read between two of them: reported, not a retention.
  await measure(t, size, '')
  // With 1 MiB semi-spaces they are collected as they go: what is left is what the proxy keeps.
  const { before, peak } = await measure(t, size, '--max-semi-space-size=1')
  t.ok(peak - before < 4 * MiB, `RSS grew ${((peak - before) / MiB).toFixed(1)} MiB for a 25 MiB file: nothing of it is held`)
})
