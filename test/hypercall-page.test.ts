// The hypercall page code (spec 4.1 and src/hyperv/hypercall-page.ts): exact bytes, and
// the same bytes disassembled by binutils' objdump, so the comments in the source can be
// checked against an independent decoder: ENDBR64 first, the fast HvSignalEvent compared
// on all of RCX, its connection id written to SIGNAL_PORT with the status taken from ECX,
// and every other call leaving through HYPERCALL_PORT with the input kept in R9.
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { HYPERCALL_SLOW_PATH_OFFSET, HypercallRegisters, hypercallPageCode } from '../src/hyperv/hypercall-page.js';
import { HYPERCALL_PORT, SIGNAL_PORT } from '../src/x86/platform-ports.js';

const EXPECTED = [
  'f30f1efa', //         endbr64
  '4881f95d000100', //   cmp rcx, 0x1005d
  '750d', //             jne +13 (slow)
  '31c9', //             xor ecx, ecx
  '89d0', //             mov eax, edx
  'ba14060000', //       mov edx, 0x614
  'ef', //               out dx, eax
  '89c8', //             mov eax, ecx
  'c3', //               ret
  '4989d1', //           mov r9, rdx
  'ba10060000', //       mov edx, 0x610
  'ef', //               out dx, eax
  'c3', //               ret
].join('');

test('hypercall page: exact bytes', () => {
  const code = hypercallPageCode();
  assert.equal(Buffer.from(code).toString('hex'), EXPECTED);
  assert.equal(SIGNAL_PORT, 0x614, 'the expected bytes assume SIGNAL_PORT 0x614');
  assert.equal(HYPERCALL_PORT, 0x610, 'the expected bytes assume HYPERCALL_PORT 0x610');
  assert.deepEqual([...code.subarray(0, 4)], [0xf3, 0x0f, 0x1e, 0xfa], 'starts with ENDBR64 (Linux keeps IBT on only then)');
  assert.equal(HYPERCALL_SLOW_PATH_OFFSET, 0x1a);
  assert.equal(code[code.length - 1], 0xc3);
});

test('hypercall page: each call returns a fresh copy', () => {
  const a = hypercallPageCode();
  a.fill(0);
  assert.equal(Buffer.from(hypercallPageCode()).toString('hex'), EXPECTED);
});

test('hypercall page: register contract', () => {
  assert.deepEqual(HypercallRegisters, { control: 'rcx', input: 'r9', output: 'r8', result: 'rax', unmatchedSignalStatus: 'rcx' });
});

function objdumpAvailable(): boolean {
  try {
    execFileSync('objdump', ['--version'], { stdio: 'ignore' });
    return true;
  } catch {
    return false;
  }
}

test('hypercall page: objdump decodes the intended instructions', (t) => {
  if (!objdumpAvailable()) {
    t.skip('SKIPPED: objdump (binutils) is not installed, so the independent disassembly check cannot run');
    return;
  }
  const dir = mkdtempSync(join(tmpdir(), 'hypercall-page-'));
  try {
    const file = join(dir, 'page.bin');
    writeFileSync(file, hypercallPageCode());
    const listing = execFileSync('objdump', ['-D', '-b', 'binary', '-mi386:x86-64', '-M', 'intel', file], { encoding: 'utf8' });
    // Lines look like "   4:\t48 81 f9 5d 00 01 00 \tcmp    rcx,0x1005d".
    const instructions = listing
      .split('\n')
      .map((line) => /^\s*([0-9a-f]+):\t[0-9a-f ]+\t(.*)$/.exec(line))
      .filter((m): m is RegExpExecArray => m !== null)
      .map((m) => ({ offset: parseInt(m[1]!, 16), text: m[2]!.replace(/\s+/g, ' ').trim() }));
    assert.deepEqual(instructions, [
      { offset: 0x00, text: 'endbr64' },
      { offset: 0x04, text: 'cmp rcx,0x1005d' },
      { offset: 0x0b, text: 'jne 0x1a' },
      { offset: 0x0d, text: 'xor ecx,ecx' },
      { offset: 0x0f, text: 'mov eax,edx' },
      { offset: 0x11, text: 'mov edx,0x614' },
      { offset: 0x16, text: 'out dx,eax' },
      { offset: 0x17, text: 'mov eax,ecx' },
      { offset: 0x19, text: 'ret' },
      { offset: 0x1a, text: 'mov r9,rdx' },
      { offset: 0x1d, text: 'mov edx,0x610' },
      { offset: 0x22, text: 'out dx,eax' },
      { offset: 0x23, text: 'ret' },
    ]);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
