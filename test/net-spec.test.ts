// `--net` specs: what is accepted, what is refused with a message that says how to fix it.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import { formatMac, NetSpecError, parseMac, parseNetSpec } from '../src/vm/net-spec.js';

test('tap and switch specs with their options', () => {
  assert.deepEqual(parseNetSpec('tap=vm0'), { kind: 'tap', name: 'vm0' });
  const tap = parseNetSpec('tap=vm0,mac=00:15:5d:01:02:03,mtu=9000,queues=4,netns=hostns');
  assert.equal(tap.kind, 'tap');
  assert.equal(formatMac(tap.mac!), '00:15:5d:01:02:03');
  assert.equal(tap.mtu, 9000);
  assert.equal(tap.queues, 4);
  assert.equal(tap.kind === 'tap' && tap.netns, 'hostns');
  assert.deepEqual(parseNetSpec('switch=/tmp/hub.sock,mtu=1400'), { kind: 'switch', path: '/tmp/hub.sock', mtu: 1400 });
});

test('bad specs are refused with a NetSpecError naming the problem', () => {
  for (const [text, message] of [
    ['vde=/x', /use tap=NAME/],
    ['tap=', /interface name/],
    ['tap=waytoolonginterfacename', /interface name/],
    ['switch=', /socket path/],
    ['tap=a,mtu=9001', /mtu must be/],
    ['tap=a,queues=0', /queues must be/],
    ['tap=a,mac=01:00:5e:00:00:01', /multicast/],
    ['tap=a,mac=zz:00:00:00:00:00', /not a MAC/],
    ['switch=/x,netns=a', /netns= is for tap/],
    ['tap=a,speed=10', /unknown option 'speed'/],
  ] as const) {
    assert.throws(() => parseNetSpec(text), (e: Error) => e instanceof NetSpecError && message.test(e.message), text);
  }
});

test('any string either parses or throws a NetSpecError; MACs round-trip', () => {
  fc.assert(fc.property(fc.string({ maxLength: 80 }), (text) => {
    try {
      parseNetSpec(text);
    } catch (e) {
      assert.ok(e instanceof NetSpecError, `${text}: ${(e as Error).message}`);
    }
  }), { numRuns: 2000 });
  fc.assert(fc.property(fc.uint8Array({ minLength: 6, maxLength: 6 }), (bytes) => {
    bytes[0]! &= 0xfe;
    assert.deepEqual(parseMac(formatMac(bytes)), bytes);
  }));
});
