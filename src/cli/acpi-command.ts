// `enlighten acpi --dump DIR [--cpus N]`: writes the ACPI tables a KVM guest with these
// options gets, one file per table, for iasl and for people.
import fs from 'node:fs/promises';
import path from 'node:path';
import type { Command } from 'commander';
import { ACPI_MAX_VP_COUNT, acpiTablesForDump, buildAcpiTables } from '../x86/acpi/acpi-tables.js';
import { UsageError } from './usage-error.js';

export async function runAcpiDump(o: { dir: string; cpus: number }): Promise<string[]> {
  const files = acpiTablesForDump(buildAcpiTables({ vpCount: o.cpus }));
  await fs.mkdir(o.dir, { recursive: true });
  const written: string[] = [];
  for (const [fileName, bytes] of files) {
    const file = path.join(o.dir, fileName);
    await fs.writeFile(file, bytes);
    written.push(file);
  }
  return written;
}

export function addAcpiCommand(program: Command): void {
  program
    .command('acpi')
    .description('write the ACPI tables a KVM guest gets (RSDP.bin, XSDT.aml, FACP.aml, APIC.aml, DSDT.aml) to a directory')
    .requiredOption('--dump <dir>', 'directory to write the tables to (created if missing)')
    .option('--cpus <n>', 'virtual processors', '2')
    .action(async (options: { dump: string; cpus: string }) => {
      const cpus = Number(options.cpus);
      if (!/^\d+$/.test(options.cpus) || !Number.isInteger(cpus) || cpus < 1 || cpus > ACPI_MAX_VP_COUNT) {
        throw new UsageError(`--cpus must be a whole number from 1 to ${ACPI_MAX_VP_COUNT}, not '${options.cpus}'`);
      }
      for (const file of await runAcpiDump({ dir: options.dump, cpus })) process.stdout.write(`${file}\n`);
    });
}
