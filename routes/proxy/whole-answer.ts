import type { Readable } from 'node:stream'

/*
 * A non-streamed JSON answer is read whole and sent whole when it is small: one write to the client with a
 * Content-Length, where a stream stage would answer chunked (a second write for the final chunk), and no
 * Transform, pipe or listener per response. The proxy's own work on it (cutting secrets out, reading
 * `usage`) is then one pass over one buffer. Upstream may or may not declare a length (chunked JSON is
 * common), so the body is read up to WHOLE_ANSWER_LIMIT and, past it, put back and streamed like any other.
 * SSE and other media (audio) are never read here.
 */

/** The largest answer read whole. Chat completions are a few KB; images as base64 go past it and stream. */
export const WHOLE_ANSWER_LIMIT = 256 * 1024

/** Whether to try reading an answer whole: JSON, and no declared length past the limit. */
export function mayReadWhole (contentType: string | undefined, contentLength: string | undefined, limit = WHOLE_ANSWER_LIMIT): boolean {
  if (contentType?.startsWith('application/json') !== true) return false
  return contentLength === undefined || !(Number(contentLength) > limit)
}

const ignore = (): void => {}

/**
 * The whole body, or null once it has grown past `limit`: then everything read so far is put back at the
 * front of `body`, which is left paused for the caller to stream. Rejects when the body fails (upstream
 * died before its end, or the call was aborted because the client left) or closes without ending.
 */
export async function readSmall (body: Readable, limit = WHOLE_ANSWER_LIMIT): Promise<Buffer | null> {
  // From here on an error always has a listener, whatever the caller attaches and when.
  body.on('error', ignore)
  return await new Promise<Buffer | null>((resolve, reject) => {
    const chunks: Buffer[] = []
    let size = 0
    const stop = (): void => {
      body.off('data', onData)
      body.off('end', onEnd)
      body.off('close', onClose)
      body.off('error', onError)
    }
    const onData = (chunk: Buffer): void => {
      chunks.push(chunk)
      size += chunk.length
      if (size <= limit) return
      body.pause()
      stop()
      body.unshift(chunks.length === 1 ? chunk : Buffer.concat(chunks, size))
      resolve(null)
    }
    const onEnd = (): void => {
      stop()
      // A single chunk (the usual case at these sizes) needs no copy.
      resolve(chunks.length === 1 ? chunks[0] as Buffer : Buffer.concat(chunks, size))
    }
    const onError = (err: Error): void => {
      stop()
      reject(err)
    }
    const onClose = (): void => {
      stop()
      reject(new Error('upstream body closed before its end'))
    }
    body.on('data', onData).once('end', onEnd).once('error', onError).once('close', onClose)
  })
}
