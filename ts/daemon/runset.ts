/**
 * A set of integers kept as sorted, disjoint, non-adjacent runs [start, end): memory is O(runs),
 * whatever the number of integers in them.
 *
 * The runs sit in blocks of at most MAX_BLOCK runs (a two-level sorted list): a lookup is a binary
 * search over the blocks and one inside a block, O(log runs); adding or removing a range moves at
 * most one block's worth of entries plus the runs it touches, never all the runs (a flat sorted
 * array would memmove the whole tail on every split, O(runs) per fault after random faults).
 */

/** Largest number of runs in one block; a block that grows past it is cut in two. */
const MAX_BLOCK = 128;

interface Block {
  /** Run starts, ascending. */
  s: number[];
  /** Run ends (exclusive); e[i] < s[i + 1] (runs never touch: touching runs are merged). */
  e: number[];
}

export class RunSet {
  private blocks: Block[] = [];
  private count = 0;
  private nruns = 0;
  // Result of locate(): block and run index (kept in fields: no tuple allocated per lookup).
  private lb = 0;
  private lr = 0;

  /** The set [start, end) (empty when end <= start). */
  static range(start: number, end: number): RunSet {
    const r = new RunSet();
    if (start < end) {
      r.blocks.push({ s: [start], e: [end] });
      r.count = end - start;
      r.nruns = 1;
    }
    return r;
  }

  /** How many integers the set holds. */
  get size(): number {
    return this.count;
  }

  /** How many maximal runs the set holds. */
  get runs(): number {
    return this.nruns;
  }

  /** An independent copy (O(runs)). */
  clone(): RunSet {
    const r = new RunSet();
    r.blocks = this.blocks.map((b) => ({ s: b.s.slice(), e: b.e.slice() }));
    r.count = this.count;
    r.nruns = this.nruns;
    return r;
  }

  /** The runs in order, as [start, end) pairs (for tests and debugging). */
  toArray(): [number, number][] {
    const out: [number, number][] = [];
    for (const b of this.blocks) for (let i = 0; i < b.s.length; i++) out.push([b.s[i]!, b.e[i]!]);
    return out;
  }

