// The fixed I/O ports, IRQs and MMIO addresses of enlighten's x86 machine. ACPI tables,
// the vCPU exit handlers and the hypercall page all name the same numbers from here.

/** COM1: a 16550 UART, IRQ 4 through the IOAPIC. */
export const COM1_PORT = 0x3f8;
export const COM1_IRQ = 4;
export const UART_PORT_COUNT = 8;

/**
 * ACPI hardware-reduced sleep registers (FADT SLEEP_CONTROL_REG / SLEEP_STATUS_REG, one
 * byte each). Writing SLP_EN (bit 5) with SLP_TYP 5 (S5) powers the VM off.
 */
export const ACPI_SLEEP_CONTROL_PORT = 0x600;
export const ACPI_SLEEP_STATUS_PORT = 0x601;
/** The S5 sleep type value the DSDT's \_S5 package names and the sleep register carries. */
export const ACPI_S5_SLEEP_TYPE = 5;
/** FADT RESET_REG: writing ACPI_RESET_VALUE here reboots the VM. */
export const ACPI_RESET_PORT = 0x604;
export const ACPI_RESET_VALUE = 0x01;

/**
 * The hypercall page's exits. Every hypercall but the fast HvSignalEvent writes to
 * HYPERCALL_PORT (4 bytes) and is handled in userspace; the fast HvSignalEvent writes its
 * connection id to SIGNAL_PORT, where one ioeventfd per connection id (datamatch) takes it
 * without leaving the kernel. See src/hyperv/hypercall-page.ts.
 */
export const HYPERCALL_PORT = 0x610;
export const SIGNAL_PORT = 0x614;

/** Written by the in-guest stubs of the tests: one 4-byte value per report. */
export const TEST_REPORT_PORT = 0x620;

/** Local APIC and IOAPIC at their architectural addresses (KVM's in-kernel irqchip). */
export const LAPIC_BASE = 0xfee00000;
export const IOAPIC_BASE = 0xfec00000;
export const IOAPIC_PINS = 24;

/** The VMBus interrupt vector on x86 (HYPERVISOR_CALLBACK_VECTOR). */
export const HYPERVISOR_CALLBACK_VECTOR = 0xf3;

/** Guest RAM is one range from GPA 0 below the 32-bit MMIO hole; this is its ceiling. */
export const RAM_BELOW_4G_MAX = 0xc0000000;
