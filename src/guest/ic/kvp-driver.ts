// Reference-guest KVP driver: what Linux's hv_kvp.c (kernel) and tools/hv/hv_kvp_daemon.c
// (user space) do together, with the daemon's pool files kept in memory.
//
// Kernel part: the host's UTF-16 key and value are converted to UTF-8 (at most 511 / 2047
// bytes, stopping at a NUL, REG_U32 / REG_U64 printed as decimal), handed to the daemon,
// and the daemon's answer is written back into the host's own buffer, which is returned
// at the length it arrived with. The kernel does not check that length against the
// operation: fields beyond it read as whatever the 16 KiB receive buffer holds (zeros
// here) and answers beyond it are cut off.
//
// Daemon part: five pools of (key, value) strings in insertion order. SET adds or
// replaces, GET and DELETE find a key by exact match, ENUMERATE returns the entry at an
// index; every failure is reported as HV_S_CONT ("no more items"). The AUTO pool is
// enumerated from the guest's intrinsic data instead of its file.
//
// Two Linux quirks are kept on purpose: GET of an existing key answers S_OK with an empty
// value (the kernel reads the daemon's answer at the ENUMERATE offset), and without a
// running daemon nothing at all is answered — not even NEGOTIATE.

import type { IcLog, IcTransport } from '../../devices/ic/ic-transport.js';
import { IC_BODY_OFFSET, IC_SERVICES, IcMsgType, IcStatus, setIcStatus } from '../../devices/ic/ic-protocol.js';
import type { IcHeader } from '../../devices/ic/ic-protocol.js';
import {
  KVP_AUTO_KEYS,
  KVP_ENUMERATE_INDEX_OFFSET,
  KVP_ENUMERATE_RECORD_OFFSET,
  KVP_GET_SET_RECORD_OFFSET,
  KVP_DELETE_KEY_OFFSET,
  KVP_DELETE_KEY_SIZE_OFFSET,
  KVP_MAX_KEY_SIZE,
  KVP_MAX_VALUE_SIZE,
  KVP_POOL_COUNT,
  KVP_RECORD_KEY_OFFSET,
  KVP_RECORD_KEY_SIZE_OFFSET,
  KVP_RECORD_VALUE_OFFSET,
  KVP_RECORD_VALUE_SIZE_OFFSET,
  KVP_RECORD_VALUE_TYPE_OFFSET,
  KvpOperation,
  KvpPool,
  KvpValueType,
} from '../../devices/ic/kvp-protocol.js';
import { IcGuestDriver } from './ic-guest-driver.js';

/** The kernel's KVP receive buffer: four pages. */
export const KVP_RECV_BUFFER_SIZE = 4 * 4096;

/** The kernel's HV_DRV_VERSION, which the daemon reports as IntegrationServicesVersion. */
export const KVP_LINUX_DRIVER_VERSION = '3.1';

/** The values hv_kvp_daemon reports in the AUTO pool (what uname, os-release and getaddrinfo say). */
export interface KvpGuestInfo {
  readonly fullyQualifiedDomainName?: string;
  readonly integrationServicesVersion?: string;
  /** The daemon lists every address, each followed by ';'. */
  readonly networkAddressIPv4?: string;
  readonly networkAddressIPv6?: string;
  /** The full kernel release (uname -r). */
  readonly osBuildNumber?: string;
  /** os-release NAME, else uname sysname. */
  readonly osName?: string;
  /** os-release VERSION_ID. */
  readonly osMajorVersion?: string;
  readonly osMinorVersion?: string;
  /** The kernel release cut at the first '-'. */
  readonly osVersion?: string;
  /** uname machine. */
  readonly processorArchitecture?: string;
}

const DEFAULT_INFO: Required<KvpGuestInfo> = {
  fullyQualifiedDomainName: 'enlighten-guest',
  integrationServicesVersion: KVP_LINUX_DRIVER_VERSION,
  networkAddressIPv4: '',
  networkAddressIPv6: '',
  osBuildNumber: '6.1.0-enlighten',
  osName: 'Linux',
  osMajorVersion: '',
  osMinorVersion: '',
  osVersion: '6.1.0',
  processorArchitecture: 'x86_64',
};

export interface KvpDriverOptions {
  readonly info?: KvpGuestInfo;
  /** Whether hv_kvp_daemon is running (default true). Without it every packet waits, unanswered. */
  readonly daemon?: boolean;
  /** Answer GET with the stored value (a fixed Linux / Windows guest) instead of Linux's empty string. */
  readonly getReturnsValue?: boolean;
  /** Entries per pool before SET fails (the daemon grows until realloc fails; default 1024). */
  readonly maxRecordsPerPool?: number;
  readonly log?: IcLog;
}

