// A direct TAP-to-TAP relay in this process, without VMBus: every frame one TAP hands us
// is written to the other, with its virtio-net header's offloads (partial checksum, GSO)
// passed through untouched. It is the network benchmark's "own floor": the cost of moving
// frames through JavaScript and two TAPs, which the NetVSP path (guest -> VMBus -> NetVSP
// -> TAP) adds its work on top of. Frames are never copied in JS: the receiving backend's
// native buffer goes straight to the other TAP's writev (one iovec). Both directions are
// driven by one Poller; each wake-up reads a batch of frames (TapBackend's receiveBatch).
import { TapBackend } from '../src/backends/net/tap-backend.js';
import type { PacketOffload } from '../src/backends/net/net-backend.js';
import type { Poller } from '../src/sys/epoll.js';
import { IovecList } from '../src/sys/iovec.js';
import { addressOf } from '../src/sys/libc.js';

export interface TapRelayOptions {
  /** Drives both TAPs' reads; shared, not owned (stop it yourself after close()). */
  poller: Poller;
  /** Names for the two TAPs (kernel-chosen tapN when absent). */
  nameA?: string;
  nameB?: string;
  /** Frames read per wake-up before yielding to the event loop; default 256. */
  receiveBatch?: number;
}

export interface RelayDirectionStats {
  /** Frames written to the far TAP. */
  frames: number;
  bytes: number;
  /** Frames the far TAP had no room for (EAGAIN/ENOBUFS): dropped, as a NIC would. */
  busyDrops: number;
  /** Frames read with GSO metadata (more than one segment's worth passed through whole). */
  gsoFrames: number;
}

/** One direction: frames read from `from` are written to `to`. Keeps its own iovec so nothing is allocated per frame. */
class RelayDirection {
  readonly stats: RelayDirectionStats = { frames: 0, bytes: 0, busyDrops: 0, gsoFrames: 0 };
  private readonly iov = new IovecList(1);
  // The receive view a TapBackend lends is one object for the backend's life; its native
  // address is looked up once, not per frame.
  private lastView: Uint8Array | null = null;
  private lastAddress = 0;

  constructor(private readonly to: TapBackend) {}

  readonly forward = (frame: Uint8Array, length: number, offload: PacketOffload): void => {
    if (frame !== this.lastView) {
      this.lastView = frame;
      this.lastAddress = Number(addressOf(frame));
    }
    const iov = this.iov;
    iov.clear();
    iov.push(this.lastAddress, length);
    if (offload.gso !== 'none') this.stats.gsoFrames++;
    if (this.to.send(iov, offload)) {
      this.stats.frames++;
      this.stats.bytes += length;
    } else this.stats.busyDrops++;
  };
}

export class TapRelay {
  readonly a: TapBackend;
  readonly b: TapBackend;
  private readonly aToB: RelayDirection;
  private readonly bToA: RelayDirection;
  private closed = false;

  private constructor(a: TapBackend, b: TapBackend) {
    this.a = a;
    this.b = b;
    this.aToB = new RelayDirection(b);
    this.bToA = new RelayDirection(a);
    a.onReceive(this.aToB.forward);
    b.onReceive(this.bToA.forward);
  }

  /** Creates both TAPs (in this process's namespace; move them with `ip link set ... netns`) and starts relaying. */
  static open(options: TapRelayOptions): TapRelay {
    const receiveBatch = options.receiveBatch ?? 256;
    const a = TapBackend.open({ name: options.nameA, poller: options.poller, receiveBatch });
    let b: TapBackend;
    try {
      b = TapBackend.open({ name: options.nameB, poller: options.poller, receiveBatch });
    } catch (e) {
      a.close();
      throw e;
    }
    return new TapRelay(a, b);
  }

  get stats(): { aToB: RelayDirectionStats; bToA: RelayDirectionStats } {
    return { aToB: this.aToB.stats, bToA: this.bToA.stats };
  }

  /** Closes both TAPs (the kernel removes them from whichever namespaces hold them). Idempotent. */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    try {
      this.a.close();
    } finally {
      this.b.close();
    }
  }
}
