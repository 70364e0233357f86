// Discovering disks behind one storvsc adapter, in the order Linux sends the commands:
// scsi_scan_host (INQUIRY of LUN 0 on every path 0..7 x target 0..1, REPORT LUNS where a
// target answered, INQUIRY of each LUN), scsi_attach_vpd (page 0, then each listed page:
// header, then whole page) and sd_revalidate_disk (TEST UNIT READY, READ CAPACITY(16) or
// (10), MODE SENSE(6) for write protect, then the caching page). Control path: one
// command at a time through a page of guest memory.
import { VstorVersion } from '../../devices/storvsp/storvsp-protocol.js';
import { PAGE_SIZE } from '../../memory/page.js';
import type { GuestMemory } from '../../memory/guest-memory.js';
import * as cdbs from './scsi-cdb.js';
import {
  CACHING_WCE,
  findModePage,
  isSupportedBlockSize,
  MODE_DSP_DPOFUA,
  MODE_DSP_WP,
  parseBlockLimits,
  parseInquiry,
  parseModeSense6Header,
  parseProvisioning,
  parseReadCapacity10,
  parseReadCapacity16,
  parseReportLuns,
  parseRotationRate,
  parseSupportedVpdPages,
  SenseKey,
  vpdPageLength,
  type BlockLimits,
  type Capacity,
  type InquiryData,
  type Provisioning,
} from './scsi-replies.js';
import { DataIn, type CommandResult, type StorvscController } from './storvsc-controller.js';
import { StorvscDisk } from './storvsc-disk.js';

/** Linux's storvsc host limits: max_channel 7 (paths 0..7), max_id 2 (targets 0..1). */
export const STORVSC_MAX_PATH = 7;
export const STORVSC_MAX_TARGETS = 2;
/** VPD pages scsi_attach_vpd keeps, when page 0 lists them. */
const VPD_PAGES_READ = [0x00, 0x80, 0x83, 0x89, 0xb0, 0xb1, 0xb2];
/** sd's SD_MAX_WS16_BLOCKS: the cap it puts on one discard. */
const SD_MAX_UNMAP_BLOCKS = 0x7fffff;
const STANDARD_INQUIRY_BYTES = 36;
const REPORT_LUNS_BYTES = 4096;
const TUR_TRIES = 3;

export interface ScannerOptions {
  controller: StorvscController;
  memory: GuestMemory;
  /** Guest-physical address of one page the scan reads replies into. */
  bufferGpa: number;
  /** Name of the disk at this address. */
  name: (path: number, target: number, lun: number) => string;
  log: (message: string) => void;
}

type ProbeResult = { kind: 'absent' } | { kind: 'target' } | { kind: 'disk'; disk: StorvscDisk } | { kind: 'other' };

export class ScsiScanner {
  private readonly c: StorvscController;
  private readonly buffer: Uint8Array;

  constructor(private readonly options: ScannerOptions) {
    this.c = options.controller;
    this.buffer = options.memory.bytes.subarray(options.bufferGpa, options.bufferGpa + PAGE_SIZE);
  }

  /**
   * scsi_scan_host: returns the disks not in `known` (keyed by addressKey). An address
   * whose LUN 0 is already known is taken as present without a new INQUIRY, as Linux's
   * rescan skips existing devices.
   */
  async scan(known: ReadonlyMap<string, StorvscDisk>): Promise<StorvscDisk[]> {
    const found: StorvscDisk[] = [];
    for (let path = 0; path <= STORVSC_MAX_PATH; path++) {
      for (let target = 0; target < STORVSC_MAX_TARGETS; target++) {
        let present = known.has(addressKey(path, target, 0));
        if (!present) {
          const lun0 = await this.probeLun(path, target, 0);
          if (lun0.kind === 'disk') found.push(lun0.disk);
          present = lun0.kind !== 'absent';
        }
        if (!present) continue;
        const luns = await this.reportLuns(path, target);
        for (const lun of luns) {
          if (lun === 0 || known.has(addressKey(path, target, lun))) continue;
          const r = await this.probeLun(path, target, lun);
          if (r.kind === 'disk') found.push(r.disk);
        }
      }
    }
    return found;
  }

