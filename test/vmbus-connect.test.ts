// The reference guest against the VMBus server through the process partition: version
// negotiation, offers, opens, unload and reconnect, rescind and hot-add.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { IC_SERVICES } from '../src/devices/ic/ic-protocol.js';
import { VERSION_WIN10, VERSION_WIN10_V5, VERSION_WIN8, VERSION_WIN8_1 } from '../src/vmbus/versions.js';
import { createTestVm, until } from './support/process-vm.js';

const IC_NAMES = ['heartbeat', 'shutdown', 'timesync', 'kvp'];

test('guest negotiates the newest version and opens every offered channel', async () => {
  const t = createTestVm();
  try {
    assert.equal(await t.vm.start(), '5.3');
    assert.deepEqual(t.reports.filter((r) => r.event === 'vmbus-connected'), [{ event: 'vmbus-connected', version: '5.3' }]);
    const opened = t.reports.filter((r) => r.event === 'channel-open') as Extract<(typeof t.reports)[number], { event: 'channel-open' }>[];
    assert.deepEqual(opened.map((r) => r.name).sort(), [...IC_NAMES].sort());
    for (const r of opened) assert.equal(r.class, IC_SERVICES[r.name as keyof typeof IC_SERVICES].classId);
    assert.deepEqual(t.vm.server.channelInfo().map((c) => c.state), ['open', 'open', 'open', 'open']);
    assert.deepEqual(t.vm.server.resources(), { gpadls: 4, pendingGpadls: 0, openChannels: 4, mappings: 8, signals: 4 });
  } finally {
    await t.vm.stop();
  }
});

for (const [limit, expected] of [
  [VERSION_WIN10_V5, '5.0'],
  [VERSION_WIN10, '4.0'],
  [VERSION_WIN8_1, '3.0'],
  [VERSION_WIN8, '2.4'],
] as const) {
  test(`server limited to ${expected}: the guest walks down to it and still opens its channels`, async () => {
    const t = createTestVm({ maxVersion: limit });
    try {
      assert.equal(await t.vm.start(), expected);
      assert.equal(t.vm.server.negotiatedVersion, expected);
      await until(() => t.vm.server.resources().openChannels === 4, 5000, 'channels to open');
      // Each newer version was refused first, the way Hyper-V refuses: version_supported = 0.
      const refusals = t.logs.filter((l) => l.startsWith('refused VMBus version'));
      assert.ok(refusals.length >= 1, 'older version reached only after refusals');
    } finally {
      await t.vm.stop();
    }
  });
}

test('a version the host does not support is refused and the guest gives up cleanly', async () => {
  // The guest tries at most 3.0; the host accepts only 4.0 and newer.
  const t = createTestVm({ guestMaxVersion: VERSION_WIN8_1 });
  (t.vm.server as unknown as { minVersion: number }).minVersion = VERSION_WIN10;
  try {
    await assert.rejects(t.vm.start(), /refused every VMBus version/);
    assert.equal(t.vm.server.connected, false);
    assert.deepEqual(t.logs.filter((l) => l.startsWith('refused VMBus version')).map((l) => l.split(':')[0]), ['refused VMBus version 3.0', 'refused VMBus version 2.4']);
    assert.deepEqual(t.vm.server.resources(), { gpadls: 0, pendingGpadls: 0, openChannels: 0, mappings: 0, signals: 0 });
  } finally {
    await t.vm.stop();
  }
});

test('unload and reconnect: channels and GPADLs come back and the server leaks nothing', async () => {
  const t = createTestVm();
  try {
    await t.vm.start();
    for (let round = 0; round < 3; round++) {
      await t.vm.request({ op: 'unload', closeChannels: round % 2 === 0 });
      assert.equal(t.vm.server.connected, false);
      assert.deepEqual(t.vm.server.resources(), { gpadls: 0, pendingGpadls: 0, openChannels: 0, mappings: 0, signals: 0 }, `after unload ${round}`);
      assert.equal(await t.vm.request({ op: 'boot' }), '5.3');
      assert.deepEqual(t.vm.server.resources(), { gpadls: 4, pendingGpadls: 0, openChannels: 4, mappings: 8, signals: 4 }, `after reconnect ${round}`);
    }
    const state = (await t.vm.request({ op: 'state' })) as { channels: { open: boolean }[] };
    assert.equal(state.channels.filter((c) => c.open).length, 4);
    // The services work on the reconnected channels.
    assert.equal(await t.devices.kvp.service!.set(0, 'after-reconnect', 'yes'), 0);
  } finally {
    await t.vm.stop();
  }
});

