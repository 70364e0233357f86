import { test } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import type { IcTransport } from '../src/devices/ic/ic-transport.js';
import {
  IC_BODY_OFFSET,
  IC_RESPONSE_FLAGS,
  IC_SERVICES,
  IcMsgType,
  IcStatus,
  decodeIcHeader,
  encodeIcMessage,
  encodeNegotiate,
  icVersion,
  prepareNegotiateResponse,
  setIcFlags,
} from '../src/devices/ic/ic-protocol.js';
import { IcTimeoutError } from '../src/devices/ic/ic-service.js';
import { HeartbeatService } from '../src/devices/ic/heartbeat-service.js';
import { ShutdownService } from '../src/devices/ic/shutdown-service.js';
import { TimesyncService } from '../src/devices/ic/timesync-service.js';
import { KvpService } from '../src/devices/ic/kvp-service.js';
import { KVP_AUTO_KEYS, KvpPool } from '../src/devices/ic/kvp-protocol.js';
import { TimesyncFlags, encodeTimesyncV3, encodeTimesyncV4, unixNsToFiletime } from '../src/devices/ic/timesync-protocol.js';
import { HeartbeatDriver } from '../src/guest/ic/heartbeat-driver.js';
import { ShutdownDriver } from '../src/guest/ic/shutdown-driver.js';
import { TimesyncDriver } from '../src/guest/ic/timesync-driver.js';
import { KvpDriver } from '../src/guest/ic/kvp-driver.js';
import { ManualGuestClock } from '../src/guest/guest-clock.js';

// ---------------------------------------------------------------------------------------
// An in-memory channel: each side's send() copies the payload and delivers it to the other
// side on a later turn of the event loop, as a ring and an interrupt would.

interface Endpoint {
  onPacket(payload: Uint8Array, transactionId: bigint): void;
}

interface Link<H, G> {
  readonly host: H;
  readonly guest: G;
  /** Every packet in the order it was sent, tagged by direction. */
  readonly trace: Array<{ from: 'host' | 'guest'; msgType: number | undefined }>;
}

function link<H extends Endpoint, G extends Endpoint>(
  makeHost: (t: IcTransport) => H,
  makeGuest: (t: IcTransport) => G,
  trace: Array<{ from: 'host' | 'guest'; msgType: number | undefined }> = [],
): Link<H, G> {
  let host: H | undefined;
  let guest: G | undefined;
  const toGuest: IcTransport = {
    send(payload, transactionId) {
      const copy = payload.slice();
      trace.push({ from: 'host', msgType: decodeIcHeader(copy)?.msgType });
      setImmediate(() => guest!.onPacket(copy, transactionId));
    },
  };
  const toHost: IcTransport = {
    send(payload, transactionId) {
      const copy = payload.slice();
      trace.push({ from: 'guest', msgType: decodeIcHeader(copy)?.msgType });
      setImmediate(() => host!.onPacket(copy, transactionId));
    },
  };
  host = makeHost(toGuest);
  guest = makeGuest(toHost);
  return { host, guest, trace };
}

async function waitFor(cond: () => boolean, what: string, timeoutMs = 2000): Promise<void> {
  const start = Date.now();
  while (!cond()) {
    if (Date.now() - start > timeoutMs) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 2));
  }
}

/** A transport that records what is sent, synchronously, for driving one side by hand. */
function recorder(): IcTransport & { sent: Array<{ payload: Uint8Array; transactionId: bigint }> } {
  const sent: Array<{ payload: Uint8Array; transactionId: bigint }> = [];
  return { sent, send: (payload, transactionId) => void sent.push({ payload: payload.slice(), transactionId }) };
}

const v = icVersion;
const SECOND = 1_000_000_000n;
const HOST_NOW = 1_700_000_000n * SECOND; // November 2023

// ---------------------------------------------------------------------------------------
// Negotiation

