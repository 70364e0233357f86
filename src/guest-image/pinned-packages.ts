// The Debian packages the default guest is built from, pinned by version AND by the
// SHA256 that Debian's signed archive index gives for that version (`apt-cache show
// NAME=VERSION`), so a cached or downloaded .deb is checked against a hash recorded in
// our source, not only against whatever the mirror says today.
//
// Security-archive versions (the 6.12 backport, newer 6.1 point releases) are removed
// from deb.debian.org when superseded. When a download then fails with "not found",
// update the entries below: `apt-cache policy NAME` for the version, `apt-cache show
// NAME=VERSION | grep SHA256` for the hash, and for a kernel the new ABI name.

/** A Debian binary package at one exact version, with the archive's SHA256 of its .deb. */
export interface PinnedPackage {
  readonly name: string;
  readonly version: string;
  readonly sha256: string;
  /** Size in bytes of the .deb (for progress and a quick sanity check). */
  readonly size: number;
}

/** A pinned kernel image package: the bzImage and its modules. */
export interface PinnedKernel extends PinnedPackage {
  /** `uname -r` of the kernel: its directory under /lib/modules and its /boot suffix. */
  readonly release: string;
}

export type KernelSeries = '6.1' | '6.12';

export const KERNELS: Readonly<Record<KernelSeries, PinnedKernel>> = {
  // Debian 12's own kernel (bookworm main), cloud flavour: Hyper-V drivers as modules,
  // most bare-metal drivers left out, so the package is small.
  '6.1': {
    name: 'linux-image-6.1.0-50-cloud-amd64',
    version: '6.1.176-1',
    sha256: 'efe19f605b6f54a8352e68d85a629abb2d30b72a085faef603a9152590baa791',
    size: 26484304,
    release: '6.1.0-50-cloud-amd64',
  },
  // The 6.12 backport for bookworm (bookworm-security). Its modules are .ko.xz.
  '6.12': {
    name: 'linux-image-6.12.117+deb12-cloud-amd64',
    version: '6.12.117-1~deb12u1',
    sha256: '5195b288dec79e2981d6b84457f38b7ce7310a2d702930ec7d07209c7f78ce37',
    size: 34307256,
    release: '6.12.117+deb12-cloud-amd64',
  },
};

/** Statically linked busybox: the guest's /bin/sh, insmod, mount, poweroff... with no libraries. */
export const BUSYBOX: PinnedPackage = {
  name: 'busybox-static',
  version: '1:1.35.0-4+deb12u1+b1',
  sha256: '3d3fdbe91d4660c873e14b092c213fe81c1da6362daa236eb25d0171eb108744',
  size: 928188,
};

export function isKernelSeries(value: string): value is KernelSeries {
  return Object.hasOwn(KERNELS, value);
}
