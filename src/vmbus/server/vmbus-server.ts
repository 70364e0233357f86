// The VMBus server: the host's side of the channel-management protocol. It negotiates the
// version, offers each device's channel, builds GPADLs, maps rings on open, tears down on
// close/unload/rescind, and hands open channels to the devices. Everything arriving here
// comes from the guest and is checked before use; a bad message is logged and answered
// with the protocol's failure (or dropped when there is nothing to answer), never thrown.
import { EventEmitter } from 'node:events';
import { HvStatus } from '../../hyperv/hv-status.js';
import { rangeProblem } from '../../memory/gpa-range.js';
import { PAGE_SIZE } from '../../memory/page.js';
import { EventFd } from '../../sys/eventfd.js';
import type { Partition } from '../../partition/partition.js';
import { decodeMessage, encodeMessage, type ChannelMessage } from '../channel-messages.js';
import { GpadlAssembler } from '../gpadl-messages.js';
import { formatVersion, VMBUS_VERSIONS_LINUX, VERSION_WIN10_V4_1, VERSION_WIN10_V5, VERSION_WIN10_V5_3, VERSION_WIN8, VERSION_WIN8_1, versionAtLeast } from '../versions.js';
import { MAX_RELID, MESSAGE_CONNECTION_ID, MESSAGE_CONNECTION_ID_4, VMBUS_MESSAGE_SINT, VMBUS_MESSAGE_TYPE } from '../message-transport.js';
import type { ServerGpadl } from './gpadl.js';
import type { ServerChannel } from './server-channel.js';
import type { ChannelCounters, OpenChannel, VmbusDevice } from './vmbus-device.js';
import { ringMemoryFromBuffer, RingWord, type RingMemory } from '../ring/ring-memory.js';

const EVENT_CONNECTION_BASE = 0x2000;
const STATUS_UNSUCCESSFUL = 0xc0000001;
const STATUS_INVALID_PARAMETER = 0xc000000d;

export interface VmbusServerOptions {
  partition: Partition;
  /** Newest version to accept (default 5.3). */
  maxVersion?: number;
  /** Oldest version to accept (default 2.4, the oldest Linux 6.x offers). */
  minVersion?: number;
  log?: (message: string) => void;
  /** Bounds against a hostile guest. */
  limits?: Partial<ServerLimits>;
}

export interface ServerLimits {
  maxGpadls: number;
  /** Bytes of range data one GPADL may announce (8 bytes per page). */
  maxGpadlRangeBytes: number;
}

const DEFAULT_LIMITS: ServerLimits = { maxGpadls: 4096, maxGpadlRangeBytes: 1 << 20 };

export interface ServerEvents {
  connected: [{ version: string; targetVp: number }];
  offers: [{ count: number }];
  'channel-open': [{ relid: number; classId: string; name: string; subChannelIndex: number }];
  'channel-close': [{ relid: number; name: string; reason: string }];
  unloaded: [];
  'protocol-error': [{ message: string }];
}

export interface ChannelInfo {
  relid: number;
  subChannelIndex: number;
  name: string;
  classId: string;
  instanceId: string;
  state: string;
  targetVp: number;
  connectionId: number;
}

export class VmbusServer extends EventEmitter<ServerEvents> {
  readonly partition: Partition;
  private readonly maxVersion: number;
  private readonly minVersion: number;
  private readonly limits: ServerLimits;
  private readonly log: (message: string) => void;
  private readonly channels = new Map<number, ServerChannel>();
  private readonly gpadls = new Map<number, ServerGpadl>();
  /** Eventfds are reused, never closed while the guest might still signal them. */
  private readonly spareSignals: EventFd[] = [];
  private version = 0;
  private targetVp = 0;
  private messageSint = VMBUS_MESSAGE_SINT;
  private offersRequested = false;
  readonly stats = { messagesIn: 0, messagesOut: 0, protocolErrors: 0 };

