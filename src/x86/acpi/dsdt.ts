// The Differentiated System Description Table: the AML namespace the guest walks. It holds
// only what Linux needs on this machine:
// - \_SB.VMBS, the device hv_vmbus binds to (spec 2.2): _HID "VMBUS" exactly (6.12 only
//   enumerates nodes by _HID), _STA 0x0F, and a _CRS that exists even though it is empty —
//   vmbus_acpi_add() fails the probe when the device has no _CRS to walk. No MMIO window:
//   storvsc, netvsc, the ICs and hv_sock need none.
// - \_SB.COM1, the 16550 console UART, so 8250_pnp binds it with its resources from here.
// - \_S5, the soft-off sleep state: Linux reads SLP_TYPa from its first element and writes
//   it to the FADT's SLEEP_CONTROL_REG to power off.
import { ACPI_S5_SLEEP_TYPE, COM1_IRQ, COM1_PORT, UART_PORT_COUNT } from '../platform-ports.js';
import { acpiTable } from './acpi-table.js';
import {
  type AmlTerm,
  device,
  eisaId,
  encodeTermList,
  integer,
  io,
  irqNoFlags,
  method,
  name,
  packageOf,
  resourceTemplate,
  returnValue,
  scope,
  string,
  zero,
} from './aml.js';

export const DSDT_SIGNATURE = 'DSDT';
/** Revision 2: AML integers are 64 bits wide. */
export const DSDT_REVISION = 2;
export const VMBUS_HID = 'VMBUS';
/** _STA: present, enabled, shown in the UI, functioning. */
export const STA_PRESENT_ENABLED_FUNCTIONING = 0x0f;

export function dsdtTerms(): AmlTerm[] {
  return [
    scope(
      '\\_SB',
      device(
        'VMBS',
        name('_HID', string(VMBUS_HID)),
        name('_UID', zero()),
        method('_STA', { argCount: 0, serialized: false }, returnValue(integer(STA_PRESENT_ENABLED_FUNCTIONING))),
        name('_CRS', resourceTemplate()),
      ),
      device(
        'COM1',
        name('_HID', eisaId('PNP0501')),
        name('_UID', integer(1)),
        name('_CRS', resourceTemplate(io({ decode16: true, min: COM1_PORT, max: COM1_PORT, alignment: 0, length: UART_PORT_COUNT }), irqNoFlags(COM1_IRQ))),
      ),
    ),
    // {SLP_TYPa, SLP_TYPb, reserved, reserved}; there is one sleep register, so b = a.
    name('\\_S5', packageOf(integer(ACPI_S5_SLEEP_TYPE), integer(ACPI_S5_SLEEP_TYPE), zero(), zero())),
  ];
}

export function buildDsdt(): Uint8Array {
  return acpiTable(DSDT_SIGNATURE, DSDT_REVISION, encodeTermList(dsdtTerms()));
}
