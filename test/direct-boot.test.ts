// Direct boot: loadLinux puts the payload, initramfs, command line, boot_params, ACPI
// bytes, page tables and GDT where the layout says, and returns the register state the
// 64-bit boot protocol demands; it refuses what does not fit with the sizes in the message
// and writes nothing to guest RAM when it refuses. The long-mode pieces (page tables, GDT
// descriptors, special registers) are checked against the architectural encodings.
import assert from 'node:assert/strict';
import { after, describe, test } from 'node:test';
import { GuestMemory } from '../src/memory/guest-memory.js';
import { GENERAL_REGISTER_NAMES } from '../src/x86/cpu-state.js';
import { BootImageError, BootLayoutError, loadLinux, type BootState } from '../src/x86/direct-boot.js';
import { E820_RAM, type E820Entry } from '../src/x86/e820.js';
import { bzImagePayload, parseBzImage } from '../src/x86/bzimage.js';
import {
  ACPI_REGION_GPA,
  BOOT_PARAMS_GPA,
  BOOT_STACK_TOP,
  CMDLINE_GPA,
  GDT_GPA,
  IDT_GPA,
  PAGE_TABLES_GPA,
  reservedRegions,
} from '../src/x86/guest-layout.js';
import {
  BOOT_CS,
  BOOT_DS,
  BOOT_GDT_LIMIT,
  BOOT_TSS,
  encodeDescriptor,
  longModeSpecialRegisters,
  writeBootGdt,
  writeIdentityPageTables,
} from '../src/x86/long-mode.js';
import { debianKernelImage, DEBIAN_KERNEL_RELEASE, DEBIAN_KERNEL_SKIP_REASON, fakeBzImage } from './support/debian-kernel.js';

const MiB = 1024 * 1024;
const memories: GuestMemory[] = [];
after(() => { for (const m of memories) m.close(); });

function ram(size: number): GuestMemory {
  const memory = GuestMemory.create(size, 'direct-boot-test');
  memories.push(memory);
  return memory;
}

function u64(memory: GuestMemory, gpa: number): bigint {
  return memory.view.getBigUint64(gpa, true);
}
function u32(memory: GuestMemory, gpa: number): number {
  return memory.view.getUint32(gpa, true);
}

function firstNonZero(memory: GuestMemory): number {
  const words = memory.words;
  for (let i = 0; i < words.length; i++) if (words[i] !== 0) return i * 4;
  return -1;
}

/** A recognisable fake initramfs (the loader never looks inside). */
function fakeInitrd(size: number): Uint8Array {
  const bytes = new Uint8Array(size);
  for (let i = 0; i < size; i++) bytes[i] = (i * 7 + 3) & 0xff;
  return bytes;
}

/** A stand-in for the ACPI builder's output: an "RSD PTR " signature 16 bytes in. */
function fakeAcpi(): { bytes: Uint8Array; gpa: number; rsdpGpa: number } {
  const bytes = new Uint8Array(0x400).fill(0xa5);
  bytes.set(new TextEncoder().encode('RSD PTR '), 0x10);
  return { bytes, gpa: ACPI_REGION_GPA, rsdpGpa: ACPI_REGION_GPA + 0x10 };
}

