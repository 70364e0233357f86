// Human sizes on the command line: 256M, 1G, 65536.
const UNITS: Record<string, number> = { '': 1, K: 1024, M: 1024 ** 2, G: 1024 ** 3 };

export function parseSize(text: string): number {
  const match = /^(\d+)([KMG]?)(i?B)?$/i.exec(text.trim());
  if (!match) throw new Error(`'${text}' is not a size (examples: 256M, 1G)`);
  const bytes = Number(match[1]) * UNITS[match[2]!.toUpperCase()]!;
  if (!Number.isSafeInteger(bytes)) throw new Error(`'${text}' is too large`);
  return bytes;
}
