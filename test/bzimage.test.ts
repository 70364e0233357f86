// bzImage header parsing: every field the loader uses comes from its documented offset
// (checked on a hand-built header and on the real pinned Debian kernel); every malformed
// file is refused with a BootImageError that names the problem; and no input at all, random
// or a mutated real header, makes the parser throw anything else.
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import fc from 'fast-check';
import {
  BootImageError,
  bzImagePayload,
  parseBzImage,
  protocolVersionText,
  XLF_KERNEL_64,
  type BzImage,
} from '../src/x86/bzimage.js';
import { debianKernelImage, DEBIAN_KERNEL_RELEASE, DEBIAN_KERNEL_SKIP_REASON, fakeBzImage } from './support/debian-kernel.js';

function refuses(bytes: Uint8Array, pattern: RegExp): void {
  assert.throws(() => parseBzImage(bytes), (e: unknown) => {
    assert.ok(e instanceof BootImageError, `expected BootImageError, got ${String(e)}`);
    assert.match(e.message, pattern);
    return true;
  });
}

function patched(bytes: Uint8Array, patch: (view: DataView, bytes: Uint8Array) => void): Uint8Array {
  const copy = bytes.slice();
  patch(new DataView(copy.buffer), copy);
  return copy;
}

describe('parseBzImage on a hand-built header', () => {
  test('reads every field from its documented offset', () => {
    const bytes = fakeBzImage({
      setupSects: 7, payloadSize: 12345, initSize: 0x3378000, kernelAlignment: 0x200000, prefAddress: 0x2000000n,
      cmdlineSize: 4095, initrdAddrMax: 0x37ffffff, xloadflags: 0x7f, protocolVersion: 0x020f, version: '6.9.9-test #1',
    });
    const image = parseBzImage(bytes);
    assert.equal(image.setupSects, 7);
    assert.equal(image.protocolVersion, 0x020f);
    assert.equal(image.headerEnd, 0x26c);
    assert.equal(image.loadflags, 0x01);
    assert.equal(image.xloadflags, 0x7f);
    assert.equal(image.kernelAlignment, 0x200000);
    assert.equal(image.relocatable, true);
    assert.equal(image.prefAddress, 0x2000000n);
    assert.equal(image.initSize, 0x3378000);
    assert.equal(image.cmdlineSize, 4095);
    assert.equal(image.initrdAddrMax, 0x37ffffff);
    assert.equal(image.payloadOffset, 8 * 512);
    assert.equal(image.payloadSize, 12345);
    assert.equal(image.kernelVersion, '6.9.9-test #1');
    assert.deepEqual(bzImagePayload(image), bytes.subarray(8 * 512));
  });

  test('setup_sects 0 means 4', () => {
    const image = parseBzImage(fakeBzImage({ setupSects: 0 }));
    assert.equal(image.setupSects, 4);
    assert.equal(image.payloadOffset, 5 * 512);
  });

  test('a missing or unterminated version string yields an empty version, not a refusal', () => {
    const none = patched(fakeBzImage(), (v) => v.setUint16(0x20e, 0, true));
    assert.equal(parseBzImage(none).kernelVersion, '');
    const outside = patched(fakeBzImage(), (v) => v.setUint16(0x20e, 0xfff0, true));
    assert.equal(parseBzImage(outside).kernelVersion, '');
  });

  test('names the protocol version as major.minor', () => {
    assert.equal(protocolVersionText(0x020f), '2.15');
    assert.equal(protocolVersionText(0x020c), '2.12');
  });

  test('refuses a file too short for a header', () => {
    refuses(new Uint8Array(0), /too short/);
    refuses(new Uint8Array(0x205), /too short/);
  });

  test('refuses a file without the HdrS signature', () => {
    refuses(new Uint8Array(4096), /not a bzImage: no HdrS signature at 0x202/);
    refuses(patched(fakeBzImage(), (_v, b) => { b[0x205] = 0x54; }), /no HdrS signature at 0x202/);
  });

  test('refuses a protocol older than 2.12, saying the 64-bit entry needs 2.12', () => {
    refuses(fakeBzImage({ protocolVersion: 0x020b }), /boot protocol 2\.11 is too old: the 64-bit entry point needs protocol 2\.12/);
    assert.equal(parseBzImage(fakeBzImage({ protocolVersion: 0x020c })).protocolVersion, 0x020c);
  });

  test('refuses a header length that does not cover init_size or overruns boot_params', () => {
    refuses(patched(fakeBzImage(), (_v, b) => { b[0x201] = 0x20; }), /header ends at 0x222/);
    refuses(patched(fakeBzImage(), (_v, b) => { b[0x201] = 0xa0; }), /header ends at 0x2a2/);
  });

  test('refuses a file that ends before its payload', () => {
    const full = fakeBzImage({ setupSects: 4, payloadSize: 16 });
    refuses(full.subarray(0, 5 * 512), /truncated bzImage: setup_sects 4 puts the protected-mode payload at offset 2560, but the file has 2560 bytes/);
    refuses(patched(fakeBzImage({ payloadSize: 4096 }), (v) => v.setUint32(0x1f4, 4096 / 16 + 1, true)), /syssize says the payload has 4112 bytes, the file holds 4096/);
  });

  test('refuses a zImage and a kernel without a 64-bit entry', () => {
    refuses(fakeBzImage({ loadflags: 0 }), /LOADED_HIGH is clear/);
    refuses(fakeBzImage({ xloadflags: 0x02 }), /XLF_KERNEL_64 \(bit 0\) is clear/);
  });

  test('refuses a relocatable kernel whose alignment is not a power of two, and an init_size of 0', () => {
    refuses(fakeBzImage({ kernelAlignment: 0x300000 }), /kernel_alignment 0x300000, which is not a power of two/);
    refuses(fakeBzImage({ kernelAlignment: 0 }), /not a power of two/);
    refuses(fakeBzImage({ initSize: 0 }), /init_size is 0/);
  });
});

