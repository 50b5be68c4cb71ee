/**
 * The upstream base as origin + optional path prefix, without a trailing `/` or `/v1` (endpoint paths
 * already carry `/v1`, and SDK docs teach base URLs ending in it). Throws a message that never repeats the
 * value, since a URL can carry credentials.
 */
export function normaliseUpstreamUrl (value: string): string {
  let url: URL
  try {
    url = new URL(value)
  } catch {
    throw new Error('must be an absolute http(s) URL')
  }
  if ((url.protocol !== 'https:' && url.protocol !== 'http:') || url.username !== '' || url.password !== '' || url.search !== '' || url.hash !== '') {
    throw new Error('must be an http(s) URL without credentials, query or fragment')
  }
  return url.origin + url.pathname.replace(/\/+$/, '').replace(/\/v1$/, '')
}
