// StorVSP: the host side of a synthetic SCSI controller (Linux hv_storvsc binds to it).
// One VMBus device with a primary channel and, when the guest asks, sub-channels; every
// channel serves its rings on the Poller's thread (StorvspChannel) and sends commands to
// one SCSI bus (StorvspBus) whose disks can come and go while the guest runs.
import type { BlockBackend, DiskInfo } from '../../backends/block/block-backend.js';
import type { Poller } from '../../sys/epoll.js';
import type { ChannelCounters, OpenChannel, VmbusDevice } from '../../vmbus/server/vmbus-device.js';
import type { ScsiLogicalUnit } from '../scsi/scsi-command.js';
import { ScsiDisk } from '../scsi/scsi-disk.js';
import { ScsiTargetLuns } from '../scsi/scsi-lun-map.js';
import { StorvspBus, type LunMap } from './storvsp-bus.js';
import { StorvspChannel, type StorvspBusPort, type StorvspChannelCounters } from './storvsp-channel.js';
import { NtStatus, STORVSC_SCSI_CLASS_ID, VstorVersion } from './storvsp-protocol.js';
import type { StorvspRequest } from './storvsp-request.js';
import { MAX_LUN } from './storvsp-srb.js';

export const DEFAULT_MAX_TRANSFER_BYTES = 0x100000;
/** Beyond this the per-request iovec lists get large for no gain (Linux caps requests anyway). */
const MAX_MAX_TRANSFER_BYTES = 0x1000000;

export interface StorvspOptions {
  poller: Poller;
  /** Default: a fixed GUID per controller index. */
  instanceId?: string;
  /** Picks the default instance GUID (0 for the first SCSI controller). */
  controller?: number;
  /** Offers sub-channel `index` of this device unless it exists; wired by the VM to the server. */
  offerSubchannel: (device: StorvspDevice, index: number) => void;
  /** Advertised max_channel_cnt (pass vCPU count - 1); 0 (the default) = no multi-channel flag. */
  maxSubchannels?: number;
  /** QUERY_PROPERTIES max_transfer_bytes, a multiple of 4096 (default 0x100000). */
  maxTransferBytes?: number;
  /** Highest protocol version accepted (default 0x0602, Win10); a lower one makes the guest fall back. */
  maxProtocolVersion?: number;
  /** Makes the logical unit for a disk (default: ScsiDisk); tests put fakes here. */
  createUnit?: (backend: BlockBackend, options: { maxTransferBytes: number }) => ScsiLogicalUnit;
  log?: (message: string) => void;
}

/** The default instance GUID of SCSI controller `index` (any unique value works for a SCSI-class offer). */
export function defaultStorvspInstanceId(index: number): string {
  return `5e1f7a2c-3b9d-4c6e-8a41-${index.toString(16).padStart(12, '0')}`;
}

export class StorvspDevice implements VmbusDevice {
  readonly name = 'scsi' as const;
  readonly classId = STORVSC_SCSI_CLASS_ID;
  readonly instanceId: string;
  readonly maxTransferBytes: number;
  readonly maxSubchannels: number;
  private readonly channels = new Map<number, StorvspChannel>();
  private readonly bus: StorvspBus;
  private readonly port: StorvspBusPort;
  private offeredSubchannels = 0;
  private readonly log: (message: string) => void;
  private readonly maxProtocolVersion: number;

  constructor(private readonly options: StorvspOptions) {
    const controller = options.controller ?? 0;
    if (!Number.isInteger(controller) || controller < 0 || controller > 0xffff) throw new RangeError(`controller index ${controller} must be 0..65535`);
    this.instanceId = options.instanceId ?? defaultStorvspInstanceId(controller);
    const maxTransfer = options.maxTransferBytes ?? DEFAULT_MAX_TRANSFER_BYTES;
    if (!Number.isInteger(maxTransfer) || maxTransfer < 4096 || maxTransfer % 4096 !== 0 || maxTransfer > MAX_MAX_TRANSFER_BYTES) {
      throw new RangeError(`maxTransferBytes ${maxTransfer} must be a multiple of 4096 from 4096 to ${MAX_MAX_TRANSFER_BYTES}`);
    }
    this.maxTransferBytes = maxTransfer;
    const maxSub = options.maxSubchannels ?? 0;
    if (!Number.isInteger(maxSub) || maxSub < 0 || maxSub > 0xffff) throw new RangeError(`maxSubchannels ${maxSub} must be 0..65535`);
    this.maxSubchannels = maxSub;
    this.maxProtocolVersion = options.maxProtocolVersion ?? VstorVersion.Win10;
    this.log = options.log ?? (() => {});
    this.bus = new StorvspBus((): LunMap => new ScsiTargetLuns());
    const device = this;
    this.port = {
      execute: (request: StorvspRequest) => this.bus.execute(request),
      createSubchannels: (count: number) => this.offerSubchannels(count),
      get protocolVersion() {
        return device.channels.get(0)?.handshake.version ?? 0;
      },
      log: (message: string) => this.log(message),
    };
  }

