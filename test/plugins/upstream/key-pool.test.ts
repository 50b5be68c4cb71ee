import t from 'tap'
import { KeyPool, fingerprint } from '../../../plugins/upstream/key-pool.js'

t.test('least recently used, skipping disabled and cooling keys', async (t) => {
  let now = 1000
  const pool = new KeyPool(['a', 'b', 'c', 'a'], () => now)
  t.equal(pool.secrets.length, 3, 'duplicates collapse')
  t.strictSame([pool.acquire()?.key, pool.acquire()?.key, pool.acquire()?.key, pool.acquire()?.key], ['a', 'b', 'c', 'a'])
  pool.disable(fingerprint('b'), 'invalid_api_key')
  pool.coolDown(fingerprint('c'), 500)
  t.strictSame([pool.acquire()?.key, pool.acquire()?.key], ['a', 'a'], 'only a is fully usable')
  t.strictSame(pool.describe().map((k) => k.state), ['active', 'invalid_api_key', 'cooling'])
  pool.disable(fingerprint('a'), 'insufficient_quota')
  t.equal(pool.acquire()?.key, 'c', 'a cooling key is better than none')
  now += 600
  t.strictSame(pool.describe().map((k) => k.state), ['insufficient_quota', 'invalid_api_key', 'active'])
  t.equal(pool.usableCount, 1)
  t.equal(pool.acquire(new Set([fingerprint('c')])), undefined, 'excluded keys are not handed out')
})

t.test('fingerprints are short, stable and do not contain the secret', async (t) => {
  t.equal(fingerprint('sk-secret'), fingerprint('sk-secret'))
  t.match(fingerprint('sk-secret'), /^key_[0-9a-f]{10}$/)
  t.notMatch(fingerprint('sk-secret'), /secret/)
})

t.test('when every key is cooling, the one whose cool-down ends first is handed out', async (t) => {
  const pool = new KeyPool(['a', 'b', 'c'], () => 1000)
  pool.coolDown(fingerprint('a'), 900)
  pool.coolDown(fingerprint('b'), 300)
  pool.coolDown(fingerprint('c'), 600)
  t.strictSame(pool.describe().map((k) => k.state), ['cooling', 'cooling', 'cooling'])
  t.equal(pool.acquire()?.key, 'b')
  t.equal(pool.acquire(new Set([fingerprint('b')]))?.key, 'c')
})