test('each service negotiates the versions Linux would choose, on both sides', async () => {
  const clock = new ManualGuestClock();
  const cases = [
    { make: link((t) => new HeartbeatService(t), (t) => new HeartbeatDriver(t)), msg: v(3, 0) },
    { make: link((t) => new ShutdownService(t), (t) => new ShutdownDriver(t)), msg: v(3, 2) },
    {
      make: link(
        (t) => new TimesyncService(t, { referenceCounter: () => clock.referenceCounter(), hostTime: () => HOST_NOW }),
        (t) => new TimesyncDriver(t, { clock }),
      ),
      msg: v(4, 0),
    },
    { make: link((t) => new TimesyncService(t, { hostTime: () => HOST_NOW }), (t) => new TimesyncDriver(t, { clock })), msg: v(3, 0) },
    { make: link((t) => new KvpService(t), (t) => new KvpDriver(t)), msg: v(4, 0) },
  ];
  for (const { make, msg } of cases) {
    make.host.start();
    const versions = await make.host.whenReady();
    assert.deepEqual(versions, { frameworkVersion: v(3, 0), messageVersion: msg });
    assert.equal(make.host.state, 'ready');
    await waitFor(() => make.guest.negotiation !== undefined, 'guest negotiation');
    assert.deepEqual(make.guest.negotiation, { matched: true, frameworkVersion: v(3, 0), messageVersion: msg });
    make.host.close();
    make.guest.close();
  }
});

test('a guest that supports none of the offered versions answers 0/0 and the host gives up', async () => {
  const logs: string[] = [];
  // A host offering only heartbeat 2.0 (built by hand: the service never offers that).
  const guestSide = recorder();
  const guest = new HeartbeatDriver(guestSide);
  guest.onPacket(encodeNegotiate([v(3, 0)], [v(2, 0)]), 5n);
  assert.equal(guestSide.sent.length, 1);
  const reply = guestSide.sent[0]!.payload;
  assert.equal(guestSide.sent[0]!.transactionId, 5n);
  assert.equal(decodeIcHeader(reply)!.flags, IC_RESPONSE_FLAGS);
  assert.equal(new DataView(reply.buffer).getUint32(28, true), 0); // counts 0/0

  // The service side: feed it a 0/0 answer to its own NEGOTIATE.
  const hostSide = recorder();
  const service = new HeartbeatService(hostSide, { log: (m) => logs.push(m) });
  service.start();
  const request = hostSide.sent[0]!;
  const answer = request.payload.slice();
  new DataView(answer.buffer).setUint32(28, 0, true);
  setIcFlags(answer, IC_RESPONSE_FLAGS);
  const ready = service.whenReady();
  service.onPacket(answer, request.transactionId);
  await assert.rejects(ready, /none of the offered versions/);
  assert.equal(service.state, 'failed');
  assert.ok(logs.some((l) => l.includes('negotiation failed')));
});

test('the host refuses a guest that picks a version it did not offer', async () => {
  const hostSide = recorder();
  const service = new ShutdownService(hostSide, { responseTimeoutMs: 1000 });
  service.start();
  const request = hostSide.sent[0]!;
  const answer = request.payload.slice();
  // Claim to have picked shutdown 9.9.
  prepareNegotiateResponse(answer, IC_SERVICES.shutdown.frameworkVersions, [v(3, 2)]);
  new DataView(answer.buffer).setUint16(40, 9, true);
  new DataView(answer.buffer).setUint16(42, 9, true);
  setIcFlags(answer, IC_RESPONSE_FLAGS);
  const pending = service.request('shutdown');
  service.onPacket(answer, request.transactionId);
  await assert.rejects(pending, /9\.9, which was not offered/);
  assert.equal(service.state, 'failed');
});

// ---------------------------------------------------------------------------------------
// Heartbeat

test('heartbeat sequence numbers advance by one per beat', async () => {
  const seen: bigint[] = [];
  const { host, guest } = link(
    (t) => new HeartbeatService(t, { intervalMs: 5, onBeat: (s) => seen.push(s) }),
    (t) => new HeartbeatDriver(t),
  );
  host.start();
  await waitFor(() => host.beats >= 4, 'four heartbeats');
  host.close();
  assert.ok(seen.length >= 4);
  for (let i = 1; i < seen.length; i++) assert.equal(seen[i], seen[i - 1]! + 1n);
  assert.equal(seen[0], 1n);
  assert.equal(host.lastSequence, seen[seen.length - 1]);
  assert.ok(guest.answered >= 4);
});

// ---------------------------------------------------------------------------------------
// Shutdown

