/** A whole SSE frame: anything up to and including its blank line (any of the three line endings). */
const FRAME = /[\s\S]*?(?:\r\n\r\n|\n\n|\r\r)/g

/**
 * Call `each` on every whole frame at the start of decoded SSE text, in order, until it returns false;
 * returns the text after the last frame handed over (a partial frame, kept for the next chunk). One shared
 * global regex, no allocation per call: callers never nest, so resetting it is safe.
 */
export function eachFrame (text: string, each: (frame: string) => boolean): string {
  FRAME.lastIndex = 0
  let consumed = 0
  for (let m = FRAME.exec(text); m !== null; m = FRAME.exec(text)) {
    consumed = FRAME.lastIndex
    if (!each(m[0])) break
  }
  return text.slice(consumed)
}

/** The chunk ends where a frame does (its last bytes are a blank line), so no frame or character is cut. */
export function endsFrame (chunk: Buffer): boolean {
  const n = chunk.length
  const last = chunk[n - 1]
  if (last !== 0x0a && last !== 0x0d) return false
  return chunk[n - 2] === last || (last === 0x0a && chunk[n - 2] === 0x0d && chunk[n - 3] === 0x0a && chunk[n - 4] === 0x0d)
}
