// Reading kernel modules: the ELF .modinfo parser (synthetic modules, the real Debian
// modules, fuzzed bytes) and the load order of the Hyper-V modules' dependency closure.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { test } from 'node:test';
import fc from 'fast-check';
import { dynamicInfo, ElfFormatError, elfSections } from '../src/guest-image/elf-needed.js';
import { fetchAndExtract } from '../src/guest-image/initramfs-builder.js';
import { HYPERV_MODULES, indexModules, moduleClosure, ModuleResolveError, OPTIONAL_MODULES, parseModinfo, readModuleBytes } from '../src/guest-image/kernel-modules.js';
import { KERNELS } from '../src/guest-image/pinned-packages.js';

/** A minimal ELF64 LE relocatable with sections: null, .modinfo, .shstrtab. */
function syntheticModule(modinfo: string): Buffer {
  const info = Buffer.from(modinfo, 'latin1');
  const shstr = Buffer.from('\0.modinfo\0.shstrtab\0', 'latin1');
  const infoAt = 64;
  const strAt = infoAt + info.length;
  const shoff = (strAt + shstr.length + 7) & ~7;
  const b = Buffer.alloc(shoff + 3 * 64);
  b.set([0x7f, 0x45, 0x4c, 0x46, 2, 1, 1], 0);
  b.writeUInt16LE(1, 16); // ET_REL
  b.writeUInt16LE(62, 18); // EM_X86_64
  b.writeBigUInt64LE(BigInt(shoff), 0x28);
  b.writeUInt16LE(64, 0x34);
  b.writeUInt16LE(64, 0x3a);
  b.writeUInt16LE(3, 0x3c);
  b.writeUInt16LE(2, 0x3e);
  info.copy(b, infoAt);
  shstr.copy(b, strAt);
  const section = (i: number, name: number, type: number, offset: number, size: number) => {
    const at = shoff + i * 64;
    b.writeUInt32LE(name, at);
    b.writeUInt32LE(type, at + 4);
    b.writeBigUInt64LE(BigInt(offset), at + 24);
    b.writeBigUInt64LE(BigInt(size), at + 32);
  };
  section(1, 1, 1, infoAt, info.length); // .modinfo, PROGBITS
  section(2, 10, 3, strAt, shstr.length); // .shstrtab, STRTAB
  return b;
}

test('parseModinfo reads name, depends and aliases (and normalizes - to _)', () => {
  const m = parseModinfo(syntheticModule('license=GPL\0depends=scsi_mod,hv-vmbus\0\0alias=vmbus:aa\0alias=vmbus:bb\0name=hv_storvsc\0'));
  assert.deepEqual(m, { name: 'hv_storvsc', depends: ['scsi_mod', 'hv_vmbus'], aliases: ['vmbus:aa', 'vmbus:bb'] });
  assert.deepEqual(parseModinfo(syntheticModule('depends=\0name=hv_vmbus\0')).depends, []);
  assert.throws(() => parseModinfo(Buffer.from('not an elf')), ElfFormatError);
});

/** Random bytes, and a valid ELF with random bytes overwritten, only ever give ElfFormatError. */
function fuzz(seed: Buffer, runs: number): void {
  const onlyTyped = (bytes: Uint8Array) => {
    for (const parse of [parseModinfo, dynamicInfo, elfSections] as ((b: Uint8Array) => unknown)[]) {
      try {
        parse(bytes);
      } catch (e) {
        if (!(e instanceof ElfFormatError)) throw new Error(`${parse.name} threw ${(e as Error).name}: ${(e as Error).message}`);
      }
    }
  };
  fc.assert(fc.property(fc.uint8Array({ maxLength: 512 }), (bytes) => onlyTyped(bytes)), { numRuns: runs });
  fc.assert(
    fc.property(fc.array(fc.tuple(fc.nat(), fc.integer({ min: 0, max: 255 })), { minLength: 1, maxLength: 12 }), fc.nat(seed.length), (edits, cut) => {
      const bytes = Buffer.from(seed);
      // Aim at the headers (where offsets and sizes live) more often than at the data.
      for (const [at, value] of edits) bytes[at % 2 ? at % 128 : at % bytes.length] = value;
      onlyTyped(bytes);
      onlyTyped(bytes.subarray(0, cut));
    }),
    { numRuns: runs },
  );
}

test('fuzz: random and mutated bytes never throw anything but ElfFormatError (synthetic module)', () => {
  fuzz(syntheticModule('depends=a,b\0name=x\0alias=y\0'), 2000);
});

