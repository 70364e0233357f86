// boot_params and the e820 map: each field lands at the offset the documented layout
// (Documentation/arch/x86/zero-page.rst, boot.rst) gives it and nothing else is written;
// the e820 map covers exactly RAM minus the reserved regions, sorted and non-overlapping,
// for any set of regions; the fixed guest layout is self-consistent and RAM sizes are
// validated with messages that say what is wrong.
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import fc from 'fast-check';
import { BOOT_PARAMS_BYTES, BP, buildBootParams, LOADER_TYPE_UNDEFINED } from '../src/x86/boot-params.js';
import { CAN_USE_HEAP, HDR, LOADED_HIGH, parseBzImage } from '../src/x86/bzimage.js';
import {
  buildE820Table,
  E820_ACPI,
  E820_MAX_ENTRIES_ZEROPAGE,
  E820_RAM,
  E820_RESERVED,
  E820Error,
  encodeE820Table,
  type E820Entry,
  type E820Region,
} from '../src/x86/e820.js';
import {
  ACPI_REGION_GPA,
  ACPI_REGION_SIZE,
  BOOT_PARAMS_GPA,
  BOOT_PARAMS_SIZE,
  BOOT_STACK_BOTTOM,
  BOOT_STACK_TOP,
  BootLayoutError,
  CMDLINE_GPA,
  CMDLINE_MAX_BYTES,
  DEFAULT_KERNEL_LOAD_ADDRESS,
  EBDA_START,
  GDT_GPA,
  guestRamProblem,
  IDT_GPA,
  KVM_IDENTITY_MAP_GPA,
  KVM_TSS_GPA,
  KVM_TSS_SIZE,
  PAGE_TABLES_GPA,
  PAGE_TABLES_SIZE,
  reservedRegions,
  validateGuestRam,
} from '../src/x86/guest-layout.js';
import { BOOT_GDT_SIZE } from '../src/x86/long-mode.js';
import { LAPIC_BASE, RAM_BELOW_4G_MAX } from '../src/x86/platform-ports.js';
import { fakeBzImage } from './support/debian-kernel.js';

const MiB = 1024 * 1024;

