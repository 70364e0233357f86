// The KVM struct codecs and request numbers, byte for byte. The expected request numbers
// and offsets were printed by a C program compiled against Debian 12's linux-libc-dev
// (6.1) <linux/kvm.h>, so a wrong size or offset here fails before it reaches a kernel.
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import fc from 'fast-check';
import * as K from '../src/kvm/kvm-constants.js';
import {
  cpuid2Buffer, decodeCpuid2, decodeFpuControl, decodeMsrs, decodeRegs, decodeSregs, encodeCpuid2, encodeEnableCap,
  encodeFpuDefaults, encodeIoeventfd, encodeIrqfd, encodeIrqLevel, encodeIrqRouting, encodeMsi, encodeMsrFilter,
  encodeMsrs, encodePitConfig, encodeRegs, encodeSregs, encodeUserspaceMemoryRegion, KvmStructError, msrBitmapSize,
} from '../src/kvm/kvm-structs.js';
import { RUN_OFFSETS, KVM_RUN_STRUCT_SIZE } from '../src/kvm/kvm-run-area.js';
import { defaultIrqchipRoutes } from '../src/kvm/kvm-vm.js';
import { GENERAL_REGISTER_NAMES, type CpuidEntry, type GeneralRegisters, type Segment, type SpecialRegisters } from '../src/x86/cpu-state.js';

const u64 = fc.bigInt({ min: 0n, max: 0xffffffffffffffffn });
const u32 = fc.integer({ min: 0, max: 0xffffffff });

const regsArb: fc.Arbitrary<GeneralRegisters> = fc.tuple(...GENERAL_REGISTER_NAMES.map(() => u64)).map(
  (values) => Object.fromEntries(GENERAL_REGISTER_NAMES.map((n, i) => [n, values[i]!])) as GeneralRegisters,
);

const segmentArb: fc.Arbitrary<Segment> = fc.record({
  base: u64,
  limit: u32,
  selector: fc.integer({ min: 0, max: 0xffff }),
  type: fc.integer({ min: 0, max: 15 }),
  present: fc.boolean(),
  dpl: fc.integer({ min: 0, max: 3 }),
  db: fc.boolean(),
  s: fc.boolean(),
  l: fc.boolean(),
  g: fc.boolean(),
  avl: fc.boolean(),
  unusable: fc.boolean(),
});
const dtableArb = fc.record({ base: u64, limit: fc.integer({ min: 0, max: 0xffff }) });
const sregsArb: fc.Arbitrary<SpecialRegisters> = fc.record({
  cs: segmentArb, ds: segmentArb, es: segmentArb, fs: segmentArb, gs: segmentArb, ss: segmentArb, tr: segmentArb, ldt: segmentArb,
  gdt: dtableArb, idt: dtableArb,
  cr0: u64, cr2: u64, cr3: u64, cr4: u64, cr8: u64, efer: u64, apicBase: u64,
});
const cpuidArb: fc.Arbitrary<CpuidEntry> = fc.record({ function: u32, index: u32, flags: u32, eax: u32, ebx: u32, ecx: u32, edx: u32 });

/** fast-check builds records without a prototype; compare against plain objects. */
function plain<T>(value: T): T {
  return structuredClone(value);
}

function dv(buf: Uint8Array): DataView {
  return new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
}

