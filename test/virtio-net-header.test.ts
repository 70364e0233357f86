// The virtio-net header codec: the layout against hand-built bytes (what the kernel writes
// for a TSO frame from a TAP), each validation rule, and fast-check properties: decoding
// arbitrary bytes never throws or reads outside its buffer, and every header that decodes
// re-encodes to the same bytes.
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import fc from 'fast-check';
import {
  decodeVirtioNetHeader,
  encodeVirtioNetHeader,
  VIRTIO_NET_HDR_BYTES,
  VIRTIO_NET_HDR_V1_BYTES,
  VirtioGso,
  VirtioNetFlag,
  VirtioNetHeader,
} from '../src/backends/net/virtio-net-header.js';

function bytes(...values: number[]): DataView {
  return new DataView(Uint8Array.from(values).buffer);
}

describe('virtio-net header layout', () => {
  test('decodes a TCPv4 GSO header as the kernel writes it', () => {
    // flags NEEDS_CSUM, gso TCPV4, hdr_len 66, gso_size 1448, csum_start 34, csum_offset 16, num_buffers 1
    const view = bytes(0x01, 0x01, 66, 0, 0xa8, 0x05, 34, 0, 16, 0, 1, 0);
    const h = new VirtioNetHeader();
    assert.equal(decodeVirtioNetHeader(view, 0, 12, 30000, h), null);
    assert.deepEqual({ ...h }, { flags: 1, gsoType: VirtioGso.TcpV4, ecn: false, hdrLen: 66, gsoSize: 1448, csumStart: 34, csumOffset: 16, numBuffers: 1 });
  });

  test('the 10-byte form has no num_buffers; ECN is split off the GSO type', () => {
    const view = bytes(0x01, 0x84, 86, 0, 0x94, 0x05, 54, 0, 16, 0);
    const h = new VirtioNetHeader();
    assert.equal(decodeVirtioNetHeader(view, 0, 10, 9000, h), null);
    assert.equal(h.gsoType, VirtioGso.TcpV6);
    assert.equal(h.ecn, true);
    assert.equal(h.numBuffers, 0);
    assert.equal(h.gsoSize, 1428);
  });

  test('fields that mean nothing for the flags are zeroed', () => {
    const view = bytes(VirtioNetFlag.DataValid, 0, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 7, 0);
    const h = new VirtioNetHeader();
    assert.equal(decodeVirtioNetHeader(view, 0, 12, 100, h), null);
    assert.deepEqual({ ...h }, { flags: 2, gsoType: 0, ecn: false, hdrLen: 0, gsoSize: 0, csumStart: 0, csumOffset: 0, numBuffers: 7 });
  });

  test('encode writes the layout, at an offset, and nothing outside it', () => {
    const h = new VirtioNetHeader();
    h.flags = VirtioNetFlag.NeedsChecksum;
    h.gsoType = VirtioGso.TcpV4;
    h.hdrLen = 54;
    h.gsoSize = 1460;
    h.csumStart = 34;
    h.csumOffset = 16;
    const buf = new Uint8Array(16).fill(0xee);
    assert.equal(encodeVirtioNetHeader(h, new DataView(buf.buffer), 2, 12, 65000), null);
    assert.deepEqual([...buf], [0xee, 0xee, 1, 1, 54, 0, 0xb4, 0x05, 34, 0, 16, 0, 0, 0, 0xee, 0xee]);
  });
});

