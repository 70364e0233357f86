// The figure both benchmarks report per way or path: the median of its interleaved rounds.

/** The median of `items` by `measure`: the lower middle one for an even count; undefined for none. */
export function lowerMedian<T>(items: readonly T[], measure: (item: T) => number): T | undefined {
  if (items.length === 0) return undefined;
  const sorted = [...items].sort((a, b) => measure(a) - measure(b));
  return sorted[Math.floor((sorted.length - 1) / 2)];
}
