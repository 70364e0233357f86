// rndis_filter.c for the reference guest: RNDIS requests over the control channel, matched
// to their completions by request id, and the bring-up in rndis_filter_device_add's order:
// INITIALIZE, MAXIMUM_FRAME_SIZE, PERMANENT_ADDRESS, FRIENDLY_NAME, offload capabilities,
// SET offload parameters, MEDIA_CONNECT_STATUS, then (NVSP >= 5) LINK_SPEED and the RSS
// capabilities. The packet filter is set when the interface opens and the RSS parameters
// after the sub-channels are open (disable, then enable), as Linux does.
import { NvspVersion } from '../../devices/netvsp/nvsp-protocol.js';
import {
  NdisMediaState,
  NdisStatus,
  RndisDecoder,
  RndisError,
  encodeRndisInitialize,
  encodeRndisKeepaliveComplete,
  encodeRndisQuery,
  encodeRndisSet,
} from '../../devices/netvsp/rndis-protocol.js';
import { Oid } from '../../devices/netvsp/rndis-oids.js';
import {
  ChecksumCapability,
  DEFAULT_RSS_KEY,
  LINUX_RSS_HASH_INFO,
  LsoV2Ipv6Capability,

  NDIS_OFFLOAD_PARAMETERS_SIZE,
  NDIS_OFFLOAD_PARAMETERS_SIZE_V4,
  NDIS_OFFLOAD_SIZE_6_0,
  NDIS_OFFLOAD_SIZE_6_1,
  NDIS_OFFLOAD_SIZE_6_30,
  NdisObjectError,
  NdisObjectType,
  OffloadEncapsulation,
  RSS_CAPABILITIES_REVISION,
  RSS_CAPABILITIES_SIZE,
  RssParameterFlag,
  decodeNdisOffload,
  decodeRssCapabilities,
  encodeNdisOffloadParameters,
  encodeRssParameters,
  type DecodedNdisOffload,
} from '../../devices/netvsp/ndis-offload.js';
import { rd32, wr32 } from '../../devices/netvsp/le-bytes.js';

/** Linux's RNDIS INITIALIZE max_xfer_size. */
export const RNDIS_GUEST_MAX_TRANSFER = 0x4000;
/** Linux's default packet filter on ifup: DIRECTED | ALL_MULTICAST | BROADCAST. */
export const NETVSC_DEFAULT_PACKET_FILTER = 0x0b;
/** Linux's default cap on vRSS channels (VRSS_CHANNEL_DEFAULT). */
export const NETVSC_DEFAULT_MAX_CHANNELS = 8;

/** The offloads Linux turns on from the host's capabilities (rndis_netdev_set_hwcaps). */
export interface NetvscOffloads {
  txChecksumTcp4: boolean; txChecksumUdp4: boolean; tso4: boolean;
  txChecksumTcp6: boolean; txChecksumUdp6: boolean; tso6: boolean;
  gsoMaxSize: number;
  /** The host offers RSC on both IP versions: Linux lists LRO among the NIC's features. */
  lro: boolean;
}

export interface RndisDeviceInfo {
  mac: Uint8Array;
  mtu: number;
  friendlyName: string | null;
  linkUp: boolean;
  /** Link speed in 100 bit/s units, 0 when not queried/answered. */
  linkSpeed: number;
  /** Receive queues the host offers (1 without RSS). */
  rssQueues: number;
  rssTableEntries: number;
  maxPacketsPerMessage: number;
  packetAlignmentFactor: number;
  offloads: NetvscOffloads;
}

export interface RndisFilterOptions {
  /** Sends one RNDIS control message (the data path's sendControl). */
  send: (message: Uint8Array, length: number) => boolean;
  timeoutMs?: number;
  /** Answer a host KEEPALIVE (Linux does not: it logs it as unhandled). */
  answerKeepalive?: boolean;
  onLinkChange?: (up: boolean, reason: 'connect' | 'disconnect' | 'network-change') => void;
  onLinkSpeed?: (speed: number) => void;
  log?: (message: string) => void;
}