describe('virtio-net header validation', () => {
  const cases: Array<[string, number[], number, string]> = [
    ['unknown flag bit', [0x08, 0, 0, 0, 0, 0, 0, 0, 0, 0], 100, 'unknown-flags'],
    ['RSC info (never negotiated)', [0x04, 0, 0, 0, 0, 0, 0, 0, 0, 0], 100, 'unknown-flags'],
    ['partial and valid at once', [0x03, 0, 0, 0, 0, 0, 34, 0, 16, 0], 100, 'conflicting-checksum-flags'],
    ['GSO type 2', [0x01, 2, 0, 0, 1, 0, 34, 0, 16, 0], 100, 'unknown-gso-type'],
    ['GSO type 6', [0x01, 6, 0, 0, 1, 0, 34, 0, 16, 0], 100, 'unknown-gso-type'],
    ['ECN on UDP', [0x01, 0x83, 0, 0, 1, 0, 34, 0, 6, 0], 100, 'ecn-without-tcp'],
    ['ECN alone', [0x00, 0x80, 0, 0, 0, 0, 0, 0, 0, 0], 100, 'ecn-without-tcp'],
    ['GSO without a partial checksum', [0x00, 1, 54, 0, 0xb4, 5, 0, 0, 0, 0], 3000, 'gso-without-checksum'],
    ['GSO with size 0', [0x01, 1, 54, 0, 0, 0, 34, 0, 16, 0], 3000, 'gso-size-zero'],
    ['header length past the frame', [0x01, 1, 0xff, 0, 0xb4, 5, 34, 0, 16, 0], 200, 'header-length-out-of-frame'],
    ['checksum field past the frame', [0x01, 0, 0, 0, 0, 0, 34, 0, 16, 0], 51, 'checksum-out-of-frame'],
    ['checksum start past the frame', [0x01, 0, 0, 0, 0, 0, 0xff, 0xff, 0, 0], 1000, 'checksum-out-of-frame'],
  ];
  for (const [name, raw, frameLength, error] of cases) {
    test(name, () => {
      assert.equal(decodeVirtioNetHeader(bytes(...raw), 0, 10, frameLength, new VirtioNetHeader()), error);
    });
  }

  test('a checksum ending exactly at the frame end is fine', () => {
    assert.equal(decodeVirtioNetHeader(bytes(0x01, 0, 0, 0, 0, 0, 34, 0, 16, 0), 0, 10, 52, new VirtioNetHeader()), null);
  });

  test('sizes, offsets and frame lengths out of range', () => {
    const view = new DataView(new ArrayBuffer(12));
    const h = new VirtioNetHeader();
    assert.equal(decodeVirtioNetHeader(view, 0, 11, 100, h), 'bad-header-size');
    assert.equal(decodeVirtioNetHeader(view, 1, 12, 100, h), 'truncated');
    assert.equal(decodeVirtioNetHeader(view, -1, 10, 100, h), 'truncated');
    assert.equal(decodeVirtioNetHeader(view, 0.5, 10, 100, h), 'truncated');
    assert.equal(decodeVirtioNetHeader(view, 0, 10, -1, h), 'truncated');
    assert.equal(decodeVirtioNetHeader(view, 0, 10, Number.NaN, h), 'truncated');
    assert.equal(encodeVirtioNetHeader(h, view, 3, 10, 100), 'truncated');
    assert.equal(encodeVirtioNetHeader(h, view, 0, 8, 100), 'bad-header-size');
  });

  test('encode refuses what decode would refuse, and out-of-range fields, writing nothing', () => {
    const buf = new Uint8Array(12).fill(0xaa);
    const view = new DataView(buf.buffer);
    const h = new VirtioNetHeader();
    h.gsoType = VirtioGso.TcpV4;
    h.gsoSize = 1460;
    assert.equal(encodeVirtioNetHeader(h, view, 0, 12, 5000), 'gso-without-checksum');
    h.flags = VirtioNetFlag.NeedsChecksum;
    h.csumStart = 34;
    h.csumOffset = 16;
    h.gsoSize = 70000;
    assert.equal(encodeVirtioNetHeader(h, view, 0, 12, 5000), 'field-out-of-range');
    h.gsoSize = 1460;
    h.gsoType = VirtioGso.TcpV4 | VirtioGso.Ecn;
    assert.equal(encodeVirtioNetHeader(h, view, 0, 12, 5000), 'unknown-gso-type');
    assert.ok(buf.every((b) => b === 0xaa));
  });
});