describe('KVM request numbers', () => {
  test('match <linux/kvm.h> (x86-64)', () => {
    const expected: Record<string, number> = {
      KVM_GET_API_VERSION: 0xae00, KVM_CREATE_VM: 0xae01, KVM_CHECK_EXTENSION: 0xae03, KVM_GET_VCPU_MMAP_SIZE: 0xae04,
      KVM_GET_SUPPORTED_CPUID: 0xc008ae05, KVM_CREATE_VCPU: 0xae41, KVM_SET_USER_MEMORY_REGION: 0x4020ae46,
      KVM_SET_TSS_ADDR: 0xae47, KVM_SET_IDENTITY_MAP_ADDR: 0x4008ae48, KVM_CREATE_IRQCHIP: 0xae60,
      KVM_CREATE_PIT2: 0x4040ae77, KVM_IRQ_LINE: 0x4008ae61, KVM_SET_GSI_ROUTING: 0x4008ae6a, KVM_IRQFD: 0x4020ae76,
      KVM_IOEVENTFD: 0x4040ae79, KVM_SIGNAL_MSI: 0x4020aea5, KVM_ENABLE_CAP: 0x4068aea3,
      KVM_X86_SET_MSR_FILTER: 0x4188aec6, KVM_RUN: 0xae80, KVM_GET_REGS: 0x8090ae81, KVM_SET_REGS: 0x4090ae82,
      KVM_GET_SREGS: 0x8138ae83, KVM_SET_SREGS: 0x4138ae84, KVM_SET_CPUID2: 0x4008ae90, KVM_GET_MSRS: 0xc008ae88,
      KVM_SET_MSRS: 0x4008ae89, KVM_GET_FPU: 0x81a0ae8c, KVM_SET_FPU: 0x41a0ae8d, KVM_GET_MP_STATE: 0x8004ae98,
      KVM_SET_MP_STATE: 0x4004ae99, KVM_GET_TSC_KHZ: 0xaea3,
    };
    const actual = K as unknown as Record<string, number>;
    for (const [name, value] of Object.entries(expected)) assert.equal(actual[name], value, name);
  });

  test('capability, exit and flag numbers match the header', () => {
    assert.deepEqual(
      [K.KVM_CAP_IRQCHIP, K.KVM_CAP_PIT2, K.KVM_CAP_IRQFD, K.KVM_CAP_IOEVENTFD, K.KVM_CAP_SYNC_REGS, K.KVM_CAP_SIGNAL_MSI,
        K.KVM_CAP_IMMEDIATE_EXIT, K.KVM_CAP_X86_USER_SPACE_MSR, K.KVM_CAP_X86_MSR_FILTER, K.KVM_CAP_GET_TSC_KHZ],
      [0, 33, 32, 36, 74, 77, 136, 188, 189, 61],
    );
    assert.deepEqual(
      [K.KVM_EXIT_IO, K.KVM_EXIT_HLT, K.KVM_EXIT_MMIO, K.KVM_EXIT_SHUTDOWN, K.KVM_EXIT_FAIL_ENTRY, K.KVM_EXIT_INTR,
        K.KVM_EXIT_INTERNAL_ERROR, K.KVM_EXIT_SYSTEM_EVENT, K.KVM_EXIT_X86_RDMSR, K.KVM_EXIT_X86_WRMSR],
      [2, 5, 6, 8, 9, 10, 17, 24, 29, 30],
    );
    assert.deepEqual([K.MsrExitReason.Inval, K.MsrExitReason.Unknown, K.MsrExitReason.Filter], [1, 2, 4]);
    assert.equal(K.KvmExit.X86Wrmsr, 30);
    assert.equal(K.KvmCap.SyncRegs, 74);
    assert.equal(K.exitReasonName(2), 'KVM_EXIT_IO (2)');
    assert.equal(K.exitReasonName(999), 'KVM_EXIT_UNRECOGNISED (999)');
  });

  test('kvm_run offsets match the header', () => {
    assert.deepEqual(RUN_OFFSETS, {
      requestInterruptWindow: 0, immediateExit: 1, exitReason: 8, exitUnion: 32,
      validRegs: 288, dirtyRegs: 296, syncRegs: 304, syncSregs: 448,
    });
    assert.equal(KVM_RUN_STRUCT_SIZE, 2352);
  });
});

describe('kvm_regs', () => {
  test('18 u64 in kvm_regs order, 144 bytes', () => {
    const regs = Object.fromEntries(GENERAL_REGISTER_NAMES.map((n, i) => [n, BigInt(i + 1) * 0x0101010101010101n])) as GeneralRegisters;
    const buf = encodeRegs(regs);
    assert.equal(buf.byteLength, 144);
    assert.equal(dv(buf).getBigUint64(0, true), 0x0101010101010101n); // rax
    assert.equal(dv(buf).getBigUint64(16 * 8, true), 17n * 0x0101010101010101n); // rip
    assert.equal(dv(buf).getBigUint64(17 * 8, true), 18n * 0x0101010101010101n); // rflags
  });

  test('round-trips any register values, into a reused buffer too', () => {
    const reused = new Uint8Array(144).fill(0xee);
    fc.assert(fc.property(regsArb, (regs) => {
      assert.deepEqual(decodeRegs(encodeRegs(regs)), plain(regs));
      assert.deepEqual(decodeRegs(encodeRegs(regs, reused)), plain(regs));
    }));
  });

  test('refuses a value that does not fit 64 bits', () => {
    const regs = decodeRegs(new Uint8Array(144));
    assert.throws(() => encodeRegs({ ...regs, rip: -1n }), KvmStructError);
    assert.throws(() => encodeRegs({ ...regs, rax: 1n << 64n }), KvmStructError);
    assert.throws(() => encodeRegs(regs, new Uint8Array(100)), KvmStructError);
  });
});