  constructor(options: VmbusServerOptions) {
    super();
    this.partition = options.partition;
    this.maxVersion = options.maxVersion ?? VERSION_WIN10_V5_3;
    this.minVersion = options.minVersion ?? VERSION_WIN8;
    this.limits = { ...DEFAULT_LIMITS, ...options.limits };
    this.log = options.log ?? (() => {});
    this.partition.setPostMessageHandler((connectionId, messageType, payload) => this.onPost(connectionId, messageType, payload));
  }

  get connected(): boolean {
    return this.version !== 0;
  }

  get negotiatedVersion(): string | null {
    return this.version ? formatVersion(this.version) : null;
  }

  /** Adds a device; offered at once if the guest already asked for offers. Returns its relid. */
  addDevice(device: VmbusDevice): number {
    return this.addChannel(device, 0);
  }

  /**
   * Offers sub-channel `index` (1..) of a device whose primary channel exists: same class
   * and instance GUIDs, so the guest attaches it to the primary (multi-queue storage and
   * network). Devices call this when the guest asks for sub-channels in their protocol.
   */
  addSubchannel(device: VmbusDevice, index: number): number {
    if (!Number.isInteger(index) || index < 1 || index > 0xffff) throw new RangeError(`sub-channel index ${index} must be 1..65535`);
    const siblings = [...this.channels.values()].filter((c) => c.device === device && c.state !== 'rescinded');
    if (!siblings.some((c) => c.subChannelIndex === 0)) throw new Error(`${device.name} has no primary channel`);
    if (siblings.some((c) => c.subChannelIndex === index)) throw new Error(`${device.name} already has sub-channel ${index}`);
    return this.addChannel(device, index);
  }

  /** Whether sub-channel `index` of the device is offered (or waiting for the guest to ask for offers). */
  hasSubchannel(device: VmbusDevice, index: number): boolean {
    for (const c of this.channels.values()) if (c.device === device && c.subChannelIndex === index && c.state !== 'rescinded') return true;
    return false;
  }

  private addChannel(device: VmbusDevice, subChannelIndex: number): number {
    const relid = this.freeRelid();
    const channel: ServerChannel = {
      relid,
      connectionId: EVENT_CONNECTION_BASE + relid,
      device,
      subChannelIndex,
      state: 'offered',
      offered: false,
      open: null,
      mappings: [],
      signal: null,
      targetVp: 0,
      opens: 0,
    };
    this.channels.set(relid, channel);
    if (this.offersRequested) this.sendOffer(channel);
    return relid;
  }

  /** Hot-remove: rescinds the channel; the relid is freed when the guest releases it. */
  removeDevice(device: VmbusDevice): void {
    for (const channel of this.channels.values()) {
      if (channel.device !== device || channel.state === 'rescinded') continue;
      this.closeChannel(channel, 'rescinded');
      if (channel.offered) {
        channel.state = 'rescinded';
        this.send({ kind: 'rescind-offer', childRelid: channel.relid });
      } else {
        this.dropChannel(channel);
      }
    }
  }

  channelInfo(): ChannelInfo[] {
    return [...this.channels.values()].map((c) => ({
      relid: c.relid,
      subChannelIndex: c.subChannelIndex,
      name: c.device.name,
      classId: c.device.classId,
      instanceId: c.device.instanceId,
      state: c.state,
      targetVp: c.targetVp,
      connectionId: c.connectionId,
    }));
  }

  /** Channels with ring fill and device counters, for inspect. */
  channelStatus(): (ChannelInfo & { incomingFill: number | null; outgoingFill: number | null; counters: ChannelCounters | null })[] {
    return this.channelInfo().map((info) => {
      const channel = this.channels.get(info.relid)!;
      const open = channel.open;
      return {
        ...info,
        incomingFill: open ? ringFill(open.incoming) : null,
        outgoingFill: open ? ringFill(open.outgoing) : null,
        counters: open ? (channel.device.counters?.(channel.subChannelIndex) ?? null) : null,
      };
    });
  }

