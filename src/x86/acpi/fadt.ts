// The Fixed ACPI Description Table (signature "FACP", ACPI 6.x 5.2.9), revision 6, for a
// hardware-reduced platform: no PM1/GPE blocks, no PM timer, no SCI, no FACS. What is
// left is where the DSDT is, how to reset the machine and how to put it to sleep (S5 =
// power off) through the two byte-wide sleep registers.
//
// Linux on a hardware-reduced platform (x86 acpi_generic_reduced_hw_init) also drops the
// legacy PIC and skips x86_init.timers.timer_init (no PIT/HPET timer setup), so the LAPIC
// timer must be usable without PIT calibration (the Hyper-V frequency MSRs or the
// TSC-deadline timer provide that).
import {
  ACPI_RESET_PORT,
  ACPI_RESET_VALUE,
  ACPI_SLEEP_CONTROL_PORT,
  ACPI_SLEEP_STATUS_PORT,
} from '../platform-ports.js';
import { ACPI_TABLE_HEADER_SIZE, acpiTable, dataView, setTableChecksum, writeAscii } from './acpi-table.js';

export const FADT_SIGNATURE = 'FACP';
export const FADT_REVISION = 6;
/** The ACPI 6.x minor version (6.3; the 276-byte layout is the same from 6.0 on). */
export const FADT_MINOR_REVISION = 3;
export const FADT_SIZE = 276;

// Offsets from the start of the table.
export const FADT_OFFSET_FIRMWARE_CTRL = 36;
export const FADT_OFFSET_DSDT = 40;
export const FADT_OFFSET_PREFERRED_PM_PROFILE = 45;
export const FADT_OFFSET_SCI_INT = 46;
export const FADT_OFFSET_IAPC_BOOT_ARCH = 109;
export const FADT_OFFSET_FLAGS = 112;
export const FADT_OFFSET_RESET_REG = 116;
export const FADT_OFFSET_RESET_VALUE = 128;
export const FADT_OFFSET_ARM_BOOT_ARCH = 129;
export const FADT_OFFSET_MINOR_REVISION = 131;
export const FADT_OFFSET_X_FIRMWARE_CTRL = 132;
export const FADT_OFFSET_X_DSDT = 140;
export const FADT_OFFSET_SLEEP_CONTROL_REG = 244;
export const FADT_OFFSET_SLEEP_STATUS_REG = 256;
export const FADT_OFFSET_HYPERVISOR_VENDOR_ID = 268;

// Flags (ACPI 6.x table 5.10).
export const FADT_FLAG_WBINVD = 1 << 0;
/** Set: no fixed-feature power button (it would be a control-method device, and we have none). */
export const FADT_FLAG_PWR_BUTTON = 1 << 4;
/** Set: no fixed-feature sleep button. */
export const FADT_FLAG_SLP_BUTTON = 1 << 5;
export const FADT_FLAG_RESET_REG_SUP = 1 << 10;
export const FADT_FLAG_HW_REDUCED_ACPI = 1 << 20;

// IAPC_BOOT_ARCH (ACPI 6.x table 5.11).
export const IAPC_BOOT_ARCH_LEGACY_DEVICES = 1 << 0;
export const IAPC_BOOT_ARCH_8042 = 1 << 1;
export const IAPC_BOOT_ARCH_VGA_NOT_PRESENT = 1 << 2;
export const IAPC_BOOT_ARCH_MSI_NOT_SUPPORTED = 1 << 3;
export const IAPC_BOOT_ARCH_PCIE_ASPM_CONTROLS = 1 << 4;
export const IAPC_BOOT_ARCH_CMOS_RTC_NOT_PRESENT = 1 << 5;

/**
 * What the guest is told about legacy hardware:
 * - LEGACY_DEVICES clear: no ISA devices beyond what the DSDT names (Linux only uses it to
 *   skip the PnP BIOS).
 * - 8042 clear: there is no keyboard controller; Linux then marks the i8042 firmware-absent
 *   and does not poke ports 0x60/0x64 (and reboot goes through RESET_REG first anyway).
 * - VGA_NOT_PRESENT set: there is no VGA; the console is COM1.
 * - MSI_NOT_SUPPORTED clear: there is no PCI bus today, so it changes nothing, and a later
 *   Hyper-V vPCI bus (pci-hyperv) would need MSI.
 * - CMOS_RTC_NOT_PRESENT set: there is no MC146818; Linux then does not register the
 *   rtc_cmos platform device. It copes: the wall clock is set by the Hyper-V time-sync
 *   integration service (hv_utils). x86 may still read ports 0x70/0x71 once at boot for
 *   the initial wall clock (mach_get_cmos_time), so those reads must get some answer.
 */
export const FADT_IAPC_BOOT_ARCH = IAPC_BOOT_ARCH_VGA_NOT_PRESENT | IAPC_BOOT_ARCH_CMOS_RTC_NOT_PRESENT;

export const FADT_FLAGS = FADT_FLAG_WBINVD | FADT_FLAG_PWR_BUTTON | FADT_FLAG_SLP_BUTTON | FADT_FLAG_RESET_REG_SUP | FADT_FLAG_HW_REDUCED_ACPI;

