// netvsc_connect_vsp + netvsc_init_buf for the reference guest, in Linux's order: INIT one
// version per message (0x60001 down to 0x2, min = max), SEND_NDIS_CONFIG (v >= 2, no
// completion), SEND_NDIS_VER (no completion), SEND_RECV_BUF with the receive-buffer GPADL
// (id 0xCAFE), SEND_SEND_BUF with the send-buffer GPADL (id 0). Requests that expect an
// answer go out in-band with completion requested, one at a time; the host answers with a
// completion packet whose payload is the NVSP reply (matched here by message type, as
// netvsc_send_completion does for the init messages).
import type { GuestMemory } from '../../memory/guest-memory.js';
import { PAGE_SIZE } from '../../memory/page.js';
import { PACKET_FLAG_COMPLETION_REQUESTED, PacketType } from '../../vmbus/packet.js';
import {
  LINUX_NVSP_VERSION_ORDER,
  NDIS_VERSION_6_1,
  NDIS_VERSION_6_30,
  NETVSC_MIN_SECTION_SIZE,
  NETVSC_RECEIVE_BUFFER_ID,
  NETVSC_SEND_BUFFER_ID,
  NETVSC_SEND_SECTION_SIZE,
  NVSP_MESSAGE_SIZE,
  NdisConfigCapability,
  NvspDecoder,
  NvspStatus,
  NvspVersion,
  SubchannelOperation,
  encodeNvspMessage,
  isNvspError,
  type NvspMessage,
} from '../../devices/netvsp/nvsp-protocol.js';
import type { PageAllocator } from '../page-allocator.js';

/** One channel as the netvsc code sees it: a packet pipe (GuestChannel's ring, or a scripted host in tests). */
export interface NetvscPort {
  send(payload: Uint8Array, transactionId: number, type: number, flags: number, header?: Uint8Array | null): boolean;
  /** Publishes packets written since the last flush (one signal per burst); optional. */
  flush?(): void;
}

/** GPADLs on the primary channel (vmbus_establish_gpadl / vmbus_teardown_gpadl). */
export interface GpadlService {
  establish(pfns: readonly number[], byteCount: number): Promise<number>;
  teardown(handle: number): Promise<void>;
}

/** Transaction id of every NVSP init request (Linux passes a pointer; the value only has to be unique). */
export const NVSP_INIT_TRANSACTION_ID = 2 ** 48;
/** Linux waits forever for these; we give up after this (configurable) so a broken host fails the probe. */
export const NETVSC_DEFAULT_INIT_TIMEOUT_MS = 30_000;
/** Defaults: Linux uses ~16 MiB of receive buffer for v > 2; the reference guest defaults to 2 MiB. */
export const NETVSC_DEFAULT_RECEIVE_BUFFER_BYTES = 2 * 1024 * 1024;
/** 170 sections of 6144 bytes = 1,044,480 bytes (255 pages), Linux's default send buffer. */
export const NETVSC_DEFAULT_SEND_BUFFER_BYTES = 170 * NETVSC_SEND_SECTION_SIZE;
const ETH_HLEN = 14;

/** The init requests on the primary: at most one outstanding, each with a timeout. */
export class NvspControl {
  private pending: { kind: NvspMessage['kind']; what: string; resolve: (m: NvspMessage) => void; reject: (e: Error) => void; timer: NodeJS.Timeout } | null = null;
  private readonly decoder = new NvspDecoder();
  private readonly scratch = new Uint8Array(NVSP_MESSAGE_SIZE);

  constructor(private readonly port: NetvscPort, private readonly timeoutMs = NETVSC_DEFAULT_INIT_TIMEOUT_MS) {}

