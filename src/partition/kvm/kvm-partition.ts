// The KVM partition: a VM on /dev/kvm that presents the Hyper-V interface. Guest RAM is a
// memfd mapped into one KVM memory slot; each vCPU runs in its own worker thread
// (vcpu-worker.ts); the main thread owns the partition-wide Hyper-V state (the SynIC model,
// the hypercall page, the reference TSC page) and answers the vCPUs' requests for it.
//
// Data path: a guest's HvSignalEvent is an OUT to SIGNAL_PORT that an ioeventfd with the
// connection id as datamatch turns into an eventfd signal inside the kernel; host-to-guest
// interrupts are KVM_SIGNAL_MSI to the vCPU the guest chose.
import { EventEmitter } from 'node:events';
import { Worker } from 'node:worker_threads';
import { GuestMemory } from '../../memory/guest-memory.js';
import { Synic } from '../../hyperv/synic.js';
import { HypervEmulator } from '../../hyperv/hv-emulator.js';
import { buildGuestCpuid } from '../../hyperv/hv-cpuid.js';
import { describeGuestCrash } from '../../hyperv/guest-crash.js';
import { KvmSystem } from '../../kvm/kvm-system.js';
import type { KvmVm } from '../../kvm/kvm-vm.js';
import { KvmCap, MsrExitReason } from '../../kvm/kvm-constants.js';
import { KvmRunArea, kickVcpu } from '../../kvm/kvm-vcpu.js';
import { installKickHandler } from '../../sys/thread-signal.js';
import { EventFd } from '../../sys/eventfd.js';
import type { Poller } from '../../sys/epoll.js';
import { LAPIC_BASE, RAM_BELOW_4G_MAX, SIGNAL_PORT } from '../../x86/platform-ports.js';
import { KVM_IDENTITY_MAP_GPA, KVM_TSS_GPA } from '../../x86/guest-layout.js';
import { Uart16550 } from '../../x86/uart-16550.js';
import type { Partition, PostMessageHandler } from '../partition.js';
import { ConsoleRing } from './console-ring.js';
import { VcpuExitStats } from './vcpu-exit-stats.js';
import { VcpuMailbox, VcpuRequestOp, type VcpuAnswer, type VcpuRequest } from './vcpu-mailbox.js';
import { CONTROL_STOP, type VcpuBootState, type VcpuMessage, type VcpuStopReason, type VcpuWorkerData } from './vcpu-worker-data.js';

export interface KvmPartitionOptions {
  memoryBytes: number;
  vpCount: number;
  poller: Poller;
  kvmPath?: string;
  /** In-guest test stubs end with HLT; a real guest's idle HLT never reaches userspace. */
  stopOnHalt?: boolean;
  log?: (message: string) => void;
}

export interface KvmPartitionEvents {
  /** Bytes the guest wrote to its serial console. */
  console: [Uint8Array];
  'test-report': [{ vp: number; value: number }];
  /** The VM stopped: the first vCPU to stop decides why; the others are stopped with it. */
  stopped: [{ reason: VcpuStopReason; detail: string; vp: number }];
}

/** Hyper-V's synthetic MSR range: every access exits to userspace through the MSR filter. */
const SYNTHETIC_MSRS = { base: 0x40000000, count: 0x200 };
const SECOND = 10_000_000n; // reference time units (100 ns) per second

export class KvmPartition extends EventEmitter<KvmPartitionEvents> implements Partition {
  readonly memory: GuestMemory;
  readonly synic: Synic;
  readonly hv: HypervEmulator;
  readonly vpCount: number;
  readonly stats: VcpuExitStats;
  readonly tscHz: number;
  readonly uartState = Uart16550.createState();
  private readonly system: KvmSystem;
  private readonly vm: KvmVm;
  private readonly vcpuFds: number[] = [];
  private readonly runAreaSize: number;
  private readonly mailbox: VcpuMailbox;
  private readonly doorbell = EventFd.create();
  private readonly consoleBell = EventFd.create();
  private readonly consoleRings: ConsoleRing[];
  private readonly control = new Int32Array(new SharedArrayBuffer(16));
  private readonly signals = new Map<number, { fd: number; eventfd: EventFd }>();
  private readonly workers: Worker[] = [];
  private readonly threadIds: (number | null)[];
  private readonly pollTokens: number[] = [];
  private readonly epochNs: bigint;
  private readonly log: (message: string) => void;
  private stopResult: { reason: VcpuStopReason; detail: string; vp: number } | null = null;
  private closed = false;