test('shutdown and restart get S_OK and the hook runs after the answer was sent', async () => {
  for (const kind of ['shutdown', 'restart'] as const) {
    const trace: Array<{ from: 'host' | 'guest'; msgType: number | undefined }> = [];
    const hooks: string[] = [];
    let tracedWhenHookRan = -1;
    const { host } = link(
      (t) => new ShutdownService(t),
      (t) =>
        new ShutdownDriver(t, {
          onShutdown: (k) => {
            hooks.push(k);
            tracedWhenHookRan = trace.length;
          },
        }),
      trace,
    );
    host.start();
    const status = await host.request(kind, { force: kind === 'restart', message: 'maintenance' });
    assert.equal(status, IcStatus.S_OK);
    assert.deepEqual(hooks, [kind]);
    // The last traced packet before the hook ran is the guest's shutdown answer.
    assert.deepEqual(trace[tracedWhenHookRan - 1], { from: 'guest', msgType: IcMsgType.SHUTDOWN });
    host.close();
  }
});

test('hibernate gets E_FAIL unless the guest supports it', async () => {
  const hooks: string[] = [];
  const plain = link((t) => new ShutdownService(t), (t) => new ShutdownDriver(t, { onShutdown: (k) => hooks.push(k) }));
  plain.host.start();
  assert.equal(await plain.host.request('hibernate'), IcStatus.E_FAIL);
  assert.equal(hooks.length, 0);
  plain.host.close();

  const capable = link(
    (t) => new ShutdownService(t),
    (t) => new ShutdownDriver(t, { hibernationSupported: true, onShutdown: (k) => hooks.push(k) }),
  );
  capable.host.start();
  assert.equal(await capable.host.request('hibernate'), IcStatus.S_OK);
  assert.deepEqual(hooks, ['hibernate']);
  capable.host.close();
});

// ---------------------------------------------------------------------------------------
// Time sync

test('timesync v4: the SYNC sample steps the guest clock to the host time', async () => {
  const clock = new ManualGuestClock({ referenceCounter: 123_456n, now: 0n });
  const { host, guest } = link(
    (t) =>
      new TimesyncService(t, {
        hostTime: () => HOST_NOW,
        referenceCounter: () => clock.referenceCounter(),
        sampleIntervalMs: 60_000,
      }),
    (t) => new TimesyncDriver(t, { clock }),
  );
  host.start();
  await waitFor(() => guest.steps === 1, 'the clock step');
  const error = clock.now() - HOST_NOW;
  assert.ok(error >= -100n && error <= 100n, `guest clock off by ${error} ns`);
  assert.equal(host.samplesSent, 1);
  await waitFor(() => host.samplesAnswered === 1, 'the answer');
  host.close();
});

test('timesync v3 (no reference counter on the host) also steps the clock', async () => {
  const clock = new ManualGuestClock({ now: 5n * SECOND });
  const { host, guest } = link(
    (t) => new TimesyncService(t, { hostTime: () => HOST_NOW, sampleIntervalMs: 60_000 }),
    (t) => new TimesyncDriver(t, { clock }),
  );
  host.start();
  assert.deepEqual((await host.whenReady()).messageVersion, v(3, 0));
  await waitFor(() => guest.steps === 1, 'the clock step');
  assert.equal(clock.now(), HOST_NOW);
  host.close();
});

test('timesync SAMPLE messages keep the sample but do not step; the host sends them periodically', async () => {
  const clock = new ManualGuestClock({ now: 0n });
  const { host, guest } = link(
    (t) => new TimesyncService(t, { hostTime: () => HOST_NOW, referenceCounter: () => clock.referenceCounter(), sampleIntervalMs: 5 }),
    (t) => new TimesyncDriver(t, { clock }),
  );
  host.start();
  await waitFor(() => guest.samples >= 4, 'periodic samples');
  host.close();
  assert.equal(guest.steps, 1); // only the first (SYNC) sample stepped
});

