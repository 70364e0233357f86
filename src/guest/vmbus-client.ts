// The reference guest's VMBus client, behaving like Linux's hv_vmbus: versions tried
// newest first (5.0+ on message connection 4), REQUESTOFFERS, one channel per offer with
// Linux's checks, drivers probed by class GUID, GPADLs built as create_gpadl_header
// builds them, handles counted from 0xE1E10, and every reply matched as Linux matches it.
import { EventEmitter } from 'node:events';
import { HvStatus } from '../hyperv/hv-status.js';
import type { GuestMemory } from '../memory/guest-memory.js';
import type { GpaRange } from '../memory/gpa-range.js';
import { PAGE_SIZE } from '../memory/page.js';
import { decodeMessage, encodeMessage, type ChannelMessage, type OfferChannelMessage } from '../vmbus/channel-messages.js';
import { encodeGpadl } from '../vmbus/gpadl-messages.js';
import { formatVersion, VMBUS_VERSIONS_LINUX, VERSION_WIN10_V4_1, VERSION_WIN10_V5, VERSION_WIN10_V5_3, VERSION_WIN8_1, versionAtLeast } from '../vmbus/versions.js';
import { GuestChannel } from './guest-channel.js';
import { GuestSynic } from './guest-synic.js';
import { MAX_RELID, MESSAGE_CONNECTION_ID, MESSAGE_CONNECTION_ID_4, VMBUS_MESSAGE_SINT, VMBUS_MESSAGE_TYPE } from '../vmbus/message-transport.js';
import type { GuestHypervisor } from './hypervisor.js';
import { PageAllocator } from './page-allocator.js';
import type { VmbusDriver } from './vmbus-driver.js';

const FIRST_GPADL_HANDLE = 0xe1e10;
/** VP index of CPU 0, which gets every control message (VMBUS_CONNECT_CPU). */
const CONNECT_VP = 0;

export interface VmbusClientOptions {
  hypervisor: GuestHypervisor;
  allocator: PageAllocator;
  /** Like Linux's max_version module parameter. */
  maxVersion?: number;
  /** The guest waits this long for a reply before giving up (Linux waits forever). */
  replyTimeoutMs?: number;
  log?: (message: string) => void;
}

export interface ClientEvents {
  connected: [{ version: string }];
  offer: [{ relid: number; classId: string; instanceId: string }];
  'channel-open': [{ relid: number; classId: string; name: string }];
  'channel-close': [{ relid: number; name: string }];
  rescind: [{ relid: number }];
  unloaded: [];
}

interface Waiter {
  resolve: (message: ChannelMessage) => void;
  reject: (error: Error) => void;
  timer: NodeJS.Timeout;
}

export class VmbusClient extends EventEmitter<ClientEvents> {
  readonly hv: GuestHypervisor;
  readonly memory: GuestMemory;
  readonly allocator: PageAllocator;
  readonly synic: GuestSynic;
  readonly channels = new Map<number, GuestChannel>();
  readonly log: (message: string) => void;
  private readonly drivers = new Map<string, VmbusDriver>();
  private readonly bound = new Map<number, VmbusDriver>();
  private readonly waiters = new Map<string, Waiter>();
  private readonly replyTimeoutMs: number;
  private readonly maxVersion: number;
  private readonly probes: Promise<void>[] = [];
  private nextGpadl = FIRST_GPADL_HANDLE;
  private version = 0;
  private messageConnectionId = MESSAGE_CONNECTION_ID;
  /** The pre-5.0 interrupt page and the two monitor pages, allocated like vmbus_connect does. */
  private connectionPages = 0;
  private offersDone: (() => void) | null = null;
  readonly stats = { messagesIn: 0, messagesOut: 0, droppedMessages: 0 };

  constructor(options: VmbusClientOptions) {
    super();
    this.hv = options.hypervisor;
    this.memory = options.hypervisor.memory;
    this.allocator = options.allocator;
    this.replyTimeoutMs = options.replyTimeoutMs ?? 10_000;
    this.maxVersion = options.maxVersion ?? VERSION_WIN10_V5_3;
    this.log = options.log ?? (() => {});
    this.synic = new GuestSynic(this.hv, this.allocator, {
      onChannelEvent: (_vp, relid) => this.channels.get(relid)?.ring?.onSignal(),
      onMessage: (_vp, slot) => this.onMessage(slot),
    });
  }

