/**
 * The fixtures' memory pattern: the 8-byte LE word at address A holds
 * ((A ^ 0x5DEECE66D) * 0x9E3779B97F4A7C15) mod 2^64, XOR a per-process value.
 */
import { PAGE_SIZE } from './constants.js';

const SEED = 0x5deece66dn;
const MULT = 0x9e3779b97f4a7c15n;
const MASK64 = (1n << 64n) - 1n;

export function patternWord(addr: bigint, xor = 0n): bigint {
  return (((addr ^ SEED) * MULT) & MASK64) ^ (xor & MASK64);
}

// For A = P + 8k with P page aligned, the XOR only mixes SEED's low 12 bits into 8k and its high
// bits into P, so (A ^ SEED) = (P ^ SEED_HI) + (8k ^ SEED_LO) and the product splits into a
// per-page term plus a per-word term that is the same on every page: one BigInt multiply per
// page, then 512 plain 64-bit additions done as two u32 halves.
const SEED_LO = SEED & 0xfffn;
const SEED_HI = SEED & ~0xfffn;
const WORDS = PAGE_SIZE / 8;
const wordLo = new Uint32Array(WORDS);
const wordHi = new Uint32Array(WORDS);
for (let k = 0; k < WORDS; k++) {
  const y = ((BigInt(k * 8) ^ SEED_LO) * MULT) & MASK64;
  wordLo[k] = Number(y & 0xffffffffn);
  wordHi[k] = Number(y >> 32n);
}

/**
 * Fills the 4096 bytes at `byteOffset` of `buf` with the pattern of the page at `addr`
 * (page aligned). Assumes a little-endian host, like the images themselves.
 */
export function fillPatternPage(buf: Uint8Array, addr: bigint, xor = 0n, byteOffset = 0): void {
  const base = (((addr & ~0xfffn) ^ SEED_HI) * MULT) & MASK64;
  const bLo = Number(base & 0xffffffffn);
  const bHi = Number(base >> 32n);
  const xLo = Number(xor & 0xffffffffn);
  const xHi = Number((xor >> 32n) & 0xffffffffn);
  const off = buf.byteOffset + byteOffset;
  if (off % 4 !== 0) throw new RangeError('fillPatternPage needs a 4-byte aligned destination');
  const w = new Uint32Array(buf.buffer, off, WORDS * 2);
  for (let k = 0; k < WORDS; k++) {
    const lo = bLo + wordLo[k]!;
    const carry = lo > 0xffffffff ? 1 : 0;
    w[2 * k] = (lo ^ xLo) >>> 0;
    w[2 * k + 1] = ((bHi + wordHi[k]! + carry) ^ xHi) >>> 0;
  }
}

/** True when the page at `byteOffset` of `buf` holds the pattern of `addr`. */
export function checkPatternPage(buf: Uint8Array, addr: bigint, xor = 0n, byteOffset = 0): boolean {
  const want = new Uint8Array(PAGE_SIZE);
  fillPatternPage(want, addr, xor);
  return Buffer.compare(Buffer.from(buf.buffer, buf.byteOffset + byteOffset, PAGE_SIZE), Buffer.from(want.buffer)) === 0;
}