  /** TEST UNIT READY to a known disk (storvsc_host_scan's check before a rescan). */
  testUnitReady(disk: StorvscDisk): Promise<CommandResult> {
    return this.c.command(disk, cdbs.testUnitReady, DataIn.None, 0, 0);
  }

  /** Re-reads the capacity (after UNIT ATTENTION "capacity data has changed"). */
  async refreshCapacity(disk: StorvscDisk, inquiryVersion = 5): Promise<boolean> {
    const capacity = await this.readCapacity(disk, inquiryVersion >= 5);
    if (!capacity || !isSupportedBlockSize(capacity.blockBytes)) return false;
    disk.blockBytes = capacity.blockBytes;
    disk.sizeBytes = (capacity.lastLba + 1) * capacity.blockBytes;
    disk.use16 = capacity.lastLba + 1 > 0xffffffff;
    return true;
  }

  // ---- scsi_probe_and_add_lun ----

  private async probeLun(path: number, target: number, lun: number): Promise<ProbeResult> {
    const disk = new StorvscDisk(this.c, path, target, lun, this.options.name(path, target, lun));
    // During the scan the device is not configured yet: untagged commands.
    disk.tagged = false;
    const inquiry = await this.inquiry(disk);
    if (!inquiry) return { kind: 'absent' };
    // Qualifier 3 (no device possible here) or 1 with type 0x1F: the target answered, no LUN.
    if (inquiry.qualifier === 3 || (inquiry.qualifier === 1 && inquiry.deviceType === 0x1f)) return { kind: 'target' };
    if (inquiry.qualifier !== 0 || inquiry.deviceType !== 0) {
      this.options.log(`storvsc: ${path}:${target}:${lun} is device type ${inquiry.deviceType} (qualifier ${inquiry.qualifier}): no disk driver for it`);
      return { kind: 'other' };
    }
    disk.vendor = inquiry.vendor;
    disk.product = inquiry.product;
    disk.tagged = inquiry.cmdQue;
    return (await this.configureDisk(disk, inquiry)) ? { kind: 'disk', disk } : { kind: 'other' };
  }

  /** INQUIRY of 36 bytes, then of the full length when the device has more (scsi_probe_lun). */
  private async inquiry(disk: StorvscDisk): Promise<InquiryData | null> {
    let r = await this.read(disk, (cdb) => cdbs.inquiry(cdb, STANDARD_INQUIRY_BYTES), STANDARD_INQUIRY_BYTES);
    if (r.error !== 0) return null;
    let data = parseInquiry(this.buffer, r.transferred);
    if (!data) return null;
    const full = Math.min(data.fullLength, 255);
    if (full > STANDARD_INQUIRY_BYTES) {
      r = await this.read(disk, (cdb) => cdbs.inquiry(cdb, full), full);
      if (r.error !== 0) return null;
      data = parseInquiry(this.buffer, r.transferred) ?? data;
    }
    return data;
  }

  /** REPORT LUNS to LUN 0 of the target; [] when it fails (we then keep only LUN 0). */
  private async reportLuns(path: number, target: number): Promise<number[]> {
    const lun0 = new StorvscDisk(this.c, path, target, 0, '');
    const r = await this.read(lun0, (cdb) => cdbs.reportLuns(cdb, REPORT_LUNS_BYTES), REPORT_LUNS_BYTES);
    if (!r.good) return [];
    return parseReportLuns(this.buffer, r.transferred)?.luns ?? [];
  }

  // ---- sd_probe / sd_revalidate_disk ----