  get negotiatedVersion(): number {
    return this.version;
  }

  registerDriver(driver: VmbusDriver): void {
    this.drivers.set(driver.classId, driver);
  }

  driverFor(channel: GuestChannel): VmbusDriver | undefined {
    return this.bound.get(channel.relid);
  }

  /** Enables the SynIC on every VP, then vmbus_connect and REQUESTOFFERS; resolves after all offers. */
  async connect(): Promise<number> {
    if (this.connectionPages === 0) {
      this.synic.enable();
      this.connectionPages = this.allocator.allocContiguous(3);
      this.memory.bytes.fill(0, this.connectionPages * PAGE_SIZE, (this.connectionPages + 3) * PAGE_SIZE);
    }
    for (const version of VMBUS_VERSIONS_LINUX) {
      if (version > this.maxVersion) continue;
      const response = await this.tryVersion(version);
      if (response === 'skip') continue;
      if (response.kind === 'version-response' && response.versionSupported) {
        this.version = version;
        this.messageConnectionId = versionAtLeast(version, VERSION_WIN10_V5) ? response.messageConnectionId : MESSAGE_CONNECTION_ID;
        break;
      }
    }
    if (!this.version) throw new Error('the host refused every VMBus version this guest offers');
    this.log(`VMBus version ${formatVersion(this.version)} negotiated`);
    this.emit('connected', { version: formatVersion(this.version) });
    const offers = new Promise<void>((resolve) => (this.offersDone = resolve));
    this.post({ kind: 'request-offers' });
    await withTimeout(offers, this.replyTimeoutMs, 'ALLOFFERS_DELIVERED');
    await this.settleProbes();
    return this.version;
  }

  private async tryVersion(version: number): Promise<ChannelMessage | 'skip'> {
    const v5 = versionAtLeast(version, VERSION_WIN10_V5);
    const base = this.connectionPages * PAGE_SIZE;
    const reply = this.expect('version');
    const status = this.postOn(v5 ? MESSAGE_CONNECTION_ID_4 : MESSAGE_CONNECTION_ID, {
      kind: 'initiate-contact',
      version,
      targetVcpu: CONNECT_VP,
      interruptPage: v5 ? 0n : BigInt(base),
      messageSint: v5 ? VMBUS_MESSAGE_SINT : 0,
      messageVtl: 0,
      monitorPage1: BigInt(base + PAGE_SIZE),
      monitorPage2: BigInt(base + 2 * PAGE_SIZE),
    });
    if (status !== HvStatus.Success) {
      this.cancel('version');
      reply.catch(() => {});
      // A host without connection id 4 makes Linux skip the 5.x versions straight away.
      if (status === HvStatus.InvalidConnectionId && v5) return 'skip';
      throw new Error(`HvPostMessage(INITIATE_CONTACT) failed with status ${status}`);
    }
    return reply;
  }

  /** Waits until every driver probe started so far has finished. */
  async settleProbes(): Promise<void> {
    while (this.probes.length) await Promise.allSettled(this.probes.splice(0));
  }

  // ---- messages from the host ----

  private onMessage(slot: Uint8Array): void {
    const type = new DataView(slot.buffer, slot.byteOffset).getUint32(0, true);
    const size = slot[4]!;
    this.stats.messagesIn++;
    if (type !== VMBUS_MESSAGE_TYPE || size > 240) {
      this.stats.droppedMessages++;
      return;
    }
    const decoded = decodeMessage(slot.subarray(16, 16 + size));
    if (!decoded.ok) {
      this.stats.droppedMessages++;
      this.log(`dropped message from host: ${decoded.error}`);
      return;
    }
    const m = decoded.message;
    switch (m.kind) {
      case 'version-response': return this.complete('version', m);
      case 'offer-channel': return this.onOffer(m);
      case 'all-offers-delivered':
        this.offersDone?.();
        this.offersDone = null;
        return;
      case 'gpadl-created': return this.complete(`gpadl:${m.childRelid}:${m.gpadl}`, m);
      case 'open-result': return this.complete(`open:${m.childRelid}:${m.openId}`, m);
      case 'gpadl-torndown': return this.complete(`torndown:${m.gpadl}`, m);
      case 'modify-channel-response': return this.complete(`modify:${m.childRelid}`, m);
      case 'unload-response': return this.complete('unload', m);
      case 'rescind-offer': return this.onRescind(m.childRelid);
      case 'tl-connect-result': return; // Linux ignores it
      default:
        this.stats.droppedMessages++;
        this.log(`unexpected ${m.kind} from the host`);
    }
  }