/** Checks everything loadLinux promises about the state it returns and the RAM it wrote. */
function checkBootState(memory: GuestMemory, kernel: Uint8Array, state: BootState, o: { initrd?: Uint8Array; cmdline: string; acpi?: ReturnType<typeof fakeAcpi> }): void {
  const { layout, regs, sregs } = state;
  const image = parseBzImage(kernel);
  // Payload at the load address, byte for byte.
  assert.deepEqual(memory.slice(layout.kernelLoadAddress, image.payloadSize), bzImagePayload(image));
  // Command line, NUL-terminated.
  const cmdline = new TextEncoder().encode(o.cmdline);
  assert.equal(layout.cmdlineGpa, CMDLINE_GPA);
  assert.equal(layout.cmdlineLength, cmdline.length);
  assert.deepEqual(memory.slice(CMDLINE_GPA, cmdline.length), cmdline);
  assert.equal(memory.bytes[CMDLINE_GPA + cmdline.length], 0);
  // boot_params: the fields the kernel reads first.
  const bp = BOOT_PARAMS_GPA;
  assert.equal(layout.bootParamsGpa, bp);
  assert.equal(memory.bytes[bp + 0x210], 0xff, 'type_of_loader');
  assert.equal(u32(memory, bp + 0x228), CMDLINE_GPA, 'cmd_line_ptr');
  assert.equal(u32(memory, bp + 0x0c8), 0, 'ext_cmd_line_ptr');
  assert.equal(memory.view.getUint32(bp + 0x202, true), 0x53726448, 'the setup header was copied (HdrS)');
  if (o.initrd) {
    assert.ok(layout.initrdGpa !== undefined);
    assert.equal(layout.initrdGpa % 4096, 0, 'initrd page-aligned');
    assert.ok(layout.initrdGpa >= layout.kernelEnd, 'initrd above the kernel and its init_size');
    assert.ok(layout.initrdGpa + o.initrd.length <= Math.min(layout.ramSize, image.initrdAddrMax + 1));
    assert.ok(layout.ramSize - (layout.initrdGpa + o.initrd.length) < 4096, 'initrd at the top of RAM');
    assert.deepEqual(memory.slice(layout.initrdGpa, o.initrd.length), o.initrd);
    assert.equal(u32(memory, bp + 0x218), layout.initrdGpa, 'ramdisk_image');
    assert.equal(u32(memory, bp + 0x21c), o.initrd.length, 'ramdisk_size');
  } else {
    assert.equal(u32(memory, bp + 0x218), 0);
    assert.equal(u32(memory, bp + 0x21c), 0);
  }
  // e820 in boot_params: what layout.e820 says, covering RAM minus the reserved regions.
  const count = memory.bytes[bp + 0x1e8]!;
  const table: E820Entry[] = [];
  for (let i = 0; i < count; i++) {
    const at = bp + 0x2d0 + i * 20;
    table.push({ addr: Number(u64(memory, at)), size: Number(u64(memory, at + 8)), type: u32(memory, at + 16) as E820Entry['type'] });
  }
  assert.deepEqual(table, layout.e820);
  const ramBytes = table.filter((e) => e.type === E820_RAM).reduce((sum, e) => sum + e.size, 0);
  const reservedInRam = reservedRegions().reduce((sum, r) => sum + Math.max(0, Math.min(r.addr + r.size, layout.ramSize) - Math.min(r.addr, layout.ramSize)), 0);
  assert.equal(ramBytes, layout.ramSize - reservedInRam);
  for (const e of table.filter((x) => x.type === E820_RAM)) {
    assert.ok(e.addr + e.size <= layout.ramSize);
    for (const r of reservedRegions()) assert.ok(e.addr + e.size <= r.addr || e.addr >= r.addr + r.size, `RAM entry overlaps ${r.name}`);
  }
  // Everything the kernel must find is in RAM that e820 calls usable.
  const usable = (gpa: number, size: number) => table.some((e) => e.type === E820_RAM && gpa >= e.addr && gpa + size <= e.addr + e.size);
  assert.ok(usable(layout.kernelLoadAddress, layout.kernelEnd - layout.kernelLoadAddress), 'kernel and init_size in usable RAM');
  if (layout.initrdGpa !== undefined) assert.ok(usable(layout.initrdGpa, layout.initrdSize!));
  // ACPI.
  if (o.acpi) {
    assert.deepEqual(memory.slice(o.acpi.gpa, o.acpi.bytes.length), o.acpi.bytes);
    assert.equal(u64(memory, bp + 0x070), BigInt(o.acpi.rsdpGpa), 'acpi_rsdp_addr');
  } else {
    assert.equal(u64(memory, bp + 0x070), 0n);
  }
  // Registers: the 64-bit entry, boot_params in rsi, interrupts off, everything else zero.
  assert.equal(regs.rip, BigInt(layout.kernelLoadAddress + 0x200));
  assert.equal(layout.entryPoint, layout.kernelLoadAddress + 0x200);
  assert.equal(regs.rsi, BigInt(BOOT_PARAMS_GPA));
  assert.equal(regs.rsp, BigInt(BOOT_STACK_TOP));
  assert.equal(regs.rflags, 0x2n);
  for (const name of GENERAL_REGISTER_NAMES) {
    if (!['rip', 'rsi', 'rsp', 'rflags'].includes(name)) assert.equal(regs[name], 0n, name);
  }
  assert.equal(sregs.cr3, BigInt(PAGE_TABLES_GPA));
  assert.equal(sregs.cs.selector, 0x10);
  for (const s of [sregs.ds, sregs.es, sregs.ss]) assert.equal(s.selector, 0x18);
  assert.deepEqual(sregs.gdt, { base: BigInt(GDT_GPA), limit: BOOT_GDT_LIMIT });
  assert.deepEqual(sregs.idt, { base: BigInt(IDT_GPA), limit: 0 });
  // Page tables and GDT in guest RAM.
  checkIdentityMap(memory, PAGE_TABLES_GPA);
  checkBootGdt(memory, GDT_GPA);
}