  constructor(private readonly options: KvmPartitionOptions) {
    super();
    this.log = options.log ?? (() => {});
    this.vpCount = options.vpCount;
    if (options.memoryBytes > RAM_BELOW_4G_MAX) {
      throw new Error(`the KVM partition supports up to ${RAM_BELOW_4G_MAX / 2 ** 20} MiB of RAM (one range below the 4 GiB MMIO hole); asked for ${options.memoryBytes / 2 ** 20} MiB`);
    }
    this.system = KvmSystem.open(options.kvmPath);
    this.vm = this.system.createVm();
    this.runAreaSize = this.system.vcpuMmapSize();
    this.memory = GuestMemory.create(options.memoryBytes);
    this.vm.setTssAddr(KVM_TSS_GPA);
    this.vm.setIdentityMapAddr(KVM_IDENTITY_MAP_GPA);
    this.vm.createIrqchip();
    this.vm.setUserMemoryRegion(0, 0, options.memoryBytes, this.memory.base);
    this.vm.enableUserSpaceMsr(MsrExitReason.Filter | MsrExitReason.Inval | MsrExitReason.Unknown);
    this.vm.setMsrFilter([{ base: SYNTHETIC_MSRS.base, count: SYNTHETIC_MSRS.count, allowRead: false, allowWrite: false }]);
    if (this.system.checkExtension(KvmCap.SyncRegs) === 0) throw new Error('this KVM lacks KVM_CAP_SYNC_REGS, which enlighten needs');

    this.synic = new Synic({ memory: this.memory, vpCount: this.vpCount, inject: (vp, vector) => this.inject(vp, vector), log: this.log });
    // The guest's TSC starts at 0 when the first vCPU is created, so the reference clock's
    // epoch is that moment: the TSC page (scale only, offset 0) and referenceTime() agree.
    this.epochNs = process.hrtime.bigint();
    const supported = this.system.supportedCpuid();
    const cpuids = [];
    for (let vp = 0; vp < this.vpCount; vp++) {
      this.vcpuFds.push(this.vm.createVcpu(vp));
      cpuids.push(buildGuestCpuid(supported, { vpIndex: vp, vpCount: this.vpCount }));
    }
    this.cpuids = cpuids;
    this.tscHz = this.vm.tscKhz(this.vcpuFds[0]!) * 1000;
    this.hv = new HypervEmulator({
      memory: this.memory,
      synic: this.synic,
      vpCount: this.vpCount,
      tscHz: this.tscHz,
      referenceTime: () => this.referenceTime(),
      guestTsc: () => this.guestTsc(),
      postMessage: () => 0,
      signalEvent: (connectionId) => this.signalFromSlowPath(connectionId),
      onCrash: (crash) => {
        // Linux reports a panic here before it resets (panic=-1) or hangs: remember it, so
        // the reset that follows ends the VM as a crash instead of a reboot.
        this.crash = describeGuestCrash(crash);
        this.log(this.crash);
      },
      log: this.log,
    });
    this.hv.setPostMessageHandler(null);
    this.mailbox = new VcpuMailbox(this.vpCount);
    this.stats = new VcpuExitStats(this.vpCount);
    this.consoleRings = Array.from({ length: this.vpCount }, () => new ConsoleRing());
    this.threadIds = new Array(this.vpCount).fill(null);
    this.pollTokens.push(options.poller.add(this.doorbell.fd, () => this.onDoorbell()));
    this.pollTokens.push(options.poller.add(this.consoleBell.fd, () => this.onConsole()));
  }

  private readonly cpuids: ReturnType<typeof buildGuestCpuid>[];