  private onOffer(offer: OfferChannelMessage): void {
    if (offer.childRelid === 0 || offer.childRelid > MAX_RELID) {
      this.log(`offer with relid ${offer.childRelid} refused: relids are 1..${MAX_RELID}`);
      return;
    }
    if (this.channels.has(offer.childRelid)) {
      this.log(`duplicate offer for relid ${offer.childRelid} ignored`);
      return;
    }
    const primary = [...this.channels.values()].find((c) => c.classId === offer.interfaceId && c.instanceId === offer.instanceId && c.subChannelIndex === 0);
    if (primary) {
      if (offer.subChannelIndex === 0) {
        this.log(`offer ${offer.childRelid} duplicates relid ${primary.relid}'s device and is not a sub-channel: ignored`);
        return;
      }
      // A sub-channel: it belongs to the primary's driver (Linux's sc_creation_callback).
      const sub = new GuestChannel(this, offer);
      sub.primary = primary;
      this.channels.set(sub.relid, sub);
      this.emit('offer', { relid: sub.relid, classId: sub.classId, instanceId: sub.instanceId });
      const driver = this.bound.get(primary.relid);
      if (driver) this.bound.set(sub.relid, driver);
      if (driver?.subchannel) this.probes.push(driver.subchannel(primary, sub).catch((e) => this.log(`sub-channel ${sub.relid} of ${driver.name} failed: ${(e as Error).message}`)));
      return;
    }
    const channel = new GuestChannel(this, offer);
    this.channels.set(channel.relid, channel);
    this.emit('offer', { relid: channel.relid, classId: channel.classId, instanceId: channel.instanceId });
    const driver = this.drivers.get(channel.classId);
    if (!driver) return;
    this.bound.set(channel.relid, driver);
    this.probes.push(
      driver.probe(channel).then(
        () => {
          if (channel.isOpen) this.emit('channel-open', { relid: channel.relid, classId: channel.classId, name: driver.name });
        },
        (e) => this.log(`driver ${driver.name} failed to probe relid ${channel.relid}: ${(e as Error).message}`),
      ),
    );
  }

  private onRescind(relid: number): void {
    const channel = this.channels.get(relid);
    if (!channel) return;
    channel.rescinded = true;
    this.emit('rescind', { relid });
    void this.removeChannel(channel).then(() => this.post({ kind: 'relid-released', childRelid: relid }));
  }

  private async removeChannel(channel: GuestChannel): Promise<void> {
    const driver = this.bound.get(channel.relid);
    try {
      if (driver) await driver.remove(channel);
      else await channel.close();
    } catch (e) {
      this.log(`removing relid ${channel.relid} failed: ${(e as Error).message}`);
    }
    this.bound.delete(channel.relid);
    this.channels.delete(channel.relid);
    if (driver) this.emit('channel-close', { relid: channel.relid, name: driver.name });
  }

  // ---- requests the channels make ----

  async establishGpadl(channel: GuestChannel, ranges: GpaRange[]): Promise<number> {
    const gpadl = this.nextGpadl++ >>> 0;
    const reply = this.expect(`gpadl:${channel.relid}:${gpadl}`);
    for (const message of encodeGpadl(channel.relid, gpadl, ranges)) this.postRaw(message);
    const created = (await reply) as Extract<ChannelMessage, { kind: 'gpadl-created' }>;
    if (created.status !== 0) throw new Error(`host refused GPADL ${gpadl} (status 0x${(created.status >>> 0).toString(16)})`);
    return gpadl;
  }

  async teardownGpadl(channel: GuestChannel, gpadl: number): Promise<void> {
    const reply = this.expect(`torndown:${gpadl}`);
    this.post({ kind: 'gpadl-teardown', childRelid: channel.relid, gpadl });
    await reply;
  }