/** Walks the tables like the MMU: every 2 MiB page of the first 4 GiB maps onto itself. */
function checkIdentityMap(memory: GuestMemory, pml4: number): void {
  const P = 1n, RW = 2n, PS = 0x80n;
  const pml4e = u64(memory, pml4);
  assert.equal(pml4e & 0xfffn, P | RW);
  const pdpt = Number(pml4e & ~0xfffn);
  assert.equal(pdpt, pml4 + 0x1000);
  for (let i = 1; i < 512; i++) assert.equal(u64(memory, pml4 + i * 8), 0n, `PML4[${i}] not present`);
  for (let gib = 0; gib < 512; gib++) {
    const pdpte = u64(memory, pdpt + gib * 8);
    if (gib >= 4) { assert.equal(pdpte, 0n); continue; }
    assert.equal(pdpte & 0xfffn, P | RW);
    const pd = Number(pdpte & ~0xfffn);
    assert.equal(pd, pml4 + (2 + gib) * 0x1000);
    for (let i = 0; i < 512; i++) {
      const pde = u64(memory, pd + i * 8);
      assert.equal(pde, BigInt(gib * 2 ** 30 + i * 2 * MiB) | P | RW | PS);
    }
  }
}

function checkBootGdt(memory: GuestMemory, gdt: number): void {
  assert.equal(u64(memory, gdt), 0n, 'null descriptor');
  assert.equal(u64(memory, gdt + 0x08), 0n);
  // The values Linux's own boot GDT uses for __KERNEL_CS/__KERNEL_DS, with the accessed bit set.
  assert.equal(u64(memory, gdt + BOOT_CS), 0x00af9b000000ffffn, 'flat 64-bit code at __BOOT_CS');
  assert.equal(u64(memory, gdt + BOOT_DS), 0x00cf93000000ffffn, 'flat data at __BOOT_DS');
  assert.equal(u64(memory, gdt + BOOT_TSS), 0x00008b0000000067n, 'busy 64-bit TSS, base 0, limit 0x67');
  assert.equal(u64(memory, gdt + BOOT_TSS + 8), 0n);
  assert.equal(BOOT_GDT_LIMIT, 0x2f);
}

