// A vCPU worker for test/kvm-layer.test.ts: maps the run area of a vCPU the main thread
// prepared, reports its thread id, runs the guest until the guest's first port write
// ("I am running"), then runs it again (the guest spins or halts in the kernel) until
// KVM_RUN comes back, and reports how it came back.
import { isMainThread, parentPort, workerData } from 'node:worker_threads';
import { KVM_EXIT_IO } from '../../src/kvm/kvm-constants.js';
import { KvmVcpu } from '../../src/kvm/kvm-vcpu.js';
import { currentThreadId } from '../../src/sys/thread-signal.js';

export interface SpinWorkerData {
  vcpuFd: number;
  mmapSize: number;
}

export type SpinWorkerMessage =
  | { type: 'started'; tid: number }
  | { type: 'running'; value: number }
  | { type: 'returned'; exit: number; immediateExit: number; rip: string }
  | { type: 'failed'; error: string };

// The test runner also loads every file under dist/test as a test of its own: there, on
// the main thread, this module has nothing to do.
if (!isMainThread) runSpinWorker();

function runSpinWorker(): void {
  const data = workerData as SpinWorkerData;
  const post = (m: SpinWorkerMessage) => parentPort!.postMessage(m);
  const vcpu = KvmVcpu.fromFd(data.vcpuFd, data.mmapSize);
  try {
    post({ type: 'started', tid: currentThreadId() });
    let exit = vcpu.run();
    if (exit !== KVM_EXIT_IO) throw new Error(`expected the guest's first report, got exit ${exit}`);
    post({ type: 'running', value: vcpu.runArea.ioData().getUint32(0, true) });
    exit = vcpu.run();
    post({ type: 'returned', exit, immediateExit: vcpu.runArea.immediateExit, rip: `0x${vcpu.getRegs().rip.toString(16)}` });
  } catch (e) {
    post({ type: 'failed', error: String((e as Error).stack ?? e) });
  } finally {
    vcpu.close();
  }
}
