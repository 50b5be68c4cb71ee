import Fastify from 'fastify'
import t from 'tap'
import oaiProxy from '../../app.js'
import { addressKey, anonymousId, clientId } from '../../lib/client-address.js'
import { startFakeOpenAI } from '../../testing/fake-openai.js'
import { assertNoLeak, canaryKey, chatBody, seenByClient } from '../helper.js'

// The bucket of an anonymous caller's address (threat RL03); rate-limit and abuse-guard tests exercise it through the proxy.
t.test('addressKey: one bucket per address, IPv6 by its /64, ports and brackets gone', async (t) => {
  t.equal(addressKey('203.0.113.7'), '203.0.113.7')
  t.equal(addressKey('203.0.113.7:51234'), '203.0.113.7', 'an ip:port from a trusted proxy')
  t.equal(addressKey('2001:db8:1:2:aaaa:bbbb:cccc:dddd'), addressKey('2001:db8:1:2::1'), 'the same /64')
  t.not(addressKey('2001:db8:1:2::1'), addressKey('2001:db8:1:3::1'), 'another /64')
  t.equal(addressKey('[2001:db8:1:2::1]:443'), addressKey('2001:db8:1:2::1'), '[v6]:port')
  t.equal(addressKey('::ffff:198.51.100.1'), '198.51.100.1', 'a mapped IPv4 address is that address')
  t.equal(addressKey('not an address'), 'unparsable')
  t.equal(addressKey('unknown'), 'unparsable')
})

t.test('addressKey: answers stay right past the bound of the keys it remembers', async (t) => {
  const first = addressKey('192.0.2.1')
  // More distinct addresses than it keeps: the memory is emptied and refilled on the way.
  const wrong: string[] = []
  for (let i = 0; i < 5000; i++) {
    const ip = `10.${(i >> 8) & 255}.${i & 255}.9`
    if (addressKey(ip) !== ip || addressKey(`${ip}:80`) !== ip) wrong.push(ip)
  }
  t.strictSame(wrong, [], '5000 addresses, each its own bucket')
  t.equal(addressKey('192.0.2.1'), first)
  t.equal(addressKey('2001:db8:9:9::5'), addressKey('2001:db8:9:9:ffff::1'))
})

t.test('clientId: the client auth identified, else the address bucket; anonymousId is that bucket', async (t) => {
  t.equal(clientId({ ip: '2001:db8:1:2::1', oaiProxyClient: { id: 'key_abc' } }), 'key_abc')
  t.equal(clientId({ ip: '2001:db8:1:2::1', oaiProxyClient: null }), anonymousId('2001:db8:1:2::7'), 'no client (auth never ran): the /64')
  t.equal(clientId({ ip: '203.0.113.7' }), 'ip:203.0.113.7')
  t.not(anonymousId('2001:db8:1:2::1'), anonymousId('2001:db8:1:3::1'), 'another /64, another identity')
})

t.test('auth and the limits see an anonymous caller as one identity: its address bucket (IPv6 by /64)', async (t) => {
  const key = canaryKey()
  const upstream = await startFakeOpenAI({ validKeys: [key] })
  const app = Fastify()
  const seen: string[] = []
  // Outside the suite's scope, after it answered: what auth recorded for the request.
  app.addHook('onResponse', async (request) => { seen.push(String(request.oaiProxyClient?.id)) })
  await app.register(oaiProxy, { upstreamUrl: upstream.url, openaiKeys: [key], proxyKeys: [], keyHealth: { intervalMs: 0 }, rateLimit: { requestsPerWindow: 2, failuresPerMinute: 0 } })
  t.teardown(async () => { await app.close(); await upstream.close() })
  const statuses: number[] = []
  for (const ip of ['2001:db8:1:2::1', '2001:db8:1:2::2', '2001:db8:1:3::1', '2001:db8:1:2::3']) {
    const res = await app.inject({ method: 'POST', url: '/v1/chat/completions', remoteAddress: ip, payload: chatBody() })
    assertNoLeak(t, seenByClient(res), [key], `the answer to ${ip}`)
    statuses.push(res.statusCode)
  }
  const first = anonymousId('2001:db8:1:2::1')
  t.strictSame(seen, [first, first, anonymousId('2001:db8:1:3::1'), first], 'auth names the /64, not the address')
  t.strictSame(statuses, [200, 200, 200, 429], 'and the request window counts that same identity')
})