test('rescind (hot-remove) and hot-add of a device', async () => {
  const t = createTestVm();
  try {
    await t.vm.start();
    const kvpRelid = t.vm.server.channelInfo().find((c) => c.name === 'kvp')!.relid;
    t.vm.server.removeDevice(t.devices.kvp);
    await t.waitForReport((r) => r.event === 'rescind' && r.relid === kvpRelid);
    // The guest closes the channel and releases the relid; the server forgets it.
    await until(() => !t.vm.server.channelInfo().some((c) => c.relid === kvpRelid), 5000, 'relid release');
    assert.deepEqual(t.vm.server.resources(), { gpadls: 3, pendingGpadls: 0, openChannels: 3, mappings: 6, signals: 3 });
    t.reports.length = 0; // the relid may be reused: only reports from now on count
    const relid = t.vm.server.addDevice(t.devices.kvp);
    await t.waitForReport((r) => r.event === 'channel-open' && r.relid === relid && r.name === 'kvp');
    assert.equal(await t.devices.kvp.service!.set(0, 'hot-added', '1'), 0);
  } finally {
    await t.vm.stop();
  }
});

test('MODIFYCHANNEL moves a channel to another VP and its interrupts follow', async () => {
  const t = createTestVm({ heartbeatIntervalMs: 20 });
  try {
    await t.vm.start();
    const relid = t.vm.server.channelInfo().find((c) => c.name === 'heartbeat')!.relid;
    assert.equal(await t.vm.request({ op: 'retarget', relid, vp: 1 }), 0);
    assert.equal(t.vm.server.channelInfo().find((c) => c.relid === relid)!.targetVp, 1);
    const before = ((await t.vm.request({ op: 'heartbeat' })) as { answered: number }).answered;
    await until(async () => ((await t.vm.request({ op: 'heartbeat' })) as { answered: number }).answered >= before + 3, 5000, 'heartbeats on VP 1');
    // A VP that does not exist is refused with a status, not a crash.
    assert.notEqual(await t.vm.request({ op: 'retarget', relid, vp: 7 }), 0);
  } finally {
    await t.vm.stop();
  }
});

test('sub-channels are offered with the primary\'s GUIDs and attach to the primary in the guest', async () => {
  const t = createTestVm();
  try {
    await t.vm.start();
    const primary = t.vm.server.channelInfo().find((c) => c.name === 'kvp')!;
    const relid = t.vm.server.addSubchannel(t.devices.kvp, 1);
    assert.throws(() => t.vm.server.addSubchannel(t.devices.kvp, 1), /already has sub-channel 1/);
    assert.throws(() => t.vm.server.addSubchannel(t.devices.kvp, 0), /1\.\.65535/);
    const offer = await t.waitForReport((r) => r.event === 'offer' && r.relid === relid);
    assert.deepEqual(offer, { event: 'offer', relid, class: primary.classId, instance: primary.instanceId });
    const state = (await t.vm.request({ op: 'state' })) as { channels: { relid: number; subChannelIndex: number; primary: number | null }[] };
    assert.deepEqual(state.channels.find((c) => c.relid === relid), { ...state.channels.find((c) => c.relid === relid), subChannelIndex: 1, primary: primary.relid });
    assert.equal(t.vm.server.channelInfo().find((c) => c.relid === relid)!.subChannelIndex, 1);
    // Reconnect: sub-channels ended with the session (a new guest asks its VSP for them,
    // and netvsc waits for exactly the offers it asked for), so only the primary returns;
    // the device can then offer the sub-channel again and it attaches as before.
    await t.vm.request({ op: 'unload', closeChannels: true });
    assert.equal(t.vm.server.hasSubchannel(t.devices.kvp, 1), false);
    await t.vm.request({ op: 'boot' });
    const after = (await t.vm.request({ op: 'state' })) as { channels: { relid: number; subChannelIndex: number; primary: number | null }[] };
    assert.equal(after.channels.filter((c) => c.subChannelIndex > 0).length, 0);
    const again = t.vm.server.addSubchannel(t.devices.kvp, 1);
    // The relid may be reused, so wait for a new offer report, not any report with it.
    const offersBefore = t.reports.filter((r) => r.event === 'offer' && r.relid === again).length;
    await until(() => t.reports.filter((r) => r.event === 'offer' && r.relid === again).length > offersBefore, 5000, 'the new sub-channel offer');
    const reattached = (await t.vm.request({ op: 'state' })) as { channels: { relid: number; primary: number | null }[] };
    const primaryNow = t.vm.server.channelInfo().find((c) => c.name === 'kvp' && c.subChannelIndex === 0)!;
    assert.equal(reattached.channels.find((c) => c.relid === again)!.primary, primaryNow.relid);
  } finally {
    await t.vm.stop();
  }
});