  /** Sets lb/lr to the first run whose end is > p (lb === blocks.length when there is none). */
  private locate(p: number): void {
    const bl = this.blocks;
    let lo = 0;
    let hi = bl.length;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      const e = bl[mid]!.e;
      if (e[e.length - 1]! > p) hi = mid;
      else lo = mid + 1;
    }
    this.lb = lo;
    this.lr = 0;
    if (lo === bl.length) return;
    const e = bl[lo]!.e;
    let l = 0;
    let h = e.length - 1; // e[h] > p holds
    while (l < h) {
      const m = (l + h) >>> 1;
      if (e[m]! > p) h = m;
      else l = m + 1;
    }
    this.lr = l;
  }

  has(p: number): boolean {
    this.locate(p);
    return this.lb < this.blocks.length && this.blocks[this.lb]!.s[this.lr]! <= p;
  }

  /** The smallest member >= p, or Infinity. */
  nextIn(p: number): number {
    this.locate(p);
    if (this.lb === this.blocks.length) return Infinity;
    const s = this.blocks[this.lb]!.s[this.lr]!;
    return s > p ? s : p;
  }

  /** The smallest non-member >= p. */
  nextOut(p: number): number {
    this.locate(p);
    if (this.lb === this.blocks.length) return p;
    const b = this.blocks[this.lb]!;
    return b.s[this.lr]! > p ? p : b.e[this.lr]!;
  }

  /** The largest member <= p, or -Infinity. */
  lastIn(p: number): number {
    this.locate(p);
    const bl = this.blocks;
    if (this.lb < bl.length && bl[this.lb]!.s[this.lr]! <= p) return p;
    if (this.lr > 0) return bl[this.lb]!.e[this.lr - 1]! - 1;
    if (this.lb > 0) {
      const e = bl[this.lb - 1]!.e;
      return e[e.length - 1]! - 1;
    }
    return -Infinity;
  }

  /** Removes [a, b); returns how many members were removed. O(log runs + runs touched). */
  remove(a: number, b: number): number {
    if (!(a < b)) return 0;
    this.locate(a);
    let bi = this.lb;
    let ri = this.lr;
    let removed = 0;
    const bl = this.blocks;
    while (bi < bl.length) {
      const blk = bl[bi]!;
      const S = blk.s;
      const E = blk.e;
      if (S[ri]! >= b) break;
      let rj = ri;
      while (rj < S.length && S[rj]! < b) {
        removed += Math.min(E[rj]!, b) - Math.max(S[rj]!, a);
        rj++;
      }
      const headS = S[ri]!;
      const tailE = E[rj - 1]!;
      // Every run from ri to the end of the block is consumed: the next block may hold more.
      const onward = rj === S.length && tailE <= b;
      const keepHead = headS < a;
      const keepTail = tailE > b;
      const n = rj - ri;
      if (keepHead && keepTail) {
        if (n === 1) {
          // One run split in two: [headS, a) and [b, tailE).
          E[ri] = a;
          S.splice(ri + 1, 0, b);
          E.splice(ri + 1, 0, tailE);
        } else {
          E[ri] = a;
          S[ri + 1] = b;
          E[ri + 1] = tailE;
          S.splice(ri + 2, n - 2);
          E.splice(ri + 2, n - 2);
        }
      } else if (keepHead) {
        E[ri] = a;
        S.splice(ri + 1, n - 1);
        E.splice(ri + 1, n - 1);
      } else if (keepTail) {
        S[ri] = b;
        E[ri] = tailE;
        S.splice(ri + 1, n - 1);
        E.splice(ri + 1, n - 1);
      } else {
        S.splice(ri, n);
        E.splice(ri, n);
      }
      this.nruns += (keepHead ? 1 : 0) + (keepTail ? 1 : 0) - n;
      if (S.length === 0) bl.splice(bi, 1);
      else {
        if (S.length > MAX_BLOCK) this.split(bi);
        bi++;
      }
      if (!onward) break;
      ri = 0;
    }
    this.count -= removed;
    return removed;
  }

  /** Adds [a, b); returns how many members were added. O(log runs + runs touched). */
  add(a: number, b: number): number {
    if (!(a < b)) return 0;
    const bl = this.blocks;
    // Runs that overlap or touch [a, b) merge with it: the first one has end >= a, the last start <= b.
    let lo = a;
    let hi = b;
    this.locate(a - 1);
    if (this.lb < bl.length) {
      const blk = bl[this.lb]!;
      const s = blk.s[this.lr]!;
      if (s <= b) {
        if (s <= a && blk.e[this.lr]! >= b) return 0; // already inside one run
        if (s < lo) lo = s;
        this.locate(b);
        if (this.lb < bl.length) {
          const last = bl[this.lb]!;
          if (last.s[this.lr]! <= b && last.e[this.lr]! > hi) hi = last.e[this.lr]!;
        }
      }
    }
    // [lo, hi) holds exactly the merging runs, whole: remove them and put one run in their place.
    const had = this.remove(lo, hi);
    this.insertRun(lo, hi);
    return hi - lo - had;
  }

  /** Inserts [lo, hi), which must not overlap or touch any run. */
  private insertRun(lo: number, hi: number): void {
    const bl = this.blocks;
    this.count += hi - lo;
    this.nruns++;
    if (bl.length === 0) {
      bl.push({ s: [lo], e: [hi] });
      return;
    }
    this.locate(lo);
    let bi = this.lb;
    let ri = this.lr;
    if (bi === bl.length) {
      bi--;
      ri = bl[bi]!.s.length;
    }
    const blk = bl[bi]!;
    blk.s.splice(ri, 0, lo);
    blk.e.splice(ri, 0, hi);
    if (blk.s.length > MAX_BLOCK) this.split(bi);
  }

  private split(bi: number): void {
    const blk = this.blocks[bi]!;
    const h = blk.s.length >>> 1;
    this.blocks.splice(bi + 1, 0, { s: blk.s.splice(h), e: blk.e.splice(h) });
  }
}