describe('e820 map', () => {
  test('the machine layout: low RAM, the BIOS area reserved, RAM from 1 MiB, KVM pages reserved above RAM', () => {
    const ram = 256 * MiB;
    assert.deepEqual(buildE820Table(ram, reservedRegions()), [
      { addr: 0, size: EBDA_START, type: E820_RAM },
      { addr: EBDA_START, size: 0x100000 - EBDA_START, type: E820_RESERVED },
      { addr: 0x100000, size: ram - 0x100000, type: E820_RAM },
      { addr: 0xfeffc000, size: 0x4000, type: E820_RESERVED },
    ]);
  });

  test('regions inside, straddling and beyond RAM; adjacent regions of one type merge', () => {
    const regions: E820Region[] = [
      { name: 'a', addr: 0x1000, size: 0x1000, type: E820_RESERVED },
      { name: 'b', addr: 0x2000, size: 0x1000, type: E820_RESERVED },
      { name: 'c', addr: 0x3000, size: 0x1000, type: E820_ACPI },
      { name: 'd', addr: 0xf000, size: 0x2000, type: E820_RESERVED },
      { name: 'e', addr: 0x20000, size: 0x1000, type: E820_RESERVED },
    ];
    assert.deepEqual(buildE820Table(0x10000, regions), [
      { addr: 0, size: 0x1000, type: E820_RAM },
      { addr: 0x1000, size: 0x2000, type: E820_RESERVED },
      { addr: 0x3000, size: 0x1000, type: E820_ACPI },
      { addr: 0x4000, size: 0xb000, type: E820_RAM },
      { addr: 0xf000, size: 0x2000, type: E820_RESERVED },
      { addr: 0x20000, size: 0x1000, type: E820_RESERVED },
    ]);
  });

  test('refuses overlapping regions and bad ranges', () => {
    assert.throws(() => buildE820Table(0x100000, [
      { name: 'first', addr: 0x1000, size: 0x2000, type: E820_RESERVED },
      { name: 'second', addr: 0x2000, size: 0x1000, type: E820_RESERVED },
    ]), (e: unknown) => e instanceof E820Error && /first and second overlap/.test(e.message));
    assert.throws(() => buildE820Table(0x100000, [{ name: 'empty', addr: 0x1000, size: 0, type: E820_RESERVED }]), E820Error);
    assert.throws(() => buildE820Table(0, []), E820Error);
  });

  test('boot_params holds at most 128 entries', () => {
    // 64 reserved pages with RAM around each: 64 + 65 entries.
    const many: E820Region[] = Array.from({ length: 64 }, (_, i) => ({ name: `r${i}`, addr: 0x1000 + i * 0x2000, size: 0x1000, type: E820_RESERVED }));
    assert.throws(() => buildE820Table(0x1000000, many), (e: unknown) => e instanceof E820Error && /needs 129 e820 entries; boot_params holds 128/.test(e.message));
    assert.equal(buildE820Table(0x1000000, many.slice(0, 63)).length, 127);
  });

  test('for any regions: sorted, non-overlapping, RAM entries are exactly RAM minus the regions', () => {
    const PAGE = 0x1000;
    const regionSet = fc.uniqueArray(fc.integer({ min: 0, max: 200 }), { maxLength: 40 }).chain((slots) =>
      fc.tuple(...slots.map((slot) => fc.tuple(fc.constant(slot), fc.integer({ min: 1, max: 3 }), fc.constantFrom(E820_RESERVED, E820_ACPI)))),
    );
    fc.assert(
      fc.property(fc.integer({ min: 1, max: 160 }), regionSet, (ramPages, slots) => {
        // Slots 4 pages apart, at most 3 pages long: never overlapping, sometimes adjacent-free, some beyond RAM.
        const regions: E820Region[] = slots.map(([slot, pages, type], i) => ({ name: `r${i}`, addr: slot * 4 * PAGE, size: pages * PAGE, type }));
        const ram = ramPages * PAGE;
        const table = buildE820Table(ram, regions);
        assert.ok(table.length <= E820_MAX_ENTRIES_ZEROPAGE);
        for (let i = 1; i < table.length; i++) assert.ok(table[i]!.addr >= table[i - 1]!.addr + table[i - 1]!.size, 'sorted and non-overlapping');
        for (const entry of table) assert.ok(entry.size > 0);
        // Page by page: RAM where no region is, the region's type where one is.
        const limit = Math.max(ram, ...regions.map((r) => r.addr + r.size));
        for (let page = 0; page < limit; page += PAGE) {
          const region = regions.find((r) => page >= r.addr && page < r.addr + r.size);
          const expected = region ? region.type : page < ram ? E820_RAM : undefined;
          const entry = table.find((e) => page >= e.addr && page < e.addr + e.size);
          assert.equal(entry?.type, expected, `page 0x${page.toString(16)}`);
        }
      }),
      { numRuns: 300 },
    );
  });

  test('encodes entries as packed u64 addr, u64 size, u32 type', () => {
    const bytes = new Uint8Array(60);
    const entries: E820Entry[] = [
      { addr: 0, size: 0x9fc00, type: E820_RAM },
      { addr: 0x1_2345_6000, size: 0x1000, type: E820_ACPI },
    ];
    encodeE820Table(new DataView(bytes.buffer), 0, entries);
    const v = new DataView(bytes.buffer);
    assert.equal(v.getBigUint64(0, true), 0n);
    assert.equal(v.getBigUint64(8, true), 0x9fc00n);
    assert.equal(v.getUint32(16, true), 1);
    assert.equal(v.getBigUint64(20, true), 0x1_2345_6000n);
    assert.equal(v.getBigUint64(28, true), 0x1000n);
    assert.equal(v.getUint32(36, true), 3);
    assert.deepEqual(bytes.subarray(40), new Uint8Array(20));
  });
});

