// The RNDIS control plane of the synthetic NIC (spec 2.5, 2.6, 2.8, 2.9): INITIALIZE,
// QUERY, SET, RESET, HALT and KEEPALIVE from the guest, each answered with the message
// Linux's rndis_filter waits for (it waits without timeout, so every request that has a
// reply gets one), and the link-state indications the host sends on its own.
//
// The RNDIS state lives here: initialized or not, the packet filter, the offload
// parameters the guest chose and the receive-side scaling configuration (Toeplitz key,
// hash types, indirection table). Responses are written into a caller's buffer; the
// channel carries them to the guest through the receive buffer.
//
// Answers are sized the way Linux checks them: a u32 OID gets exactly 4 bytes, the MAC
// 6, NDIS_OFFLOAD the size of the negotiated NDIS version, RSS capabilities 18 - a longer
// answer is a failure on the guest side (spec section 5, mistake 8).
import {
  checksumLsoAndRscOffload,
  decodeNdisOffloadParameters,
  decodeRssParameters,
  encodeNdisOffload,
  encodeRssCapabilities,
  ndisOffloadSizeFor,
  NdisObjectError,
  noOffload,
  OffloadParameter,
  RssCapability,
  RssParameterFlag,
  type NdisOffloadParameters,
} from './ndis-offload.js';
import { NvspVersion } from './nvsp-protocol.js';
import { Oid } from './rndis-oids.js';
import {
  encodeRndisIndicateStatus,
  encodeRndisInitializeComplete,
  encodeRndisKeepaliveComplete,
  encodeRndisQueryComplete,
  encodeRndisResetComplete,
  encodeRndisSetComplete,
  NdisMediaState,
  NdisStatus,
  RNDIS_HOST_MAX_PACKETS_PER_MESSAGE,
  RNDIS_HOST_MAX_TRANSFER_SIZE,
  RNDIS_HOST_PACKET_ALIGNMENT_FACTOR,
  RndisMessageSize,
  type RndisMessage,
} from './rndis-protocol.js';
import { RssIndirectionTable } from './rss-table.js';
import { LINUX_HASH_INFO, ToeplitzHash } from './toeplitz.js';

/** Largest control response this host writes (an NDIS_OFFLOAD answer is 24 + 156). */
export const RNDIS_CONTROL_RESPONSE_MAX = 256;
/** OID_GEN_LINK_SPEED in 100 bit/s units: 10 Gbit/s, what Hyper-V reports for a synthetic NIC. */
export const LINK_SPEED_100BPS = 100_000_000;
/** Indirection-table entries advertised in the RSS capabilities (Linux's ITAB_NUM). */
export const RSS_ADVERTISED_TABLE_ENTRIES = 128;

/** What the control plane reads from the NIC it belongs to. */
export interface RndisDeviceInfo {
  readonly mac: Uint8Array;
  /** Largest IP packet (without the Ethernet header) the NIC carries. */
  readonly mtu: number;
  readonly linkUp: boolean;
  /** The negotiated NVSP version (0 before INIT). */
  readonly nvspVersion: number;
  /** Most receive queues (channels) this device offers. */
  readonly maxQueues: number;
  /** Channels the guest can use now: the primary plus the sub-channels granted. */
  readonly queueCount: number;
  /** Advertise checksum, LSO and RSC offload (the backend finishes checksums and segments). */
  readonly offload: boolean;
}

/** Counters of requests answered with a failure or dropped. */
export interface RndisControlCounters {
  requests: number;
  failed: number;
  /** Messages that had no answer to give (malformed, HALT, completions from the guest). */
  unanswered: number;
}

export class RndisControl {
  initialized = false;
  packetFilter = 0;
  /** The guest's last NDIS_OFFLOAD_PARAMETERS (null until it sets them). */
  offloadParameters: NdisOffloadParameters | null = null;
  /**
   * Receive segment coalescing the guest turned on, per IP version. Sticky across SETs:
   * Linux's LRO toggle (netvsc_set_features) sends a structure with only the RSC fields
   * set and every other field 0 = "no change".
   */
  rscIpv4 = false;
  rscIpv6 = false;
  rssEnabled = false;
  rssHashInfo = LINUX_HASH_INFO;
  readonly rssTable = new RssIndirectionTable();
  readonly toeplitz = new ToeplitzHash();
  readonly counters: RndisControlCounters = { requests: 0, failed: 0, unanswered: 0 };
  private readonly scratch = new Uint8Array(RNDIS_CONTROL_RESPONSE_MAX);

  constructor(private readonly device: RndisDeviceInfo) {}