interface Pending { resolve: (r: { status: number; info: Uint8Array }) => void; reject: (e: Error) => void; timer: NodeJS.Timeout; what: string }

/** One OID request in the bring-up (recorded so tests and logs can see the order). */
export interface RndisStep { request: 'initialize' | 'query' | 'set'; oid: number; status: number }

export class RndisFilter {
  readonly steps: RndisStep[] = [];
  private readonly pending = new Map<number, Pending>();
  private nextRequestId = 0;
  private readonly out = new Uint8Array(4096);
  private readonly decoder = new RndisDecoder();
  private readonly timeoutMs: number;

  constructor(private readonly o: RndisFilterOptions) {
    this.timeoutMs = o.timeoutMs ?? 30_000;
  }

  // ---- requests ----

  private request(what: string, encode: (target: Uint8Array, requestId: number) => number): Promise<{ status: number; info: Uint8Array }> {
    const id = ++this.nextRequestId >>> 0 || ++this.nextRequestId;
    const n = encode(this.out, id);
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.pending.delete(id);
        reject(new Error(`RNDIS ${what}: no answer within ${this.timeoutMs} ms`));
      }, this.timeoutMs);
      this.pending.set(id, { resolve, reject, timer, what });
      if (!this.o.send(this.out, n)) {
        clearTimeout(timer);
        this.pending.delete(id);
        reject(new Error(`RNDIS ${what}: the control message could not be sent`));
      }
    });
  }

  async query(oid: number, input: Uint8Array = new Uint8Array(0)): Promise<{ status: number; info: Uint8Array }> {
    const r = await this.request(`query 0x${oid.toString(16)}`, (t, id) => encodeRndisQuery(t, 0, id, oid, input));
    this.steps.push({ request: 'query', oid, status: r.status });
    return r;
  }

  async set(oid: number, value: Uint8Array): Promise<number> {
    const r = await this.request(`set 0x${oid.toString(16)}`, (t, id) => encodeRndisSet(t, 0, id, oid, value));
    this.steps.push({ request: 'set', oid, status: r.status });
    return r.status;
  }

  cancelAll(reason: string): void {
    for (const [id, p] of this.pending) {
      clearTimeout(p.timer);
      p.reject(new Error(`RNDIS ${p.what}: ${reason}`));
      this.pending.delete(id);
    }
  }

  // ---- receive (rndis_filter_receive for control messages) ----

  onControl(bytes: Uint8Array, offset: number, length: number): void {
    const m = this.decoder.decode(bytes, offset, length, 'to-guest');
    if (m instanceof RndisError) return this.o.log?.(`rndis: bad control message: ${m.reason}`);
    switch (m.kind) {
      case 'initialize-complete':
      case 'query-complete':
      case 'set-complete': {
        const p = this.pending.get(m.requestId);
        if (!p) return this.o.log?.(`rndis: completion for unknown request ${m.requestId}`);
        this.pending.delete(m.requestId);
        clearTimeout(p.timer);
        // Copy what the caller needs: the receive section goes back to the host on completion.
        const info = m.kind === 'query-complete' ? bytes.slice(m.infoOffset, m.infoOffset + m.infoLength)
          : m.kind === 'initialize-complete' ? bytes.slice(m.start, m.start + 52) : new Uint8Array(0);
        p.resolve({ status: m.status, info });
        return;
      }
      case 'indicate-status': {
        const s = m.status;
        if (s === NdisStatus.MediaConnect) this.o.onLinkChange?.(true, 'connect');
        else if (s === NdisStatus.MediaDisconnect) this.o.onLinkChange?.(false, 'disconnect');
        else if (s === NdisStatus.NetworkChange) this.o.onLinkChange?.(true, 'network-change');
        else if (s === NdisStatus.LinkSpeedChange && m.bufferLength >= 4) this.o.onLinkSpeed?.(rd32(bytes, m.bufferOffset));
        return;
      }
      case 'keepalive': {
        if (!this.o.answerKeepalive) return this.o.log?.('rndis: unhandled KEEPALIVE from the host');
        const n = encodeRndisKeepaliveComplete(this.out, 0, m.requestId, NdisStatus.Success);
        this.o.send(this.out, n);
        return;
      }
      default:
        this.o.log?.(`rndis: unhandled ${m.kind} message`);
    }
  }

  // ---- bring-up ----

  /** rndis_filter_device_add up to (not including) the sub-channels. */
  async bringUp(nvspVersion: number, mtu: number): Promise<RndisDeviceInfo> {
    // rndis_filter_init_device
    const init = await this.request('initialize', (t, id) => encodeRndisInitialize(t, 0, id, RNDIS_GUEST_MAX_TRANSFER));
    this.steps.push({ request: 'initialize', oid: 0, status: init.status });
    if (init.status !== NdisStatus.Success) throw new Error(`RNDIS INITIALIZE failed: status 0x${init.status.toString(16)}`);
    const maxPacketsPerMessage = rd32(init.info, 32);
    const packetAlignmentFactor = Math.min(rd32(init.info, 40), 12);

    const info: RndisDeviceInfo = {
      mac: new Uint8Array(6), mtu, friendlyName: null, linkUp: true, linkSpeed: 0, rssQueues: 1, rssTableEntries: 0,
      maxPacketsPerMessage, packetAlignmentFactor,
      offloads: { txChecksumTcp4: false, txChecksumUdp4: false, tso4: false, txChecksumTcp6: false, txChecksumUdp6: false, tso6: false, gsoMaxSize: 0, lro: false },
    };
    const frame = await this.query(Oid.GEN_MAXIMUM_FRAME_SIZE);
    if (frame.status === NdisStatus.Success && frame.info.length === 4) {
      const hostMtu = rd32(frame.info, 0);
      if (hostMtu >= 68 && hostMtu < info.mtu) info.mtu = hostMtu;
    }
    const mac = await this.query(Oid['802_3_PERMANENT_ADDRESS']);
    if (mac.status !== NdisStatus.Success || mac.info.length !== 6) throw new Error('RNDIS: the host did not give a MAC address');
    info.mac.set(mac.info);
    const name = await this.query(Oid.GEN_FRIENDLY_NAME);
    if (name.status === NdisStatus.Success && name.info.length > 0 && name.info.length <= 512) {
      const text = Buffer.from(name.info).toString('utf16le').replace(/\0.*$/s, '');
      if (text !== 'Network Adapter') info.friendlyName = text;
    }
    await this.setHardwareCaps(nvspVersion, info);
    const link = await this.query(Oid.GEN_MEDIA_CONNECT_STATUS);
    if (link.status === NdisStatus.Success && link.info.length === 4) info.linkUp = rd32(link.info, 0) === NdisMediaState.Connected;
    if (nvspVersion >= NvspVersion.V5) {
      const speed = await this.query(Oid.GEN_LINK_SPEED);
      if (speed.status === NdisStatus.Success && speed.info.length === 4) info.linkSpeed = rd32(speed.info, 0);
      const capIn = new Uint8Array(RSS_CAPABILITIES_SIZE);
      capIn[0] = NdisObjectType.RssCapabilities;
      capIn[1] = RSS_CAPABILITIES_REVISION;
      capIn[2] = RSS_CAPABILITIES_SIZE;
      const caps = await this.query(Oid.GEN_RECEIVE_SCALE_CAPABILITIES, capIn);
      if (caps.status === NdisStatus.Success && caps.info.length <= RSS_CAPABILITIES_SIZE) {
        const c = decodeRssCapabilities(caps.info, 0, caps.info.length);
        if (!(c instanceof NdisObjectError)) {
          info.rssQueues = Math.max(1, c.numReceiveQueues);
          info.rssTableEntries = c.numIndirectionEntries || 128;
        }
      }
    }
    return info;
  }

  /** rndis_netdev_set_hwcaps: query NDIS_OFFLOAD, then SET the parameters derived from it. */
  private async setHardwareCaps(nvspVersion: number, info: RndisDeviceInfo): Promise<void> {
    const [revision, size] = nvspVersion >= NvspVersion.V5 ? [3, NDIS_OFFLOAD_SIZE_6_30] : nvspVersion >= NvspVersion.V4 ? [2, NDIS_OFFLOAD_SIZE_6_1] : [1, NDIS_OFFLOAD_SIZE_6_0];
    const input = new Uint8Array(size);
    input[0] = NdisObjectType.Offload;
    input[1] = revision;
    input[2] = size & 0xff;
    input[3] = size >> 8;
    const r = await this.query(Oid.TCP_OFFLOAD_HARDWARE_CAPABILITIES, input);
    if (r.status !== NdisStatus.Success || r.info.length > size) throw new Error('RNDIS: the offload capability query failed');
    const caps = decodeNdisOffload(r.info, 0, r.info.length);
    if (caps instanceof NdisObjectError) throw new Error(`RNDIS: bad NDIS_OFFLOAD: ${caps.reason}`);
    const { params, offloads } = linuxOffloadParameters(caps, nvspVersion);
    info.offloads = offloads;
    const extlen = nvspVersion <= NvspVersion.V4 ? NDIS_OFFLOAD_PARAMETERS_SIZE_V4 : NDIS_OFFLOAD_PARAMETERS_SIZE;
    const value = new Uint8Array(extlen);
    encodeNdisOffloadParameters(value, 0, params, extlen);
    const status = await this.set(Oid.TCP_OFFLOAD_PARAMETERS, value);
    if (status !== NdisStatus.Success) throw new Error(`RNDIS: SET offload parameters failed: 0x${status.toString(16)}`);
  }

  /**
   * netvsc_set_features on an LRO change (`ethtool -K lro on|off`): an offload-parameters
   * structure with only the two RSC fields set, every other field 0 = no change.
   */
  async setLro(on: boolean, nvspVersion: number): Promise<number> {
    const extlen = nvspVersion <= NvspVersion.V4 ? NDIS_OFFLOAD_PARAMETERS_SIZE_V4 : NDIS_OFFLOAD_PARAMETERS_SIZE;
    const value = new Uint8Array(extlen);
    const rsc = on ? 2 : 1;
    encodeNdisOffloadParameters(value, 0, { ...NO_CHANGE_PARAMETERS, rscIpv4: rsc, rscIpv6: rsc }, extlen);
    return this.set(Oid.TCP_OFFLOAD_PARAMETERS, value);
  }

  /** rndis_filter_set_packet_filter (netvsc_set_rx_mode): status ignored, as Linux does. */
  async setPacketFilter(filter: number = NETVSC_DEFAULT_PACKET_FILTER): Promise<number> {
    const v = new Uint8Array(4);
    wr32(v, 0, filter);
    return this.set(Oid.GEN_CURRENT_PACKET_FILTER, v);
  }

  /** rndis_filter_set_rss_param: DISABLE_RSS first, then the real table (channel i % count) and key. */
  async setRssParameters(channels: number, tableEntries = 128): Promise<void> {
    const table = Array.from({ length: tableEntries }, (_, i) => i % channels);
    for (const flags of [RssParameterFlag.DisableRss, 0]) {
      const v = new Uint8Array(40 + 4 * tableEntries + DEFAULT_RSS_KEY.length);
      const n = encodeRssParameters(v, 0, flags, LINUX_RSS_HASH_INFO, table, DEFAULT_RSS_KEY);
      const status = await this.set(Oid.GEN_RECEIVE_SCALE_PARAMETERS, v.subarray(0, n));
      if (status !== NdisStatus.Success) throw new Error(`RNDIS: SET RSS parameters failed: 0x${status.toString(16)}`);
    }
  }
}