/** A negotiated v4 (or v3) timesync driver driven by hand, with deferred work under test control. */
function manualTimesync(clock: ManualGuestClock, version: 3 | 4): { driver: TimesyncDriver; work: Array<() => void>; send: (body: Uint8Array) => void } {
  const work: Array<() => void> = [];
  const driver = new TimesyncDriver(recorder(), { clock, schedule: (w) => void work.push(w) });
  driver.onPacket(encodeNegotiate([v(3, 0)], version === 4 ? [v(4, 0)] : [v(3, 0)]), 1n);
  let id = 2n;
  const send = (body: Uint8Array): void =>
    driver.onPacket(
      encodeIcMessage({ frameworkVersion: v(3, 0), messageVersion: v(version, 0), msgType: IcMsgType.TIMESYNC, flags: 3 }, body),
      id++,
    );
  return { driver, work, send };
}

test('timesync v4 corrects a sample by the reference time it spent in transit', () => {
  const clock = new ManualGuestClock({ referenceCounter: 1_000_000_000n, now: 0n });
  const { work, send } = manualTimesync(clock, 4);
  // The host read its clock 30 s (of reference time) before the guest got the sample.
  const ref30sAgo = clock.referenceCounter() - 300_000_000n;
  send(encodeTimesyncV4({ parentTime: unixNsToFiletime(HOST_NOW), vmReferenceTime: ref30sAgo, flags: TimesyncFlags.SYNC, leapFlags: 0, stratum: 0 }));
  assert.equal(work.length, 1);
  work.shift()!();
  assert.equal(clock.now(), HOST_NOW + 30n * SECOND);
});

test('timesync: a SYNC whose step runs more than 600 s after receipt is stale and ignored', () => {
  const clock = new ManualGuestClock({ now: 0n });
  const { driver, work, send } = manualTimesync(clock, 4);
  const sync = (): void =>
    send(encodeTimesyncV4({ parentTime: unixNsToFiletime(HOST_NOW), vmReferenceTime: clock.referenceCounter(), flags: TimesyncFlags.SYNC, leapFlags: 0, stratum: 0 }));

  sync();
  clock.advance(601n * SECOND);
  work.shift()!();
  assert.equal(driver.steps, 0);
  assert.equal(clock.now(), 601n * SECOND);
  assert.equal(driver.getAdjustedHostTime()!.stale, true);

  sync();
  clock.advance(599n * SECOND);
  work.shift()!();
  assert.equal(driver.steps, 1);
  assert.equal(clock.now(), HOST_NOW + 599n * SECOND);
});

test('timesync: SYNC work is coalesced and uses the latest sample; v3 bodies before v4 negotiation', () => {
  const clock = new ManualGuestClock({ now: 0n });
  const { driver, work, send } = manualTimesync(clock, 3);
  send(encodeTimesyncV3({ parentTime: unixNsToFiletime(HOST_NOW), childTime: 0n, roundTripTime: 0n, flags: TimesyncFlags.SYNC }));
  send(encodeTimesyncV3({ parentTime: unixNsToFiletime(HOST_NOW + SECOND), childTime: 0n, roundTripTime: 0n, flags: TimesyncFlags.SAMPLE }));
  assert.equal(work.length, 1);
  work.shift()!();
  assert.equal(clock.now(), HOST_NOW + SECOND);
  assert.equal(driver.samples, 2);
});

// ---------------------------------------------------------------------------------------
// KVP

function kvpLink(options: ConstructorParameters<typeof KvpDriver>[1] = {}, timeoutMs = 2000): Link<KvpService, KvpDriver> {
  const l = link((t) => new KvpService(t, { timeoutMs }), (t) => new KvpDriver(t, options));
  l.host.start();
  return l;
}

