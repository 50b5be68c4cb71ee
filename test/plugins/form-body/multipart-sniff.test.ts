import t from 'tap'
import { mimeType, safeFileName, sniff, type FileType } from '../../../plugins/form-body/file-sniff.js'
import { pngBytes, wavBytes } from '../../../testing/fake-uploads.js'

/* plugins/form-body/file-sniff.ts: the type of an upload from its magic numbers, never from its name or declared type. */

const bytes = (...parts: Array<string | number[]>): Buffer => Buffer.concat(parts.map((p) => (typeof p === 'string' ? Buffer.from(p, 'latin1') : Buffer.from(p))))

t.test('each accepted format is recognised by its first bytes', async (t) => {
  const cases: Array<[string, Buffer, FileType]> = [
    ['png', pngBytes(1, 1), 'png'],
    ['jpeg', bytes([0xff, 0xd8, 0xff, 0xe0, 0, 0x10]), 'jpeg'],
    ['webp', bytes('RIFF', [0, 0, 0, 0], 'WEBPVP8 '), 'webp'],
    ['wav', wavBytes(0.01), 'wav'],
    ['flac', bytes('fLaC', [0, 0, 0, 0x22]), 'flac'],
    ['ogg', bytes('OggS', [0, 2]), 'ogg'],
    ['webm', bytes([0x1a, 0x45, 0xdf, 0xa3, 0x9f]), 'webm'],
    ['mp3 with ID3', bytes('ID3', [4, 0, 0]), 'mp3'],
    ['mp3 frame, MPEG-1 layer III', bytes([0xff, 0xfb, 0x90, 0x64]), 'mp3'],
    ['mp3 frame, MPEG-2 layer III', bytes([0xff, 0xf3, 0x48, 0xc4]), 'mp3'],
    ['mpga frame, MPEG-2.5', bytes([0xff, 0xe3, 0x18, 0xc4]), 'mp3'],
    ['mp4', bytes([0, 0, 0, 0x20], 'ftypisom', [0, 0, 2, 0]), 'mp4'],
    ['m4a', bytes([0, 0, 0, 0x20], 'ftypM4A ', [0, 0, 2, 0]), 'm4a']
  ]
  for (const [name, head, type] of cases) t.equal(sniff(head), type, name)
})

t.test('look-alikes and fragments are unknown', async (t) => {
  const cases: Array<[string, Buffer]> = [
    ['empty', Buffer.alloc(0)],
    ['text', bytes('hello world!')],
    ['RIFF of another form (AVI)', bytes('RIFF', [0, 0, 0, 0], 'AVI LIST')],
    ['RIFF cut short', bytes('RIFF', [0, 0])],
    ['AAC ADTS (layer bits 00)', bytes([0xff, 0xf1, 0x50, 0x80])],
    ['MPEG version "reserved"', bytes([0xff, 0xeb, 0x90, 0x64])],
    ['MPEG bad bitrate', bytes([0xff, 0xfb, 0xf0, 0x64])],
    ['a lone 0xff', bytes([0xff])],
    ['0xff and a frame byte only', bytes([0xff, 0xfb])],
    ['HEIC image in an ftyp box', bytes([0, 0, 0, 0x18], 'ftypheic', [0, 0, 0, 0])],
    ['AVIF image in an ftyp box', bytes([0, 0, 0, 0x18], 'ftypavif', [0, 0, 0, 0])],
    ['ftyp without a brand', bytes([0, 0, 0, 0x18], 'ftyp')],
    ['PNG signature cut short', pngBytes(1, 1).subarray(0, 7)]
  ]
  for (const [name, head] of cases) t.equal(sniff(head), null, name)
})

t.test('the name and type sent upstream come from the sniffed type', async (t) => {
  t.strictSame([safeFileName('wav'), safeFileName('jpeg'), safeFileName('m4a')], ['upload.wav', 'upload.jpg', 'upload.m4a'])
  t.strictSame([mimeType('mp3'), mimeType('m4a'), mimeType('webp')], ['audio/mpeg', 'audio/mp4', 'image/webp'])
})