async function kernelTree(series: '6.1' | '6.12') {
  const { root } = await fetchAndExtract(KERNELS[series]);
  return indexModules(path.join(root, 'lib', 'modules', KERNELS[series].release), KERNELS[series].release);
}

function assertLoadOrder(order: { name: string; info: { depends: string[] } }[], builtin: Set<string>): void {
  const names = order.map((m) => m.name);
  for (const [i, m] of order.entries()) {
    for (const dep of m.info.depends) {
      assert.ok(builtin.has(dep) || (names.indexOf(dep) >= 0 && names.indexOf(dep) < i), `${dep} is loaded before ${m.name}`);
    }
  }
  assert.equal(new Set(names).size, names.length, 'each module once');
}

test('Debian 6.1: the Hyper-V closure loads hv_vmbus and the SCSI core before hv_storvsc', async () => {
  const tree = await kernelTree('6.1');
  const order = await moduleClosure(tree, HYPERV_MODULES, OPTIONAL_MODULES);
  const names = order.map((m) => m.name);
  for (const m of [...HYPERV_MODULES, 'scsi_transport_fc', 'scsi_mod', 'hv_sock', 'vsock']) assert.ok(names.includes(m), `${m} in ${names}`);
  assert.ok(names.indexOf('hv_vmbus') < names.indexOf('hv_storvsc'));
  assert.ok(names.indexOf('scsi_transport_fc') < names.indexOf('hv_storvsc'));
  assert.ok(names.indexOf('scsi_mod') < names.indexOf('scsi_transport_fc'));
  assertLoadOrder(order, tree.builtin);
  const storvsc = order.find((m) => m.name === 'hv_storvsc')!;
  // storvsc binds the SCSI controller's VMBus class 32412632-86cb-44a2-9b5c-50d1417354f5 (GUID bytes in wire order).
  assert.ok(storvsc.info.aliases.includes('vmbus:32264132cb86a2449b5c50d1417354f5'), storvsc.info.aliases.join(' '));
  assert.match(storvsc.guestPath, /^lib\/modules\/6\.1\.0-50-cloud-amd64\/kernel\/drivers\/scsi\/hv_storvsc\.ko$/);
});

test('Debian 6.12: compressed .ko.xz modules are decompressed and resolved the same way', async () => {
  const tree = await kernelTree('6.12');
  assert.ok([...tree.files.values()].some((f) => f.endsWith('.ko.xz')), '6.12 ships .ko.xz');
  const order = await moduleClosure(tree, HYPERV_MODULES, OPTIONAL_MODULES);
  assertLoadOrder(order, tree.builtin);
  for (const m of order) {
    assert.ok(m.guestPath.endsWith('.ko'), m.guestPath);
    assert.deepEqual([...m.bytes.subarray(0, 4)], [0x7f, 0x45, 0x4c, 0x46], `${m.name} is an uncompressed ELF`);
  }
});

test('fuzz: mutated real hv_vmbus.ko never throws anything but ElfFormatError', async () => {
  const tree = await kernelTree('6.1');
  const bytes = Buffer.from(await readModuleBytes(path.join(tree.dir, tree.files.get('hv_vmbus')!)));
  assert.equal(parseModinfo(bytes).name, 'hv_vmbus');
  fuzz(bytes, 300);
});

test('a missing module or a dependency cycle is a ModuleResolveError naming the modules', async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'enl-mod-'));
  fs.mkdirSync(path.join(dir, 'kernel'));
  fs.writeFileSync(path.join(dir, 'kernel', 'a.ko'), syntheticModule('depends=b\0name=a\0'));
  fs.writeFileSync(path.join(dir, 'kernel', 'b.ko'), syntheticModule('depends=a\0name=b\0'));
  fs.writeFileSync(path.join(dir, 'kernel', 'c.ko'), syntheticModule('depends=gone\0name=c\0'));
  fs.writeFileSync(path.join(dir, 'kernel', 'd.ko'), syntheticModule('depends=builtin_one\0name=d\0'));
  fs.writeFileSync(path.join(dir, 'modules.builtin'), 'kernel/x/builtin_one.ko\n');
  const tree = await indexModules(dir, 'test');
  await assert.rejects(moduleClosure(tree, ['a']), (e: Error) => e instanceof ModuleResolveError && /cycle: a -> b -> a/.test(e.message));
  await assert.rejects(moduleClosure(tree, ['c']), (e: Error) => e instanceof ModuleResolveError && /no module gone \(needed by c\)/.test(e.message));
  assert.deepEqual((await moduleClosure(tree, ['d'], ['not_there'])).map((m) => m.name), ['d'], 'built-in dependencies and absent optional modules are skipped');
});