test('KVP: values the host sets in the EXTERNAL pool appear in the guest', async () => {
  const { host, guest } = kvpLink();
  assert.equal(await host.set(KvpPool.EXTERNAL, 'VirtualMachineName', 'test-vm'), IcStatus.S_OK);
  assert.equal(await host.set(KvpPool.EXTERNAL, 'Ünïcødé ✓ 😀', 'välue 😀'), IcStatus.S_OK);
  assert.equal(await host.set(KvpPool.EXTERNAL, 'Count', 42), IcStatus.S_OK);
  assert.equal(await host.set(KvpPool.EXTERNAL, 'Big', 1n << 40n), IcStatus.S_OK);
  assert.equal(await host.set(KvpPool.EXTERNAL, 'VirtualMachineName', 'renamed'), IcStatus.S_OK);
  assert.equal(guest.getValue(KvpPool.EXTERNAL, 'VirtualMachineName'), 'renamed');
  assert.equal(guest.getValue(KvpPool.EXTERNAL, 'Ünïcødé ✓ 😀'), 'välue 😀');
  assert.equal(guest.getValue(KvpPool.EXTERNAL, 'Count'), '42'); // the kernel prints integers
  assert.equal(guest.getValue(KvpPool.EXTERNAL, 'Big'), '1099511627776');
  assert.deepEqual(
    guest.entries(KvpPool.EXTERNAL).map((e) => e.key),
    ['VirtualMachineName', 'Ünïcødé ✓ 😀', 'Count', 'Big'],
  );
  assert.deepEqual(await host.enumerate(KvpPool.EXTERNAL), [
    { key: 'VirtualMachineName', value: 'renamed' },
    { key: 'Ünïcødé ✓ 😀', value: 'välue 😀' },
    { key: 'Count', value: '42' },
    { key: 'Big', value: '1099511627776' },
  ]);
  host.close();
});

test('KVP: guest values are readable by the host through enumerate and get', async () => {
  const { host, guest } = kvpLink();
  guest.setGuestValue('GuestKey', 'GuestValue');
  guest.setGuestValue('Other', '2');
  assert.deepEqual(await host.enumerate(KvpPool.GUEST), [
    { key: 'GuestKey', value: 'GuestValue' },
    { key: 'Other', value: '2' },
  ]);
  // Linux answers GET of an existing key with S_OK and an empty value (see kvp-driver.ts).
  assert.deepEqual(await host.get(KvpPool.GUEST, 'GuestKey'), { status: IcStatus.S_OK, value: '' });
  assert.deepEqual(await host.get(KvpPool.GUEST, 'Missing'), { status: IcStatus.NO_MORE_ITEMS });
  host.close();

  const fixed = kvpLink({ getReturnsValue: true });
  fixed.guest.setGuestValue('GuestKey', 'GuestValue');
  assert.deepEqual(await fixed.host.get(KvpPool.GUEST, 'GuestKey'), { status: IcStatus.S_OK, value: 'GuestValue' });
  fixed.host.close();
});

test('KVP: delete removes a key; deleting it again reports no more items', async () => {
  const { host, guest } = kvpLink();
  await host.set(KvpPool.EXTERNAL, 'a', '1');
  await host.set(KvpPool.EXTERNAL, 'b', '2');
  await host.set(KvpPool.EXTERNAL, 'c', '3');
  assert.equal(await host.delete(KvpPool.EXTERNAL, 'b'), IcStatus.S_OK);
  assert.equal(guest.getValue(KvpPool.EXTERNAL, 'b'), undefined);
  assert.equal(await host.delete(KvpPool.EXTERNAL, 'b'), IcStatus.NO_MORE_ITEMS);
  assert.deepEqual(await host.enumerate(KvpPool.EXTERNAL), [
    { key: 'a', value: '1' },
    { key: 'c', value: '3' },
  ]);
  host.close();
});

test('KVP: enumerating an empty pool ends cleanly; AUTO holds the daemon intrinsic values', async () => {
  const { host } = kvpLink({ info: { fullyQualifiedDomainName: 'vm1.example.com', osName: 'Debian GNU/Linux', osMajorVersion: '12', networkAddressIPv4: '10.0.0.2;' } });
  assert.deepEqual(await host.enumerate(KvpPool.AUTO_INTERNAL), []);
  assert.deepEqual(await host.enumerate(KvpPool.EXTERNAL), []);
  const auto = await host.enumerate(KvpPool.AUTO);
  assert.deepEqual(auto.map((e) => e.key), [...KVP_AUTO_KEYS]);
  const byKey = new Map(auto.map((e) => [e.key, e.value]));
  assert.equal(byKey.get('FullyQualifiedDomainName'), 'vm1.example.com');
  assert.equal(byKey.get('OSName'), 'Debian GNU/Linux');
  assert.equal(byKey.get('OSMajorVersion'), '12');
  assert.equal(byKey.get('NetworkAddressIPv4'), '10.0.0.2;');
  assert.equal(byKey.get('IntegrationServicesVersion'), '3.1');
  host.close();
});