  // ---- VmbusDevice ----

  open(channel: OpenChannel): number {
    const index = channel.subChannelIndex;
    let served = this.channels.get(index);
    if (served === undefined) {
      served = new StorvspChannel({
        subChannelIndex: index,
        poller: this.options.poller,
        port: this.port,
        maxVersion: this.maxProtocolVersion,
        maxSubchannels: this.maxSubchannels,
        maxTransferBytes: this.maxTransferBytes,
      });
      this.channels.set(index, served);
    }
    if (served.isOpen) {
      this.log(`scsi: sub-channel ${index} opened twice`);
      return NtStatus.Unsuccessful;
    }
    try {
      served.attach(channel);
    } catch (e) {
      this.log(`scsi: sub-channel ${index} cannot be served: ${(e as Error).message}`);
      return NtStatus.Unsuccessful;
    }
    return 0;
  }

  close(channel: OpenChannel): void {
    const served = this.channels.get(channel.subChannelIndex);
    if (served !== undefined && served.openChannel === channel) served.detach();
    // The next driver session asks for its sub-channels again; the VM offers those it lacks
    // (after an unload the server has dropped them all).
    if (channel.subChannelIndex === 0) this.offeredSubchannels = 0;
  }

  counters(subChannelIndex?: number): ChannelCounters | null {
    let any = false;
    const sum = { packetsIn: 0, packetsOut: 0, signalsIn: 0, signalsOut: 0, requests: 0 };
    for (const c of this.channels.values()) {
      if (!c.isOpen || (subChannelIndex !== undefined && c.subChannelIndex !== subChannelIndex)) continue;
      any = true;
      sum.packetsIn += c.stats.packetsIn;
      sum.packetsOut += c.stats.packetsOut;
      sum.signalsIn += c.stats.signalsIn;
      sum.signalsOut += c.stats.signalsOut;
      sum.requests += c.stats.requests;
    }
    return any ? sum : null;
  }

  /** Per open channel, in sub-channel order. */
  channelCounters(): StorvspChannelCounters[] {
    return [...this.channels.values()]
      .filter((c) => c.isOpen)
      .sort((a, b) => a.subChannelIndex - b.subChannelIndex)
      .map((c) => ({ ...c.stats }));
  }

  // ---- disks ----

  /** Attaches a disk at path 0, target 0, `lun`; a running guest is told to rescan. */
  addDisk(lun: number, backend: BlockBackend): void {
    if (!Number.isInteger(lun) || lun < 0 || lun > MAX_LUN) throw new RangeError(`LUN ${lun} must be 0..${MAX_LUN}`);
    if (this.bus.has(lun)) throw new Error(`LUN ${lun} already has a disk`);
    const options = { maxTransferBytes: this.maxTransferBytes };
    const unit = this.options.createUnit ? this.options.createUnit(backend, options) : new ScsiDisk(backend, options);
    this.bus.add(lun, backend, unit);
    this.channels.get(0)?.notifyBusChanged();
  }

  /**
   * Detaches a disk: later commands to the LUN get INVALID_LUN (the guest then drops it),
   * commands already running finish normally; resolves with the backend, for the caller
   * to close, once none is left.
   */
  async removeDisk(lun: number): Promise<BlockBackend | undefined> {
    const disk = this.bus.remove(lun);
    if (disk === undefined) return undefined;
    this.channels.get(0)?.notifyBusChanged();
    await disk.idle();
    return disk.backend;
  }

  disks(): { lun: number; info: DiskInfo }[] {
    return this.bus.disks().map((d) => ({ lun: d.lun, info: d.info }));
  }

  /** Sub-channels offered for the current guest driver session (reset when the primary closes). */
  get subchannelsOffered(): number {
    return this.offeredSubchannels;
  }

  private offerSubchannels(count: number): void {
    while (this.offeredSubchannels < count) {
      const index = this.offeredSubchannels + 1;
      this.offeredSubchannels = index;
      try {
        this.options.offerSubchannel(this, index);
      } catch (e) {
        this.log(`scsi: offering sub-channel ${index} failed: ${(e as Error).message}`);
        return;
      }
    }
  }
}