describe('long mode', () => {
  test('identity page tables: PML4 -> PDPT -> 4 PDs of 2 MiB pages, present|writable|PS', () => {
    const memory = ram(2 * MiB);
    memory.bytes.fill(0xee, 0x10000, 0x16000); // stale bytes are overwritten, not kept
    writeIdentityPageTables(memory, 0x10000);
    checkIdentityMap(memory, 0x10000);
    assert.throws(() => writeIdentityPageTables(memory, 0x10008), RangeError);
    assert.throws(() => writeIdentityPageTables(memory, 2 * MiB - 0x1000));
  });

  test('boot GDT: null, null, code64 at 0x10, data at 0x18, TSS at 0x20', () => {
    const memory = ram(2 * MiB);
    memory.bytes.fill(0xee, 0x500, 0x600);
    writeBootGdt(memory, 0x500);
    checkBootGdt(memory, 0x500);
    assert.equal(memory.bytes[0x500 + BOOT_GDT_LIMIT + 1], 0xee, 'nothing written past the GDT');
  });

  test('special registers: paging, PAE, long mode, flat segments matching the GDT, usable TR, BSP APIC', () => {
    const s = longModeSpecialRegisters({ pml4Gpa: 0x4000, gdtGpa: 0x1000, gdtLimit: BOOT_GDT_LIMIT });
    assert.equal(s.cr0, 0x80050033n, 'PE|MP|ET|NE|WP|AM|PG');
    assert.equal(s.cr4, 0x620n, 'PAE|OSFXSR|OSXMMEXCPT');
    assert.equal(s.efer, 0x500n, 'LME|LMA, no SCE');
    assert.equal(s.cr3, 0x4000n);
    assert.equal(s.cr0 & (1n << 29n), 0n, 'caches on (no NW)');
    assert.equal(s.apicBase, 0xfee00900n);
    assert.equal(longModeSpecialRegisters({ pml4Gpa: 0x4000, gdtGpa: 0x1000, gdtLimit: 0x2f, bsp: false }).apicBase, 0xfee00800n);
    assert.deepEqual(s.gdt, { base: 0x1000n, limit: 0x2f });
    assert.deepEqual(s.idt, { base: 0n, limit: 0 });
    assert.deepEqual(s.cs, { base: 0n, limit: 0xffffffff, selector: 0x10, type: 11, present: true, dpl: 0, db: false, s: true, l: true, g: true, avl: false, unusable: false });
    for (const seg of [s.ds, s.es, s.fs, s.gs, s.ss]) {
      assert.deepEqual(seg, { base: 0n, limit: 0xffffffff, selector: 0x18, type: 3, present: true, dpl: 0, db: true, s: true, l: false, g: true, avl: false, unusable: false });
    }
    assert.deepEqual(s.tr, { base: 0n, limit: 0x67, selector: 0x20, type: 11, present: true, dpl: 0, db: false, s: false, l: false, g: false, avl: false, unusable: false });
    assert.equal(s.ldt.unusable, true);
    // The hidden segment state is what the GDT descriptors say.
    assert.equal(encodeDescriptor(s.cs), 0x00af9b000000ffffn);
    assert.equal(encodeDescriptor(s.ds), 0x00cf93000000ffffn);
    assert.equal(encodeDescriptor(s.tr), 0x00008b0000000067n);
    // Each call returns fresh objects: a caller may change one vCPU's state without touching another's.
    const t = longModeSpecialRegisters({ pml4Gpa: 0x4000, gdtGpa: 0x1000, gdtLimit: 0x2f });
    t.ds.selector = 0;
    assert.equal(s.ds.selector, 0x18);
    assert.equal(t.es.selector, 0x18);
  });
});