export interface KvpGuestEntry {
  readonly key: string;
  readonly value: string;
}

/** Packets kept while the daemon is absent (the ring would fill up at about this point). */
const MAX_DEFERRED_PACKETS = 64;

const utf8 = new TextEncoder();

function utf8Length(s: string): number {
  return utf8.encode(s).length;
}

function viewOf(bytes: Uint8Array): DataView {
  return new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
}

/**
 * utf16s_to_utf8s as hv_kvp.c calls it: read UTF-16LE units from `offset` (at most
 * `maxUnits`, a u32 the kernel treats as int), stop at a NUL or the buffer's end, skip
 * unpaired surrogates and characters that no longer fit in `maxUtf8Bytes`.
 */
function kernelUtf16ToString(buf: Uint8Array, offset: number, maxUnits: number, maxUtf8Bytes: number): string {
  const view = viewOf(buf);
  const units = Math.min(maxUnits > 0x7fffffff ? 0 : maxUnits, Math.floor((buf.length - offset) / 2));
  let out = '';
  let room = maxUtf8Bytes;
  for (let i = 0; i < units && room > 0; i++) {
    const u = view.getUint16(offset + 2 * i, true);
    if (u === 0) break;
    let cp = u;
    if (u >= 0xd800 && u <= 0xdfff) {
      if (u >= 0xdc00) continue; // a low surrogate on its own
      if (i + 1 >= units) break;
      const v = view.getUint16(offset + 2 * (i + 1), true);
      if (v < 0xdc00 || v > 0xdfff) continue; // a high surrogate without its partner
      cp = 0x10000 + ((u - 0xd800) << 10) + (v - 0xdc00);
      i++;
    }
    const size = cp < 0x80 ? 1 : cp < 0x800 ? 2 : cp < 0x10000 ? 3 : 4;
    if (size > room) continue;
    out += String.fromCodePoint(cp);
    room -= size;
  }
  return out;
}

/**
 * utf8s_to_utf16s: write `s` (up to a NUL, as strlen would) as UTF-16LE units at `offset`,
 * at most `maxUnits`, never splitting a pair and writing no terminator. Returns the units
 * written.
 */
function kernelStringToUtf16(buf: Uint8Array, offset: number, s: string, maxUnits: number): number {
  const view = viewOf(buf);
  let n = 0;
  for (const ch of s) {
    const cp = ch.codePointAt(0)!;
    if (cp === 0) break;
    const need = cp > 0xffff ? 2 : 1;
    if (n + need > maxUnits) break;
    view.setUint16(offset + 2 * n, ch.charCodeAt(0), true);
    if (need === 2) view.setUint16(offset + 2 * n + 2, ch.charCodeAt(1), true);
    n += need;
  }
  return n;
}

export class KvpDriver extends IcGuestDriver {
  readonly #pools: Array<Map<string, string>> = Array.from({ length: KVP_POOL_COUNT }, () => new Map());
  readonly #info: Required<KvpGuestInfo>;
  readonly #getReturnsValue: boolean;
  readonly #maxRecords: number;
  #daemon: boolean;
  #deferred: Array<{ payload: Uint8Array; transactionId: bigint }> = [];

  constructor(transport: IcTransport, options: KvpDriverOptions = {}) {
    const desc = IC_SERVICES.kvp;
    super(transport, {
      name: desc.name,
      frameworkVersions: desc.frameworkVersions,
      messageVersions: desc.messageVersions,
      maxPacketSize: KVP_RECV_BUFFER_SIZE,
      log: options.log,
    });
    this.#info = { ...DEFAULT_INFO, ...options.info };
    this.#getReturnsValue = options.getReturnsValue ?? false;
    this.#maxRecords = options.maxRecordsPerPool ?? 1024;
    this.#daemon = options.daemon ?? true;
  }

  get daemonRunning(): boolean {
    return this.#daemon;
  }