  /** Server state for leak checks: what it holds for the guest right now. */
  resources(): { gpadls: number; pendingGpadls: number; openChannels: number; mappings: number; signals: number } {
    let pendingGpadls = 0;
    for (const g of this.gpadls.values()) if (g.assembler) pendingGpadls++;
    let openChannels = 0;
    let mappings = 0;
    let signals = 0;
    for (const c of this.channels.values()) {
      if (c.open) openChannels++;
      mappings += c.mappings.length;
      if (c.signal) signals++;
    }
    return { gpadls: this.gpadls.size - pendingGpadls, pendingGpadls, openChannels, mappings, signals };
  }

  /** Forget the connection as on a platform reset (no message to the guest). */
  reset(): void {
    this.disconnect('reset');
  }

  // ---- guest to host ----

  private onPost(connectionId: number, messageType: number, payload: Uint8Array): number {
    if (connectionId !== MESSAGE_CONNECTION_ID && connectionId !== MESSAGE_CONNECTION_ID_4) return HvStatus.InvalidConnectionId;
    if (messageType !== VMBUS_MESSAGE_TYPE) return HvStatus.InvalidParameter;
    this.stats.messagesIn++;
    const decoded = decodeMessage(payload);
    if (!decoded.ok) {
      this.protocolError(`dropped a malformed channel message: ${decoded.error}`);
      return HvStatus.Success;
    }
    const message = decoded.message;
    if (!this.connected && message.kind !== 'initiate-contact') {
      this.protocolError(`${message.kind} before a version was negotiated`);
      return HvStatus.Success;
    }
    try {
      this.dispatch(message);
    } catch (e) {
      // A bug of ours must not take the whole server down with the guest's message.
      this.protocolError(`failed to handle ${message.kind}: ${(e as Error).stack ?? e}`);
    }
    return HvStatus.Success;
  }

  private dispatch(m: ChannelMessage): void {
    switch (m.kind) {
      case 'initiate-contact': return this.onInitiateContact(m);
      case 'request-offers': return this.onRequestOffers();
      case 'gpadl-header': return this.onGpadlHeader(m);
      case 'gpadl-body': return this.onGpadlBody(m);
      case 'gpadl-teardown': return this.onGpadlTeardown(m);
      case 'open-channel': return void this.onOpenChannel(m);
      case 'close-channel': return this.onCloseChannel(m);
      case 'relid-released': return this.onRelidReleased(m);
      case 'modify-channel': return this.onModifyChannel(m);
      case 'unload': return this.onUnload();
      case 'tl-connect-request':
        this.log('hv_sock connect request: no hv_sock service is configured');
        this.send({ kind: 'tl-connect-result', guestEndpointId: m.guestEndpointId, hostServiceId: m.hostServiceId, status: STATUS_UNSUCCESSFUL });
        return;
      default:
        this.protocolError(`unexpected ${m.kind} from the guest`);
    }
  }

  private onInitiateContact(m: Extract<ChannelMessage, { kind: 'initiate-contact' }>): void {
    const v = m.version >>> 0;
    if (this.connected) {
      // A new contact while connected: the guest restarted without UNLOAD (kexec, crash).
      this.log(`guest initiated contact again while connected (version ${formatVersion(v)}): resetting the connection`);
      this.disconnect('reconnect');
    }
    const known = VMBUS_VERSIONS_LINUX.includes(v);
    const inRange = v >= this.minVersion && v <= this.maxVersion;
    const targetOk = m.targetVcpu >>> 0 < this.partition.vpCount;
    const sint = versionAtLeast(v, VERSION_WIN10_V5) ? m.messageSint : VMBUS_MESSAGE_SINT;
    const sintOk = sint < 16;
    const accept = known && inRange && targetOk && sintOk;
    // The reply goes where the guest asked for control messages, even when refusing.
    this.targetVp = targetOk ? m.targetVcpu : 0;
    this.messageSint = sintOk ? sint : VMBUS_MESSAGE_SINT;
    if (!accept) {
      const why = !known ? 'unknown version' : !inRange ? 'outside the versions this server allows' : !targetOk ? `target VP ${m.targetVcpu} does not exist` : `bad SINT ${sint}`;
      this.log(`refused VMBus version ${formatVersion(v)}: ${why}`);
      this.send({ kind: 'version-response', versionSupported: false, connectionState: 0, messageConnectionId: 0 });
      return;
    }
    this.version = v;
    this.send({ kind: 'version-response', versionSupported: true, connectionState: 0, messageConnectionId: versionAtLeast(v, VERSION_WIN10_V5) ? MESSAGE_CONNECTION_ID : v });
    this.log(`guest connected: VMBus ${formatVersion(v)}, control messages to VP ${this.targetVp}`);
    this.emit('connected', { version: formatVersion(v), targetVp: this.targetVp });
  }

