// A VM on the process partition: guest RAM, the VMBus server with its devices, and the
// reference guest in a worker thread. It relays what the guest reports and offers the
// controls the CLI, the API and the tests use.
import { EventEmitter } from 'node:events';
import type { Worker } from 'node:worker_threads';
import { IN_THREAD_WAIT_MS, Poller } from '../sys/epoll.js';
import { ProcessPartition } from '../partition/process/process-partition.js';
import type { GuestRequest, GuestToHost, GuestWorkerOptions } from '../partition/process/guest-control.js';
import type { GuestReport } from '../guest/reference-guest.js';
import { VmbusServer } from '../vmbus/server/vmbus-server.js';
import type { VmbusDevice } from '../vmbus/server/vmbus-device.js';

export interface ProcessVmOptions {
  memoryBytes: number;
  cpus: number;
  /** Newest VMBus version the server accepts. */
  maxVersion?: number;
  /** Newest version the guest tries (Linux's max_version). */
  guestMaxVersion?: number;
  guestDrivers?: string[];
  /** Builds the host devices once the server exists. */
  devices: (context: { poller: Poller; server: VmbusServer; partition: ProcessPartition }) => VmbusDevice[];
  log?: (message: string) => void;
  replyTimeoutMs?: number;
  /** How far the guest's clock is off at boot (time sync corrects it). */
  guestClockSkewMs?: number;
  guestHostname?: string;
  /** The reference guest surfaces each disk it finds as the file DIR/lun<N> (FUSE). */
  guestExposeDisks?: string;
  /** The reference guest surfaces each NIC it finds as a TAP device in this network namespace. */
  guestExposeNics?: string;
  /**
   * The host's Poller waits in this thread rather than on the libuv pool (PollerOptions):
   * for a process that runs this one VM (`enlighten run`, the benchmarks).
   */
  pollInThread?: boolean;
}

export interface VmEvents {
  report: [GuestReport];
  exit: [{ code: number; reason: string }];
}

export class ProcessVm extends EventEmitter<VmEvents> {
  readonly poller: Poller;
  readonly partition: ProcessPartition;
  readonly server: VmbusServer;
  readonly devices: VmbusDevice[];
  private worker: Worker | null = null;
  private nextId = 1;
  private readonly pending = new Map<number, { resolve: (v: unknown) => void; reject: (e: Error) => void }>();
  private exited: Promise<{ code: number; reason: string }> | null = null;
  private powerOffReason: string | null = null;

  constructor(private readonly options: ProcessVmOptions) {
    super();
    const log = options.log ?? (() => {});
    this.poller = new Poller((e) => log(`event loop error: ${(e as Error).stack ?? e}`), options.pollInThread ? { waitInThreadMs: IN_THREAD_WAIT_MS } : {});
    this.partition = new ProcessPartition({ memoryBytes: options.memoryBytes, vpCount: options.cpus, poller: this.poller, log });
    this.server = new VmbusServer({ partition: this.partition, maxVersion: options.maxVersion, log });
    this.devices = options.devices({ poller: this.poller, server: this.server, partition: this.partition });
    for (const device of this.devices) this.server.addDevice(device);
  }

  /** Starts the guest and boots it; resolves with the negotiated VMBus version. */
  async start(): Promise<string> {
    const o = this.options;
    const guestOptions: GuestWorkerOptions = { maxVersion: o.guestMaxVersion, drivers: o.guestDrivers, replyTimeoutMs: o.replyTimeoutMs, clockSkewMs: o.guestClockSkewMs, hostname: o.guestHostname, exposeDisks: o.guestExposeDisks, exposeNics: o.guestExposeNics };
    const worker = this.partition.startGuest(new URL('../partition/process/guest-worker.js', import.meta.url), guestOptions);
    this.worker = worker;
    worker.on('message', (message: GuestToHost) => this.onGuestMessage(message));
    this.exited = new Promise((resolve) => {
      worker.on('error', (error) => {
        const result = { code: 1, reason: `guest crashed: ${error.stack ?? error}` };
        this.rejectAll(result.reason);
        resolve(result);
      });
      worker.on('exit', (code) => {
        const result = this.powerOffReason !== null ? { code: 0, reason: this.powerOffReason } : { code: code || 1, reason: `guest stopped without powering off (exit ${code})` };
        this.rejectAll(result.reason);
        resolve(result);
      });
    });
    void this.exited.then((result) => this.emit('exit', result));
    return (await this.request({ op: 'boot' })) as string;
  }

  /** Sends a control request to the guest (tests, CLI). */
  request(request: GuestRequest): Promise<unknown> {
    const worker = this.worker;
    if (!worker) return Promise.reject(new Error('guest is not running'));
    const id = this.nextId++;
    return new Promise((resolve, reject) => {
      this.pending.set(id, { resolve, reject });
      worker.postMessage({ id, request });
      // The guest thread may be blocked in its epoll_wait (it waits there, not on the
      // libuv loop): a spurious interrupt ends the wait so the message is read now.
      this.partition.kickGuest();
    });
  }

  /** Resolves when the guest has stopped, with the exit code the VM should end with. */
  waitForExit(): Promise<{ code: number; reason: string }> {
    if (!this.exited) return Promise.resolve({ code: 1, reason: 'never started' });
    return this.exited;
  }

  /** Tears everything down. Safe to call twice. */
  async stop(): Promise<void> {
    const worker = this.worker;
    if (worker) {
      this.worker = null;
      const exited = new Promise((resolve) => worker.once('exit', resolve));
      // A guest thread waiting for interrupts on the thread pool cannot be terminated until
      // that wait returns: ask it to halt, and keep waking it until it is gone.
      const kick = setInterval(() => this.partition.kickGuest(), 20);
      try {
        worker.postMessage({ id: 0, request: { op: 'halt' } });
        await Promise.race([exited, new Promise((resolve) => setTimeout(resolve, 2000))]);
        await worker.terminate();
      } finally {
        clearInterval(kick);
      }
    }
    this.server.reset();
    this.partition.close();
    await this.poller.stop();
  }

  private onGuestMessage(message: GuestToHost): void {
    if (message.type === 'report') {
      if (message.report.event === 'power-off') this.powerOffReason = message.report.reason;
      this.emit('report', message.report);
      return;
    }
    const waiter = this.pending.get(message.id);
    if (!waiter) return;
    this.pending.delete(message.id);
    if (message.ok) waiter.resolve(message.result);
    else waiter.reject(new Error(message.error));
  }

  private rejectAll(reason: string): void {
    for (const waiter of this.pending.values()) waiter.reject(new Error(reason));
    this.pending.clear();
  }
}
