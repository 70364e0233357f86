// The reference guest's hostile mode: the malformed messages, lying GPADLs and corrupted
// ring indices a broken or malicious guest could produce. Each action returns what the
// host answered, so tests can assert the host's reaction and that it survived.
import { HvStatus } from '../hyperv/hv-status.js';
import { PAGE_SIZE } from '../memory/page.js';
import { MessageType, encodeMessage, type ChannelMessage } from '../vmbus/channel-messages.js';
import { encodeGpadl } from '../vmbus/gpadl-messages.js';
import { RingWord } from '../vmbus/ring/ring-memory.js';
import type { VmbusClient } from './vmbus-client.js';

/** A small deterministic generator so a failing hostile run can be repeated. */
function prng(seed: number): () => number {
  let s = seed >>> 0 || 1;
  return () => {
    s ^= s << 13;
    s ^= s >>> 17;
    s ^= s << 5;
    return (s >>> 0) / 0x1_0000_0000;
  };
}

export class HostileGuest {
  constructor(private readonly client: VmbusClient) {}

  async run(action: string, args: Record<string, number> = {}): Promise<unknown> {
    switch (action) {
      case 'garbage-messages': return this.garbage(args.count ?? 500, args.seed ?? 1);
      case 'truncated-messages': return this.truncated();
      case 'unknown-types': return this.unknownTypes();
      case 'oversize-post': return this.client.hv.postMessage(0, 1, 1, new Uint8Array(241));
      case 'bad-connection-id': return this.client.hv.postMessage(0, 77, 1, encodeMessage({ kind: 'request-offers' }));
      case 'gpadl-outside-ram': return this.gpadlOutsideRam(args.relid ?? 1);
      case 'gpadl-lying-length': return this.gpadlLyingLength(args.relid ?? 1);
      case 'duplicate-gpadl': return this.duplicateGpadl(args.relid ?? 1);
      case 'open-unknown-relid': return this.openUnknownRelid(args.relid ?? 1999);
      case 'corrupt-ring': return this.corruptRing(args.relid ?? 1, args.index ?? 0x7ffffff0);
      case 'flood': return this.flood(args.count ?? 20000);
      case 'signal-unknown-connection': return this.client.hv.signalEvent(args.connectionId ?? 0x7777);
      default: throw new Error(`unknown hostile action ${action}`);
    }
  }

  private garbage(count: number, seed: number): { posted: number; failures: number } {
    const random = prng(seed);
    let failures = 0;
    for (let i = 0; i < count; i++) {
      const bytes = new Uint8Array(Math.floor(random() * 241));
      for (let j = 0; j < bytes.length; j++) bytes[j] = Math.floor(random() * 256);
      // Mostly valid message types with garbage bodies: those reach the deepest code.
      if (bytes.length >= 4 && random() < 0.8) new DataView(bytes.buffer).setUint32(0, 1 + Math.floor(random() * 24), true);
      // Never send UNLOAD or INITIATE_CONTACT by chance: they legitimately reset the connection.
      const type = bytes.length >= 4 ? new DataView(bytes.buffer).getUint32(0, true) : 0;
      if (type === MessageType.Unload || type === MessageType.InitiateContact) continue;
      if (this.client.postRaw(bytes) !== HvStatus.Success) failures++;
    }
    return { posted: count, failures };
  }

  private truncated(): number {
    const samples: ChannelMessage[] = [
      { kind: 'open-channel', childRelid: 1, openId: 1, ringGpadlHandle: 1, targetVp: 0, downstreamPageOffset: 2, userData: new Uint8Array(120) },
      { kind: 'gpadl-header', childRelid: 1, gpadl: 0x4242, rangeBufferLength: 16, rangeCount: 1, rangeData: new Uint8Array(16) },
      { kind: 'gpadl-teardown', childRelid: 1, gpadl: 7 },
      { kind: 'modify-channel', childRelid: 1, targetVp: 0 },
      { kind: 'close-channel', childRelid: 1 },
    ];
    let sent = 0;
    for (const message of samples) {
      const bytes = encodeMessage(message);
      for (let n = 0; n < bytes.length - 1; n++, sent++) this.client.postRaw(bytes.subarray(0, n));
    }
    return sent;
  }