describe('loadLinux on a hand-built bzImage', () => {
  test('loads payload, initrd, cmdline, ACPI and boot state', () => {
    const memory = ram(64 * MiB);
    const kernel = fakeBzImage({ payloadSize: 300000, initSize: 8 * MiB });
    const initrd = fakeInitrd(1234567);
    const acpi = fakeAcpi();
    const cmdline = 'console=ttyS0 root=/dev/sda1 quiet';
    const state = loadLinux(memory, { kernel, initrd, cmdline, acpi });
    assert.equal(state.layout.kernelLoadAddress, 0x1000000);
    assert.equal(state.layout.kernelEnd, 0x1000000 + 8 * MiB);
    assert.equal(state.layout.initrdGpa, Math.floor((64 * MiB - 1234567) / 4096) * 4096);
    checkBootState(memory, kernel, state, { initrd, cmdline, acpi });
  });

  test('without initrd or ACPI the fields stay zero', () => {
    const memory = ram(64 * MiB);
    const kernel = fakeBzImage();
    const state = loadLinux(memory, { kernel, cmdline: '' });
    assert.equal(state.layout.initrdGpa, undefined);
    checkBootState(memory, kernel, state, { cmdline: '' });
  });

  test('pref_address is used when the kernel is relocatable and it is usable; 16 MiB otherwise', () => {
    const at = (o: Parameters<typeof fakeBzImage>[0]) => loadLinux(ram(128 * MiB), { kernel: fakeBzImage(o), cmdline: '' }).layout.kernelLoadAddress;
    assert.equal(at({ prefAddress: 0x2000000n }), 0x2000000);
    assert.equal(at({ prefAddress: 0x2100000n }), 0x1000000, 'not aligned to kernel_alignment');
    assert.equal(at({ prefAddress: 0n }), 0x1000000);
    assert.equal(at({ prefAddress: 0x80000n }), 0x1000000, 'below 1 MiB');
    assert.equal(at({ prefAddress: 0x7e00000n }), 0x1000000, 'init_size would run past RAM');
    assert.equal(at({ prefAddress: 0x2000000n, relocatable: false }), 0x1000000);
  });

  test('the initrd stays below initrd_addr_max', () => {
    const memory = ram(128 * MiB);
    const initrd = fakeInitrd(5000);
    const state = loadLinux(memory, { kernel: fakeBzImage({ initrdAddrMax: 0x37fffff }), initrd, cmdline: 'x' });
    assert.equal(state.layout.initrdGpa, Math.floor((0x3800000 - 5000) / 4096) * 4096);
  });

  /** Asserts the refusal and that guest RAM was left untouched. */
  function refuses(memory: GuestMemory, o: Parameters<typeof loadLinux>[1], kind: Function, pattern: RegExp): void {
    memory.bytes.fill(0);
    assert.throws(() => loadLinux(memory, o), (e: unknown) => {
      assert.ok(e instanceof kind, `expected ${kind.name}, got ${String(e)}`);
      assert.match((e as Error).message, pattern);
      return true;
    });
    assert.equal(firstNonZero(memory), -1, 'guest RAM untouched after a refusal');
  }

  test('refuses what does not fit, with the sizes, and writes nothing', () => {
    const memory = ram(64 * MiB);
    refuses(memory, { kernel: new Uint8Array(100), cmdline: '' }, BootImageError, /too short/);
    refuses(memory, { kernel: fakeBzImage({ initSize: 60 * MiB }), cmdline: '' }, BootLayoutError,
      /kernel does not fit: loaded at 0x1000000 it needs memory up to 0x4c00000 \(payload 64 KiB, init_size 60 MiB\), but RAM is 64 MiB/);
    refuses(memory, { kernel: fakeBzImage({ initSize: 40 * MiB }), initrd: fakeInitrd(9 * MiB), cmdline: '' }, BootLayoutError,
      /initrd does not fit: 9 MiB must lie between the kernel's end at 0x3800000 and 0x4000000 .* leaving 8 MiB/);
    refuses(memory, { kernel: fakeBzImage({ initrdAddrMax: 0x0ffffff }), initrd: fakeInitrd(4096), cmdline: '' }, BootLayoutError, /initrd does not fit/);
    refuses(memory, { kernel: fakeBzImage(), initrd: new Uint8Array(0), cmdline: '' }, BootLayoutError, /initrd is empty/);
    refuses(memory, { kernel: fakeBzImage({ cmdlineSize: 10 }), cmdline: 'console=ttyS0' }, BootLayoutError,
      /command line does not fit: 13 bytes, the kernel accepts at most 10/);
    refuses(memory, { kernel: fakeBzImage(), cmdline: 'a\0b' }, BootLayoutError, /NUL/);
    refuses(memory, { kernel: fakeBzImage(), cmdline: '', acpi: { ...fakeAcpi(), gpa: 0xd0000 } }, BootLayoutError, /ACPI tables do not fit/);
    refuses(memory, { kernel: fakeBzImage(), cmdline: '', acpi: { bytes: new Uint8Array(0x20001), gpa: 0xe0000, rsdpGpa: 0xe0000 } }, BootLayoutError, /ACPI tables do not fit/);
    refuses(memory, { kernel: fakeBzImage(), cmdline: '', acpi: { ...fakeAcpi(), rsdpGpa: ACPI_REGION_GPA + 8 } }, BootLayoutError, /16-byte aligned/);
    refuses(memory, { kernel: fakeBzImage(), cmdline: '', acpi: { ...fakeAcpi(), rsdpGpa: ACPI_REGION_GPA + 0x400 } }, BootLayoutError, /inside the ACPI tables/);
  });

  test('refuses RAM that is too small', () => {
    const memory = ram(32 * MiB);
    refuses(memory, { kernel: fakeBzImage(), cmdline: '' }, BootLayoutError, /RAM size 32 MiB is too small/);
  });
});

describe('loadLinux on the pinned Debian kernel', () => {
  test(`${DEBIAN_KERNEL_RELEASE} into 256 MiB with an initrd, a command line and ACPI`, async (t) => {
    const kernel = await debianKernelImage();
    if (!kernel) return t.skip(DEBIAN_KERNEL_SKIP_REASON);
    const memory = ram(256 * MiB);
    const initrd = fakeInitrd(3 * MiB + 123);
    const acpi = fakeAcpi();
    const cmdline = 'console=ttyS0 earlyprintk=ttyS0 panic=-1 rdinit=/init';
    const state = loadLinux(memory, { kernel, initrd, cmdline, acpi });
    assert.ok(state.image.kernelVersion.startsWith(DEBIAN_KERNEL_RELEASE));
    // Relocatable with pref_address 16 MiB; it needs init_size (51.5 MiB) from there.
    assert.equal(state.layout.kernelLoadAddress, 0x1000000);
    assert.equal(state.layout.kernelEnd, 0x1000000 + 0x3378000);
    assert.equal(state.regs.rip, 0x1000200n);
    assert.equal(state.regs.rsi, 0x3000n);
    assert.equal(state.layout.initrdGpa, Math.floor((256 * MiB - initrd.length) / 4096) * 4096);
    // Its own header, as the kernel will read it back from boot_params.
    assert.equal(memory.view.getUint16(BOOT_PARAMS_GPA + 0x206, true), state.image.protocolVersion);
    assert.equal(memory.view.getUint32(BOOT_PARAMS_GPA + 0x260, true), 0x3378000, 'init_size');
    assert.equal(memory.view.getUint16(BOOT_PARAMS_GPA + 0x236, true), state.image.xloadflags);
    checkBootState(memory, kernel, state, { initrd, cmdline, acpi });
  });

  test(`${DEBIAN_KERNEL_RELEASE} does not fit 64 MiB and says why`, async (t) => {
    const kernel = await debianKernelImage();
    if (!kernel) return t.skip(DEBIAN_KERNEL_SKIP_REASON);
    const memory = ram(64 * MiB);
    assert.throws(() => loadLinux(memory, { kernel, cmdline: '' }), /kernel does not fit: .* init_size 51\.5 MiB .* but RAM is 64 MiB/);
  });
});