  private onRequestOffers(): void {
    if (this.offersRequested) {
      this.protocolError('REQUESTOFFERS sent twice');
      return;
    }
    this.offersRequested = true;
    const channels = [...this.channels.values()].filter((c) => c.state !== 'rescinded').sort((a, b) => a.relid - b.relid);
    for (const channel of channels) this.sendOffer(channel);
    this.send({ kind: 'all-offers-delivered' });
    this.emit('offers', { count: channels.length });
  }

  private onGpadlHeader(m: Extract<ChannelMessage, { kind: 'gpadl-header' }>): void {
    const answer = (status: number) => this.send({ kind: 'gpadl-created', childRelid: m.childRelid, gpadl: m.gpadl, status });
    const channel = this.channels.get(m.childRelid);
    if (!channel || channel.state === 'rescinded') {
      this.protocolError(`GPADL ${m.gpadl} for unknown relid ${m.childRelid}`);
      return answer(STATUS_INVALID_PARAMETER);
    }
    if (this.gpadls.has(m.gpadl)) {
      this.protocolError(`GPADL id ${m.gpadl} is already in use`);
      return answer(STATUS_INVALID_PARAMETER);
    }
    if (this.gpadls.size >= this.limits.maxGpadls) {
      this.protocolError(`GPADL limit (${this.limits.maxGpadls}) reached`);
      return answer(STATUS_UNSUCCESSFUL);
    }
    const assembler = new GpadlAssembler(m, { maxRangeBufferLength: this.limits.maxGpadlRangeBytes });
    const gpadl: ServerGpadl = { id: m.gpadl, childRelid: m.childRelid, assembler, ranges: [], usedByRelid: null };
    this.gpadls.set(m.gpadl, gpadl);
    this.finishGpadlIfComplete(gpadl);
  }

  private onGpadlBody(m: Extract<ChannelMessage, { kind: 'gpadl-body' }>): void {
    const gpadl = this.gpadls.get(m.gpadl);
    if (!gpadl || !gpadl.assembler) {
      this.protocolError(`GPADL body for ${gpadl ? 'completed' : 'unknown'} GPADL ${m.gpadl}`);
      return;
    }
    const result = gpadl.assembler.accept(m);
    if (typeof result === 'object') return this.failGpadl(gpadl, result.error);
    this.finishGpadlIfComplete(gpadl);
  }

  private finishGpadlIfComplete(gpadl: ServerGpadl): void {
    const assembler = gpadl.assembler!;
    // A header that is wrong on its own gets its answer now, not after bodies that may never come.
    if (assembler.error) return this.failGpadl(gpadl, assembler.error);
    if (!assembler.complete) return;
    const decoded = assembler.ranges();
    if (!decoded.ok) return this.failGpadl(gpadl, decoded.error);
    for (const range of decoded.ranges) {
      const problem = rangeProblem(this.partition.memory, range);
      if (problem) return this.failGpadl(gpadl, problem);
    }
    gpadl.assembler = null;
    gpadl.ranges = decoded.ranges;
    this.send({ kind: 'gpadl-created', childRelid: gpadl.childRelid, gpadl: gpadl.id, status: 0 });
  }

