import { isIP } from 'node:net'
import { normalizeIP } from '@fastify/rate-limit'

const V4_PORT = /^(\d{1,3}(?:\.\d{1,3}){3}):\d{1,5}$/
const V6_BRACKETS = /^\[([0-9A-Fa-f:.]+)\](?::\d{1,5})?$/

/**
 * The bucket of an anonymous caller's address: IPv4 as is, IPv6 by its /64 (rotating within one
 * allocation buys no new bucket), `::ffff:a.b.c.d` as `a.b.c.d`. Some trusted proxies write `ip:port` or
 * `[v6]:port` into X-Forwarded-For (threat RL03): the port goes, or every new connection would be a new
 * bucket. Anything that is still not an address shares one bucket rather than minting its own.
 */
export function addressKey (ip: string): string {
  const bare = V4_PORT.exec(ip)?.[1] ?? V6_BRACKETS.exec(ip)?.[1] ?? ip
  return isIP(bare) === 0 ? 'unparsable' : normalizeIP(bare, 64)
}