describe('kvm_sregs', () => {
  const flat: Segment = { base: 0x1122334455667788n, limit: 0xfffff, selector: 0x10, type: 0xb, present: true, dpl: 3, db: false, s: true, l: true, g: true, avl: true, unusable: false };
  const sregs: SpecialRegisters = {
    cs: flat, ds: { ...flat, selector: 0x18 }, es: flat, fs: flat, gs: flat, ss: flat, tr: { ...flat, selector: 0x28, unusable: true }, ldt: flat,
    gdt: { base: 0x4000n, limit: 0x27 }, idt: { base: 0x5000n, limit: 0xfff },
    cr0: 0x80050033n, cr2: 2n, cr3: 0x1000n, cr4: 0x20n, cr8: 8n, efer: 0x500n, apicBase: 0xfee00900n,
  };

  test('exact layout: 8 segments of 24 bytes, tables, control registers, zero interrupt bitmap', () => {
    const buf = encodeSregs(sregs, new Uint8Array(312).fill(0xaa));
    const v = dv(buf);
    assert.equal(buf.byteLength, 312);
    // cs at 0: base, limit, selector, type, present, dpl, db, s, l, g, avl, unusable, pad
    assert.equal(v.getBigUint64(0, true), 0x1122334455667788n);
    assert.equal(v.getUint32(8, true), 0xfffff);
    assert.equal(v.getUint16(12, true), 0x10);
    assert.deepEqual([...buf.subarray(14, 24)], [0xb, 1, 3, 0, 1, 1, 1, 1, 0, 0]);
    assert.equal(v.getUint16(24 + 12, true), 0x18); // ds
    assert.equal(v.getUint16(144 + 12, true), 0x28); // tr
    assert.equal(buf[144 + 22], 1); // tr.unusable
    assert.equal(v.getBigUint64(192, true), 0x4000n); // gdt.base
    assert.equal(v.getUint16(200, true), 0x27);
    assert.deepEqual([...buf.subarray(202, 208)], [0, 0, 0, 0, 0, 0]); // gdt padding
    assert.equal(v.getBigUint64(208, true), 0x5000n); // idt
    assert.equal(v.getBigUint64(224, true), 0x80050033n); // cr0
    assert.equal(v.getBigUint64(240, true), 0x1000n); // cr3
    assert.equal(v.getBigUint64(256, true), 8n); // cr8
    assert.equal(v.getBigUint64(264, true), 0x500n); // efer
    assert.equal(v.getBigUint64(272, true), 0xfee00900n); // apic_base
    assert.ok(buf.subarray(280, 312).every((b) => b === 0), 'interrupt_bitmap is zeroed');
  });

  test('round-trips any state', () => {
    fc.assert(fc.property(sregsArb, (s) => {
      assert.deepEqual(decodeSregs(encodeSregs(s)), plain(s));
    }));
  });
});

describe('kvm_cpuid2', () => {
  test('8-byte header, 40-byte entries with zero padding', () => {
    const buf = encodeCpuid2([{ function: 0x40000000, index: 0, flags: 1, eax: 0x40000005, ebx: 0x7263694d, ecx: 0x666f736f, edx: 0x76482074 }]);
    assert.equal(buf.byteLength, 48);
    const v = dv(buf);
    assert.equal(v.getUint32(0, true), 1);
    assert.equal(v.getUint32(8, true), 0x40000000);
    assert.equal(v.getUint32(16, true), 1);
    assert.equal(v.getUint32(20, true), 0x40000005);
    assert.equal(v.getUint32(32, true), 0x76482074);
    assert.ok(buf.subarray(36, 48).every((b) => b === 0));
  });

  test('round-trips; a capacity buffer carries its size; a lying count is refused', () => {
    fc.assert(fc.property(fc.array(cpuidArb, { maxLength: 20 }), (entries) => {
      assert.deepEqual(decodeCpuid2(encodeCpuid2(entries)), plain(entries));
    }));
    const empty = cpuid2Buffer(3);
    assert.equal(empty.byteLength, 8 + 3 * 40);
    assert.equal(dv(empty).getUint32(0, true), 3);
    dv(empty).setUint32(0, 4, true);
    assert.throws(() => decodeCpuid2(empty), KvmStructError);
  });
});

