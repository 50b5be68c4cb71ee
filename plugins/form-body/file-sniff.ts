import type { FileType } from '../../schemas/openai-uploads.js'

/*
 * What an uploaded file is, read from its first bytes (magic numbers). The client's declared Content-Type
 * and filename are never trusted: the proxy forwards a name and type it derived itself, and OpenAI infers
 * the audio format from the file name's extension.
 */

export { AUDIO_TYPES, IMAGE_TYPES, type FileType } from '../../schemas/openai-uploads.js'

/** How many leading bytes `sniff` needs at most (RIFF and ftyp headers hold their tag at bytes 8-11). */
export const SNIFF_BYTES = 12

const MIME: Record<FileType, string> = {
  flac: 'audio/flac',
  mp3: 'audio/mpeg',
  mp4: 'audio/mp4',
  m4a: 'audio/mp4',
  ogg: 'audio/ogg',
  wav: 'audio/wav',
  webm: 'audio/webm',
  png: 'image/png',
  jpeg: 'image/jpeg',
  webp: 'image/webp'
}

export const mimeType = (type: FileType): string => MIME[type]

/** The name sent upstream: fixed, with the sniffed type's extension. */
export const safeFileName = (type: FileType): string => `upload.${type === 'jpeg' ? 'jpg' : type}`

const PNG = Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a])
/** ISO base media brands of still images (HEIF, AVIF): an `ftyp` box, but not audio. */
const IMAGE_BRANDS = new Set(['heic', 'heix', 'heim', 'heis', 'hevc', 'hevx', 'mif1', 'msf1', 'avif', 'avis'])

const ascii = (head: Buffer, from: number, to: number): string => head.toString('latin1', from, to)

/**
 * An MPEG audio frame header: 11 sync bits, a version other than "reserved" (01), a layer other than
 * "reserved" (00, which is also how AAC ADTS headers start) and a bitrate index other than "bad" (1111).
 */
function mpegFrame (head: Buffer): boolean {
  const b1 = head[1] ?? 0
  const b2 = head[2] ?? 0xf0
  return head[0] === 0xff && (b1 & 0xe0) === 0xe0 && (b1 & 0x18) !== 0x08 && (b1 & 0x06) !== 0 && (b2 & 0xf0) !== 0xf0
}

/** The type of a file starting with `head` (at least SNIFF_BYTES unless the file is shorter), or null. */
export function sniff (head: Buffer): FileType | null {
  if (head.subarray(0, 8).equals(PNG)) return 'png'
  if (head[0] === 0xff && head[1] === 0xd8 && head[2] === 0xff) return 'jpeg'
  const magic = ascii(head, 0, 4)
  if (magic === 'RIFF') {
    const form = ascii(head, 8, 12)
    return form === 'WAVE' ? 'wav' : form === 'WEBP' ? 'webp' : null
  }
  if (magic === 'fLaC') return 'flac'
  if (magic === 'OggS') return 'ogg'
  if (magic === '\x1a\x45\xdf\xa3') return 'webm'
  if (ascii(head, 0, 3) === 'ID3' || mpegFrame(head)) return 'mp3'
  if (ascii(head, 4, 8) === 'ftyp' && head.length >= 12) {
    const brand = ascii(head, 8, 12)
    if (IMAGE_BRANDS.has(brand)) return null
    return brand.startsWith('M4A') ? 'm4a' : 'mp4'
  }
  return null
}