/** An NDIS_OFFLOAD_PARAMETERS that changes nothing (every field 0). */
const NO_CHANGE_PARAMETERS = {
  ipv4Checksum: 0, tcpIpv4Checksum: 0, udpIpv4Checksum: 0, tcpIpv6Checksum: 0, udpIpv6Checksum: 0, lsoV1: 0, ipsecV1: 0,
  lsoV2Ipv4: 0, lsoV2Ipv6: 0, tcpConnectionIpv4: 0, tcpConnectionIpv6: 0, flags: 0, ipsecV2: 0, ipsecV2Ipv4: 0,
  rscIpv4: 0, rscIpv6: 0, encapsulatedPacketTaskOffload: 0, encapsulationTypes: 0,
};

/** The NDIS_OFFLOAD_PARAMETERS Linux sets for the host's capabilities (rndis_netdev_set_hwcaps). */
export function linuxOffloadParameters(caps: DecodedNdisOffload, nvspVersion: number): { params: Parameters<typeof encodeNdisOffloadParameters>[2]; offloads: NetvscOffloads } {
  const C = ChecksumCapability;
  const ENABLED_TX_RX = 4;
  const DISABLED = 1;
  const LSO_ENABLED = 2;
  const params = { ...NO_CHANGE_PARAMETERS, ipv4Checksum: DISABLED };
  const o: NetvscOffloads = { txChecksumTcp4: false, txChecksumUdp4: false, tso4: false, txChecksumTcp6: false, txChecksumUdp6: false, tso6: false, gsoMaxSize: 65536, lro: false };
  const ALL_TCP4 = C.TcpOptions | C.Tcp;
  const ALL_TCP6 = C.IpOptions | C.TcpOptions | C.Tcp;
  if ((caps.ipv4TxFlags & ALL_TCP4) === ALL_TCP4) {
    params.tcpIpv4Checksum = ENABLED_TX_RX;
    o.txChecksumTcp4 = true;
    if (caps.lsoV2Ipv4Encapsulation & OffloadEncapsulation.Ieee802_3) {
      params.lsoV2Ipv4 = LSO_ENABLED;
      o.tso4 = true;
      o.gsoMaxSize = Math.min(o.gsoMaxSize, caps.lsoV2Ipv4MaxSize);
    }
    if (caps.ipv4TxFlags & C.Udp) {
      params.udpIpv4Checksum = ENABLED_TX_RX;
      o.txChecksumUdp4 = true;
    }
  }
  if ((caps.ipv6TxFlags & ALL_TCP6) === ALL_TCP6) {
    params.tcpIpv6Checksum = ENABLED_TX_RX;
    o.txChecksumTcp6 = true;
    const need = LsoV2Ipv6Capability.ExtensionHeaders | LsoV2Ipv6Capability.TcpOptions;
    if ((caps.lsoV2Ipv6Encapsulation & OffloadEncapsulation.Ieee802_3) && (caps.lsoV2Ipv6Flags & need) === need) {
      params.lsoV2Ipv6 = LSO_ENABLED;
      o.tso6 = true;
      o.gsoMaxSize = Math.min(o.gsoMaxSize, caps.lsoV2Ipv6MaxSize);
    }
    if (caps.ipv6TxFlags & C.Udp) {
      params.udpIpv6Checksum = ENABLED_TX_RX;
      o.txChecksumUdp6 = true;
    }
  }
  if (caps.rscIpv4 && caps.rscIpv6) {
    o.lro = true;
    // At probe time the netdev's features are still empty, so Linux tells the host off.
    params.rscIpv4 = DISABLED;
    params.rscIpv6 = DISABLED;
  }
  if (nvspVersion <= NvspVersion.V4) {
    params.udpIpv4Checksum = 0;
    params.udpIpv6Checksum = 0;
  }
  if (!o.tso4 && !o.tso6) o.gsoMaxSize = 0;
  return { params, offloads: o };
}