  /** Back to the state of a NIC never initialized (channel closed, HALT). */
  reset(): void {
    this.initialized = false;
    this.packetFilter = 0;
    this.offloadParameters = null;
    this.rscIpv4 = this.rscIpv6 = false;
    this.rssEnabled = false;
    this.rssHashInfo = LINUX_HASH_INFO;
    this.rssTable.spreadEvenly(1, 1);
  }

  /** Whether received frames may be indicated: initialized and the guest asked for some. */
  get receiving(): boolean {
    return this.initialized && this.packetFilter !== 0;
  }

  /**
   * Handles one guest control message (decoded from `bytes`) and writes its response into
   * `out` (at least RNDIS_CONTROL_RESPONSE_MAX bytes). Returns the response length, 0 when
   * the message has none. Never throws for guest input.
   */
  handle(bytes: Uint8Array, m: RndisMessage, out: Uint8Array): number {
    this.counters.requests++;
    switch (m.kind) {
      case 'initialize':
        this.initialized = true;
        return encodeRndisInitializeComplete(out, 0, {
          requestId: m.requestId,
          status: NdisStatus.Success,
          maxPacketsPerMessage: RNDIS_HOST_MAX_PACKETS_PER_MESSAGE,
          maxTransferSize: RNDIS_HOST_MAX_TRANSFER_SIZE,
          packetAlignmentFactor: RNDIS_HOST_PACKET_ALIGNMENT_FACTOR,
        });
      case 'halt':
        // No reply: the guest tears the device down right after.
        this.reset();
        this.counters.unanswered++;
        return 0;
      case 'query':
        return this.query(m.requestId, m.oid, out);
      case 'set':
        return this.set(bytes, m.requestId, m.oid, m.infoOffset, m.infoLength, out);
      case 'reset':
        // Linux never sends it; NDIS semantics: nothing to reset in a synthetic NIC.
        return encodeRndisResetComplete(out, 0, NdisStatus.Success, 0);
      case 'keepalive':
        return encodeRndisKeepaliveComplete(out, 0, m.requestId, NdisStatus.Success);
      default:
        // Completions and packets are not control requests; the guest sends no completions.
        this.counters.unanswered++;
        return 0;
    }
  }

  /** INDICATE_STATUS MEDIA_CONNECT / MEDIA_DISCONNECT for a link change; returns its length. */
  encodeLinkIndication(up: boolean, out: Uint8Array): number {
    return encodeRndisIndicateStatus(out, 0, up ? NdisStatus.MediaConnect : NdisStatus.MediaDisconnect);
  }

  // ---- QUERY ----

  private query(requestId: number, oid: number, out: Uint8Array): number {
    const d = this.device;
    const info = this.scratch;
    let length: number;
    switch (oid) {
      case Oid.GEN_MAXIMUM_FRAME_SIZE:
        length = putU32(info, d.mtu);
        break;
      case Oid.GEN_MAXIMUM_TOTAL_SIZE:
        length = putU32(info, d.mtu + 14);
        break;
      case Oid['802_3_PERMANENT_ADDRESS']:
      case Oid['802_3_CURRENT_ADDRESS']:
        info.set(d.mac.subarray(0, 6), 0);
        length = 6;
        break;
      case Oid.TCP_OFFLOAD_HARDWARE_CAPABILITIES:
        length = encodeNdisOffload(info, 0, d.offload ? checksumLsoAndRscOffload() : noOffload(), ndisOffloadSizeFor(d.nvspVersion));
        break;
      case Oid.GEN_MEDIA_CONNECT_STATUS:
        length = putU32(info, d.linkUp ? NdisMediaState.Connected : NdisMediaState.Disconnected);
        break;
      case Oid.GEN_LINK_SPEED:
        length = putU32(info, LINK_SPEED_100BPS);
        break;
      case Oid.GEN_CURRENT_PACKET_FILTER:
        length = putU32(info, this.packetFilter);
        break;
      case Oid.GEN_RECEIVE_SCALE_CAPABILITIES:
        // vRSS needs NVSP v5 (subchannels); before that the guest stays single-queue.
        if (d.nvspVersion < NvspVersion.V5 || d.maxQueues < 2) return this.fail(out, requestId, NdisStatus.NotSupported, 'query');
        length = encodeRssCapabilities(info, 0, {
          capabilities: RssCapability.HashFunctionToeplitz | RssCapability.HashTypeTcpIpv4 | RssCapability.HashTypeTcpIpv6,
          numInterruptMessages: 1,
          numReceiveQueues: d.maxQueues,
          numIndirectionEntries: RSS_ADVERTISED_TABLE_ENTRIES,
        });
        break;
      case Oid.GEN_FRIENDLY_NAME:
        // Optional: the guest keeps its own name when this fails.
        return this.fail(out, requestId, NdisStatus.NotSupported, 'query');
      default:
        return this.fail(out, requestId, NdisStatus.InvalidOid, 'query');
    }
    return encodeRndisQueryComplete(out, 0, requestId, NdisStatus.Success, info.subarray(0, length));
  }