  private failGpadl(gpadl: ServerGpadl, why: string): void {
    this.protocolError(`GPADL ${gpadl.id} refused: ${why}`);
    this.gpadls.delete(gpadl.id);
    this.send({ kind: 'gpadl-created', childRelid: gpadl.childRelid, gpadl: gpadl.id, status: STATUS_INVALID_PARAMETER });
  }

  private onGpadlTeardown(m: Extract<ChannelMessage, { kind: 'gpadl-teardown' }>): void {
    const gpadl = this.gpadls.get(m.gpadl);
    if (!gpadl || gpadl.childRelid !== m.childRelid) {
      this.protocolError(`teardown of unknown GPADL ${m.gpadl} (relid ${m.childRelid})`);
      return;
    }
    if (gpadl.usedByRelid !== null) {
      // Tearing down the rings of an open channel: stop using them first, so the guest may
      // reuse the pages once it sees TORNDOWN.
      const channel = this.channels.get(gpadl.usedByRelid);
      if (channel) this.closeChannel(channel, 'ring GPADL torn down');
    }
    this.gpadls.delete(m.gpadl);
    this.send({ kind: 'gpadl-torndown', gpadl: m.gpadl });
  }

  private async onOpenChannel(m: Extract<ChannelMessage, { kind: 'open-channel' }>): Promise<void> {
    const answer = (status: number) => this.send({ kind: 'open-result', childRelid: m.childRelid, openId: m.openId, status });
    const channel = this.channels.get(m.childRelid);
    if (!channel || channel.state === 'rescinded') {
      this.protocolError(`open of unknown relid ${m.childRelid}`);
      return answer(STATUS_INVALID_PARAMETER);
    }
    if (channel.state !== 'offered') {
      this.protocolError(`open of relid ${m.childRelid}, which is ${channel.state}`);
      return answer(STATUS_UNSUCCESSFUL);
    }
    const gpadl = this.gpadls.get(m.ringGpadlHandle);
    const problem = this.ringProblem(channel, gpadl, m.downstreamPageOffset, m.targetVp);
    if (problem) {
      this.protocolError(`open of relid ${m.childRelid} refused: ${problem}`);
      return answer(STATUS_INVALID_PARAMETER);
    }
    const pfns = gpadl!.ranges[0]!.pfns;
    const split = m.downstreamPageOffset;
    const incomingMap = this.partition.memory.mapPages(pfns.slice(0, split), 1);
    const outgoingMap = this.partition.memory.mapPages(pfns.slice(split), 1);
    const incoming = ringMemoryFromBuffer(incomingMap.buffer, 0, split * PAGE_SIZE, true);
    const outgoing = ringMemoryFromBuffer(outgoingMap.buffer, 0, (pfns.length - split) * PAGE_SIZE, true);
    const signal = this.spareSignals.pop() ?? EventFd.create();
    signal.drain();
    channel.state = 'opening';
    channel.mappings = [incomingMap, outgoingMap];
    channel.signal = signal;
    channel.targetVp = m.targetVp;
    gpadl!.usedByRelid = channel.relid;
    const server = this;
    const open: OpenChannel = {
      relid: channel.relid,
      subChannelIndex: channel.subChannelIndex,
      connectionId: channel.connectionId,
      openId: m.openId,
      userData: m.userData,
      incoming,
      outgoing,
      guestSignal: signal,
      memory: this.partition.memory,
      get targetVp() {
        return channel.targetVp;
      },
      signalGuest: () => {
        if (channel.open === open) server.partition.synic.signalEvent(channel.targetVp, server.messageSint, channel.relid);
      },
      gpadl: (id: number) => {
        const found = server.gpadls.get(id);
        if (!found || found.assembler || found.childRelid !== channel.relid) return null;
        return found.ranges;
      },
      fail: (reason: string) => {
        if (channel.open !== open) return;
        server.protocolError(`relid ${channel.relid} (${channel.device.name}) failed: ${reason}`);
        server.closeChannel(channel, reason);
      },
    };
    channel.open = open;
    this.partition.registerSignal(channel.connectionId, signal);
    let status: number;
    try {
      status = await channel.device.open(open);
    } catch (e) {
      this.log(`device ${channel.device.name} failed to open: ${(e as Error).stack ?? e}`);
      status = STATUS_UNSUCCESSFUL;
    }
    if (channel.open !== open) return; // closed (unload, rescind) while the device was opening
    if (status !== 0) {
      this.closeChannel(channel, `device refused open (status 0x${(status >>> 0).toString(16)})`, false);
      return answer(status);
    }
    channel.state = 'open';
    channel.opens++;
    answer(0);
    this.emit('channel-open', { relid: channel.relid, classId: channel.device.classId, name: channel.device.name, subChannelIndex: channel.subChannelIndex });
  }