  /** The daemon registers: packets that waited are handled now, in order. */
  startDaemon(): void {
    if (this.#daemon) return;
    this.#daemon = true;
    for (const { payload, transactionId } of this.#deferred.splice(0)) super.onPacket(payload, transactionId);
  }

  override onPacket(payload: Uint8Array, transactionId: bigint): void {
    if (!this.#daemon) {
      // The kernel leaves the packet in the ring until the daemon registers.
      if (this.closed) return;
      if (this.#deferred.length >= MAX_DEFERRED_PACKETS) {
        this.log(`dropped a packet: ${MAX_DEFERRED_PACKETS} already wait for the daemon`);
        return;
      }
      this.#deferred.push({ payload: payload.slice(0, Math.min(payload.length, KVP_RECV_BUFFER_SIZE + 1)), transactionId });
      return;
    }
    super.onPacket(payload, transactionId);
  }

  /** What a guest program does to publish a value to the host: a record in the GUEST pool. */
  setGuestValue(key: string, value: string): void {
    this.#checkSizes(key, value);
    const pool = this.#pools[KvpPool.GUEST]!;
    if (!pool.has(key) && pool.size >= this.#maxRecords) throw new RangeError(`the GUEST pool already holds ${this.#maxRecords} entries`);
    pool.set(key, value);
  }

  deleteGuestValue(key: string): boolean {
    return this.#pools[KvpPool.GUEST]!.delete(key);
  }

  /** The stored value of `key` in pool `pool` (0..4), as the daemon's pool file holds it. */
  getValue(pool: number, key: string): string | undefined {
    return this.#pools[pool]?.get(key);
  }

  /** A pool's stored entries in daemon order (the AUTO pool's intrinsic values are not stored). */
  entries(pool: number): KvpGuestEntry[] {
    return [...(this.#pools[pool] ?? new Map<string, string>()).entries()].map(([key, value]) => ({ key, value }));
  }

  /** The AUTO pool as the daemon enumerates it. */
  autoEntries(): KvpGuestEntry[] {
    return KVP_AUTO_KEYS.map((key, i) => ({ key, value: this.#autoValue(i)! }));
  }

  protected override onClose(): void {
    this.#deferred = [];
  }

  protected handleMessage(packet: Uint8Array, header: IcHeader, transactionId: bigint): boolean {
    if (header.msgType !== IcMsgType.KVP_EXCHANGE) {
      // hv_kvp.c neither answers nor fails other message types.
      this.log(`dropped message type ${header.msgType}`);
      return false;
    }
    // Work in a zero-filled copy of the kernel's receive buffer: reads past the packet see
    // zeros, and the answer is sent at the received length.
    const buf = new Uint8Array(KVP_RECV_BUFFER_SIZE);
    buf.set(packet);
    const body = buf.subarray(IC_BODY_OFFSET);
    const operation = body[0]!;
    const pool = body[1]!;
    const answer = this.#daemonRequest(operation, pool, body);
    setIcStatus(buf, answer.status);
    if (answer.status === IcStatus.S_OK) this.#writeAnswer(operation, body, answer);
    this.reply(buf.subarray(0, packet.length), transactionId);
    return false;
  }

  /** The daemon's side of one request; key/value are what it hands back to the kernel. */
  #daemonRequest(operation: number, pool: number, body: Uint8Array): { status: number; key?: string; value?: string } {
    const view = viewOf(body);
    const dataPool = operation <= KvpOperation.ENUMERATE ? this.#pools[pool] : undefined;
    switch (operation) {
      case KvpOperation.GET:
      case KvpOperation.SET:
      case KvpOperation.DELETE:
      case KvpOperation.ENUMERATE:
        if (dataPool === undefined) {
          // The daemon indexes its pool array without a check; refuse instead.
          this.log(`operation ${operation} on pool ${pool}, which does not exist: E_FAIL`);
          return { status: IcStatus.E_FAIL };
        }
        break;
      case KvpOperation.GET_IP_INFO:
        // The reference guest has no network adapter the host could name.
        return { status: IcStatus.E_FAIL };
      case KvpOperation.SET_IP_INFO:
        return { status: IcStatus.GUID_NOT_FOUND };
      default:
        // Neither the kernel nor the daemon knows it; the daemon answers success with nothing.
        this.log(`unknown operation ${operation} answered as the daemon does: S_OK, empty entry`);
        return { status: IcStatus.S_OK, key: '', value: '' };
    }

    const rec = KVP_GET_SET_RECORD_OFFSET;
    switch (operation) {
      case KvpOperation.SET: {
        const key = kernelUtf16ToString(body, rec + KVP_RECORD_KEY_OFFSET, view.getUint32(rec + KVP_RECORD_KEY_SIZE_OFFSET, true), KVP_MAX_KEY_SIZE - 1);
        const value = this.#kernelSetValue(body);
        if (!dataPool.has(key) && dataPool.size >= this.#maxRecords) {
          this.log(`SET in pool ${pool} refused: ${this.#maxRecords} entries already`);
          return { status: IcStatus.NO_MORE_ITEMS };
        }
        dataPool.set(key, value);
        return { status: IcStatus.S_OK };
      }
      case KvpOperation.GET: {
        const key = kernelUtf16ToString(body, rec + KVP_RECORD_KEY_OFFSET, view.getUint32(rec + KVP_RECORD_KEY_SIZE_OFFSET, true), KVP_MAX_KEY_SIZE - 1);
        const value = dataPool.get(key);
        if (value === undefined) return { status: IcStatus.NO_MORE_ITEMS };
        return { status: IcStatus.S_OK, value: this.#getReturnsValue ? value : '' };
      }
      case KvpOperation.DELETE: {
        const key = kernelUtf16ToString(body, KVP_DELETE_KEY_OFFSET, view.getUint32(KVP_DELETE_KEY_SIZE_OFFSET, true), KVP_MAX_KEY_SIZE - 1);
        return { status: dataPool.delete(key) ? IcStatus.S_OK : IcStatus.NO_MORE_ITEMS };
      }
      default: {
        const index = view.getUint32(KVP_ENUMERATE_INDEX_OFFSET, true);
        if (pool === KvpPool.AUTO) {
          const value = this.#autoValue(index);
          return value === undefined ? { status: IcStatus.NO_MORE_ITEMS } : { status: IcStatus.S_OK, key: KVP_AUTO_KEYS[index]!, value };
        }
        if (index >= dataPool.size) return { status: IcStatus.NO_MORE_ITEMS };
        let i = 0;
        for (const [key, value] of dataPool) {
          if (i++ === index) return { status: IcStatus.S_OK, key, value };
        }
        return { status: IcStatus.NO_MORE_ITEMS };
      }
    }
  }

  /** The kernel's conversion of a SET value to the daemon's string. */
  #kernelSetValue(body: Uint8Array): string {
    const view = viewOf(body);
    const rec = KVP_GET_SET_RECORD_OFFSET;
    const valueOffset = rec + KVP_RECORD_VALUE_OFFSET;
    switch (view.getUint32(rec + KVP_RECORD_VALUE_TYPE_OFFSET, true)) {
      case KvpValueType.REG_SZ:
        return kernelUtf16ToString(body, valueOffset, view.getUint32(rec + KVP_RECORD_VALUE_SIZE_OFFSET, true), KVP_MAX_VALUE_SIZE - 1);
      case KvpValueType.REG_U32:
        return String(view.getUint32(valueOffset, true));
      case KvpValueType.REG_U64:
        return String(view.getBigUint64(valueOffset, true));
      default:
        return ''; // the kernel leaves the value empty for other types
    }
  }

  /** kvp_respond_to_host on success: GET fills the value, ENUMERATE key and value, the rest nothing. */
  #writeAnswer(operation: number, body: Uint8Array, answer: { key?: string; value?: string }): void {
    const view = viewOf(body);
    let rec: number;
    if (operation === KvpOperation.GET) {
      rec = KVP_GET_SET_RECORD_OFFSET;
    } else if (operation === KvpOperation.ENUMERATE || operation > KvpOperation.SET_IP_INFO) {
      rec = KVP_ENUMERATE_RECORD_OFFSET;
      const keyUnits = kernelStringToUtf16(body, rec + KVP_RECORD_KEY_OFFSET, answer.key ?? '', KVP_MAX_KEY_SIZE / 2 - 2);
      view.setUint32(rec + KVP_RECORD_KEY_SIZE_OFFSET, 2 * (keyUnits + 1), true);
    } else {
      return;
    }
    const valueUnits = kernelStringToUtf16(body, rec + KVP_RECORD_VALUE_OFFSET, answer.value ?? '', KVP_MAX_VALUE_SIZE / 2 - 2);
    view.setUint32(rec + KVP_RECORD_VALUE_SIZE_OFFSET, 2 * (valueUnits + 1), true);
    view.setUint32(rec + KVP_RECORD_VALUE_TYPE_OFFSET, KvpValueType.REG_SZ, true);
  }

  #autoValue(index: number): string | undefined {
    const info = this.#info;
    const values = [
      info.fullyQualifiedDomainName,
      info.integrationServicesVersion,
      info.networkAddressIPv4,
      info.networkAddressIPv6,
      info.osBuildNumber,
      info.osName,
      info.osMajorVersion,
      info.osMinorVersion,
      info.osVersion,
      info.processorArchitecture,
    ];
    return values[index];
  }

  #checkSizes(key: string, value: string): void {
    if (utf8Length(key) + 1 > KVP_MAX_KEY_SIZE) throw new RangeError(`key takes more than ${KVP_MAX_KEY_SIZE - 1} UTF-8 bytes`);
    if (utf8Length(value) + 1 > KVP_MAX_VALUE_SIZE) throw new RangeError(`value takes more than ${KVP_MAX_VALUE_SIZE - 1} UTF-8 bytes`);
  }
}
