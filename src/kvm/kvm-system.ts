// /dev/kvm itself: the API version check, capability queries, the host CPUID KVM can
// offer a guest, and the creation of VMs.
import { Errno, SysError } from '../sys/errors.js';
import { closeFd } from '../sys/fd.js';
import { ioctlBuffer, ioctlInt, ioctlNone, openDevice } from '../sys/kvm-ioctl.js';
import type { CpuidEntry } from '../x86/cpu-state.js';
import {
  KVM_API_VERSION, KVM_CHECK_EXTENSION, KVM_CREATE_VM, KVM_GET_API_VERSION, KVM_GET_SUPPORTED_CPUID,
  KVM_GET_VCPU_MMAP_SIZE,
} from './kvm-constants.js';
import { cpuid2Buffer, decodeCpuid2 } from './kvm-structs.js';
import { KvmVm } from './kvm-vm.js';

/** KVM answers E2BIG while the buffer is too small; no CPU has anywhere near this many leaves. */
const MAX_CPUID_ENTRIES = 4096;

export class KvmSystem {
  readonly fd: number;
  private closed = false;

  private constructor(fd: number) {
    this.fd = fd;
  }

  /** Opens /dev/kvm (or `path`) and checks it speaks KVM API version 12. */
  static open(path = '/dev/kvm'): KvmSystem {
    const system = new KvmSystem(openDevice(path));
    try {
      system.apiVersion();
    } catch (e) {
      system.close();
      throw e;
    }
    return system;
  }

  /** KVM_GET_API_VERSION; throws unless it is 12, the only stable KVM API. */
  apiVersion(): number {
    const version = ioctlNone(this.fd, KVM_GET_API_VERSION);
    if (version !== KVM_API_VERSION) throw new Error(`KVM API version ${version} is not the supported version ${KVM_API_VERSION}`);
    return version;
  }

  /** KVM_CHECK_EXTENSION: 0 when absent, otherwise 1 or a capability-specific value. */
  checkExtension(cap: number): number {
    return ioctlInt(this.fd, KVM_CHECK_EXTENSION, cap);
  }

  /** The size of each vCPU's run area mapping (kvm_run plus the PIO data page, ...). */
  vcpuMmapSize(): number {
    return ioctlNone(this.fd, KVM_GET_VCPU_MMAP_SIZE);
  }

  /** The CPUID leaves KVM can present to a guest on this host (KVM_GET_SUPPORTED_CPUID). */
  supportedCpuid(): CpuidEntry[] {
    for (let capacity = 128; capacity <= MAX_CPUID_ENTRIES; capacity *= 2) {
      const buf = cpuid2Buffer(capacity);
      try {
        ioctlBuffer(this.fd, KVM_GET_SUPPORTED_CPUID, buf);
      } catch (e) {
        if (e instanceof SysError && e.errno === Errno.E2BIG) continue;
        throw e;
      }
      return decodeCpuid2(buf);
    }
    throw new Error(`KVM_GET_SUPPORTED_CPUID wants more than ${MAX_CPUID_ENTRIES} entries`);
  }

  createVm(): KvmVm {
    // Machine type 0: the default x86 VM.
    return new KvmVm(ioctlInt(this.fd, KVM_CREATE_VM, 0));
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    closeFd(this.fd);
  }
}