  private ringProblem(channel: ServerChannel, gpadl: ServerGpadl | undefined, split: number, targetVp: number): string | null {
    if (!gpadl || gpadl.assembler) return 'ring GPADL does not exist or is incomplete';
    if (gpadl.childRelid !== channel.relid) return `ring GPADL ${gpadl.id} belongs to relid ${gpadl.childRelid}`;
    if (gpadl.usedByRelid !== null) return `ring GPADL ${gpadl.id} is already in use`;
    if (gpadl.ranges.length !== 1) return 'ring GPADL must be one range';
    const range = gpadl.ranges[0]!;
    if (range.byteOffset !== 0 || range.byteCount !== range.pfns.length * PAGE_SIZE) return 'ring GPADL must cover whole pages';
    // Each ring needs its header page and at least one data page.
    if (!Number.isInteger(split) || split < 2 || range.pfns.length - split < 2) return `bad downstream ring offset ${split} for ${range.pfns.length} pages`;
    if (!(targetVp >>> 0 < this.partition.vpCount)) return `target VP ${targetVp} does not exist`;
    return null;
  }

  private onCloseChannel(m: Extract<ChannelMessage, { kind: 'close-channel' }>): void {
    const channel = this.channels.get(m.childRelid);
    if (!channel) return this.protocolError(`close of unknown relid ${m.childRelid}`);
    if (channel.state === 'rescinded') return; // expected after a rescind; nothing to do
    if (!channel.open) return this.protocolError(`close of relid ${m.childRelid}, which is not open`);
    this.closeChannel(channel, 'closed by the guest');
  }

  private onRelidReleased(m: Extract<ChannelMessage, { kind: 'relid-released' }>): void {
    const channel = this.channels.get(m.childRelid);
    if (!channel || channel.state !== 'rescinded') return this.protocolError(`release of relid ${m.childRelid}, which was not rescinded`);
    this.dropChannel(channel);
  }

  private onModifyChannel(m: Extract<ChannelMessage, { kind: 'modify-channel' }>): void {
    const respond = versionAtLeast(this.version, VERSION_WIN10_V5_3);
    const answer = (status: number) => {
      if (respond) this.send({ kind: 'modify-channel-response', childRelid: m.childRelid, status });
    };
    if (!versionAtLeast(this.version, VERSION_WIN10_V4_1)) {
      this.protocolError('MODIFYCHANNEL before version 4.1');
      return answer(STATUS_UNSUCCESSFUL);
    }
    const channel = this.channels.get(m.childRelid);
    if (!channel || !channel.open) {
      this.protocolError(`modify of relid ${m.childRelid}, which is not open`);
      return answer(STATUS_INVALID_PARAMETER);
    }
    if (!(m.targetVp >>> 0 < this.partition.vpCount)) {
      this.protocolError(`modify of relid ${m.childRelid} to VP ${m.targetVp}, which does not exist`);
      return answer(STATUS_INVALID_PARAMETER);
    }
    channel.targetVp = m.targetVp;
    answer(0);
  }

  private onUnload(): void {
    if (!versionAtLeast(this.version, VERSION_WIN8_1)) this.log('UNLOAD below version 3.0; answering anyway');
    this.disconnect('unload');
    this.send({ kind: 'unload-response' });
    this.emit('unloaded');
  }

