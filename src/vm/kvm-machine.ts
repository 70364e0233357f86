// A VM on the KVM partition: a real Linux kernel booted directly (bzImage, initramfs,
// command line, ACPI tables with the VMBus device), the VMBus server with its devices, the
// serial console, and the lifecycle (poweroff, reboot, faults).
import { EventEmitter } from 'node:events';
import { Poller } from '../sys/epoll.js';
import { KvmPartition } from '../partition/kvm/kvm-partition.js';
import type { VcpuStopReason } from '../partition/kvm/vcpu-worker-data.js';
import { VmbusServer } from '../vmbus/server/vmbus-server.js';
import type { VmbusDevice } from '../vmbus/server/vmbus-device.js';
import { buildAcpiTables, layoutAcpiTables } from '../x86/acpi/acpi-tables.js';
import { loadLinux } from '../x86/direct-boot.js';
import { ACPI_REGION_GPA, ACPI_REGION_SIZE } from '../x86/guest-layout.js';
import { Uart16550 } from '../x86/uart-16550.js';
import { COM1_IRQ } from '../x86/platform-ports.js';

export interface KvmMachineOptions {
  memoryBytes: number;
  cpus: number;
  kernel: Uint8Array;
  initrd?: Uint8Array;
  cmdline: string;
  maxVersion?: number;
  kvmPath?: string;
  devices: (context: { poller: Poller; server: VmbusServer; partition: KvmPartition }) => VmbusDevice[];
  log?: (message: string) => void;
}

export interface MachineExit {
  code: number;
  reason: string;
  kind: VcpuStopReason;
}

export interface KvmMachineEvents {
  /** Raw console output. */
  console: [Uint8Array];
  /** Each complete console line, without its line ending. */
  line: [string];
}

export class KvmMachine extends EventEmitter<KvmMachineEvents> {
  readonly poller: Poller;
  readonly partition: KvmPartition;
  readonly server: VmbusServer;
  readonly devices: VmbusDevice[];
  private readonly uart: Uart16550;
  private readonly boot: ReturnType<typeof loadLinux>;
  private partialLine = '';
  private readonly decoder = new TextDecoder();
  private stopped = false;

  constructor(options: KvmMachineOptions) {
    super();
    const log = options.log ?? (() => {});
    this.poller = new Poller((e) => log(`event loop error: ${(e as Error).stack ?? e}`));
    this.partition = new KvmPartition({ memoryBytes: options.memoryBytes, vpCount: options.cpus, poller: this.poller, kvmPath: options.kvmPath, log });
    try {
      const acpi = layoutAcpiTables(buildAcpiTables({ vpCount: options.cpus }), ACPI_REGION_GPA, ACPI_REGION_SIZE);
      this.boot = loadLinux(this.partition.memory, {
        kernel: options.kernel,
        initrd: options.initrd,
        cmdline: options.cmdline,
        acpi: { bytes: acpi.bytes, gpa: ACPI_REGION_GPA, rsdpGpa: acpi.rsdpGpa },
      });
    } catch (e) {
      this.partition.close();
      void this.poller.stop();
      throw e;
    }
    // Keyboard input reaches the UART from this thread; its interrupt is an IOAPIC line.
    this.uart = new Uart16550(this.partition.uartState, { transmit: () => {}, setIrq: (level) => this.partition.irqLine(COM1_IRQ, level) });
    this.server = new VmbusServer({ partition: this.partition, maxVersion: options.maxVersion, log });
    this.devices = options.devices({ poller: this.poller, server: this.server, partition: this.partition });
    for (const device of this.devices) this.server.addDevice(device);
    this.partition.on('console', (bytes) => this.onConsole(bytes));
  }

  /** The kernel's version string from its header (e.g. "6.1.0-50-cloud-amd64 (...)"). */
  get kernelVersion(): string {
    return this.boot.image.kernelVersion;
  }

  start(): void {
    this.partition.start({ regs: this.boot.regs, sregs: this.boot.sregs });
  }

  /** Feeds console input (keyboard) to the guest's UART; returns how many bytes fit. */
  input(bytes: Uint8Array): number {
    return this.uart.receive(bytes);
  }

  /** Resolves when the guest stops by itself, with the exit code the VM should end with. */
  async waitForExit(): Promise<MachineExit> {
    const stop = await this.partition.waitForStop();
    const firstLine = stop.detail.split('\n')[0]!;
    // A panicking Linux resets (panic=-1) or halts after writing the crash MSRs.
    if (this.partition.crash !== null && (stop.reason === 'reboot' || stop.reason === 'poweroff')) return { code: 1, reason: this.partition.crash, kind: 'crash' };
    switch (stop.reason) {
      case 'poweroff': return { code: 0, reason: firstLine, kind: stop.reason };
      case 'reboot': return { code: 0, reason: firstLine, kind: stop.reason };
      case 'stopped': return { code: 1, reason: 'the host stopped the VM before the guest powered off', kind: stop.reason };
      default: return { code: 1, reason: stop.detail, kind: stop.reason };
    }
  }

  /** Stops the vCPUs and the server. Safe to call twice. */
  async stop(): Promise<void> {
    if (this.stopped) return;
    this.stopped = true;
    await this.partition.stop();
    this.flushLine();
    this.server.reset();
    this.partition.close();
    await this.poller.stop();
  }

  private onConsole(bytes: Uint8Array): void {
    this.emit('console', bytes);
    if (this.listenerCount('line') === 0) return;
    const text = this.partialLine + this.decoder.decode(bytes, { stream: true });
    const lines = text.split('\n');
    this.partialLine = lines.pop()!;
    for (const line of lines) this.emit('line', line.replace(/\r$/, ''));
  }

  private flushLine(): void {
    if (this.partialLine.length > 0) this.emit('line', this.partialLine);
    this.partialLine = '';
  }
}
