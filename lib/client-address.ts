import { isIP } from 'node:net'
import { normalizeIP } from '@fastify/rate-limit'

const V4_PORT = /^(\d{1,3}(?:\.\d{1,3}){3}):\d{1,5}$/
const V6_BRACKETS = /^\[([0-9A-Fa-f:.]+)\](?::\d{1,5})?$/

/*
 * Keys already worked out: every request asks (the abuse guard's address check runs before auth), most from
 * addresses seen before, and an IPv6 address's /64 costs ~9 µs to work out (normalizeIP parses it with
 * ip-address); an IPv4 one ~0.1 µs. Bounded: addresses that rotate only refill it.
 */
const KNOWN_MAX = 4096
const known = new Map<string, string>()

/**
 * The bucket of an anonymous caller's address: IPv4 as is, IPv6 by its /64 (rotating within one
 * allocation buys no new bucket), `::ffff:a.b.c.d` as `a.b.c.d`. Some trusted proxies write `ip:port` or
 * `[v6]:port` into X-Forwarded-For (threat RL03): the port goes, or every new connection would be a new
 * bucket. Anything that is still not an address shares one bucket rather than minting its own.
 */
export function addressKey (ip: string): string {
  let key = known.get(ip)
  if (key === undefined) {
    const bare = V4_PORT.exec(ip)?.[1] ?? V6_BRACKETS.exec(ip)?.[1] ?? ip
    key = isIP(bare) === 0 ? 'unparsable' : normalizeIP(bare, 64)
    if (known.size >= KNOWN_MAX) known.clear()
    known.set(ip, key)
  }
  return key
}

/** The identity of a caller nobody authenticated: its address's bucket (above). */
export function anonymousId (ip: string): string {
  return `ip:${addressKey(ip)}`
}

/**
 * Who a request is, in one place for auth, limits, bans and logs: the client auth identified (a key's id,
 * a host-resolved id, or `anonymousId` when no key is required), else, where auth never ran, the address's
 * bucket. `request.ip` honours TRUST_PROXY only as configured on the Fastify instance.
 */
export function clientId (request: { ip: string, oaiProxyClient?: { id: string } | null }): string {
  return request.oaiProxyClient?.id ?? anonymousId(request.ip)
}
