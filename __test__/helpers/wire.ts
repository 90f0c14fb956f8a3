/**
 * CRIU's page-server wire format (spec §7) for tests that speak it over raw sockets, to poke a page
 * server with exact bytes or to play a misbehaving one: a 32-byte little-endian header
 * `{u32 cmd; 4 pad; u64 nr_pages; u64 vaddr; u64 dst_id}`. The product's codec is native (pagewire.rs).
 */
export const PS_HEADER_SIZE = 32;
/** The low 16 bits of `cmd`. */
export const PS_IOV = { ADD: 1, HOLE: 2, OPEN: 3, OPEN2: 4, PARENT: 5, ADD_F: 6, GET: 7, CLOSE: 0x1023, FORCE_CLOSE: 0x1024 } as const;
/** `cmd` of every GET reply: (PE_PRESENT << 16) | ADD_F. */
export const GET_REPLY_CMD = ((4 << 16) | PS_IOV.ADD_F) >>> 0;

export interface PsHeader {
  cmd: number;
  nrPages: bigint;
  vaddr: bigint;
  dstId: bigint;
}

export function encodeHeader(h: PsHeader): Buffer {
  const b = Buffer.alloc(PS_HEADER_SIZE);
  b.writeUInt32LE(h.cmd >>> 0, 0);
  b.writeBigUInt64LE(h.nrPages, 8);
  b.writeBigUInt64LE(h.vaddr, 16);
  b.writeBigUInt64LE(h.dstId, 24);
  return b;
}

export const encodeGet = (pid: number, vaddr: bigint, pages: number): Buffer =>
  encodeHeader({ cmd: PS_IOV.GET, nrPages: BigInt(pages), vaddr, dstId: BigInt(pid) });

export const encodeGetReply = (pid: number | bigint, vaddr: bigint, pages: number): Buffer =>
  encodeHeader({ cmd: GET_REPLY_CMD, nrPages: BigInt(pages), vaddr, dstId: BigInt(pid) });

export function readHeader(buf: Buffer, off = 0): PsHeader {
  return { cmd: buf.readUInt32LE(off), nrPages: buf.readBigUInt64LE(off + 8), vaddr: buf.readBigUInt64LE(off + 16), dstId: buf.readBigUInt64LE(off + 24) };
}