test('KVP: queued requests run one at a time, in order', async () => {
  const trace: Array<{ from: 'host' | 'guest'; msgType: number | undefined }> = [];
  const { host, guest } = link((t) => new KvpService(t), (t) => new KvpDriver(t), trace);
  host.start();
  const results = await Promise.all([
    host.set(KvpPool.EXTERNAL, 'k1', 'v1'),
    host.set(KvpPool.EXTERNAL, 'k2', 'v2'),
    host.delete(KvpPool.EXTERNAL, 'k1'),
    host.enumerate(KvpPool.EXTERNAL),
  ]);
  assert.deepEqual(results, [IcStatus.S_OK, IcStatus.S_OK, IcStatus.S_OK, [{ key: 'k2', value: 'v2' }]]);
  // Host and guest strictly alternate once negotiated: never two requests outstanding.
  const kvp = trace.filter((e) => e.msgType === IcMsgType.KVP_EXCHANGE).map((e) => e.from);
  for (let i = 0; i < kvp.length; i++) assert.equal(kvp[i], i % 2 === 0 ? 'host' : 'guest');
  assert.equal(guest.entries(KvpPool.EXTERNAL).length, 1);
  host.close();
});

test('KVP: a guest without the daemon never answers, and the request times out', async () => {
  const { host, guest } = kvpLink({ daemon: false }, 50);
  const started = Date.now();
  await assert.rejects(host.set(KvpPool.EXTERNAL, 'k', 'v'), IcTimeoutError);
  assert.ok(Date.now() - started < 1000);
  assert.equal(host.state, 'negotiating');
  // When the daemon starts, the waiting NEGOTIATE is answered and requests go through.
  guest.startDaemon();
  await host.whenReady();
  assert.equal(await host.set(KvpPool.EXTERNAL, 'k', 'v'), IcStatus.S_OK);
  host.close();
});

test('KVP: a guest that negotiates but drops requests makes each request time out', async () => {
  const dropped: bigint[] = [];
  const { host } = link(
    (t) => new KvpService(t, { timeoutMs: 40 }),
    (t) => ({
      onPacket(payload: Uint8Array, transactionId: bigint) {
        const packet = payload.slice();
        if (decodeIcHeader(packet)?.msgType !== IcMsgType.NEGOTIATE) {
          dropped.push(transactionId);
          return;
        }
        prepareNegotiateResponse(packet, IC_SERVICES.kvp.frameworkVersions, IC_SERVICES.kvp.messageVersions);
        setIcFlags(packet, IC_RESPONSE_FLAGS);
        t.send(packet, transactionId);
      },
    }),
  );
  host.start();
  await assert.rejects(host.set(KvpPool.EXTERNAL, 'k', 'v'), IcTimeoutError);
  await assert.rejects(host.enumerate(KvpPool.GUEST), IcTimeoutError);
  assert.equal(dropped.length, 2);
  host.close();
});

test('KVP: bad requests are refused on the host; pools beyond 4 are refused by the guest', async () => {
  const { host } = kvpLink();
  await assert.rejects(host.set(KvpPool.EXTERNAL, 'k'.repeat(300), 'v'), RangeError);
  await assert.rejects(host.set(KvpPool.EXTERNAL, 'k', 1.5), RangeError);
  assert.equal(await host.set(7, 'k', 'v'), IcStatus.E_FAIL);
  assert.deepEqual(await host.enumerate(9), []);
  host.close();
});

test('close() rejects whatever is waiting', async () => {
  const { host } = kvpLink({ daemon: false }, 10_000);
  const pending = host.set(KvpPool.EXTERNAL, 'k', 'v');
  host.close();
  await assert.rejects(pending, /closed/);
  assert.equal(host.state, 'closed');
});

// ---------------------------------------------------------------------------------------
// Hostile input

/** Random packets, some with a plausible header of a random IC type. */
const hostilePacket = fc.oneof(
  fc.uint8Array({ maxLength: 5000 }),
  fc
    .record({
      msgType: fc.integer({ min: 0, max: 8 }),
      flags: fc.integer({ min: 0, max: 255 }),
      body: fc.uint8Array({ maxLength: 3000 }),
      major: fc.integer({ min: 0, max: 5 }),
    })
    .map(({ msgType, flags, body, major }) =>
      encodeIcMessage({ frameworkVersion: v(3, 0), messageVersion: v(major, 0), msgType, flags }, body),
    ),
);

