// The libc layer: eventfd counts and coalescing, epoll's blocking and asynchronous waits,
// the Poller's handler lifecycle, memfd mappings, and errno surfacing as typed SysErrors.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import v8 from 'node:v8';
import vm from 'node:vm';
import os from 'node:os';
import { describe, test } from 'node:test';
import fc from 'fast-check';
import { Epoll, EPOLLIN, IN_THREAD_WAIT_MS, Poller, ReadyTokens } from '../src/sys/epoll.js';
import { Errno, SysError } from '../src/sys/errors.js';
import { EventFd } from '../src/sys/eventfd.js';
import { closeFd } from '../src/sys/fd.js';
import { raw } from '../src/sys/libc.js';
import { mapAnonymousOwned, mapShared, mapSharedAt, memfdCreate, munmap, reserveAddressSpace, viewOf } from '../src/sys/memfd.js';
import { IovecList } from '../src/sys/iovec.js';

/** An fd number no test ever opens. */
const NEVER_OPEN_FD = 987_654;

function assertSysError(fn: () => unknown, call: string, code: string): void {
  assert.throws(fn, (e: unknown) => {
    assert.ok(e instanceof SysError, `expected SysError, got ${String(e)}`);
    assert.equal(e.name, 'SysError');
    assert.equal(e.call, call);
    assert.equal(e.code, code);
    assert.equal(e.errno, (os.constants.errno as Record<string, number>)[code]);
    assert.match(e.message, new RegExp(`^${call.replace(/[()]/g, '\\$&')} failed: ${code} \\(errno ${e.errno}\\)$`));
    return true;
  });
}

/** Counts this process's open anonymous inodes of one kind ('eventfd', 'eventpoll'). */
function anonInodes(kind: string): number {
  let n = 0;
  for (const name of fs.readdirSync('/proc/self/fd')) {
    try {
      if (fs.readlinkSync(`/proc/self/fd/${name}`) === `anon_inode:[${kind}]`) n++;
    } catch {
      // the fd readdir itself used is gone by now
    }
  }
  return n;
}

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

async function until(condition: () => boolean, what: string, timeoutMs = 2000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!condition()) {
    if (Date.now() > deadline) assert.fail(`timed out waiting for ${what}`);
    await sleep(2);
  }
}

describe('SysError', () => {
  test('carries call, errno and the errno name', () => {
    const e = new SysError('frobnicate', Errno.EAGAIN);
    assert.ok(e instanceof Error);
    assert.equal(e.name, 'SysError');
    assert.equal(e.call, 'frobnicate');
    assert.equal(e.errno, Errno.EAGAIN);
    assert.equal(e.code, 'EAGAIN');
    assert.equal(e.message, `frobnicate failed: EAGAIN (errno ${Errno.EAGAIN})`);
  });

  test('numbers with two names get the name Node reports', () => {
    assert.equal(new SysError('x', Errno.EWOULDBLOCK).code, 'EAGAIN');
    assert.equal(new SysError('x', Errno.EOPNOTSUPP).code, 'ENOTSUP');
  });

  test('an unknown errno gets a synthetic code', () => {
    const e = new SysError('x', 99_999);
    assert.equal(e.code, 'E99999');
    assert.equal(e.errno, 99_999);
  });

  test('every errno Node knows maps back to its own name', () => {
    for (const [name, value] of Object.entries(os.constants.errno)) {
      const code = new SysError('x', value).code;
      // Some numbers have two names (EWOULDBLOCK = EAGAIN): the name must at least map back to the number.
      assert.equal((os.constants.errno as Record<string, number>)[code], value, `${name} -> ${code}`);
    }
  });

  test('closeFd on bad fds throws EBADF from close', () => {
    assertSysError(() => closeFd(-1), 'close', 'EBADF');
    assertSysError(() => closeFd(NEVER_OPEN_FD), 'close', 'EBADF');
  });

  test('closeFd on an fd closed already throws EBADF', () => {
    const fd = memfdCreate('sys-test-close', 4096);
    closeFd(fd);
    assertSysError(() => closeFd(fd), 'close', 'EBADF');
  });

  test('eventfd wrappers on a bad fd throw typed errors', () => {
    const bad = EventFd.fromFd(NEVER_OPEN_FD);
    assertSysError(() => bad.signal(), 'write(eventfd)', 'EBADF');
    assertSysError(() => bad.drain(), 'read(eventfd)', 'EBADF');
    assertSysError(() => bad.close(), 'close', 'EBADF');
    // A close that failed still counts as closed: no second attempt on a possibly reused number.
    bad.close();
  });

  test('epoll_ctl failures are typed', () => {
    const ep = new Epoll();
    try {
      assertSysError(() => ep.add(NEVER_OPEN_FD, 1), 'epoll_ctl(ADD)', 'EBADF');
      const e = EventFd.create();
      try {
        assertSysError(() => ep.remove(e.fd), 'epoll_ctl(DEL)', 'ENOENT');
        ep.add(e.fd, 1);
        assertSysError(() => ep.add(e.fd, 2), 'epoll_ctl(ADD)', 'EEXIST');
        ep.remove(e.fd);
      } finally {
        e.close();
      }
    } finally {
      ep.close();
    }
  });

  test('memfd and mmap failures are typed', () => {
    assertSysError(() => memfdCreate('sys-test-negative', -1), 'ftruncate', 'EINVAL');
    assertSysError(() => mapShared(-1, 4096), 'mmap', 'EBADF');
    assertSysError(() => munmap(1n, 4096), 'munmap', 'EINVAL');
  });
});