describe('kvm_msrs', () => {
  test('8-byte header, 16-byte entries (index, reserved, data)', () => {
    const buf = encodeMsrs([{ index: 0x40000001, value: 0x1001n }, { index: 0xc0000080, value: 0x500n }]);
    assert.equal(buf.byteLength, 8 + 32);
    const v = dv(buf);
    assert.equal(v.getUint32(0, true), 2);
    assert.equal(v.getUint32(8, true), 0x40000001);
    assert.equal(v.getUint32(12, true), 0);
    assert.equal(v.getBigUint64(16, true), 0x1001n);
    assert.equal(v.getUint32(24, true), 0xc0000080);
    assert.equal(v.getBigUint64(32, true), 0x500n);
  });

  test('round-trips', () => {
    fc.assert(fc.property(fc.array(fc.record({ index: u32, value: u64 }), { maxLength: 16 }), (entries) => {
      assert.deepEqual(decodeMsrs(encodeMsrs(entries)), plain(entries));
    }));
  });
});

describe('small structs', () => {
  test('kvm_userspace_memory_region', () => {
    const buf = encodeUserspaceMemoryRegion({ slot: 1, flags: 2, guestPhysAddr: 0x100000n, memorySize: 0x200000n, userspaceAddr: 0x7f0000000000n });
    assert.equal(buf.byteLength, 32);
    const v = dv(buf);
    assert.deepEqual([v.getUint32(0, true), v.getUint32(4, true)], [1, 2]);
    assert.deepEqual([v.getBigUint64(8, true), v.getBigUint64(16, true), v.getBigUint64(24, true)], [0x100000n, 0x200000n, 0x7f0000000000n]);
  });

  test('kvm_ioeventfd: datamatch, addr, len, fd, flags, 36 zero bytes (KVM refuses a dirty pad)', () => {
    const buf = encodeIoeventfd({ datamatch: 7n, addr: 0x614n, len: 4, fd: 9, flags: K.KVM_IOEVENTFD_FLAG_PIO | K.KVM_IOEVENTFD_FLAG_DATAMATCH }, new Uint8Array(64).fill(0xff));
    const v = dv(buf);
    assert.equal(v.getBigUint64(0, true), 7n);
    assert.equal(v.getBigUint64(8, true), 0x614n);
    assert.deepEqual([v.getUint32(16, true), v.getInt32(20, true), v.getUint32(24, true)], [4, 9, 3]);
    assert.ok(buf.subarray(28, 64).every((b) => b === 0));
  });

  test('kvm_irqfd, kvm_msi, kvm_irq_level, kvm_pit_config', () => {
    const irqfd = dv(encodeIrqfd({ fd: 5, gsi: 24, flags: K.KVM_IRQFD_FLAG_RESAMPLE, resampleFd: 6 }));
    assert.deepEqual([0, 4, 8, 12].map((o) => irqfd.getUint32(o, true)), [5, 24, 2, 6]);
    assert.equal(irqfd.byteLength, 32);
    const msi = encodeMsi({ addressLo: 0xfee01000, addressHi: 0, data: 0xf3 });
    assert.equal(msi.byteLength, 32);
    assert.deepEqual([0, 4, 8, 12, 16].map((o) => dv(msi).getUint32(o, true)), [0xfee01000, 0, 0xf3, 0, 0]);
    const level = dv(encodeIrqLevel(4, true));
    assert.deepEqual([level.getUint32(0, true), level.getUint32(4, true)], [4, 1]);
    const pit = encodePitConfig(K.KVM_PIT_SPEAKER_DUMMY);
    assert.equal(pit.byteLength, 64);
    assert.equal(dv(pit).getUint32(0, true), 1);
  });

  test('kvm_enable_cap: cap, flags, 4 args, 64 zero bytes; at most 4 args', () => {
    const buf = encodeEnableCap(K.KVM_CAP_X86_USER_SPACE_MSR, [7n]);
    assert.equal(buf.byteLength, 104);
    const v = dv(buf);
    assert.deepEqual([v.getUint32(0, true), v.getUint32(4, true)], [188, 0]);
    assert.equal(v.getBigUint64(8, true), 7n);
    assert.ok(buf.subarray(16, 104).every((b) => b === 0));
    assert.throws(() => encodeEnableCap(1, [1n, 2n, 3n, 4n, 5n]), KvmStructError);
  });

  test('kvm_fpu defaults: FCW 0x37f at 128, MXCSR 0x1f80 at 408, 416 bytes', () => {
    const buf = encodeFpuDefaults();
    assert.equal(buf.byteLength, 416);
    assert.equal(dv(buf).getUint16(128, true), 0x37f);
    assert.equal(dv(buf).getUint32(408, true), 0x1f80);
    assert.deepEqual(decodeFpuControl(buf), { fcw: 0x37f, mxcsr: 0x1f80 });
    assert.equal(buf.reduce((n, b) => n + (b !== 0 ? 1 : 0), 0), 4, 'nothing else is set');
  });
});