  setPostMessageHandler(handler: PostMessageHandler | null): void {
    this.hv.setPostMessageHandler(handler);
  }

  registerSignal(connectionId: number, target: EventFd): void {
    this.unregisterSignal(connectionId);
    this.vm.addIoeventfd({ port: SIGNAL_PORT, length: 4, datamatch: BigInt(connectionId >>> 0), fd: target.fd });
    this.signals.set(connectionId, { fd: target.fd, eventfd: target });
  }

  unregisterSignal(connectionId: number): void {
    const entry = this.signals.get(connectionId);
    if (!entry) return;
    this.vm.removeIoeventfd({ port: SIGNAL_PORT, length: 4, datamatch: BigInt(connectionId >>> 0), fd: entry.fd });
    this.signals.delete(connectionId);
  }

  /** The guest's TSC now, extrapolated from vCPU 0's reading at start (before that: from the epoch). */
  private guestTsc(): bigint {
    const sample = this.tscSample ?? { tsc: 0n, atNs: this.epochNs };
    return sample.tsc + ((process.hrtime.bigint() - sample.atNs) * BigInt(this.tscHz)) / 1_000_000_000n;
  }

  private tscSample: { tsc: bigint; atNs: bigint } | null = null;
  /** What the guest reported through the Hyper-V crash MSRs, if it panicked. */
  crash: string | null = null;

  referenceTime(): bigint {
    return ((process.hrtime.bigint() - this.epochNs) * SECOND) / 1_000_000_000n;
  }

  /**
   * Starts every vCPU. With one state, the bootstrap processor (vCPU 0) enters there and the
   * others wait for INIT/SIPI as on real hardware; with a list, each vCPU that has a state
   * starts running at once (in-guest test stubs on several vCPUs).
   */
  start(boot: VcpuBootState | (VcpuBootState | null)[]): void {
    const boots = Array.isArray(boot) ? boot : [boot];
    if (this.workers.length > 0) throw new Error('the partition is already running');
    installKickHandler();
    for (let vp = 0; vp < this.vpCount; vp++) {
      const data: VcpuWorkerData = {
        vp,
        vcpuFd: this.vcpuFds[vp]!,
        vmFd: this.vm.fd,
        runAreaSize: this.runAreaSize,
        cpuid: this.cpuids[vp]!,
        boot: boots[vp] ?? null,
        mailbox: this.mailbox.buffer,
        doorbellFd: this.doorbell.fd,
        stats: this.stats.buffer,
        control: this.control.buffer as SharedArrayBuffer,
        uartState: this.uartState,
        console: this.consoleRings[vp]!.buffer,
        consoleFd: this.consoleBell.fd,
        stopOnHalt: this.options.stopOnHalt ?? false,
      };
      const worker = new Worker(new URL('./vcpu-worker.js', import.meta.url), { workerData: data });
      worker.on('message', (message: VcpuMessage) => this.onVcpuMessage(message));
      worker.on('error', (e) => this.onStopped({ vp, reason: 'crash', detail: `vCPU ${vp} thread failed: ${e.stack ?? e}` }));
      this.workers.push(worker);
    }
  }

  /** Resolves once the VM has stopped by itself (poweroff, reboot, fault) with why. */
  waitForStop(): Promise<{ reason: VcpuStopReason; detail: string; vp: number }> {
    if (this.stopResult) return Promise.resolve(this.stopResult);
    return new Promise((resolve) => this.once('stopped', resolve));
  }