  async openChannel(channel: GuestChannel, gpadl: number, downstreamPageOffset: number, userData: Uint8Array): Promise<void> {
    const reply = this.expect(`open:${channel.relid}:${channel.relid}`);
    this.post({ kind: 'open-channel', childRelid: channel.relid, openId: channel.relid, ringGpadlHandle: gpadl, targetVp: channel.targetVp, downstreamPageOffset, userData });
    const result = (await reply) as Extract<ChannelMessage, { kind: 'open-result' }>;
    if (result.status !== 0) throw new Error(`host refused to open relid ${channel.relid} (status 0x${(result.status >>> 0).toString(16)})`);
  }

  async modifyChannel(channel: GuestChannel, targetVp: number): Promise<number> {
    if (!versionAtLeast(this.version, VERSION_WIN10_V4_1)) throw new Error('MODIFYCHANNEL needs VMBus 4.1');
    const waits = versionAtLeast(this.version, VERSION_WIN10_V5_3);
    const reply = waits ? this.expect(`modify:${channel.relid}`) : null;
    this.post({ kind: 'modify-channel', childRelid: channel.relid, targetVp });
    if (!reply) return 0;
    return ((await reply) as Extract<ChannelMessage, { kind: 'modify-channel-response' }>).status;
  }

  /** vmbus_setevent: HvSignalEvent on the offer's connection id. */
  signalHost(channel: GuestChannel): void {
    if (!channel.dedicatedInterrupt) {
      // Pre-Win8 hosts read the relid bit in the second half of the interrupt page.
      const byte = this.connectionPages * PAGE_SIZE + PAGE_SIZE / 2 + (channel.relid >>> 3);
      Atomics.or(this.memory.bytes, byte, 1 << (channel.relid & 7));
    }
    this.hv.signalEvent(channel.connectionId);
  }

  /**
   * UNLOAD. With closeChannels (module removal) drivers close their channels first; without
   * (kexec, panic) the guest just leaves and the host must drop everything itself.
   */
  async unload(options: { closeChannels: boolean }): Promise<void> {
    if (!this.version) return;
    if (options.closeChannels) {
      await this.settleProbes();
      for (const channel of [...this.channels.values()]) await this.removeChannel(channel);
    }
    if (versionAtLeast(this.version, VERSION_WIN8_1)) {
      const reply = this.expect('unload');
      this.post({ kind: 'unload' });
      await reply;
    }
    for (const channel of this.channels.values()) channel.abandon();
    this.channels.clear();
    this.bound.clear();
    this.version = 0;
    this.emit('unloaded');
  }

  // ---- posting ----

  post(message: ChannelMessage): number {
    return this.postRaw(encodeMessage(message));
  }

  postRaw(bytes: Uint8Array): number {
    return this.postOn(this.messageConnectionId, bytes);
  }

  private postOn(connectionId: number, message: ChannelMessage | Uint8Array): number {
    const bytes = message instanceof Uint8Array ? message : encodeMessage(message);
    this.stats.messagesOut++;
    return this.hv.postMessage(CONNECT_VP, connectionId, VMBUS_MESSAGE_TYPE, bytes);
  }

  /** Waits for the reply that Linux would match to `key` (version, gpadl:R:G, open:R:O, torndown:G, modify:R, unload). */
  expect(key: string): Promise<ChannelMessage> {
    if (this.waiters.has(key)) return Promise.reject(new Error(`already waiting for ${key}`));
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.waiters.delete(key);
        reject(new Error(`no reply from the host for ${key} within ${this.replyTimeoutMs} ms`));
      }, this.replyTimeoutMs);
      this.waiters.set(key, { resolve, reject, timer });
    });
  }

  private complete(key: string, message: ChannelMessage): void {
    const waiter = this.waiters.get(key);
    if (!waiter) {
      // Linux drops a reply nobody waits for.
      this.stats.droppedMessages++;
      this.log(`unmatched ${message.kind} (${key}) dropped`);
      return;
    }
    this.waiters.delete(key);
    clearTimeout(waiter.timer);
    waiter.resolve(message);
  }

  private cancel(key: string): void {
    const waiter = this.waiters.get(key);
    if (!waiter) return;
    this.waiters.delete(key);
    clearTimeout(waiter.timer);
    waiter.reject(new Error(`${key} cancelled`));
  }
}

function withTimeout<T>(promise: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout;
  return Promise.race([
    promise.finally(() => clearTimeout(timer)),
    new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new Error(`no ${what} from the host within ${ms} ms`)), ms);
    }),
  ]);
}