describe('boot_params', () => {
  const kernel = fakeBzImage({ protocolVersion: 0x020f });
  const image = parseBzImage(kernel);
  const e820 = buildE820Table(128 * MiB, reservedRegions());

  test('copies the setup header from 0x1f1 to its end and sets the loader fields at their documented offsets', () => {
    const bp = buildBootParams(image, {
      cmdlineGpa: 0x20000, cmdlineLength: 42, initrdGpa: 0x7e00000, initrdSize: 0x123456, e820, acpiRsdpGpa: 0xe0000,
    });
    assert.equal(bp.length, BOOT_PARAMS_BYTES);
    const v = new DataView(bp.buffer);
    const loaderFields = new Set<number>();
    const field = (offset: number, size: number) => { for (let i = 0; i < size; i++) loaderFields.add(offset + i); };

    assert.equal(bp[0x210], LOADER_TYPE_UNDEFINED); field(0x210, 1); // type_of_loader
    assert.equal(bp[0x211]! & LOADED_HIGH, LOADED_HIGH); // loadflags keeps LOADED_HIGH
    assert.equal(bp[0x211]! & CAN_USE_HEAP, 0); field(0x211, 1);
    assert.equal(v.getUint32(0x228, true), 0x20000); field(0x228, 4); // cmd_line_ptr
    assert.equal(v.getUint32(0x0c8, true), 0); field(0x0c8, 4); // ext_cmd_line_ptr
    assert.equal(v.getUint32(0x218, true), 0x7e00000); field(0x218, 4); // ramdisk_image
    assert.equal(v.getUint32(0x21c, true), 0x123456); field(0x21c, 4); // ramdisk_size
    assert.equal(v.getUint32(0x0c0, true), 0); field(0x0c0, 4); // ext_ramdisk_image
    assert.equal(v.getUint32(0x0c4, true), 0); field(0x0c4, 4); // ext_ramdisk_size
    assert.equal(v.getBigUint64(0x070, true), 0xe0000n); field(0x070, 8); // acpi_rsdp_addr
    assert.equal(v.getUint32(0x23c, true), 0); // hardware_subarch X86_SUBARCH_PC
    assert.equal(bp[0x1e8], e820.length); field(0x1e8, 1); // e820_entries
    for (let i = 0; i < e820.length; i++) { // e820_table
      const at = 0x2d0 + i * 20;
      assert.equal(v.getBigUint64(at, true), BigInt(e820[i]!.addr));
      assert.equal(v.getBigUint64(at + 8, true), BigInt(e820[i]!.size));
      assert.equal(v.getUint32(at + 16, true), e820[i]!.type);
    }
    field(0x2d0, e820.length * 20);
    assert.equal(bp[0x1ef], 0, 'sentinel stays zero');

    // Every other byte: the image's header inside [0x1f1, 0x26c), zero everywhere else.
    for (let offset = 0; offset < BOOT_PARAMS_BYTES; offset++) {
      if (loaderFields.has(offset)) continue;
      const expected = offset >= 0x1f1 && offset < image.headerEnd ? kernel[offset] : 0;
      assert.equal(bp[offset], expected, `boot_params byte 0x${offset.toString(16)}`);
    }
  });

  test('the named offsets match the documented zero-page layout', () => {
    assert.deepEqual(
      { ...BP, cmdLinePtr: HDR.cmdLinePtr, ramdiskImage: HDR.ramdiskImage, ramdiskSize: HDR.ramdiskSize, typeOfLoader: HDR.typeOfLoader, loadflags: HDR.loadflags },
      { acpiRsdpAddr: 0x070, extRamdiskImage: 0x0c0, extRamdiskSize: 0x0c4, extCmdLinePtr: 0x0c8, e820Entries: 0x1e8, sentinel: 0x1ef, e820Table: 0x2d0,
        cmdLinePtr: 0x228, ramdiskImage: 0x218, ramdiskSize: 0x21c, typeOfLoader: 0x210, loadflags: 0x211 },
    );
    // e820_table[128] of 20-byte entries ends before _pad8 at 0xcd0.
    assert.equal(BP.e820Table + E820_MAX_ENTRIES_ZEROPAGE * 20, 0xcd0);
  });

  test('addresses above 4 GiB are split into the header field and its ext_* upper half', () => {
    const bp = buildBootParams(image, { cmdlineGpa: 0x1_2345_6000, cmdlineLength: 1, initrdGpa: 0x2_0000_1000, initrdSize: 0x1_0000_0010, e820 });
    const v = new DataView(bp.buffer);
    assert.equal(v.getUint32(0x228, true), 0x2345_6000);
    assert.equal(v.getUint32(0x0c8, true), 1);
    assert.equal(v.getUint32(0x218, true), 0x1000);
    assert.equal(v.getUint32(0x0c0, true), 2);
    assert.equal(v.getUint32(0x21c, true), 0x10);
    assert.equal(v.getUint32(0x0c4, true), 1);
  });

  test('no initrd: ramdisk fields zero; no ACPI or a kernel before protocol 2.14: acpi_rsdp_addr zero', () => {
    const bp = buildBootParams(image, { cmdlineGpa: 0x20000, cmdlineLength: 0, e820 });
    const v = new DataView(bp.buffer);
    assert.equal(v.getUint32(0x218, true), 0);
    assert.equal(v.getUint32(0x21c, true), 0);
    assert.equal(v.getBigUint64(0x070, true), 0n);
    const old = parseBzImage(fakeBzImage({ protocolVersion: 0x020d }));
    const oldBp = buildBootParams(old, { cmdlineGpa: 0x20000, cmdlineLength: 0, e820, acpiRsdpGpa: 0xe0000 });
    assert.equal(new DataView(oldBp.buffer).getBigUint64(0x070, true), 0n);
  });

  test('a header whose CAN_USE_HEAP is set has it cleared (no 16-bit setup code runs)', () => {
    const heap = parseBzImage(fakeBzImage({ loadflags: LOADED_HIGH | CAN_USE_HEAP | 0x20 }));
    const bp = buildBootParams(heap, { cmdlineGpa: 0x20000, cmdlineLength: 0, e820 });
    assert.equal(bp[0x211], LOADED_HIGH | 0x20);
  });
});

