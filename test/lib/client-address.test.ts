import t from 'tap'
import { addressKey } from '../../lib/client-address.js'

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