  private async configureDisk(disk: StorvscDisk, inquiry: InquiryData): Promise<boolean> {
    const vpd = await this.readVpdPages(disk);
    await this.spinUp(disk);

    // storvsc_device_configure: a "Msft" device on a 5.1/6.0 host claims SPC-3.
    const forcedSpc3 = inquiry.vendor.startsWith('Msft') && (this.c.version === VstorVersion.Win8 || this.c.version === VstorVersion.Win8_1);
    const capacity = await this.readCapacity(disk, (inquiry.version & 0x07) >= 5 || forcedSpc3);
    if (!capacity) {
      this.options.log(`storvsc: ${disk.name}: READ CAPACITY failed: disk ignored`);
      return false;
    }
    if (!isSupportedBlockSize(capacity.blockBytes)) {
      this.options.log(`storvsc: ${disk.name}: unsupported sector size ${capacity.blockBytes}: disk ignored`);
      return false;
    }
    disk.blockBytes = capacity.blockBytes;
    disk.sizeBytes = (capacity.lastLba + 1) * capacity.blockBytes;
    disk.use16 = capacity.lastLba + 1 > 0xffffffff;

    const limits = vpd.limits;
    let chunk = this.c.maxTransferBytes;
    if (limits && limits.maxTransferBlocks > 0) chunk = Math.min(chunk, limits.maxTransferBlocks * disk.blockBytes);
    disk.maxChunkBytes = Math.max(disk.blockBytes, Math.floor(chunk / disk.blockBytes) * disk.blockBytes);
    disk.nonRotational = vpd.rotationRate === 1;
    this.configureDiscard(disk, capacity, vpd.provisioning, limits);

    disk.readOnly = await this.readWriteProtect(disk);
    await this.readCacheType(disk);
    return true;
  }

  /** scsi_attach_vpd: page 0, then the pages it lists that Linux keeps; returns what sd uses. */
  private async readVpdPages(disk: StorvscDisk): Promise<{ limits: BlockLimits | null; provisioning: Provisioning | null; rotationRate: number }> {
    const out = { limits: null as BlockLimits | null, provisioning: null as Provisioning | null, rotationRate: -1 };
    const supported = await this.readVpdPage(disk, 0x00);
    if (supported < 0) return out;
    const pages = parseSupportedVpdPages(this.buffer, supported);
    for (const page of pages) {
      if (page === 0x00 || !VPD_PAGES_READ.includes(page)) continue;
      const n = await this.readVpdPage(disk, page);
      if (n < 0) continue;
      if (page === 0xb0) out.limits = parseBlockLimits(this.buffer, n);
      else if (page === 0xb1) out.rotationRate = parseRotationRate(this.buffer, n);
      else if (page === 0xb2) out.provisioning = parseProvisioning(this.buffer, n);
    }
    return out;
  }

  /** One VPD page, header first (scsi_get_vpd_size), then whole; bytes read or -1. */
  private async readVpdPage(disk: StorvscDisk, page: number): Promise<number> {
    const header = await this.read(disk, (cdb) => cdbs.inquiry(cdb, 4, page), 4);
    if (header.error !== 0) return -1;
    const length = vpdPageLength(this.buffer, header.transferred, page);
    if (length < 0) return -1;
    const want = Math.min(length, PAGE_SIZE);
    const full = await this.read(disk, (cdb) => cdbs.inquiry(cdb, want, page), want);
    if (full.error !== 0 || vpdPageLength(this.buffer, full.transferred, page) < 0) return -1;
    return full.transferred;
  }

  /** sd_spinup_disk: TEST UNIT READY up to 3 times; START UNIT if it says "becoming ready". */
  private async spinUp(disk: StorvscDisk): Promise<void> {
    let started = false;
    for (let i = 0; i < TUR_TRIES; i++) {
      const r = await this.c.command(disk, cdbs.testUnitReady, DataIn.None, 0, 0);
      if (r.good || r.error !== 0) return;
      const sense = r.senseData();
      if (sense?.key === SenseKey.NotReady && sense.asc === 0x04 && !started) {
        started = true;
        await this.c.command(disk, cdbs.startUnit, DataIn.None, 0, 0);
      } else if (sense?.key !== SenseKey.UnitAttention && sense?.key !== SenseKey.NotReady) {
        return;
      }
    }
  }