  /** Stops every vCPU and waits for their threads to end. Safe to call twice. */
  async stop(): Promise<void> {
    Atomics.store(this.control, CONTROL_STOP, 1);
    const exits = this.workers.map((w) => new Promise<void>((resolve) => {
      if (w.threadId === -1) resolve();
      else w.once('exit', () => resolve());
    }));
    // A vCPU inside KVM_RUN only returns when kicked: immediate_exit plus a signal to its
    // thread. Keep kicking until every thread is gone (a kick can land before KVM_RUN).
    const kick = () => {
      for (let vp = 0; vp < this.workers.length; vp++) {
        const tid = this.threadIds[vp];
        if (tid !== null && tid !== undefined) kickVcpu(this.runAreas[vp] ??= KvmRunArea.map(this.vcpuFds[vp]!, this.runAreaSize), tid);
      }
      // A vCPU waiting for an answer from us must get one, or it never sees the stop flag.
      this.onDoorbell();
    };
    kick();
    const timer = setInterval(kick, 20);
    let giveUp: NodeJS.Timeout | undefined;
    try {
      await Promise.race([Promise.all(exits), new Promise((resolve) => (giveUp = setTimeout(resolve, 5000)))]);
    } finally {
      clearInterval(timer);
      clearTimeout(giveUp);
    }
    for (const w of this.workers) await w.terminate();
    this.onConsole();
  }

  private readonly runAreas: KvmRunArea[] = [];

  close(): void {
    if (this.closed) return;
    this.closed = true;
    for (const token of this.pollTokens) this.options.poller.remove(token);
    for (const id of [...this.signals.keys()]) this.unregisterSignal(id);
    // The VM, vCPU and eventfd descriptors stay open until the process ends if a vCPU
    // thread could not be stopped: closing them could let it act on a reused fd number.
    if (this.workers.every((w) => w.threadId === -1)) {
      this.vm.close(); // and the vCPU descriptors it created
      this.system.close();
    }
  }

  /** Drives an IOAPIC input line (the UART's IRQ). */
  irqLine(irq: number, level: boolean): void {
    this.vm.irqLine(irq, level);
  }

  private inject(vp: number, vector: number): void {
    // Fixed delivery, edge, physical destination = the vCPU's APIC ID (its index).
    this.vm.signalMsi((LAPIC_BASE | (vp << 12)) >>> 0, 0, vector);
  }

  private signalFromSlowPath(connectionId: number): boolean {
    const entry = this.signals.get(connectionId);
    if (!entry) return false;
    entry.eventfd.signal();
    return true;
  }

  private onDoorbell(): void {
    this.doorbell.drain();
    this.mailbox.serve((request) => this.answer(request));
  }

  private answer(request: VcpuRequest): VcpuAnswer {
    try {
      switch (request.op) {
        case VcpuRequestOp.ReadMsr: {
          const value = this.hv.readMsr(request.vp, request.msr);
          return value === undefined ? { result: 0n, fault: true } : { result: value, fault: false };
        }
        case VcpuRequestOp.WriteMsr:
          return { result: 0n, fault: !this.hv.writeMsr(request.vp, request.msr, request.a) };
        case VcpuRequestOp.Hypercall:
          return { result: this.hv.hypercall(request.vp, request.a, request.b, request.c), fault: false };
      }
    } catch (e) {
      this.log(`vCPU ${request.vp} request ${request.op} failed: ${(e as Error).stack ?? e}`);
    }
    return { result: 0n, fault: true };
  }

  private onConsole(): void {
    this.consoleBell.drain();
    for (const ring of this.consoleRings) {
      const bytes = ring.take();
      if (bytes.length > 0) this.emit('console', bytes);
    }
  }

  private onVcpuMessage(message: VcpuMessage): void {
    switch (message.type) {
      case 'started':
        this.threadIds[message.vp] = message.tid;
        if (message.vp === 0) this.tscSample = { tsc: message.tsc, atNs: message.atNs };
        if (Atomics.load(this.control, CONTROL_STOP) !== 0) kickVcpu(this.runAreas[message.vp] ??= KvmRunArea.map(this.vcpuFds[message.vp]!, this.runAreaSize), message.tid);
        return;
      case 'test-report':
        this.emit('test-report', { vp: message.vp, value: message.value });
        return;
      case 'stopped':
        this.onStopped(message);
    }
  }

  private onStopped(message: { vp: number; reason: VcpuStopReason; detail: string }): void {
    this.onConsole();
    if (message.reason === 'stopped') this.log(message.detail);
    if (this.stopResult) return;
    this.stopResult = { reason: message.reason, detail: message.detail, vp: message.vp };
    this.emit('stopped', this.stopResult);
  }
}
