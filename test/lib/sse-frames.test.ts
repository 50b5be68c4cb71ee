import fc from 'fast-check'
import t from 'tap'
import { FrameSplitter } from '../../lib/sse-frames.js'
import { OutputGuard, outputRules, type OutputRules } from '../../plugins/prompt-filter/output-guard.js'

/*
 * The SSE frame splitter: the same frames as "anything up to the first blank line" read over the whole
 * text, however the text is cut into chunks (ends straddling two chunks included), in linear time.
 */

/** The reference: a lazy regex over the whole text at once (correct, but quadratic on an unfinished tail). */
function reference (text: string): { frames: string[], rest: string } {
  const frames: string[] = []
  const re = /[\s\S]*?(?:\r\n\r\n|\n\n|\r\r)/g
  let at = 0
  for (let m = re.exec(text); m !== null; m = re.exec(text)) {
    frames.push(m[0])
    at = re.lastIndex
  }
  return { frames, rest: text.slice(at) }
}

t.test('any text, cut anywhere: the frames of the whole text, and the unfinished rest', async (t) => {
  const text = fc.array(fc.constantFrom('a', 'data: x', '\r', '\n', '\r\n', ':', ' '), { maxLength: 40 }).map((p) => p.join(''))
  const cuts = fc.array(fc.nat(60), { maxLength: 6 })
  fc.assert(fc.property(text, cuts, (s, at) => {
    const points = [...new Set(at.map((n) => n % (s.length + 1)))].sort((a, b) => a - b)
    const splitter = new FrameSplitter()
    const frames: string[] = []
    let prev = 0
    for (const p of [...points, s.length]) {
      splitter.push(s.slice(prev, p), (f) => { frames.push(f); return true })
      prev = p
    }
    const want = reference(s)
    t.strictSame({ frames, rest: splitter.end() }, want, JSON.stringify({ s, points }))
    return true
  }), { numRuns: 2000 })
})

t.test('stopping drops the rest; held counts an unfinished frame', async (t) => {
  const splitter = new FrameSplitter()
  const seen: string[] = []
  splitter.push('a\n\nb\n\nc\n\n', (f) => { seen.push(f); return seen.length < 2 })
  t.strictSame(seen, ['a\n\n', 'b\n\n'])
  t.equal(splitter.held, 0)
  splitter.push('data: partial', () => true)
  t.equal(splitter.held, 13)
  t.equal(splitter.end(), 'data: partial')
  t.equal(splitter.held, 0)
})

t.test('a 10 MB frame in 16 KiB chunks is split in linear time', async (t) => {
  const splitter = new FrameSplitter()
  const chunk = 'x'.repeat(16 * 1024)
  const started = performance.now()
  let frames = 0
  for (let i = 0; i < 640; i++) splitter.push(i === 0 ? 'data: ' + chunk : chunk, () => { frames++; return true })
  splitter.push('\n\n', (f) => { frames++; t.equal(f.length, 6 + 640 * 16 * 1024 + 2); return true })
  const ms = performance.now() - started
  t.equal(frames, 1)
  // The quadratic version took hours for this; linear work is tens of milliseconds even on a loaded machine.
  t.ok(ms < 2000, `${ms.toFixed(0)} ms`)
})

t.test('the output guard ends a stream whose frame is too large to check, complete or not', async (t) => {
  const rules = outputRules({ phrases: ['purple elephant protocol'] }) as OutputRules
  const huge = 'x'.repeat(4 * 1024 * 1024 + 1)
  for (const [what, frames] of [['unfinished', [`data: {"choices":[{"index":0,"delta":{"content":"${huge}`]], ['whole', [`data: {"choices":[{"index":0,"delta":{"content":"${huge}"}}]}\n\n`]]] as const) {
    const hits: string[] = []
    const guard = new OutputGuard('chat.completion', rules, (r) => hits.push(r.id))
    const out = frames.map((f) => guard.feed(Buffer.from(f))).join('')
    t.ok(guard.ended, what)
    t.strictSame(hits, ['frame_too_large'])
    t.match(out, /"finish_reason":"content_filter"[\s\S]*\[DONE\]/)
    t.notMatch(out, /xxxx/, 'none of it passed')
  }
})
