/**
 * Seeded randomness in plain JavaScript, so model initialisation and batch sampling are
 * identical on every backend and every machine (tfjs random ops differ between backends).
 */

/** A uniform generator in [0, 1) with 32 bits of state (mulberry32). */
export type Uniform = () => number;

export function mulberry32(seed: number): Uniform {
  let state = seed >>> 0;
  return () => {
    state = (state + 0x6d2b79f5) >>> 0;
    let t = state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** Mixes any number of integers and strings into one 32-bit seed (FNV-1a, then an avalanche). */
export function deriveSeed(...parts: (number | string)[]): number {
  let hash = 0x811c9dc5;
  const mix = (byte: number): void => {
    hash ^= byte & 0xff;
    hash = Math.imul(hash, 0x01000193) >>> 0;
  };
  for (const part of parts) {
    if (typeof part === 'number') {
      // Split into two 32-bit halves so steps and seeds beyond 2^32 still differ.
      const low = part >>> 0;
      const high = Math.floor(part / 4294967296) >>> 0;
      for (const word of [low, high]) for (let shift = 0; shift < 32; shift += 8) mix(word >>> shift);
    } else {
      for (const byte of Buffer.from(part, 'utf8')) mix(byte);
    }
    mix(0x1f); // separator, so ('ab', 'c') and ('a', 'bc') differ
  }
  hash ^= hash >>> 16;
  hash = Math.imul(hash, 0x85ebca6b) >>> 0;
  hash ^= hash >>> 13;
  hash = Math.imul(hash, 0xc2b2ae35) >>> 0;
  return (hash ^ (hash >>> 16)) >>> 0;
}

/** Integer in [0, n). */
export function randomInt(uniform: Uniform, n: number): number {
  return Math.min(n - 1, Math.floor(uniform() * n));
}

/** Float32 samples from N(0, std²) via Box–Muller. */
export function normalArray(uniform: Uniform, size: number, std: number): Float32Array {
  const out = new Float32Array(size);
  for (let i = 0; i < size; i += 2) {
    const u1 = 1 - uniform(); // (0, 1], keeps log finite
    const u2 = uniform();
    const radius = Math.sqrt(-2 * Math.log(u1)) * std;
    out[i] = radius * Math.cos(2 * Math.PI * u2);
    if (i + 1 < size) out[i + 1] = radius * Math.sin(2 * Math.PI * u2);
  }
  return out;
}

/** A seeded Fisher–Yates permutation of 0..n-1. */
export function permutation(uniform: Uniform, n: number): number[] {
  const order = Array.from({ length: n }, (_, i) => i);
  for (let i = n - 1; i > 0; i--) {
    const j = randomInt(uniform, i + 1);
    [order[i], order[j]] = [order[j] as number, order[i] as number];
  }
  return order;
}