describe('EventFd', () => {
  test('drain on an empty eventfd returns 0n', () => {
    const e = EventFd.create();
    try {
      assert.equal(e.drain(), 0n);
      assert.equal(e.drain(), 0n);
    } finally {
      e.close();
    }
  });

  test('signals coalesce: drain returns the count and empties it', () => {
    fc.assert(
      fc.property(fc.array(fc.integer({ min: 0, max: 50 }), { minLength: 1, maxLength: 8 }), (bursts) => {
        const e = EventFd.create();
        try {
          for (const n of bursts) {
            for (let i = 0; i < n; i++) e.signal();
            assert.equal(e.drain(), BigInt(n));
            assert.equal(e.drain(), 0n);
          }
        } finally {
          e.close();
        }
      }),
      { numRuns: 50 },
    );
  });

  test('drain returns a bigint even for counts beyond 2^53', () => {
    const e = EventFd.create();
    try {
      const big = (1n << 60n) + 3n;
      assert.equal(raw.write_u64(e.fd, [big], 8), 8);
      e.signal();
      const n = e.drain();
      assert.equal(typeof n, 'bigint');
      assert.equal(n, big + 1n);
    } finally {
      e.close();
    }
  });

  test('fromFd wraps the same counter', () => {
    const a = EventFd.create();
    const b = EventFd.fromFd(a.fd);
    try {
      assert.equal(b.fd, a.fd);
      a.signal();
      b.signal();
      assert.equal(b.drain(), 2n);
      assert.equal(a.drain(), 0n);
    } finally {
      a.close();
    }
  });

  test('close is idempotent and releases the fd', () => {
    const before = anonInodes('eventfd');
    const e = EventFd.create();
    assert.equal(anonInodes('eventfd'), before + 1);
    e.close();
    e.close();
    assert.equal(anonInodes('eventfd'), before);
  });
});

