// Host side of the KVP (key-value pair) IC: set, get, delete and enumerate string or
// integer values in the guest's pools. The protocol allows one outstanding transaction
// per channel (the Linux guest serializes on a single receive buffer), so requests are
// queued and sent one at a time; each has its own timeout, which also covers waiting for
// negotiation — a Linux guest without hv_kvp_daemon never answers even that.

import type { IcLog, IcTransport } from './ic-transport.js';
import { IC_SERVICES, IcMsgType, IcStatus, formatStatus } from './ic-protocol.js';
import { IcHostService } from './ic-service.js';
import type { IcResponse } from './ic-service.js';
import {
  KVP_ENUMERATE_RECORD_OFFSET,
  KVP_GET_SET_RECORD_OFFSET,
  decodeKvpKey,
  decodeKvpValue,
  encodeKvpRequest,
  readKvpRecord,
} from './kvp-protocol.js';
import type { KvpRequest, KvpValue } from './kvp-protocol.js';

export interface KvpServiceOptions {
  /**
   * How long one transaction may take, queueing excluded (default 35 s: longer than the
   * 30 s the Linux kernel waits for its daemon, so the guest's own E_FAIL arrives first).
   */
  readonly timeoutMs?: number;
  /** Safety stop for enumerate() against a guest that never says "no more items" (default 4096). */
  readonly maxEnumerateItems?: number;
  readonly log?: IcLog;
}

export interface KvpEntry {
  readonly key: string;
  readonly value: KvpValue;
}

export interface KvpGetResult {
  readonly status: number;
  /** Present when status is S_OK and the answer decoded. */
  readonly value?: KvpValue;
}

export class KvpService extends IcHostService {
  readonly #timeoutMs: number;
  readonly #maxEnumerateItems: number;
  /** Tail of the one-at-a-time chain; each request starts when the previous one settles. */
  #queue: Promise<unknown> = Promise.resolve();

  constructor(transport: IcTransport, options: KvpServiceOptions = {}) {
    const desc = IC_SERVICES.kvp;
    super(transport, {
      name: desc.name,
      frameworkVersions: desc.hostFrameworkVersions,
      messageVersions: desc.hostMessageVersions,
      log: options.log,
    });
    this.#timeoutMs = options.timeoutMs ?? 35_000;
    this.#maxEnumerateItems = options.maxEnumerateItems ?? 4096;
  }

  /**
   * Sets `key` in `pool` (usually KvpPool.EXTERNAL). A string is sent as REG_SZ, a number as
   * REG_U32, a bigint as REG_U64 (Linux stores the integers as decimal strings).
   * Resolves with the guest's status.
   */
  async set(pool: number, key: string, value: KvpValue): Promise<number> {
    return (await this.#request({ op: 'set', pool, key, value })).header.status;
  }

  /**
   * Reads `key` from `pool`. Note that a Linux guest answers a found key with S_OK and an
   * empty string (hv_kvp.c reads the daemon's answer from the ENUMERATE layout); reading a
   * pool is done with enumerate().
   */
  async get(pool: number, key: string): Promise<KvpGetResult> {
    const response = await this.#request({ op: 'get', pool, key });
    const status = response.header.status;
    if (status !== IcStatus.S_OK) return { status };
    const record = readKvpRecord(response.body, KVP_GET_SET_RECORD_OFFSET);
    if (record === undefined) {
      this.log(`GET answer of ${response.body.length} bytes has no record`);
      return { status };
    }
    const value = decodeKvpValue(record);
    if (!value.ok) {
      this.log(`GET answer for ${JSON.stringify(key)}: ${value.reason}`);
      return { status };
    }
    return { status, value: value.value };
  }

  /** Deletes `key` from `pool`; resolves with the guest's status (NO_MORE_ITEMS when absent, on Linux). */
  async delete(pool: number, key: string): Promise<number> {
    return (await this.#request({ op: 'delete', pool, key })).header.status;
  }

  /**
   * Every entry of `pool`: asks for index 0, 1, 2, ... until the guest answers with a
   * status other than S_OK. Entries that do not decode are logged and skipped.
   */
  async enumerate(pool: number): Promise<KvpEntry[]> {
    const entries: KvpEntry[] = [];
    for (let index = 0; index < this.#maxEnumerateItems; index++) {
      const response = await this.#request({ op: 'enumerate', pool, index });
      if (response.header.status !== IcStatus.S_OK) {
        if (response.header.status !== IcStatus.NO_MORE_ITEMS) {
          this.log(`enumeration of pool ${pool} ended at index ${index} with status ${formatStatus(response.header.status)}`);
        }
        return entries;
      }
      const entry = this.#decodeEntry(response, pool, index);
      if (entry !== undefined) entries.push(entry);
    }
    this.log(`enumeration of pool ${pool} stopped after ${this.#maxEnumerateItems} items`);
    return entries;
  }

  #decodeEntry(response: IcResponse, pool: number, index: number): KvpEntry | undefined {
    const record = readKvpRecord(response.body, KVP_ENUMERATE_RECORD_OFFSET);
    if (record === undefined) {
      this.log(`pool ${pool} item ${index}: answer of ${response.body.length} bytes has no record`);
      return undefined;
    }
    const key = decodeKvpKey(record);
    const value = decodeKvpValue(record);
    if (!key.ok || !value.ok) {
      this.log(`pool ${pool} item ${index}: ${key.ok ? '' : `key: ${key.reason}`}${!key.ok && !value.ok ? '; ' : ''}${value.ok ? '' : `value: ${value.reason}`}`);
      return undefined;
    }
    return { key: key.value, value: value.value };
  }

  /** Queues one transaction. Encoding errors (oversized key or value) reject before anything is queued. */
  #request(req: KvpRequest): Promise<IcResponse> {
    const body = encodeKvpRequest(req);
    const run = (): Promise<IcResponse> => this.transact(IcMsgType.KVP_EXCHANGE, body, this.#timeoutMs);
    const result = this.#queue.then(run, run);
    this.#queue = result.catch(() => undefined);
    return result;
  }
}