  // ---- SET ----

  private set(bytes: Uint8Array, requestId: number, oid: number, infoOffset: number, infoLength: number, out: Uint8Array): number {
    let status: number = NdisStatus.Success;
    switch (oid) {
      case Oid.GEN_CURRENT_PACKET_FILTER:
        if (infoLength < 4) status = NdisStatus.InvalidLength;
        else this.packetFilter = readU32(bytes, infoOffset);
        break;
      case Oid.TCP_OFFLOAD_PARAMETERS: {
        // Linux fails the probe unless this succeeds; a malformed structure is still refused.
        const p = decodeNdisOffloadParameters(bytes, infoOffset, infoLength);
        if (p instanceof NdisObjectError) status = NdisStatus.InvalidData;
        else {
          this.offloadParameters = p;
          if (p.rscIpv4 !== OffloadParameter.NoChange) this.rscIpv4 = p.rscIpv4 === OffloadParameter.Enabled && this.device.offload;
          if (p.rscIpv6 !== OffloadParameter.NoChange) this.rscIpv6 = p.rscIpv6 === OffloadParameter.Enabled && this.device.offload;
        }
        break;
      }
      case Oid.GEN_RECEIVE_SCALE_PARAMETERS:
        status = this.setRss(bytes, infoOffset, infoLength);
        break;
      case Oid.OFFLOAD_ENCAPSULATION:
        // Accepted and ignored: the encapsulation is always 802.3 here.
        break;
      default:
        // OID_GEN_RNDIS_CONFIG_PARAMETER (MAC change) included: the MAC is the host's.
        status = NdisStatus.NotSupported;
    }
    if (status !== NdisStatus.Success) this.counters.failed++;
    return encodeRndisSetComplete(out, 0, requestId, status);
  }

  private setRss(bytes: Uint8Array, infoOffset: number, infoLength: number): number {
    const d = this.device;
    if (d.nvspVersion < NvspVersion.V5) return NdisStatus.NotSupported;
    const p = decodeRssParameters(bytes, infoOffset, infoLength);
    if (p instanceof NdisObjectError) return NdisStatus.InvalidData;
    if ((p.flags & RssParameterFlag.DisableRss) !== 0) {
      this.rssEnabled = false;
      return NdisStatus.Success;
    }
    if ((p.flags & RssParameterFlag.HashKeyUnchanged) === 0 && p.keyLength > 0) {
      if (!this.toeplitz.setKey(bytes, p.keyOffset, p.keyLength)) return NdisStatus.InvalidData;
    }
    if ((p.flags & RssParameterFlag.IndirectionTableUnchanged) === 0 && p.tableEntries > 0) {
      if (this.rssTable.load(bytes, p.tableOffset, p.tableEntries * 4, d.queueCount) !== 0) return NdisStatus.InvalidData;
    }
    if ((p.flags & RssParameterFlag.HashInfoUnchanged) === 0) this.rssHashInfo = p.hashInfo;
    this.rssEnabled = true;
    return NdisStatus.Success;
  }

  private fail(out: Uint8Array, requestId: number, status: number, _what: 'query'): number {
    this.counters.failed++;
    return encodeRndisQueryComplete(out, 0, requestId, status);
  }
}

/** The guest asked for TX checksum or LSO offload in its last NDIS_OFFLOAD_PARAMETERS (informational). */
export function offloadRequested(p: NdisOffloadParameters | null): boolean {
  if (p === null) return false;
  const on = (v: number) => v === OffloadParameter.TxEnabledRxDisabled || v === OffloadParameter.TxRxEnabled;
  return on(p.tcpIpv4Checksum) || on(p.tcpIpv6Checksum) || p.lsoV2Ipv4 === OffloadParameter.Enabled || p.lsoV2Ipv6 === OffloadParameter.Enabled;
}

/** Size of a QUERY_CMPLT carrying `infoLength` bytes (for callers sizing buffers). */
export function queryCompleteLength(infoLength: number): number {
  return RndisMessageSize.QueryComplete + infoLength;
}

function putU32(b: Uint8Array, v: number): number {
  b[0] = v & 0xff;
  b[1] = (v >>> 8) & 0xff;
  b[2] = (v >>> 16) & 0xff;
  b[3] = (v >>> 24) & 0xff;
  return 4;
}

function readU32(b: Uint8Array, o: number): number {
  return (b[o]! | (b[o + 1]! << 8) | (b[o + 2]! << 16) | (b[o + 3]! << 24)) >>> 0;
}
