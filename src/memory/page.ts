export const PAGE_SHIFT = 12;
export const PAGE_SIZE = 4096;

export function pagesFor(byteOffset: number, byteCount: number): number {
  return Math.ceil((byteOffset + byteCount) / PAGE_SIZE);
}