describe('guest layout', () => {
  test('the fixed boot structures lie in low RAM, page-aligned and apart from each other and the reserved areas', () => {
    const areas = [
      { name: 'GDT', addr: GDT_GPA, size: BOOT_GDT_SIZE },
      { name: 'IDT', addr: IDT_GPA, size: 0x1000 },
      { name: 'boot_params', addr: BOOT_PARAMS_GPA, size: BOOT_PARAMS_SIZE },
      { name: 'page tables', addr: PAGE_TABLES_GPA, size: PAGE_TABLES_SIZE },
      { name: 'stack', addr: BOOT_STACK_BOTTOM, size: BOOT_STACK_TOP - BOOT_STACK_BOTTOM },
      { name: 'cmdline', addr: CMDLINE_GPA, size: CMDLINE_MAX_BYTES },
      ...reservedRegions(),
    ].sort((a, b) => a.addr - b.addr);
    for (let i = 1; i < areas.length; i++) {
      assert.ok(areas[i]!.addr >= areas[i - 1]!.addr + areas[i - 1]!.size, `${areas[i - 1]!.name} overlaps ${areas[i]!.name}`);
    }
    for (const a of areas.slice(0, 6)) {
      assert.equal(a.addr % 0x1000, 0, a.name);
      assert.ok(a.addr >= 0x1000 && a.addr + a.size <= EBDA_START, `${a.name} is in low RAM`);
    }
    assert.equal(ACPI_REGION_GPA, 0xe0000);
    assert.equal(ACPI_REGION_GPA + ACPI_REGION_SIZE, 0x100000);
    assert.equal(DEFAULT_KERNEL_LOAD_ADDRESS, 0x1000000);
    // KVM's pages: after the LAPIC window, below 4 GiB, never RAM.
    assert.equal(KVM_TSS_GPA, KVM_IDENTITY_MAP_GPA + 0x1000);
    assert.equal(KVM_TSS_SIZE, 3 * 0x1000);
    assert.ok(KVM_IDENTITY_MAP_GPA >= LAPIC_BASE + 0x100000 && KVM_TSS_GPA + KVM_TSS_SIZE <= 2 ** 32);
    assert.ok(KVM_IDENTITY_MAP_GPA > RAM_BELOW_4G_MAX);
  });

  test('RAM size validation says what is wrong', () => {
    assert.equal(guestRamProblem(64 * MiB), undefined);
    assert.equal(guestRamProblem(RAM_BELOW_4G_MAX), undefined);
    assert.match(guestRamProblem(32 * MiB)!, /RAM size 32 MiB is too small: a Linux guest needs at least 64 MiB/);
    assert.match(guestRamProblem(RAM_BELOW_4G_MAX + 2 * MiB)!, /RAM size 3074 MiB is too large: at most 3072 MiB/);
    assert.match(guestRamProblem(65 * MiB)!, /RAM size 65 MiB is not a multiple of 2 MiB/);
    assert.match(guestRamProblem(0)!, /positive whole number/);
    assert.match(guestRamProblem(NaN)!, /positive whole number/);
    assert.equal(guestRamProblem(2 * MiB, 2 * MiB), undefined, 'a smaller minimum for stub guests');
    assert.throws(() => validateGuestRam(100 * MiB + 4096), (e: unknown) => e instanceof BootLayoutError && /not a multiple of 2 MiB/.test(e.message));
  });
});