describe('kvm_msr_filter', () => {
  function arena(size = 0x600 * 16) {
    return { address: 0x7000_0000_0000n, bytes: new Uint8Array(size).fill(0xcc) };
  }

  test('flags, then 16 ranges of 24 bytes whose bitmaps point into the arena', () => {
    const a = arena();
    const buf = encodeMsrFilter(K.KVM_MSR_FILTER_DEFAULT_ALLOW, [
      { flags: K.KVM_MSR_FILTER_READ | K.KVM_MSR_FILTER_WRITE, base: 0x40000000, nmsrs: 0x200, bitmap: new Uint8Array(0x40) },
      { flags: K.KVM_MSR_FILTER_WRITE, base: 0xc0000080, nmsrs: 3, bitmap: Uint8Array.of(0b101) },
    ], a);
    assert.equal(buf.byteLength, 392);
    const v = dv(buf);
    assert.equal(v.getUint32(0, true), 0);
    assert.deepEqual([v.getUint32(8, true), v.getUint32(12, true), v.getUint32(16, true)], [3, 0x200, 0x40000000]);
    assert.equal(v.getBigUint64(24, true), a.address);
    assert.deepEqual([v.getUint32(32, true), v.getUint32(36, true), v.getUint32(40, true)], [2, 3, 0xc0000080]);
    assert.equal(v.getBigUint64(48, true), a.address + 0x40n, 'the second bitmap follows the first');
    assert.ok(a.bytes.subarray(0, 0x40).every((b) => b === 0), 'first bitmap: all denied');
    // KVM reads whole u64 words: the short bitmap is padded with zeros to 8 bytes.
    assert.deepEqual([...a.bytes.subarray(0x40, 0x48)], [0b101, 0, 0, 0, 0, 0, 0, 0]);
    assert.ok(buf.subarray(56, 392).every((b) => b === 0), 'unused ranges are zero');
  });

  test('bitmap sizes are whole u64 words; limits are enforced', () => {
    fc.assert(fc.property(fc.integer({ min: 1, max: 0x600 * 8 }), (n) => {
      const size = msrBitmapSize(n);
      assert.equal(size % 8, 0);
      assert.ok(size * 8 >= n && size * 8 < n + 64);
    }));
    const range = { flags: 3, base: 0, nmsrs: 8, bitmap: new Uint8Array(1) };
    assert.throws(() => encodeMsrFilter(0, new Array(17).fill(range), arena()), KvmStructError);
    assert.throws(() => encodeMsrFilter(0, [{ ...range, nmsrs: 0x600 * 8 + 1, bitmap: new Uint8Array(0x601) }], arena()), KvmStructError);
    assert.throws(() => encodeMsrFilter(0, [{ ...range, nmsrs: 0 }], arena()), KvmStructError);
    assert.throws(() => encodeMsrFilter(0, [{ ...range, nmsrs: 9 }], arena()), KvmStructError, 'bitmap too short');
    assert.throws(() => encodeMsrFilter(0, [range, range], arena(8)), KvmStructError, 'arena too small');
  });
});

describe('kvm_irq_routing', () => {
  test('8-byte header, 48-byte entries: MSI (type 2) and irqchip (type 1)', () => {
    const buf = encodeIrqRouting([
      { gsi: 24, msi: { addressLo: 0xfee00000, addressHi: 0, data: 0xf3 } },
      { gsi: 4, irqchip: { chip: K.KVM_IRQCHIP_IOAPIC, pin: 4 } },
    ]);
    assert.equal(buf.byteLength, 8 + 96);
    const v = dv(buf);
    assert.deepEqual([v.getUint32(0, true), v.getUint32(4, true)], [2, 0]);
    assert.deepEqual([8, 12, 16, 24, 28, 32].map((o) => v.getUint32(o, true)), [24, 2, 0, 0xfee00000, 0, 0xf3]);
    assert.deepEqual([56, 60, 64, 72, 76].map((o) => v.getUint32(o, true)), [4, 1, 0, 2, 4]);
  });

  test("KVM's default irqchip routing: 24 IOAPIC pins plus 16 PIC pins", () => {
    const routes = defaultIrqchipRoutes();
    assert.equal(routes.length, 40);
    assert.deepEqual(routes.filter((r) => r.gsi === 10), [
      { gsi: 10, irqchip: { chip: K.KVM_IRQCHIP_IOAPIC, pin: 10 } },
      { gsi: 10, irqchip: { chip: K.KVM_IRQCHIP_PIC_SLAVE, pin: 2 } },
    ]);
    assert.deepEqual(routes.filter((r) => r.gsi === 20), [{ gsi: 20, irqchip: { chip: K.KVM_IRQCHIP_IOAPIC, pin: 20 } }]);
  });
});
