// `--disk PATH[,readonly][,format=raw|vhdx]`: what a disk on the command line or the API
// asks for, validated before anything is opened.
export type DiskFormat = 'raw' | 'vhdx';

export interface DiskSpec {
  path: string;
  readOnly: boolean;
  /** Absent: detected from the file (the VHDX signature, else raw). */
  format?: DiskFormat;
}

export class DiskSpecError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'DiskSpecError';
  }
}

export function parseDiskSpec(text: string): DiskSpec {
  const parts = text.split(',');
  const path = parts.shift() ?? '';
  if (path === '') throw new DiskSpecError(`'${text}' names no image: use PATH[,readonly][,format=raw|vhdx]`);
  const spec: DiskSpec = { path, readOnly: false };
  for (const part of parts) {
    if (part === 'readonly' || part === 'ro') spec.readOnly = true;
    else if (part === 'format=raw' || part === 'format=vhdx') spec.format = part.slice('format='.length) as DiskFormat;
    else if (part.startsWith('format=')) throw new DiskSpecError(`disk '${path}': unknown format '${part.slice(7)}' (raw or vhdx)`);
    else throw new DiskSpecError(`disk '${path}': unknown option '${part}' (readonly, format=raw|vhdx)`);
  }
  return spec;
}

export function formatDiskSpec(spec: DiskSpec): string {
  return [spec.path, ...(spec.readOnly ? ['readonly'] : []), ...(spec.format ? [`format=${spec.format}`] : [])].join(',');
}
