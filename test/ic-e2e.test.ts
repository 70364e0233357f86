// The integration services end to end: host service -> VMBus server -> rings in guest RAM
// -> reference guest driver, and back.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { createTestVm, until } from './support/process-vm.js';

test('shutdown IC: the guest acknowledges, closes its channels and powers off cleanly', async () => {
  const t = createTestVm();
  try {
    await t.vm.start();
    assert.equal(await t.devices.shutdown.service!.request('shutdown'), 0);
    const exit = await t.vm.waitForExit();
    assert.deepEqual(exit, { code: 0, reason: 'shutdown integration service: shutdown' });
    assert.ok(t.reports.some((r) => r.event === 'power-off'));
    // Orderly: every channel was closed and its GPADL torn down by the guest before it stopped.
    assert.deepEqual(t.vm.server.resources(), { gpadls: 0, pendingGpadls: 0, openChannels: 0, mappings: 0, signals: 0 });
  } finally {
    await t.vm.stop();
  }
});

test('heartbeat: sequence numbers advance and the guest answers each one', async () => {
  const t = createTestVm({ heartbeatIntervalMs: 20 });
  try {
    await t.vm.start();
    const service = t.devices.heartbeat.service!;
    await until(() => service.beats >= 5, 5000, 'five heartbeats');
    const first = service.lastSequence!;
    await until(() => service.lastSequence! > first, 5000, 'a later heartbeat');
    const guest = (await t.vm.request({ op: 'heartbeat' })) as { answered: number; lastSequence: string };
    assert.ok(guest.answered >= 5);
    assert.ok(BigInt(guest.lastSequence) >= first);
  } finally {
    await t.vm.stop();
  }
});

test('timesync: the guest clock, an hour off at boot, is set to the host time', async () => {
  const t = createTestVm({ guestClockSkewMs: -3_600_000 });
  try {
    await t.vm.start();
    await until(async () => {
      const guestNow = BigInt((await t.vm.request({ op: 'clock' })) as string);
      const hostNow = BigInt(Date.now()) * 1_000_000n;
      const diff = guestNow > hostNow ? guestNow - hostNow : hostNow - guestNow;
      return diff < 1_000_000_000n;
    }, 5000, 'guest clock within 1 s of the host');
    assert.ok(t.devices.timesync.service!.samplesAnswered >= 1);
  } finally {
    await t.vm.stop();
  }
});

test('KVP: pools exchange key/value pairs both ways', async () => {
  const t = createTestVm({ guestHostname: 'kvp-test-guest' });
  try {
    await t.vm.start();
    const kvp = t.devices.kvp.service!;
    // Host to guest: the external pool.
    assert.equal(await kvp.set(0, 'HostName', 'builder-7'), 0);
    const external = (await t.vm.request({ op: 'kvp-pool', pool: 0 })) as { key: string; value: unknown }[];
    assert.ok(external.some((e) => e.key === 'HostName' && String(e.value) === 'builder-7'), JSON.stringify(external));
    // Guest to host: the guest pool, read by enumeration.
    await t.vm.request({ op: 'kvp-set', key: 'GuestRole', value: 'database' });
    const guestPool = await kvp.enumerate(1);
    assert.ok(guestPool.some((e) => e.key === 'GuestRole' && String(e.value) === 'database'), JSON.stringify(guestPool));
    // The guest's intrinsic (auto) pool carries its identity.
    const auto = await kvp.enumerate(2);
    assert.ok(auto.some((e) => e.key === 'FullyQualifiedDomainName' && String(e.value) === 'kvp-test-guest'), JSON.stringify(auto));
    assert.equal(await kvp.delete(0, 'HostName'), 0);
    const after = (await t.vm.request({ op: 'kvp-pool', pool: 0 })) as { key: string }[];
    assert.ok(!after.some((e) => e.key === 'HostName'));
  } finally {
    await t.vm.stop();
  }
});