  private unknownTypes(): number {
    let sent = 0;
    for (const type of [0, 18, 19, 20, 25, 29, 100, 0xffffffff]) {
      const bytes = new Uint8Array(64);
      new DataView(bytes.buffer).setUint32(0, type, true);
      this.client.postRaw(bytes);
      sent++;
    }
    return sent;
  }

  private async gpadlOutsideRam(relid: number): Promise<number> {
    const pageCount = this.client.memory.pageCount;
    const pfns = [1, pageCount + 5, 2 ** 40, 3];
    return this.gpadlStatus(relid, 0x70000001, [{ byteCount: pfns.length * PAGE_SIZE, byteOffset: 0, pfns }]);
  }

  private async gpadlLyingLength(relid: number): Promise<number> {
    // A header that announces far more range data than it will ever send, then one body
    // with more PFNs than announced for its range.
    const gpadl = 0x70000002;
    const reply = this.client.expect(`gpadl:${relid}:${gpadl}`);
    const header = new Uint8Array(20 + 8 + 8);
    const view = new DataView(header.buffer);
    view.setUint32(0, MessageType.GpadlHeader, true);
    view.setUint32(8, relid, true);
    view.setUint32(12, gpadl, true);
    view.setUint16(16, 8 + 8 * 3, true); // range_buflen: one range of 3 pages
    view.setUint16(18, 1, true);
    view.setUint32(20, 100 * PAGE_SIZE, true); // but byte_count needs 100 pages
    view.setUint32(24, 0, true);
    view.setBigUint64(28, 5n, true);
    this.client.postRaw(header);
    const body = new Uint8Array(16 + 16);
    new DataView(body.buffer).setUint32(0, MessageType.GpadlBody, true);
    new DataView(body.buffer).setUint32(12, gpadl, true);
    this.client.postRaw(body);
    const created = (await reply) as Extract<ChannelMessage, { kind: 'gpadl-created' }>;
    return created.status;
  }

  private async duplicateGpadl(relid: number): Promise<number[]> {
    const pfn = this.client.allocator.allocContiguous(1);
    try {
      const ranges = [{ byteCount: PAGE_SIZE, byteOffset: 0, pfns: [pfn] }];
      const first = await this.gpadlStatus(relid, 0x70000003, ranges);
      const second = await this.gpadlStatus(relid, 0x70000003, ranges);
      if (first === 0) {
        const torn = this.client.expect(`torndown:${0x70000003}`);
        this.client.post({ kind: 'gpadl-teardown', childRelid: relid, gpadl: 0x70000003 });
        await torn;
      }
      return [first, second];
    } finally {
      this.client.allocator.free([pfn]);
    }
  }

  private async gpadlStatus(relid: number, gpadl: number, ranges: { byteCount: number; byteOffset: number; pfns: number[] }[]): Promise<number> {
    const reply = this.client.expect(`gpadl:${relid}:${gpadl}`);
    for (const message of encodeGpadl(relid, gpadl, ranges)) this.client.postRaw(message);
    return ((await reply) as Extract<ChannelMessage, { kind: 'gpadl-created' }>).status;
  }

  private async openUnknownRelid(relid: number): Promise<number> {
    const reply = this.client.expect(`open:${relid}:${relid}`);
    this.client.post({ kind: 'open-channel', childRelid: relid, openId: relid, ringGpadlHandle: 0xdead, targetVp: 0, downstreamPageOffset: 2, userData: new Uint8Array(120) });
    return ((await reply) as Extract<ChannelMessage, { kind: 'open-result' }>).status;
  }

  /**
   * Writes an impossible write_index into the channel's guest-to-host ring and signals the
   * host. The guest's own side of the ring stops first: its writer keeps the index it last
   * published and would store that back with its next packet (a heartbeat reply, say),
   * erasing the corruption before the host reads it.
   */
  private corruptRing(relid: number, index: number): boolean {
    const channel = this.client.channels.get(relid);
    const ring = channel?.ring;
    if (!channel || !ring) return false;
    ring.shutdown();
    Atomics.store(ring.writer.mem.header, RingWord.WriteIndex, index | 0);
    this.client.signalHost(channel);
    return true;
  }

  private flood(count: number): number {
    let refused = 0;
    // CLOSECHANNEL of a relid that does not exist: no reply, so only the host's input path is loaded.
    const message = encodeMessage({ kind: 'close-channel', childRelid: 2047 });
    for (let i = 0; i < count; i++) if (this.client.postRaw(message) !== HvStatus.Success) refused++;
    return refused;
  }
}