  /** Sends `m` with completion requested and resolves with the `expect` reply (a copy). */
  request(m: NvspMessage, expect: NvspMessage['kind'], what: string): Promise<NvspMessage> {
    if (this.pending) return Promise.reject(new Error(`${what}: another init request is outstanding`));
    encodeNvspMessage(m, this.scratch, 0);
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.pending = null;
        reject(new Error(`${what}: no answer from the host within ${this.timeoutMs} ms`));
      }, this.timeoutMs);
      this.pending = { kind: expect, what, resolve, reject, timer };
      if (!this.port.send(this.scratch, NVSP_INIT_TRANSACTION_ID, PacketType.DataInband, PACKET_FLAG_COMPLETION_REQUESTED)) {
        clearTimeout(timer);
        this.pending = null;
        reject(new Error(`${what}: the channel cannot send`));
      }
      this.port.flush?.();
    });
  }

  /** A message that gets no answer (SEND_NDIS_CONFIG, SEND_NDIS_VER, revokes). */
  post(m: NvspMessage): boolean {
    encodeNvspMessage(m, this.scratch, 0);
    const ok = this.port.send(this.scratch, NVSP_INIT_TRANSACTION_ID, PacketType.DataInband, 0);
    this.port.flush?.();
    return ok;
  }

  /**
   * A completion that may answer the init request. Linux drops replies shorter than the
   * message it expects (the decoder applies those minimums); true when it was consumed.
   */
  onCompletion(payload: Uint8Array): boolean {
    const pending = this.pending;
    if (!pending) return false;
    const m = this.decoder.decode(payload, 'to-guest');
    if (isNvspError(m) || m.kind !== pending.kind) return false;
    this.pending = null;
    clearTimeout(pending.timer);
    pending.resolve({ ...m } as NvspMessage);
    return true;
  }

  cancel(reason: string): void {
    const p = this.pending;
    if (!p) return;
    this.pending = null;
    clearTimeout(p.timer);
    p.reject(new Error(`${p.what}: ${reason}`));
  }
}

/** A guest buffer shared with the host through a GPADL (physically contiguous here, so it is one view). */
export interface SharedBuffer {
  firstPfn: number;
  pages: number;
  bytes: Uint8Array;
  gpadl: number;
}

export interface NvspSession {
  version: number;
  ndisMajor: number;
  ndisMinor: number;
  receive: SharedBuffer & { subAllocSize: number; numSubAllocs: number };
  send: SharedBuffer & { sectionSize: number; sectionCount: number };
}

export interface ConnectOptions {
  memory: GuestMemory;
  allocator: PageAllocator;
  gpadl: GpadlService;
  /** Interface MTU (without the Ethernet header); SEND_NDIS_CONFIG carries MTU + 14. */
  mtu: number;
  receiveBufferBytes?: number;
  sendBufferBytes?: number;
  /** Highest version to offer (tests: force an older protocol). */
  maxVersion?: number;
  log?: (message: string) => void;
}

async function shareBuffer(o: ConnectOptions, bytes: number): Promise<SharedBuffer> {
  const pages = Math.ceil(bytes / PAGE_SIZE);
  const firstPfn = o.allocator.allocContiguous(pages);
  const view = o.memory.bytes.subarray(firstPfn * PAGE_SIZE, (firstPfn + pages) * PAGE_SIZE);
  view.fill(0);
  const pfns = Array.from({ length: pages }, (_, i) => firstPfn + i);
  try {
    return { firstPfn, pages, bytes: view, gpadl: await o.gpadl.establish(pfns, pages * PAGE_SIZE) };
  } catch (e) {
    o.allocator.freeRun(firstPfn, pages);
    throw e;
  }
}

/** Frees what netvscConnectVsp set up (after REVOKE and channel close, or on a failed probe). */
export async function releaseBuffer(o: Pick<ConnectOptions, 'allocator' | 'gpadl'>, b: SharedBuffer | null | undefined, teardown: boolean): Promise<void> {
  if (!b) return;
  if (teardown && b.gpadl) await o.gpadl.teardown(b.gpadl).catch(() => {});
  o.allocator.freeRun(b.firstPfn, b.pages);
}