describe('Epoll', () => {
  test('a blocking wait with nothing ready times out with no tokens', () => {
    const ep = new Epoll();
    const e = EventFd.create();
    try {
      ep.add(e.fd, 5);
      const start = process.hrtime.bigint();
      assert.deepEqual(ep.wait(30), []);
      const ms = Number(process.hrtime.bigint() - start) / 1e6;
      assert.ok(ms >= 25, `returned after ${ms} ms`);
      assert.deepEqual(ep.wait(0), []);
    } finally {
      e.close();
      ep.close();
    }
  });

  test('waitInto writes the ready tokens in place and counts them, up to its capacity', () => {
    const ep = new Epoll();
    const fds = [EventFd.create(), EventFd.create(), EventFd.create()];
    try {
      fds.forEach((e, i) => ep.add(e.fd, 2 ** 40 + i, EPOLLIN));
      const ready = new ReadyTokens(2);
      const storage = ready.tokens;
      assert.equal(ep.waitInto(0, ready), 0);
      assert.equal(ready.count, 0);
      for (const e of fds) e.signal();
      // Three ready, room for two: the third waits for the next call (level-triggered).
      assert.equal(ep.waitInto(1000, ready), 2);
      assert.equal(ready.tokens, storage, 'the same storage, refilled');
      const seen = new Set(ready.toArray());
      fds[0]!.drain();
      fds[1]!.drain();
      fds[2]!.drain();
      assert.equal(ep.waitInto(0, ready), 0);
      for (const token of seen) assert.ok(token >= 2 ** 40 && token < 2 ** 40 + 3, 'tokens above 2^32 survive');
      assert.equal(seen.size, 2);
      assert.throws(() => new ReadyTokens(0), RangeError);
    } finally {
      for (const e of fds) e.close();
      ep.close();
    }
  });

  test('wait returns the tokens of ready fds, level-triggered, into the given array', () => {
    const ep = new Epoll();
    const fds = [EventFd.create(), EventFd.create(), EventFd.create()];
    try {
      fds.forEach((e, i) => ep.add(e.fd, 100 + i, EPOLLIN));
      fds[0]!.signal();
      fds[2]!.signal();
      const out = [42, 43, 44, 45];
      const tokens = ep.wait(1000, out);
      assert.equal(tokens, out);
      assert.deepEqual([...tokens].sort(), [100, 102]);
      // Not drained: still ready.
      assert.deepEqual([...ep.wait(0)].sort(), [100, 102]);
      assert.equal(fds[0]!.drain(), 1n);
      assert.deepEqual(ep.wait(0), [102]);
      fds[2]!.drain();
      assert.deepEqual(ep.wait(0, out), []);
      assert.equal(out.length, 0);
    } finally {
      for (const e of fds) e.close();
      ep.close();
    }
  });

  test('tokens round-trip through the 64-bit data field', () => {
    const ep = new Epoll();
    const e = EventFd.create();
    try {
      for (const token of [0, 1, 0xffffffff, 0x1_0000_0000, Number.MAX_SAFE_INTEGER]) {
        ep.add(e.fd, token);
        e.signal();
        assert.deepEqual(ep.wait(1000), [token]);
        e.drain();
        ep.remove(e.fd);
      }
    } finally {
      e.close();
      ep.close();
    }
  });

  test('wait returns at most maxEvents tokens', () => {
    const ep = new Epoll(2);
    const fds = [EventFd.create(), EventFd.create(), EventFd.create()];
    try {
      fds.forEach((e, i) => {
        ep.add(e.fd, i + 1);
        e.signal();
      });
      assert.equal(ep.wait(1000).length, 2);
    } finally {
      for (const e of fds) e.close();
      ep.close();
    }
  });

  test('a removed fd is no longer reported', () => {
    const ep = new Epoll();
    const e = EventFd.create();
    try {
      ep.add(e.fd, 9);
      e.signal();
      ep.remove(e.fd);
      assert.deepEqual(ep.wait(0), []);
    } finally {
      e.close();
      ep.close();
    }
  });

  test('waitAsync keeps the event loop free and reports ready tokens', async () => {
    const ep = new Epoll();
    const e = EventFd.create();
    try {
      ep.add(e.fd, 77);
      let timerFired = false;
      const result = new Promise<number[]>((resolve, reject) => {
        ep.waitAsync(2000, (error, ready) => (error ? reject(error) : resolve(ready.toArray())));
      });
      setTimeout(() => {
        timerFired = true;
        e.signal();
      }, 20);
      assert.deepEqual(await result, [77]);
      assert.ok(timerFired, 'the event loop ran while waiting');
      const timedOut = await new Promise<number[]>((resolve, reject) => {
        e.drain();
        ep.waitAsync(10, (error, ready) => (error ? reject(error) : resolve(ready.toArray())));
      });
      assert.deepEqual(timedOut, []);
    } finally {
      e.close();
      ep.close();
    }
  });

  test('close is idempotent and releases the fd', () => {
    const before = anonInodes('eventpoll');
    const ep = new Epoll();
    assert.equal(anonInodes('eventpoll'), before + 1);
    ep.close();
    ep.close();
    assert.equal(anonInodes('eventpoll'), before);
  });
});

