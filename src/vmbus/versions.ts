// VMBus protocol versions: a u32 with the major number in the high 16 bits and the minor
// number in the low 16 bits, sent by the guest in INITIATE_CONTACT. The names follow
// Linux's include/linux/hyperv.h.

export const VERSION_WS2008 = 0x0000000d; // 0.13, no longer offered by Linux
export const VERSION_WIN7 = 0x00010001; // 1.1, no longer offered by Linux
export const VERSION_WIN8 = 0x00020004; // 2.4
export const VERSION_WIN8_1 = 0x00030000; // 3.0
export const VERSION_WIN10 = 0x00040000; // 4.0
export const VERSION_WIN10_V4_1 = 0x00040001; // 4.1
export const VERSION_WIN10_V5 = 0x00050000; // 5.0
export const VERSION_WIN10_V5_1 = 0x00050001; // 5.1
export const VERSION_WIN10_V5_2 = 0x00050002; // 5.2
export const VERSION_WIN10_V5_3 = 0x00050003; // 5.3

/** The versions Linux 6.1/6.12 request, newest first, one INITIATE_CONTACT each. */
export const VMBUS_VERSIONS_LINUX: readonly number[] = Object.freeze([
  VERSION_WIN10_V5_3,
  VERSION_WIN10_V5_2,
  VERSION_WIN10_V5_1,
  VERSION_WIN10_V5,
  VERSION_WIN10_V4_1,
  VERSION_WIN10,
  VERSION_WIN8_1,
  VERSION_WIN8,
]);

export function makeVersion(major: number, minor: number): number {
  if (!isU16(major) || !isU16(minor)) throw new RangeError(`version ${major}.${minor} does not fit in 16.16 bits`);
  return ((major << 16) | minor) >>> 0;
}

export function versionMajor(version: number): number {
  return version >>> 16;
}

export function versionMinor(version: number): number {
  return version & 0xffff;
}

/** 0x50003 -> "5.3". */
export function formatVersion(version: number): string {
  return `${versionMajor(version)}.${versionMinor(version)}`;
}

/** "5.3" -> 0x50003. Throws RangeError on anything but two decimal 16-bit numbers. */
export function parseVersion(text: string): number {
  const match = /^(\d{1,5})\.(\d{1,5})$/.exec(typeof text === 'string' ? text : '');
  if (!match) throw new RangeError(`not a VMBus version: ${JSON.stringify(text)} (expected major.minor, e.g. "5.3")`);
  return makeVersion(Number(match[1]), Number(match[2]));
}

/** True if `version` is `minimum` or newer (both as unsigned 32-bit values). */
export function versionAtLeast(version: number, minimum: number): boolean {
  return version >>> 0 >= minimum >>> 0;
}

function isU16(n: number): boolean {
  return Number.isInteger(n) && n >= 0 && n <= 0xffff;
}
