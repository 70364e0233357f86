// The RSS indirection table: which receive queue (VMBus channel; 0 = primary, n =
// subchannel n) gets a flow with a given Toeplitz hash. The guest supplies it in
// OID_GEN_RECEIVE_SCALE_PARAMETERS as u32 channel indexes; Linux sends as many entries as
// our RSS capabilities advertised (128 when we say 0, up to 256), filled round-robin
// (i % channels). NDIS picks an entry with the low bits of the hash; for a size that is
// not a power of two (never what Linux sends when we advertise one) we use the
// remainder, which is the same thing for powers of two.
//
// The table is the guest's data, so it is validated whole before it replaces the old
// one: a bad SET leaves the previous mapping in place.

/** Largest table Linux accepts (ITAB_NUM_MAX). */
export const RSS_MAX_TABLE_ENTRIES = 256;
/** Linux's default when the host advertises no size (ITAB_NUM). */
export const RSS_DEFAULT_TABLE_ENTRIES = 128;

export const RssTableError = {
  None: 0,
  /** No entries, or more than RSS_MAX_TABLE_ENTRIES. */
  BadCount: 1,
  /** The byte range is not inside the buffer or not a whole number of u32 entries. */
  BadBounds: 2,
  /** An entry names a channel that does not exist. */
  EntryOutOfRange: 3,
  /** The channel count itself is impossible (< 1). */
  BadChannelCount: 4,
} as const;
export type RssTableError = (typeof RssTableError)[keyof typeof RssTableError];

export class RssIndirectionTable {
  private readonly entries = new Uint32Array(RSS_MAX_TABLE_ENTRIES);
  private readonly staging = new Uint32Array(RSS_MAX_TABLE_ENTRIES);
  private size = 1;
  /** size-1 when size is a power of two, else -1 (use the remainder). */
  private mask = 0;

  /** Starts as "everything on the primary channel" (entries all 0). */
  constructor() {
    this.setSize(1);
  }

  get entryCount(): number {
    return this.size;
  }

  entry(index: number): number {
    return this.entries[index]!;
  }

  /** The channel index for a hash (a u32; NO_HASH or any negative value maps to channel 0). */
  queueFor(hash: number): number {
    if (hash < 0) return 0;
    const index = this.mask >= 0 ? hash & this.mask : hash % this.size;
    return this.entries[index]!;
  }

  /** The largest channel index any entry uses. */
  highestChannel(): number {
    let highest = 0;
    for (let i = 0; i < this.size; i++) highest = Math.max(highest, this.entries[i]!);
    return highest;
  }

  /**
   * Loads `byteLength` bytes of little-endian u32 entries from buf[offset]; every entry
   * must be < channelCount. On any error the current table stays.
   */
  load(buf: Uint8Array, offset: number, byteLength: number, channelCount: number): RssTableError {
    if (!Number.isInteger(channelCount) || channelCount < 1) return RssTableError.BadChannelCount;
    if (!Number.isInteger(offset) || !Number.isInteger(byteLength) || offset < 0 || byteLength < 0 || byteLength % 4 !== 0 || offset + byteLength > buf.length) {
      return RssTableError.BadBounds;
    }
    const count = byteLength / 4;
    if (count === 0 || count > RSS_MAX_TABLE_ENTRIES) return RssTableError.BadCount;
    const staging = this.staging;
    for (let i = 0; i < count; i++) {
      const at = offset + i * 4;
      const value = (buf[at]! | (buf[at + 1]! << 8) | (buf[at + 2]! << 16) | (buf[at + 3]! << 24)) >>> 0;
      if (value >= channelCount) return RssTableError.EntryOutOfRange;
      staging[i] = value;
    }
    this.entries.set(staging.subarray(0, count));
    this.setSize(count);
    return RssTableError.None;
  }

  /** The table Linux would send: entry i = i % channelCount. */
  spreadEvenly(entryCount: number, channelCount: number): RssTableError {
    if (!Number.isInteger(channelCount) || channelCount < 1) return RssTableError.BadChannelCount;
    if (!Number.isInteger(entryCount) || entryCount < 1 || entryCount > RSS_MAX_TABLE_ENTRIES) return RssTableError.BadCount;
    for (let i = 0; i < entryCount; i++) this.entries[i] = i % channelCount;
    this.setSize(entryCount);
    return RssTableError.None;
  }

  /**
   * After channels went away (a subchannel closed): true when every entry still names a
   * channel below channelCount. The device then falls back (e.g. spreadEvenly) if not.
   */
  fitsChannels(channelCount: number): boolean {
    return this.highestChannel() < channelCount;
  }

  private setSize(count: number): void {
    this.size = count;
    this.mask = (count & (count - 1)) === 0 ? count - 1 : -1;
  }
}