  // ---- teardown ----

  private closeChannel(channel: ServerChannel, reason: string, notify = true): void {
    const open = channel.open;
    if (!open) return;
    channel.open = null;
    if (channel.state === 'open' || channel.state === 'opening') channel.state = 'offered';
    this.partition.unregisterSignal(channel.connectionId);
    try {
      channel.device.close(open);
    } catch (e) {
      this.log(`device ${channel.device.name} failed to close: ${(e as Error).stack ?? e}`);
    }
    for (const mapping of channel.mappings) mapping.release();
    channel.mappings = [];
    if (channel.signal) this.spareSignals.push(channel.signal);
    channel.signal = null;
    for (const gpadl of this.gpadls.values()) if (gpadl.usedByRelid === channel.relid) gpadl.usedByRelid = null;
    if (notify) this.emit('channel-close', { relid: channel.relid, name: channel.device.name, reason });
  }

  private dropChannel(channel: ServerChannel): void {
    this.closeChannel(channel, 'released');
    for (const [id, gpadl] of this.gpadls) if (gpadl.childRelid === channel.relid) this.gpadls.delete(id);
    this.channels.delete(channel.relid);
  }

  private disconnect(reason: string): void {
    for (const channel of [...this.channels.values()]) {
      this.closeChannel(channel, reason);
      // Sub-channels exist for the guest driver session that asked for them: after an
      // unload the next guest (kexec, reboot) gets only primaries and asks again.
      if (channel.state === 'rescinded' || channel.subChannelIndex > 0) this.dropChannel(channel);
      else channel.offered = false;
    }
    this.gpadls.clear();
    this.version = 0;
    this.offersRequested = false;
  }

  // ---- host to guest ----

  private sendOffer(channel: ServerChannel): void {
    const offer = channel.device.offer ?? {};
    channel.offered = true;
    this.send({
      kind: 'offer-channel',
      interfaceId: channel.device.classId,
      instanceId: channel.device.instanceId,
      channelFlags: offer.channelFlags ?? 0,
      mmioMegabytes: offer.mmioMegabytes ?? 0,
      userDefined: offer.userDefined ?? new Uint8Array(120),
      subChannelIndex: channel.subChannelIndex,
      mmioMegabytesOptional: 0,
      childRelid: channel.relid,
      // No monitor pages: the guest then signals every channel with HvSignalEvent.
      monitorId: 0xff,
      monitorAllocated: false,
      dedicatedInterrupt: true,
      connectionId: channel.connectionId,
    });
  }

  private send(message: ChannelMessage): void {
    this.stats.messagesOut++;
    if (!this.partition.synic.postMessage(this.targetVp, this.messageSint, VMBUS_MESSAGE_TYPE, encodeMessage(message))) {
      this.log(`could not queue ${message.kind} for VP ${this.targetVp}`);
    }
  }

  private protocolError(message: string): void {
    const n = ++this.stats.protocolErrors;
    // A flooding guest must not turn into a flood of log lines.
    if (n <= 100 || n % 1000 === 0) this.log(n <= 100 ? message : `${message} (${n} protocol errors so far)`);
    this.emit('protocol-error', { message });
  }

  private freeRelid(): number {
    for (let relid = 1; relid <= MAX_RELID; relid++) if (!this.channels.has(relid)) return relid;
    throw new Error('no free relid: at most 2047 channels');
  }
}


/** Bytes waiting in a ring as a fraction of its data area (indices as the guest left them). */
function ringFill(ring: RingMemory): number {
  const write = Atomics.load(ring.header, RingWord.WriteIndex) >>> 0;
  const read = Atomics.load(ring.header, RingWord.ReadIndex) >>> 0;
  if (write >= ring.dataSize || read >= ring.dataSize) return 1;
  return ((write - read + ring.dataSize) % ring.dataSize) / ring.dataSize;
}