  /** sd_read_capacity: RC16 first for SPC-3+ devices, else RC10 and RC16 only when it overflows. */
  private async readCapacity(disk: StorvscDisk, rc16First: boolean): Promise<Capacity | null> {
    if (rc16First) {
      const c16 = await this.readCapacity16(disk);
      if (c16) return c16;
    }
    const r = await this.read(disk, cdbs.readCapacity10, 8);
    const c10 = r.good ? parseReadCapacity10(this.buffer, r.transferred) : null;
    if (c10 && c10.lastLba === 0xffffffff && !rc16First) return (await this.readCapacity16(disk)) ?? c10;
    return c10;
  }

  private async readCapacity16(disk: StorvscDisk): Promise<Capacity | null> {
    const r = await this.read(disk, (cdb) => cdbs.readCapacity16(cdb, 32), 32);
    return r.good ? parseReadCapacity16(this.buffer, r.transferred) : null;
  }

  /** sd_discard_mode, limited to what we implement (UNMAP): needs LBPME, then B2 LBPU or B0 counts. */
  private configureDiscard(disk: StorvscDisk, capacity: Capacity, provisioning: Provisioning | null, limits: BlockLimits | null): void {
    disk.discard = false;
    disk.maxUnmapBlocks = 0;
    if (!capacity.lbpme || !limits || limits.maxUnmapLbaCount === 0) return;
    if (provisioning && !provisioning.lbpu) return; // WRITE SAME discard: not implemented by this guest
    disk.discard = true;
    disk.maxUnmapBlocks = Math.min(limits.maxUnmapLbaCount, SD_MAX_UNMAP_BLOCKS);
  }

  /** sd_read_write_protect_flag: MODE SENSE(6) all pages, 4 bytes; then page 0; then 255 bytes. */
  private async readWriteProtect(disk: StorvscDisk): Promise<boolean> {
    const attempts: [number, number][] = [[0x3f, 4], [0x00, 4], [0x3f, 255]];
    for (const [page, length] of attempts) {
      const r = await this.read(disk, (cdb) => cdbs.modeSense6(cdb, page, length), length);
      const header = r.error === 0 ? parseModeSense6Header(this.buffer, r.transferred) : null;
      if (header) return (header.deviceSpecific & MODE_DSP_WP) !== 0;
    }
    this.options.log(`storvsc: ${disk.name}: Test WP failed, assume Write Enabled`);
    return false;
  }

  /** sd_read_cache_type: caching page 0x08, 4 bytes first, then the length the header announces. */
  private async readCacheType(disk: StorvscDisk): Promise<void> {
    disk.writeCache = false;
    disk.fua = false;
    let r = await this.read(disk, (cdb) => cdbs.modeSense6(cdb, 0x08, 4), 4);
    let header = r.error === 0 ? parseModeSense6Header(this.buffer, r.transferred) : null;
    if (!header) return;
    const length = Math.min(header.totalLength, 255);
    let n = r.transferred;
    if (length > 4) {
      r = await this.read(disk, (cdb) => cdbs.modeSense6(cdb, 0x08, length), length);
      header = r.error === 0 ? parseModeSense6Header(this.buffer, r.transferred) : null;
      if (!header) return;
      n = r.transferred;
    }
    const at = findModePage(this.buffer, n, 0x08, 3);
    if (at < 0) {
      this.options.log(`storvsc: ${disk.name}: no caching page: assuming drive cache: write through`);
      return;
    }
    disk.writeCache = (this.buffer[at + 2]! & CACHING_WCE) !== 0;
    disk.fua = (header.deviceSpecific & MODE_DSP_DPOFUA) !== 0;
  }

  /** A data-in command into the scan page (length <= one page); zeroes the page first. */
  private read(disk: StorvscDisk, build: (cdb: Uint8Array) => number, length: number): Promise<CommandResult> {
    this.buffer.fill(0);
    return this.c.command(disk, build, DataIn.Read, this.options.bufferGpa, Math.min(length, PAGE_SIZE));
  }
}

export function addressKey(path: number, target: number, lun: number): string {
  return `${path}:${target}:${lun}`;
}