test('guest drivers survive garbage: no exception, answers keep length and transaction id', () => {
  const clock = new ManualGuestClock();
  fc.assert(
    fc.property(fc.boolean(), fc.array(fc.tuple(hostilePacket, fc.bigInt({ min: 0n, max: (1n << 64n) - 1n })), { maxLength: 6 }), (negotiated, packets) => {
      const makers = [
        (t: IcTransport) => new HeartbeatDriver(t),
        (t: IcTransport) => new ShutdownDriver(t, { hibernationSupported: true }),
        (t: IcTransport) => new TimesyncDriver(t, { clock, schedule: (w) => w() }),
        (t: IcTransport) => new KvpDriver(t),
      ];
      for (const make of makers) {
        const side = recorder();
        const driver = make(side);
        // Some runs start negotiated (v4 timesync bodies), some not (v3 bodies).
        if (negotiated) driver.onPacket(encodeNegotiate([v(3, 0)], [v(4, 0), v(3, 2), v(3, 0)]), 0n);
        for (const [packet, id] of packets) {
          const before = side.sent.length;
          driver.onPacket(packet, id);
          for (const reply of side.sent.slice(before)) {
            assert.equal(reply.payload.length, packet.length);
            assert.equal(reply.transactionId, id);
            assert.equal(decodeIcHeader(reply.payload)!.flags, IC_RESPONSE_FLAGS);
          }
        }
      }
    }),
    { numRuns: 150 },
  );
});

test('host services survive garbage from the guest', () => {
  fc.assert(
    fc.property(fc.array(fc.tuple(hostilePacket, fc.bigInt({ min: 0n, max: 10n })), { maxLength: 6 }), (packets) => {
      const services = [
        new HeartbeatService(recorder(), { intervalMs: 60_000 }),
        new ShutdownService(recorder()),
        new TimesyncService(recorder(), { sampleIntervalMs: 60_000 }),
        new KvpService(recorder()),
      ];
      for (const service of services) {
        service.whenReady().catch(() => undefined);
        service.start();
        for (const [packet, id] of packets) service.onPacket(packet, id);
        service.close();
      }
    }),
    { numRuns: 150 },
  );
});

test('hostile negotiation from the host: counts over 100 get a 0/0 answer, never a crash', () => {
  const side = recorder();
  const driver = new KvpDriver(side);
  const packet = encodeNegotiate([v(3, 0)], [v(4, 0)]);
  new DataView(packet.buffer).setUint16(IC_BODY_OFFSET + 2, 101, true);
  driver.onPacket(packet, 3n);
  assert.equal(side.sent.length, 1);
  assert.equal(new DataView(side.sent[0]!.payload.buffer).getUint32(IC_BODY_OFFSET, true), 0);
  assert.equal(driver.negotiation!.matched, false);
});

test('guest drivers drop short and oversized packets without answering', () => {
  const side = recorder();
  const logs: string[] = [];
  const hb = new HeartbeatDriver(side, { log: (m) => logs.push(m) });
  hb.onPacket(new Uint8Array(27), 1n);
  hb.onPacket(new Uint8Array(4097), 2n);
  hb.onPacket(encodeIcMessage({ frameworkVersion: v(3, 0), messageVersion: v(3, 0), msgType: IcMsgType.HEARTBEAT, flags: 3 }, new Uint8Array(7)), 3n);
  const sd = new ShutdownDriver(side, { log: (m) => logs.push(m) });
  sd.onPacket(encodeIcMessage({ frameworkVersion: v(3, 0), messageVersion: v(3, 2), msgType: IcMsgType.SHUTDOWN, flags: 3 }, new Uint8Array(2059)), 4n);
  assert.equal(side.sent.length, 0);
  assert.equal(logs.length, 4);
  // A wrong message type is answered, with E_FAIL.
  hb.onPacket(encodeIcMessage({ frameworkVersion: v(3, 0), messageVersion: v(3, 0), msgType: IcMsgType.SHUTDOWN, flags: 3 }, new Uint8Array(40)), 5n);
  assert.equal(side.sent.length, 1);
  assert.equal(decodeIcHeader(side.sent[0]!.payload)!.status, IcStatus.E_FAIL);
});
