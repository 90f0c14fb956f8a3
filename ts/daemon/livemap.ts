/**
 * Where each lazy image range lives NOW in the restored process: segments `{liveStart, liveEnd,
 * imageStart}` (CRIU's `{start, end, img_start}`), sorted by live address and never overlapping.
 *
 * At hand-over live == image. mremap moves a segment's live addresses and keeps its image address
 * (the data does not change because the mapping moved); munmap and madvise(DONTNEED) drop what they
 * cover. A segment never crosses a lazy image range, so it has one data location.
 */
export interface Segment {
  liveStart: bigint;
  liveEnd: bigint;
  imageStart: bigint;
  /** Index of the image range (in the process's ImageIndex) this segment belongs to. */
  range: number;
}

/** A live-address piece cut out of the map: what a caller must forget (unmap) or move (remap). */
export type Piece = Segment;

export class LiveMap {
  private segs: Segment[];

  constructor(segs: Segment[]) {
    this.segs = segs.slice().sort((a, b) => (a.liveStart < b.liveStart ? -1 : a.liveStart > b.liveStart ? 1 : 0));
  }

  /** A deep copy (a forked child's map starts as its parent's). */
  clone(): LiveMap {
    return new LiveMap(this.segs.map((s) => ({ ...s })));
  }

  get segments(): readonly Segment[] {
    return this.segs;
  }

  /** The segment holding live address `addr`, or undefined. O(log n). */
  find(addr: bigint): Segment | undefined {
    let lo = 0;
    let hi = this.segs.length - 1;
    while (lo <= hi) {
      const mid = (lo + hi) >> 1;
      const s = this.segs[mid];
      if (addr < s.liveStart) hi = mid - 1;
      else if (addr >= s.liveEnd) lo = mid + 1;
      else return s;
    }
    return undefined;
  }

  /**
   * Remove [start, end) (live addresses) from the map and return the removed pieces, splitting
   * segments that straddle either edge.
   */
  cut(start: bigint, end: bigint): Piece[] {
    const keep: Segment[] = [];
    const cutOut: Piece[] = [];
    for (const s of this.segs) {
      if (s.liveEnd <= start || s.liveStart >= end) {
        keep.push(s);
        continue;
      }
      if (s.liveStart < start) keep.push({ ...s, liveEnd: start });
      const a = s.liveStart > start ? s.liveStart : start;
      const b = s.liveEnd < end ? s.liveEnd : end;
      cutOut.push({ liveStart: a, liveEnd: b, imageStart: s.imageStart + (a - s.liveStart), range: s.range });
      if (s.liveEnd > end) keep.push({ ...s, liveStart: end, imageStart: s.imageStart + (end - s.liveStart) });
    }
    this.segs = keep;
    return cutOut;
  }

  /**
   * mremap moved [from, from+len) to [to, to+len). Whatever the map had at the destination is gone
   * (the kernel unmapped it; it normally says so with an UNMAP event first, but be safe), the moved
   * pieces keep their image addresses. Returns the pieces that the move overwrote.
   */
  remap(from: bigint, to: bigint, len: bigint): Piece[] {
    const moved = this.cut(from, from + len);
    const overwritten = this.cut(to, to + len);
    const delta = to - from;
    for (const p of moved) this.segs.push({ ...p, liveStart: p.liveStart + delta, liveEnd: p.liveEnd + delta });
    this.segs.sort((a, b) => (a.liveStart < b.liveStart ? -1 : a.liveStart > b.liveStart ? 1 : 0));
    return overwritten;
  }
}