/**
 * SCI_INT. Unused on a hardware-reduced platform (ACPICA installs no SCI handler), but the
 * conventional 9 keeps it consistent with the MADT's IRQ 9 override.
 */
export const FADT_SCI_INT = 9;

/**
 * Hypervisor Vendor Identity (ACPI 6.0+). Informational: Linux does not read it (it finds
 * the hypervisor by CPUID, which says "Microsoft Hv"); iasl and people do. It is not a KVM
 * signature, so nothing detects KVM from it.
 */
export const FADT_HYPERVISOR_VENDOR_ID = 'ENLIGHTN';

// Generic Address Structure (ACPI 6.x 5.2.3.2): 12 bytes.
export const GAS_SIZE = 12;
export const GAS_SPACE_SYSTEM_IO = 1;
export const GAS_ACCESS_BYTE = 1;

export interface GenericAddress {
  spaceId: number;
  bitWidth: number;
  bitOffset: number;
  accessSize: number;
  address: bigint;
}

function systemIoByte(port: number): GenericAddress {
  return { spaceId: GAS_SPACE_SYSTEM_IO, bitWidth: 8, bitOffset: 0, accessSize: GAS_ACCESS_BYTE, address: BigInt(port) };
}

export function writeGenericAddress(view: DataView, offset: number, gas: GenericAddress): void {
  view.setUint8(offset, gas.spaceId);
  view.setUint8(offset + 1, gas.bitWidth);
  view.setUint8(offset + 2, gas.bitOffset);
  view.setUint8(offset + 3, gas.accessSize);
  view.setBigUint64(offset + 4, gas.address, true);
}

export function readGenericAddress(view: DataView, offset: number): GenericAddress {
  return {
    spaceId: view.getUint8(offset),
    bitWidth: view.getUint8(offset + 1),
    bitOffset: view.getUint8(offset + 2),
    accessSize: view.getUint8(offset + 3),
    address: view.getBigUint64(offset + 4, true),
  };
}

/** A FADT whose DSDT pointers are 0 until `setFadtDsdtAddress` fills them in. */
export function buildFadt(): Uint8Array {
  const body = new Uint8Array(FADT_SIZE - ACPI_TABLE_HEADER_SIZE);
  const fadt = acpiTable(FADT_SIGNATURE, FADT_REVISION, body);
  const view = dataView(fadt);
  // FIRMWARE_CTRL / X_FIRMWARE_CTRL stay 0: ACPICA does not look for a FACS on a
  // hardware-reduced platform. Every PM block, length and latency stays 0 too.
  view.setUint8(FADT_OFFSET_PREFERRED_PM_PROFILE, 0); // unspecified
  view.setUint16(FADT_OFFSET_SCI_INT, FADT_SCI_INT, true);
  view.setUint16(FADT_OFFSET_IAPC_BOOT_ARCH, FADT_IAPC_BOOT_ARCH, true);
  view.setUint32(FADT_OFFSET_FLAGS, FADT_FLAGS, true);
  // Linux's acpi_reboot() writes RESET_VALUE to a System I/O RESET_REG as one byte.
  writeGenericAddress(view, FADT_OFFSET_RESET_REG, systemIoByte(ACPI_RESET_PORT));
  view.setUint8(FADT_OFFSET_RESET_VALUE, ACPI_RESET_VALUE);
  view.setUint8(FADT_OFFSET_MINOR_REVISION, FADT_MINOR_REVISION);
  // Linux offers S5 (and so registers acpi_power_off) on a hardware-reduced platform only
  // when both sleep registers are present; poweroff writes SLP_TYPa from \_S5 (bits 2-4)
  // with SLP_EN (bit 5) to SLEEP_CONTROL_REG.
  writeGenericAddress(view, FADT_OFFSET_SLEEP_CONTROL_REG, systemIoByte(ACPI_SLEEP_CONTROL_PORT));
  writeGenericAddress(view, FADT_OFFSET_SLEEP_STATUS_REG, systemIoByte(ACPI_SLEEP_STATUS_PORT));
  writeAscii(fadt, FADT_OFFSET_HYPERVISOR_VENDOR_ID, FADT_HYPERVISOR_VENDOR_ID, 8);
  setTableChecksum(fadt);
  return fadt;
}

/**
 * Points the FADT at the DSDT: X_DSDT always, the 32-bit DSDT too (with the same value,
 * so ACPICA sees no 32/64 mismatch). Recomputes the checksum.
 */
export function setFadtDsdtAddress(fadt: Uint8Array, dsdtGpa: number): void {
  if (!Number.isSafeInteger(dsdtGpa) || dsdtGpa < 0 || dsdtGpa > 0xffff_ffff) throw new RangeError(`DSDT address ${dsdtGpa} is not below 4 GiB`);
  const view = dataView(fadt);
  view.setUint32(FADT_OFFSET_DSDT, dsdtGpa, true);
  view.setBigUint64(FADT_OFFSET_X_DSDT, BigInt(dsdtGpa), true);
  setTableChecksum(fadt);
}
