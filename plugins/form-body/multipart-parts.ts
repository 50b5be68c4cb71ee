import { proxyError } from '../../errors.js'

/*
 * The byte-level splitter of a multipart body (RFC 2046 §5.1.1): finds the delimiters, hands on each
 * part's header block and its body bytes, ignores the preamble (capped) and the epilogue. It runs in
 * linear time whatever the chunking: each byte is searched once, and a delimiter that straddles two
 * chunks is found by carrying the last delimiter-length bytes (the "tail") into the next search, never
 * by joining or rescanning what was already seen.
 */

export interface PartEvents {
  /** A part begins; `header` is its header block without the blank line that ends it. */
  part: (header: Buffer) => void
  /** Body bytes of the current part (never empty; a view of the input, not a copy). */
  data: (bytes: Buffer) => void
  /** The current part's body is complete. */
  partEnd: () => void
}

export interface SplitLimits {
  maxHeaderBytes: number
  maxPreambleBytes: number
}

const enum State { Preamble, AfterDelimiter, Dash, Cr, Headers, Body, Epilogue }

const CRLF = Buffer.from('\r\n')
const BLANK_LINE = Buffer.from('\r\n\r\n')
/** Transport padding (RFC 2046: LWSP after a boundary) accepted before the line's CRLF. */
const MAX_PADDING = 256

const invalid = (detail: string): Error => proxyError('MULTIPART_INVALID', [detail])

export class PartSplitter {
  readonly #delimiter: Buffer
  readonly #limits: SplitLimits
  readonly #on: PartEvents
  #state = State.Preamble
  /** Unsearched bytes that may begin a delimiter. The body starts with a virtual CRLF, so a boundary on the very first line is a delimiter too. */
  #tail: Buffer = CRLF
  #preamble = 0
  #padding = 0
  /** The header block being read, after a virtual CRLF so an empty block ends at offset 0. */
  readonly #header: Buffer
  #headerLength = 0

  constructor (boundary: string, limits: SplitLimits, events: PartEvents) {
    this.#delimiter = Buffer.from(`\r\n--${boundary}`, 'latin1')
    this.#limits = limits
    this.#on = events
    this.#header = Buffer.allocUnsafe(limits.maxHeaderBytes + 2 + BLANK_LINE.length)
  }

  /** The close delimiter was seen: whatever follows is epilogue. */
  get closed (): boolean {
    return this.#state === State.Epilogue
  }

  /** Bytes held between chunks. */
  get held (): number {
    return this.#tail.length + this.#headerLength
  }

  /** Read the next chunk. Throws a catalogue error (or whatever an event handler throws). */
  push (chunk: Buffer): void {
    let buf = chunk
    // A short chunk is joined to the tail (both are under a delimiter long, so this costs O(delimiter)).
    if (this.#tail.length > 0 && chunk.length < this.#delimiter.length) {
      buf = Buffer.concat([this.#tail, chunk])
      this.#tail = Buffer.alloc(0)
    }
    let at = 0
    while (at < buf.length) at = this.#step(buf, at)
  }

  #step (buf: Buffer, at: number): number {
    switch (this.#state) {
      case State.Preamble:
      case State.Body: return this.#search(buf, at)
      case State.Headers: return this.#headers(buf, at)
      case State.Epilogue: return buf.length
      default: return this.#boundaryLine(buf, at)
    }
  }

  /** Search for the next delimiter from `at`, handing on the bytes before it. */
  #search (buf: Buffer, at: number): number {
    const d = this.#delimiter
    const tail = this.#tail
    if (tail.length > 0) {
      // Here `buf` holds at least a delimiter's length, so a delimiter begun in the tail ends in this window.
      this.#tail = Buffer.alloc(0)
      const window = Buffer.concat([tail, buf.subarray(at, at + d.length - 1)])
      const found = window.indexOf(d)
      if (found !== -1 && found < tail.length) {
        this.#emit(window.subarray(0, found))
        return this.#delimiterFound(at + found + d.length - tail.length)
      }
      this.#emit(tail)
    }
    const found = buf.indexOf(d, at)
    if (found !== -1) {
      this.#emit(buf.subarray(at, found))
      return this.#delimiterFound(found + d.length)
    }
    const keep = Math.max(at, buf.length - (d.length - 1))
    this.#emit(buf.subarray(at, keep))
    // A copy: a view would pin the whole chunk in memory.
    this.#tail = Buffer.from(buf.subarray(keep))
    return buf.length
  }

  #emit (bytes: Buffer): void {
    if (bytes.length === 0) return
    if (this.#state === State.Body) {
      this.#on.data(bytes)
      return
    }
    this.#preamble += bytes.length
    // The virtual CRLF is counted too, hence the 2.
    if (this.#preamble > this.#limits.maxPreambleBytes + 2) throw invalid(`more than ${this.#limits.maxPreambleBytes} bytes before the first boundary`)
  }

  #delimiterFound (next: number): number {
    if (this.#state === State.Body) this.#on.partEnd()
    this.#state = State.AfterDelimiter
    this.#padding = 0
    return next
  }

  /** After a delimiter: `--` closes the form; otherwise optional padding and CRLF end the boundary line. */
  #boundaryLine (buf: Buffer, at: number): number {
    const byte = buf[at]
    if (this.#state === State.Dash) {
      if (byte !== 0x2d) throw invalid('a boundary is followed by a single "-"')
      this.#state = State.Epilogue
    } else if (this.#state === State.Cr) {
      if (byte !== 0x0a) throw invalid('a boundary line does not end with CRLF')
      this.#state = State.Headers
      this.#headerLength = CRLF.copy(this.#header)
    } else if (byte === 0x2d && this.#padding === 0) {
      this.#state = State.Dash
    } else if (byte === 0x0d) {
      this.#state = State.Cr
    } else if ((byte === 0x20 || byte === 0x09) && ++this.#padding <= MAX_PADDING) {
      // Transport padding (RFC 2046 §5.1.1): ignored.
    } else {
      throw invalid('a boundary line holds more than the boundary')
    }
    return at + 1
  }

  /** Copy header bytes until the blank line; the block is capped at maxHeaderBytes. */
  #headers (buf: Buffer, at: number): number {
    const h = this.#header
    const before = this.#headerLength
    const copied = buf.copy(h, before, at)
    this.#headerLength += copied
    const end = h.subarray(0, this.#headerLength).indexOf(BLANK_LINE, Math.max(0, before - 3))
    if (end === -1) {
      if (this.#headerLength === h.length) throw invalid(`a part's header block is over ${this.#limits.maxHeaderBytes} bytes`)
      return at + copied
    }
    const block = Buffer.from(h.subarray(2, Math.max(2, end)))
    this.#headerLength = 0
    this.#state = State.Body
    this.#on.part(block)
    return at + end + BLANK_LINE.length - before
  }
}