describe('virtio-net header properties', () => {
  test('decoding arbitrary bytes at arbitrary offsets never throws and honours its checks', () => {
    fc.assert(
      fc.property(
        fc.uint8Array({ minLength: 0, maxLength: 40 }),
        fc.integer({ min: -4, max: 44 }),
        fc.constantFrom(VIRTIO_NET_HDR_BYTES, VIRTIO_NET_HDR_V1_BYTES, 0, 11, 16),
        fc.integer({ min: -2, max: 70000 }),
        (raw, offset, size, frameLength) => {
          const view = new DataView(raw.buffer, raw.byteOffset, raw.byteLength);
          const h = new VirtioNetHeader();
          const error = decodeVirtioNetHeader(view, offset, size, frameLength, h);
          if (error !== null) return;
          assert.ok(offset >= 0 && offset + size <= raw.length);
          assert.ok((h.flags & ~3) === 0 && h.flags !== 3);
          if (h.flags & VirtioNetFlag.NeedsChecksum) assert.ok(h.csumStart + h.csumOffset + 2 <= frameLength);
          else assert.equal(h.csumStart + h.csumOffset, 0);
          if (h.gsoType !== VirtioGso.None) {
            assert.ok(h.gsoSize > 0 && h.hdrLen <= frameLength);
            assert.ok(h.flags & VirtioNetFlag.NeedsChecksum);
          } else assert.equal(h.gsoSize + h.hdrLen, 0);
        },
      ),
      { numRuns: 20000 },
    );
  });

  test('every header that decodes re-encodes to the same bytes (num_buffers aside)', () => {
    fc.assert(
      fc.property(fc.uint8Array({ minLength: 12, maxLength: 12 }), fc.integer({ min: 0, max: 70000 }), fc.boolean(), (raw, frameLength, v1) => {
        const size = v1 ? 12 : 10;
        const h = new VirtioNetHeader();
        const view = new DataView(raw.buffer);
        if (decodeVirtioNetHeader(view, 0, size, frameLength, h) !== null) return;
        const out = new Uint8Array(12);
        assert.equal(encodeVirtioNetHeader(h, new DataView(out.buffer), 0, size, frameLength), null);
        const again = new VirtioNetHeader();
        assert.equal(decodeVirtioNetHeader(new DataView(out.buffer), 0, size, frameLength, again), null);
        assert.deepEqual({ ...again, numBuffers: 0 }, { ...h, numBuffers: 0 });
      }),
      { numRuns: 20000 },
    );
  });

  test('structured valid headers round-trip exactly', () => {
    const header = fc
      .record({
        checksum: fc.boolean(),
        dataValid: fc.boolean(),
        gso: fc.constantFrom(VirtioGso.None, VirtioGso.TcpV4, VirtioGso.TcpV6, VirtioGso.Udp, VirtioGso.UdpL4),
        ecn: fc.boolean(),
        hdrLen: fc.integer({ min: 0, max: 0xffff }),
        gsoSize: fc.integer({ min: 1, max: 0xffff }),
        csumStart: fc.integer({ min: 0, max: 0xffff }),
        csumOffset: fc.integer({ min: 0, max: 0xffff }),
        frameLength: fc.integer({ min: 0, max: 0x20000 }),
      })
      .filter((r) => {
        const checksum = r.checksum || r.gso !== VirtioGso.None;
        if (checksum && r.csumStart + r.csumOffset + 2 > r.frameLength) return false;
        if (r.gso !== VirtioGso.None && r.hdrLen > r.frameLength) return false;
        return true;
      });
    fc.assert(
      fc.property(header, (r) => {
        const gso = r.gso !== VirtioGso.None;
        const h = new VirtioNetHeader();
        h.flags = r.checksum || gso ? VirtioNetFlag.NeedsChecksum : r.dataValid ? VirtioNetFlag.DataValid : 0;
        h.gsoType = r.gso;
        h.ecn = r.ecn && (r.gso === VirtioGso.TcpV4 || r.gso === VirtioGso.TcpV6);
        h.hdrLen = gso ? r.hdrLen : 0;
        h.gsoSize = gso ? r.gsoSize : 0;
        h.csumStart = h.flags & VirtioNetFlag.NeedsChecksum ? r.csumStart : 0;
        h.csumOffset = h.flags & VirtioNetFlag.NeedsChecksum ? r.csumOffset : 0;
        const buf = new DataView(new ArrayBuffer(12));
        assert.equal(encodeVirtioNetHeader(h, buf, 0, 12, r.frameLength), null);
        const back = new VirtioNetHeader();
        assert.equal(decodeVirtioNetHeader(buf, 0, 12, r.frameLength, back), null);
        assert.deepEqual({ ...back }, { ...h });
      }),
      { numRuns: 5000 },
    );
  });
});