describe('Poller', () => {
  // A thread that serves one VM waits for its fds itself (one thread switch per wake-up
  // instead of two through the libuv pool). Only one Poller per thread may: two would
  // take turns blocking and delay each other. Timers must still run, and add() must not
  // call a handler before it returns.
  test('waiting in the thread: handlers run, timers too; a second such Poller waits on the pool; stop frees the thread', async () => {
    const a = EventFd.create();
    const b = EventFd.create();
    const first = new Poller((e) => assert.fail(String(e)), { waitInThreadMs: IN_THREAD_WAIT_MS });
    const second = new Poller((e) => assert.fail(String(e)), { waitInThreadMs: IN_THREAD_WAIT_MS });
    try {
      assert.equal(first.waitsInThread, true);
      assert.equal(second.waitsInThread, false, 'one Poller per thread waits in it');
      let aCount = 0n;
      let bCount = 0n;
      a.signal();
      first.add(a.fd, () => { aCount += a.drain(); });
      assert.equal(aCount, 0n, 'add() never calls the handler itself');
      await until(() => aCount === 1n, 'the in-thread handler');
      second.add(b.fd, () => { bCount += b.drain(); });
      b.signal();
      await until(() => bCount === 1n, 'the pool handler');
      // Ping-pong through both: timers (until's sleeps) keep running meanwhile.
      for (let i = 0; i < 20; i++) {
        a.signal();
        await until(() => aCount === BigInt(2 + i), `round ${i}`);
      }
      assert.ok(first.stats.threadWakeups >= 21);
      assert.equal(first.stats.poolWakeups, 0);
    } finally {
      await first.stop();
      await second.stop();
    }
    const third = new Poller(() => {}, { waitInThreadMs: IN_THREAD_WAIT_MS });
    assert.equal(third.waitsInThread, true, 'stop() gave the thread back');
    await third.stop();
    a.close();
    b.close();
  });

  // Work queued for the next turn by something other than the Poller's handlers (the
  // storvsc request engine publishes its rings from a setImmediate) must not wait out an
  // in-thread wait: 50 ms once the thread has been idle a while.
  test('keepAwake: the next in-thread turn does not block, so a chain of immediates is not held up', async () => {
    const poller = new Poller((e) => assert.fail(String(e)), { waitInThreadMs: IN_THREAD_WAIT_MS });
    const e = EventFd.create();
    try {
      poller.add(e.fd, () => e.drain());
      await new Promise((r) => setTimeout(r, 150)); // idle: the turns now block up to 50 ms
      const hops = (count: number, awake: boolean) =>
        new Promise<number>((resolve) => {
          const start = performance.now();
          let left = count;
          const hop = (): void => {
            if (--left === 0) return resolve(performance.now() - start);
            setImmediate(hop);
            if (awake) poller.keepAwake();
          };
          setImmediate(hop);
          if (awake) poller.keepAwake();
        });
      const blocked = await hops(10, false);
      assert.ok(blocked > 100, `without keepAwake the idle thread's waits hold each hop up (${blocked.toFixed(1)} ms for 10)`);
      const awake = await hops(20, true);
      assert.ok(awake < 100, `with keepAwake 20 hops take ${awake.toFixed(1)} ms`);
    } finally {
      await poller.stop();
      e.close();
    }
  });

  test('calls handlers for readable fds; remove() stops them; stop() resolves and closes', async () => {
    const epollsBefore = anonInodes('eventpoll');
    const eventfdsBefore = anonInodes('eventfd');
    const poller = new Poller((e) => assert.fail(`unexpected poller error ${String(e)}`));
    const a = EventFd.create();
    const b = EventFd.create();
    try {
      assert.equal(anonInodes('eventpoll'), epollsBefore + 1);
      let aCount = 0n;
      let bCount = 0n;
      const ta = poller.add(a.fd, () => { aCount += a.drain(); });
      const tb = poller.add(b.fd, () => { bCount += b.drain(); });
      assert.notEqual(ta, tb);

      a.signal();
      await until(() => aCount === 1n, 'handler a');
      b.signal();
      b.signal();
      await until(() => bCount >= 1n, 'handler b');
      await until(() => bCount === 2n, 'handler b to see both signals');

      poller.remove(ta);
      poller.remove(ta); // unknown token: ignored
      poller.remove(12345);
      a.signal();
      b.signal();
      await until(() => bCount === 3n, 'handler b after removing a');
      await sleep(30);
      assert.equal(aCount, 1n, 'a removed handler is never called');
      assert.equal(a.drain(), 1n, 'nobody consumed the removed fd');
    } finally {
      await poller.stop();
      a.close();
      b.close();
    }
    assert.equal(anonInodes('eventpoll'), epollsBefore);
    assert.equal(anonInodes('eventfd'), eventfdsBefore);
    await poller.stop(); // a second stop resolves at once
  });

  test('stop() before any fd was added resolves and closes', async () => {
    const epollsBefore = anonInodes('eventpoll');
    const poller = new Poller();
    assert.equal(anonInodes('eventpoll'), epollsBefore + 1);
    await poller.stop();
    assert.equal(anonInodes('eventpoll'), epollsBefore);
  });

  test('a throwing handler goes to onError and the poller keeps running', async () => {
    const errors: unknown[] = [];
    const poller = new Poller((e) => errors.push(e));
    const e = EventFd.create();
    try {
      let calls = 0;
      poller.add(e.fd, () => {
        calls++;
        e.drain();
        if (calls === 1) throw new Error('boom');
      });
      e.signal();
      await until(() => errors.length === 1, 'onError');
      assert.equal((errors[0] as Error).message, 'boom');
      e.signal();
      await until(() => calls === 2, 'the second call');
      assert.equal(errors.length, 1);
    } finally {
      await poller.stop();
      e.close();
    }
  });

  test('an fd made ready by a handler is served in the same wake-up, without another trip through the pool', async () => {
    const poller = new Poller((e) => assert.fail(String(e)));
    const a = EventFd.create();
    const b = EventFd.create();
    try {
      const order: string[] = [];
      poller.add(a.fd, () => {
        a.drain();
        order.push('a');
        b.signal(); // as a handler that completes work and rings the next doorbell
      });
      poller.add(b.fd, () => {
        b.drain();
        order.push('b');
      });
      await sleep(5);
      const before = { ...poller.stats };
      a.signal();
      await until(() => order.length === 2, 'both handlers');
      assert.deepEqual(order, ['a', 'b']);
      assert.equal(poller.stats.poolWakeups - before.poolWakeups, 1, 'one wake-up served both');
      assert.equal(poller.stats.eagerRounds - before.eagerRounds, 1);
    } finally {
      await poller.stop();
      a.close();
      b.close();
    }
  });

  test('a handler that keeps its own fd ready does not hold the event loop', async () => {
    const poller = new Poller((e) => assert.fail(String(e)));
    const a = EventFd.create();
    try {
      let calls = 0;
      let stop = false;
      poller.add(a.fd, () => {
        a.drain();
        calls++;
        if (!stop) a.signal();
      });
      a.signal();
      // Timers still run while the fd is ready on every check.
      await sleep(20);
      stop = true;
      assert.ok(calls > 4, `${calls} calls`);
      assert.ok(poller.stats.poolWakeups >= Math.floor(calls / 5), 'at most five calls per wake-up');
    } finally {
      await poller.stop();
      a.close();
    }
  });

  test('many signals across many fds each reach their handler', async () => {
    const poller = new Poller((e) => assert.fail(String(e)));
    const fds = Array.from({ length: 8 }, () => EventFd.create());
    const counts = fds.map(() => 0n);
    try {
      fds.forEach((e, i) => poller.add(e.fd, () => { counts[i]! += e.drain(); }));
      const expected = fds.map(() => 0n);
      for (let round = 0; round < 20; round++) {
        const i = (round * 5) % fds.length;
        fds[i]!.signal();
        expected[i]!++;
        if (round % 4 === 0) await sleep(1);
      }
      await until(() => counts.every((c, i) => c === expected[i]), 'all handlers');
    } finally {
      await poller.stop();
      for (const e of fds) e.close();
    }
  });
});

