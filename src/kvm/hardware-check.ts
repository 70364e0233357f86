// Is there hardware virtualization behind /dev/kvm? A full Linux kernel needs VT-x or
// AMD-V. PVM (a software-only KVM) opens and answers every ioctl like the real thing, but
// runs a guest kernel's ring-0 code in KVM's instruction emulator: a kernel would crawl for
// hours and hit instructions the emulator lacks. So the check looks past /dev/kvm to the
// vendor module behind it and says, in one line, what a user can do instead.
import fs from 'node:fs';

export type KvmHardwareKind = 'vmx' | 'svm' | 'pvm' | 'none';

export interface KvmHardware {
  usable: boolean;
  kind: KvmHardwareKind;
  /** One line for a user: what was found and, when unusable, what to do instead. */
  reason: string;
}

/** Where to look; tests point these at fake trees. */
export interface KvmHardwarePaths {
  devicePath?: string | undefined;
  /** The directory of loaded kernel modules (kvm_intel, kvm_amd, kvm_pvm). */
  sysModuleDir?: string | undefined;
  cpuinfoPath?: string | undefined;
}

const ALTERNATIVE = 'use --backend process';

export const PVM_REASON = `/dev/kvm is PVM (software-only KVM, no VT-x/AMD-V): a Linux kernel would run ~2,500x slower and never reach init; ${ALTERNATIVE}`;

export function detectKvmHardware(paths: KvmHardwarePaths = {}): KvmHardware {
  const device = paths.devicePath ?? '/dev/kvm';
  const modules = paths.sysModuleDir ?? '/sys/module';
  const cpuinfo = paths.cpuinfoPath ?? '/proc/cpuinfo';

  if (!fs.existsSync(device)) {
    return { usable: false, kind: 'none', reason: `${device} does not exist: KVM is not available on this host (no kvm module, or no VT-x/AMD-V); ${ALTERNATIVE}` };
  }
  const loaded = (name: string) => fs.existsSync(`${modules}/${name}`);
  const flags = cpuFlags(cpuinfo);
  // PVM first: a host may load it next to a hardware module, and a guest whose /dev/kvm
  // is PVM must not be booted whatever the CPU flags say. (If both ever coexist behind
  // one /dev/kvm this refuses a usable host; refusing beats a guest that never boots.)
  let kind: KvmHardwareKind;
  if (loaded('kvm_pvm')) kind = 'pvm';
  else if (loaded('kvm_intel') && flags.has('vmx')) kind = 'vmx';
  else if (loaded('kvm_amd') && flags.has('svm')) kind = 'svm';
  // A kernel with KVM built in may show no vendor module directory: trust the CPU flags.
  else if (!loaded('kvm_intel') && !loaded('kvm_amd') && flags.has('vmx')) kind = 'vmx';
  else if (!loaded('kvm_intel') && !loaded('kvm_amd') && flags.has('svm')) kind = 'svm';
  else kind = 'none';

  if (!canOpen(device)) {
    return { usable: false, kind, reason: `no permission to open ${device} read-write (add the user to the group that owns it, usually 'kvm'); ${ALTERNATIVE}` };
  }
  switch (kind) {
    case 'pvm':
      return { usable: false, kind, reason: PVM_REASON };
    case 'vmx':
      return { usable: true, kind, reason: `${device} is backed by Intel VT-x (kvm_intel)` };
    case 'svm':
      return { usable: true, kind, reason: `${device} is backed by AMD-V (kvm_amd)` };
    case 'none':
      return { usable: false, kind, reason: `${device} exists but no hardware virtualization backs it (no kvm_intel/kvm_amd with vmx/svm in ${cpuinfo}); ${ALTERNATIVE}` };
  }
}

function cpuFlags(cpuinfo: string): Set<string> {
  let text: string;
  try {
    text = fs.readFileSync(cpuinfo, 'utf8');
  } catch {
    return new Set();
  }
  // The first "flags" line speaks for every CPU (they are the same on any host KVM runs on).
  const line = /^flags\s*:(.*)$/m.exec(text);
  return new Set(line ? line[1]!.trim().split(/\s+/) : []);
}

function canOpen(device: string): boolean {
  try {
    fs.accessSync(device, fs.constants.R_OK | fs.constants.W_OK);
    return true;
  } catch {
    return false;
  }
}