/** negotiate_nvsp_ver, NDIS config/version, then netvsc_init_buf. */
export async function netvscConnectVsp(control: NvspControl, o: ConnectOptions): Promise<NvspSession> {
  let version = 0;
  for (const v of LINUX_NVSP_VERSION_ORDER) {
    if (o.maxVersion !== undefined && v > o.maxVersion) continue;
    const reply = await control.request({ kind: 'init', minVersion: v, maxVersion: v }, 'init-complete', `NVSP INIT 0x${v.toString(16)}`);
    if (reply.kind === 'init-complete' && reply.status === NvspStatus.Success) {
      version = v;
      break;
    }
  }
  if (version === 0) throw new Error('netvsc: the host accepted no NVSP version from 0x60001 down to 0x2');
  if (version >= NvspVersion.V2) {
    let caps = NdisConfigCapability.Ieee8021q;
    if (version >= NvspVersion.V5) caps |= NdisConfigCapability.Sriov | NdisConfigCapability.Teaming;
    if (version >= NvspVersion.V61) caps |= NdisConfigCapability.Rsc;
    control.post({ kind: 'ndis-config', mtu: o.mtu + ETH_HLEN, reserved: 0, capabilities: BigInt(caps) });
  }
  const ndis = version <= NvspVersion.V4 ? NDIS_VERSION_6_1 : NDIS_VERSION_6_30;
  control.post({ kind: 'ndis-version', major: ndis.major, minor: ndis.minor });

  // netvsc_init_buf: the receive buffer first (15 MiB cap up to v2, as Linux).
  let rxBytes = o.receiveBufferBytes ?? NETVSC_DEFAULT_RECEIVE_BUFFER_BYTES;
  if (version <= NvspVersion.V2) rxBytes = Math.min(rxBytes, 15 * 1024 * 1024);
  const rx = await shareBuffer(o, rxBytes);
  let tx: SharedBuffer | null = null;
  try {
    const r = await control.request({ kind: 'receive-buffer', gpadlHandle: rx.gpadl, id: NETVSC_RECEIVE_BUFFER_ID }, 'receive-buffer-complete', 'SEND_RECV_BUF');
    if (r.kind !== 'receive-buffer-complete' || r.status !== NvspStatus.Success) throw new Error(`netvsc: SEND_RECV_BUF failed (status ${(r as { status?: number }).status})`);
    // Linux: exactly one section at offset 0, sub-allocations >= 68 bytes that fit the buffer.
    if (r.numSections !== 1 || r.sectionOffset !== 0 || r.subAllocSize < NETVSC_MIN_SECTION_SIZE || r.subAllocSize * r.numSubAllocs > rx.bytes.length || r.numSubAllocs === 0) {
      throw new Error(`netvsc: invalid receive section (${r.numSections} sections, offset ${r.sectionOffset}, ${r.numSubAllocs} x ${r.subAllocSize})`);
    }
    const receive = { ...rx, subAllocSize: r.subAllocSize, numSubAllocs: r.numSubAllocs };
    tx = await shareBuffer(o, o.sendBufferBytes ?? NETVSC_DEFAULT_SEND_BUFFER_BYTES);
    const s = await control.request({ kind: 'send-buffer', gpadlHandle: tx.gpadl, id: NETVSC_SEND_BUFFER_ID }, 'send-buffer-complete', 'SEND_SEND_BUF');
    if (s.kind !== 'send-buffer-complete' || s.status !== NvspStatus.Success) throw new Error(`netvsc: SEND_SEND_BUF failed (status ${(s as { status?: number }).status})`);
    if (s.sectionSize < NETVSC_MIN_SECTION_SIZE) throw new Error(`netvsc: send section size ${s.sectionSize} is below ${NETVSC_MIN_SECTION_SIZE}`);
    const sectionCount = Math.floor(tx.bytes.length / s.sectionSize);
    if (sectionCount === 0) throw new Error(`netvsc: send section size ${s.sectionSize} exceeds the buffer`);
    return { version, ndisMajor: ndis.major, ndisMinor: ndis.minor, receive, send: { ...tx, sectionSize: s.sectionSize, sectionCount } };
  } catch (e) {
    await releaseBuffer(o, tx, true);
    await releaseBuffer(o, rx, true);
    throw e;
  }
}

/** rndis_set_subchannel's NVSP half: SUBCHANNEL ALLOCATE; returns the count the host granted (<= wanted). */
export async function requestSubchannels(control: NvspControl, wanted: number): Promise<number> {
  const r = await control.request({ kind: 'subchannel-request', operation: SubchannelOperation.Allocate, count: wanted }, 'subchannel-complete', 'SUBCHANNEL');
  if (r.kind !== 'subchannel-complete' || r.status !== NvspStatus.Success) throw new Error(`netvsc: SUBCHANNEL failed (status ${(r as { status?: number }).status})`);
  return Math.min(wanted, r.count);
}