/** What any accepted image must satisfy, whatever its bytes. */
function checkInvariants(bytes: Uint8Array, image: BzImage): void {
  assert.equal(image.payloadOffset + image.payloadSize, bytes.length);
  assert.ok(image.payloadSize > 0);
  assert.ok(image.protocolVersion >= 0x020c);
  assert.ok((image.xloadflags & XLF_KERNEL_64) !== 0);
  assert.ok(image.headerEnd >= 0x264 && image.headerEnd <= 0x290 && image.headerEnd <= bytes.length);
  assert.ok(image.initSize > 0);
  assert.ok(/^[\x20-\x7e]*$/.test(image.kernelVersion));
}

/** True when the bytes were accepted (and the result is sane), false when refused properly. */
function parsesOrRefuses(bytes: Uint8Array): boolean {
  let image: BzImage;
  try {
    image = parseBzImage(bytes);
  } catch (e) {
    assert.ok(e instanceof BootImageError, `parseBzImage threw ${String(e)} instead of a BootImageError`);
    assert.ok(e.message.length > 0);
    return false;
  }
  checkInvariants(bytes, image);
  return true;
}

describe('parseBzImage on hostile input', () => {
  test('random bytes are parsed or refused with a BootImageError', () => {
    fc.assert(fc.property(fc.uint8Array({ maxLength: 4096 }), (bytes) => { parsesOrRefuses(bytes); }), { numRuns: 500 });
  });

  test('random bytes with a valid signature are parsed or refused with a BootImageError', () => {
    fc.assert(
      fc.property(fc.uint8Array({ minLength: 0x206, maxLength: 8192 }), fc.integer({ min: 0x20c, max: 0xffff }), (bytes, version) => {
        bytes.set([0x48, 0x64, 0x72, 0x53], 0x202);
        if (bytes.length >= 0x208) new DataView(bytes.buffer, bytes.byteOffset).setUint16(0x206, version, true);
        parsesOrRefuses(bytes);
      }),
      { numRuns: 500 },
    );
  });

  test('a valid header with mutated fields is parsed or refused with a BootImageError', () => {
    const base = fakeBzImage({ payloadSize: 1024 });
    const mutation = fc.tuple(fc.integer({ min: 0x1f0, max: 0x410 }), fc.integer({ min: 0, max: 255 }));
    const outcomes = { accepted: 0, refused: 0 };
    fc.assert(
      fc.property(fc.array(mutation, { minLength: 1, maxLength: 12 }), fc.oneof(fc.constant(base.length), fc.integer({ min: 0, max: base.length })), (mutations, length) => {
        const bytes = base.slice(0, length);
        for (const [offset, value] of mutations) if (offset < bytes.length) bytes[offset] = value;
        outcomes[parsesOrRefuses(bytes) ? 'accepted' : 'refused']++;
      }),
      { numRuns: 1000 },
    );
    // Both paths were exercised, not just the early refusals.
    assert.ok(outcomes.accepted > 50 && outcomes.refused > 50, JSON.stringify(outcomes));
  });

  test('the real kernel truncated anywhere in its header or setup area is parsed or refused with a BootImageError', async (t) => {
    const kernel = await debianKernelImage();
    if (!kernel) return t.skip(DEBIAN_KERNEL_SKIP_REASON);
    const head = kernel.slice(0, 0x6000);
    fc.assert(
      fc.property(fc.integer({ min: 0, max: head.length }), fc.array(fc.tuple(fc.integer({ min: 0x1f1, max: 0x26b }), fc.integer({ min: 0, max: 255 })), { maxLength: 4 }), (length, mutations) => {
        const bytes = head.slice(0, length);
        for (const [offset, value] of mutations) if (offset < bytes.length) bytes[offset] = value;
        parsesOrRefuses(bytes);
      }),
      { numRuns: 500 },
    );
  });
});

describe('parseBzImage on the pinned Debian kernel', () => {
  test(`${DEBIAN_KERNEL_RELEASE}: protocol 2.15+, 64-bit entry, relocatable, version string`, async (t) => {
    const kernel = await debianKernelImage();
    if (!kernel) return t.skip(DEBIAN_KERNEL_SKIP_REASON);
    const image = parseBzImage(kernel);
    assert.ok(image.protocolVersion >= 0x020f, `protocol ${protocolVersionText(image.protocolVersion)}`);
    assert.ok((image.xloadflags & XLF_KERNEL_64) !== 0);
    assert.equal(image.relocatable, true);
    assert.ok(image.kernelVersion.startsWith(`${DEBIAN_KERNEL_RELEASE} `), image.kernelVersion);
    assert.match(image.kernelVersion, /Debian 6\.1\.176-1/);
    // Values of this exact build (read with a hex dump of the header).
    assert.equal(image.setupSects, 39);
    assert.equal(image.payloadOffset, 40 * 512);
    assert.equal(image.payloadSize, kernel.length - 40 * 512);
    assert.equal(image.kernelAlignment, 0x200000);
    assert.equal(image.prefAddress, 0x1000000n);
    assert.equal(image.initSize, 0x3378000);
    assert.equal(image.cmdlineSize, 2047);
    assert.equal(image.initrdAddrMax, 0x7fffffff);
    assert.equal(image.headerEnd, 0x26c);
    checkInvariants(kernel, image);
  });
});