describe('memfd mappings', () => {
  test('two mappings of one memfd share pages; a fixed mapping lands in a reservation', () => {
    const size = 4 * 4096;
    const fd = memfdCreate('sys-test-shared', size);
    try {
      const a = mapShared(fd, size);
      const b = mapShared(fd, 4096, 2 * 4096);
      assert.notEqual(a, b);
      const va = new Uint8Array(viewOf(a, size));
      const vb = new Uint8Array(viewOf(b, 4096));
      assert.ok(va.every((x) => x === 0), 'a new memfd is zeroed');
      va[2 * 4096 + 7] = 0x5a;
      assert.equal(vb[7], 0x5a);
      vb[4095] = 0xa5;
      assert.equal(va[3 * 4096 - 1], 0xa5);

      const reservation = reserveAddressSpace(2 * 4096);
      mapSharedAt(reservation + 4096n, fd, 4096, 2 * 4096);
      const vr = new Uint8Array(viewOf(reservation + 4096n, 4096));
      assert.equal(vr[7], 0x5a);
      assert.equal(vr[4095], 0xa5);
      // These mappings are never touched again; unmapping them is safe.
      munmap(b, 4096);
      munmap(reservation, 2 * 4096);
    } finally {
      closeFd(fd);
    }
  });

  test('owned native memory is unmapped once its owner is collected (a hot-removed device gives its pages back)', async () => {
    v8.setFlagsFromString('--expose-gc');
    const gc = vm.runInNewContext('gc') as () => void;
    /** Whether any mapping of this process covers address. */
    const mapped = (address: bigint) =>
      fs.readFileSync('/proc/self/maps', 'utf8').split('\n').some((line) => {
        const m = /^([0-9a-f]+)-([0-9a-f]+) /.exec(line);
        return m !== null && BigInt(`0x${m[1]}`) <= address && address < BigInt(`0x${m[2]}`);
      });
    let kept: IovecList | null = new IovecList(4);
    const made = (): bigint[] => {
      // Owners that nothing references once this returns.
      const list = new IovecList(65536);
      list.push(Number(list.address), 16);
      const owner = {};
      return [list.address, mapAnonymousOwned(owner, 1 << 20)];
    };
    const dropped = made();
    for (const address of dropped) assert.ok(mapped(address), 'mapped while its owner lives');
    for (let i = 0; i < 100 && dropped.some(mapped); i++) {
      gc();
      await new Promise((resolve) => setTimeout(resolve, 10));
    }
    for (const address of dropped) assert.ok(!mapped(address), `0x${address.toString(16)} unmapped after its owner was collected`);
    assert.ok(mapped(kept.address), 'a list still referenced keeps its memory');
    kept.push(1, 2);
    assert.equal(kept.lengthAt(0), 2);
    kept = null;
  });
});
