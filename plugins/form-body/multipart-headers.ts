import { proxyError } from '../../errors.js'

/*
 * The two header readers of a form: the request's Content-Type (its boundary) and each part's header
 * block (its field name, and whether it is a file). Both are small and capped before they get here.
 */

const invalid = (detail: string, param: string | null = null): Error => proxyError('MULTIPART_INVALID', [detail], { param })

/** A client's field name as it may appear in an answer: control characters removed, at most 64 characters. */
export function printable (name: string): string {
  // eslint-disable-next-line no-control-regex
  const clean = name.replace(/[\u0000-\u001f\u007f-\u009f]/g, '')
  return clean.length > 64 ? `${clean.slice(0, 64)}…` : clean
}

/** One `; name=value` parameter list (RFC 7231 §3.1.1.1 and RFC 7578 §4.2): token or quoted-string values. */
const PARAM = /;[ \t]*([!#$%&'*+.^_`|~0-9A-Za-z-]+)[ \t]*=[ \t]*(?:"((?:[^"\\]|\\.)*)"[ \t]*|([^;"]*))(?=;|$)/y

function parameters (rest: string, what: string): Map<string, string> {
  const params = new Map<string, string>()
  PARAM.lastIndex = 0
  while (PARAM.lastIndex < rest.length) {
    const m = PARAM.exec(rest)
    if (m === null) throw invalid(`the ${what} parameters cannot be read`)
    const name = (m[1] as string).toLowerCase()
    if (params.has(name)) throw invalid(`the ${what} repeats its "${printable(name)}" parameter`)
    params.set(name, m[2] !== undefined ? m[2].replace(/\\(.)/g, '$1') : (m[3] as string).trim())
  }
  return params
}

/** RFC 2046 §5.1.1: 1-70 characters from `bchars`, not ending with a space. */
const BOUNDARY = /^[0-9A-Za-z'()+_,./:=? -]{0,69}[0-9A-Za-z'()+_,./:=?-]$/

/** The boundary of a `multipart/form-data` Content-Type header; anything else is refused. */
export function formBoundary (contentType: string): string {
  const semi = contentType.indexOf(';')
  const media = (semi === -1 ? contentType : contentType.slice(0, semi)).trim().toLowerCase()
  if (media !== 'multipart/form-data') throw invalid('the Content-Type must be multipart/form-data')
  const boundary = semi === -1 ? undefined : parameters(contentType.slice(semi).trimEnd(), 'Content-Type').get('boundary')
  if (boundary === undefined) throw invalid('the Content-Type has no boundary')
  if (!BOUNDARY.test(boundary)) throw invalid('the boundary must be 1 to 70 characters from RFC 2046')
  return boundary
}

export interface PartHead {
  /** The field name, as sent. */
  name: string
  /** The part carries a file (its Content-Disposition has a filename, RFC 7578 §4.2). */
  file: boolean
}

const HEADER_LINE = /^([!#$%&'*+.^_`|~0-9A-Za-z-]+):(.*)$/s
/** RFC 7578 §4.7: a transfer encoding would change what the bytes mean; only identity ones are taken. */
const IDENTITY_ENCODINGS = new Set(['7bit', '8bit', 'binary'])

/** Read a part's header block. */
export function partHead (block: Buffer): PartHead {
  let disposition: string | undefined
  const lines = block.length === 0 ? [] : block.toString('utf8').split('\r\n')
  for (const line of lines) {
    const m = HEADER_LINE.exec(line)
    if (m === null) throw invalid('a part header line cannot be read')
    const name = (m[1] as string).toLowerCase()
    const value = (m[2] as string).trim()
    if (name === 'content-disposition') {
      if (disposition !== undefined) throw invalid('a part has two Content-Disposition headers')
      disposition = value
    } else if (name === 'content-type' && value.toLowerCase().startsWith('multipart/')) {
      throw invalid('nested multipart parts (multipart/mixed) are not accepted; send each file as its own part')
    } else if (name === 'content-transfer-encoding' && !IDENTITY_ENCODINGS.has(value.toLowerCase())) {
      throw invalid('a part has a Content-Transfer-Encoding')
    }
  }
  if (disposition === undefined) throw invalid('a part has no Content-Disposition header')
  const semi = disposition.indexOf(';')
  const type = (semi === -1 ? disposition : disposition.slice(0, semi)).trim().toLowerCase()
  if (type !== 'form-data') throw invalid('a part\'s Content-Disposition is not form-data')
  const params = semi === -1 ? new Map<string, string>() : parameters(disposition.slice(semi), 'Content-Disposition')
  const name = params.get('name')
  if (name === undefined || name === '') throw invalid('a part has no field name')
  return { name, file: params.has('filename') || params.has('filename*') }
}
