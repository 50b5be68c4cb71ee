/** The end of an SSE frame: a blank line, in any of the three line endings. */
const END = /\r\n\r\n|\n\n|\r\r/g
/** The longest end, less one: how far back into held text an end may start. */
const BACK = 3

/**
 * Cuts decoded SSE text into whole frames (each with its blank line), in linear time whatever arrives:
 * only the new text (and the last characters held, where an end may straddle two chunks) is searched,
 * and an unfinished frame is kept as pieces, joined once when it ends. A lazy "anything up to a blank
 * line" regex over all held text, as this was before, retried from every position of an unfinished
 * frame: one 10 MB `data:` line blocked the event loop for minutes.
 */
export class FrameSplitter {
  #held: string[] = []
  #heldLength = 0
  /** The last characters held (pieces may be shorter than an end). */
  #tail = ''

  /** Characters of an unfinished frame held so far. */
  get held (): number {
    return this.#heldLength
  }

  /** Call `each` on every frame `text` completes, in order, until it returns false (then the rest is dropped). */
  push (text: string, each: (frame: string) => boolean): void {
    const back = this.#tail
    const hay = back + text
    END.lastIndex = 0
    let from = back.length
    for (let m = END.exec(hay); m !== null; m = END.exec(hay)) {
      const end = m.index + m[0].length
      const frame = from === back.length && this.#heldLength > 0 ? this.#held.join('') + hay.slice(from, end) : hay.slice(from, end)
      this.#held = []
      this.#heldLength = 0
      from = end
      if (!each(frame)) return
    }
    if (from < hay.length) {
      this.#held.push(hay.slice(from))
      this.#heldLength += hay.length - from
    }
    // The held text ends the hay; when a frame ended here, it starts where that frame ended.
    this.#tail = hay.slice(Math.max(from === back.length ? 0 : from, hay.length - BACK))
  }

  /** The unfinished frame at the end of the body (empty if none), and nothing held after. */
  end (): string {
    const rest = this.#held.join('')
    this.#held = []
    this.#heldLength = 0
    this.#tail = ''
    return rest
  }
}

/** The chunk ends where a frame does (its last bytes are a blank line), so no frame or character is cut. */
export function endsFrame (chunk: Buffer): boolean {
  const n = chunk.length
  const last = chunk[n - 1]
  if (last !== 0x0a && last !== 0x0d) return false
  return chunk[n - 2] === last || (last === 0x0a && chunk[n - 2] === 0x0d && chunk[n - 3] === 0x0a && chunk[n - 4] === 0x0d)
}
