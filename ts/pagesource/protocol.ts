/**
 * CRIU's page-server wire format (spec §7): a fixed 32-byte little-endian header
 * `page_server_iov { u32 cmd; 4 pad; u64 nr_pages; u64 vaddr; u64 dst_id }`, optionally followed
 * by page data (replies to GET) or an int32 status (reply to CLOSE). Both our server and our
 * client use only this module to read and write it, so the two cannot drift apart.
 */
import { UserError } from '../errors.js';

export const PS_HEADER_SIZE = 32;
export const PS_PAGE_SIZE = 4096;
export const PS_PAGE_SIZE_N = 4096n;

/** The low 16 bits of `cmd`. */
export const PS_IOV = {
  ADD: 1,
  HOLE: 2,
  OPEN: 3,
  OPEN2: 4,
  PARENT: 5,
  ADD_F: 6,
  GET: 7,
  CLOSE: 0x1023,
  FORCE_CLOSE: 0x1024,
} as const;

const KNOWN_COMMANDS = new Set<number>(Object.values(PS_IOV));

/** Pagemap flag carried in the high 16 bits of a GET reply's `cmd`. */
export const PE_PRESENT_FLAG = 4;
/** `cmd` of every GET reply: (PE_PRESENT << 16) | ADD_F. */
export const GET_REPLY_CMD = ((PE_PRESENT_FLAG << 16) | PS_IOV.ADD_F) >>> 0;

/**
 * Largest nr_pages we accept in one header (4 GiB of data). A real request is far smaller; the
 * limit keeps a garbage header (e.g. nr_pages = 2^63) from being taken for a giant transfer.
 */
export const MAX_NR_PAGES = 1 << 20;

export interface PsHeader {
  /** The whole u32 cmd word: (flags << 16) | command. */
  cmd: number;
  nrPages: bigint;
  vaddr: bigint;
  dstId: bigint;
}

/** Why a header was refused; `code` is stable for programs, the message is for people. */
export type ProtocolErrorKind = 'unknown-command' | 'bad-nr-pages' | 'unaligned-vaddr' | 'bad-dst-id' | 'truncated';

export class ProtocolError extends UserError {
  override name = 'ProtocolError';
  constructor(readonly kind: ProtocolErrorKind, message: string, readonly streamOffset?: number) {
    super('EPROTOCOL', message);
  }
}

export const commandOf = (cmd: number): number => cmd & 0xffff;
export const flagsOf = (cmd: number): number => cmd >>> 16;

export function commandName(cmd: number): string {
  const c = commandOf(cmd);
  const name = Object.entries(PS_IOV).find(([, v]) => v === c)?.[0];
  return name ?? `0x${c.toString(16)}`;
}

export const hex = (v: bigint | number): string => `0x${v.toString(16)}`;

/** Writes a header at `off` of `buf` (which must have 32 bytes there). */
export function writeHeader(buf: Buffer, off: number, h: PsHeader): void {
  buf.writeUInt32LE(h.cmd >>> 0, off);
  buf.writeUInt32LE(0, off + 4);
  buf.writeBigUInt64LE(h.nrPages, off + 8);
  buf.writeBigUInt64LE(h.vaddr, off + 16);
  buf.writeBigUInt64LE(h.dstId, off + 24);
}

export function encodeHeader(h: PsHeader): Buffer {
  const b = Buffer.allocUnsafe(PS_HEADER_SIZE);
  writeHeader(b, 0, h);
  return b;
}

export function encodeGet(pid: number, vaddr: bigint, pages: number): Buffer {
  return encodeHeader({ cmd: PS_IOV.GET, nrPages: BigInt(pages), vaddr, dstId: BigInt(pid) });
}

export function encodeGetReply(pid: number | bigint, vaddr: bigint, pages: number): Buffer {
  return encodeHeader({ cmd: GET_REPLY_CMD, nrPages: BigInt(pages), vaddr, dstId: BigInt(pid) });
}

export function encodeClose(): Buffer {
  return encodeHeader({ cmd: PS_IOV.CLOSE, nrPages: 0n, vaddr: 0n, dstId: 0n });
}

export function encodeStatus(status: number): Buffer {
  const b = Buffer.allocUnsafe(4);
  b.writeInt32LE(status, 0);
  return b;
}

/** Reads a header at `off` without judging it. */
export function readHeader(buf: Buffer, off = 0): PsHeader {
  return {
    cmd: buf.readUInt32LE(off),
    nrPages: buf.readBigUInt64LE(off + 8),
    vaddr: buf.readBigUInt64LE(off + 16),
    dstId: buf.readBigUInt64LE(off + 24),
  };
}

/**
 * Checks a header a client sent to a server: known command and, for GET, a sane page count,
 * a page-aligned address and a pid that fits an int32. Throws ProtocolError.
 */
export function checkRequest(h: PsHeader, streamOffset?: number): void {
  const at = streamOffset === undefined ? '' : ` at stream offset ${streamOffset}`;
  const c = commandOf(h.cmd);
  if (!KNOWN_COMMANDS.has(c)) {
    throw new ProtocolError('unknown-command', `unknown page-server command ${hex(h.cmd >>> 0)}${at}`, streamOffset);
  }
  if (c !== PS_IOV.GET) return;
  if (h.nrPages === 0n || h.nrPages > BigInt(MAX_NR_PAGES)) {
    throw new ProtocolError('bad-nr-pages', `GET nr_pages ${h.nrPages} is outside 1..${MAX_NR_PAGES}${at}`, streamOffset);
  }
  if (h.vaddr % PS_PAGE_SIZE_N !== 0n) {
    throw new ProtocolError('unaligned-vaddr', `GET vaddr ${hex(h.vaddr)} is not page aligned${at}`, streamOffset);
  }
  if (h.dstId === 0n || h.dstId > 0x7fffffffn) {
    throw new ProtocolError('bad-dst-id', `GET dst_id ${h.dstId} is not a valid pid${at}`, streamOffset);
  }
}

/**
 * Splits a byte stream that arrives in arbitrary pieces into 32-byte headers. Used by the server,
 * whose inbound stream is headers only. A piece may hold many headers or part of one.
 */
export class HeaderDecoder {
  private partial = Buffer.alloc(PS_HEADER_SIZE);
  private have = 0;
  /** Bytes consumed so far: lets errors name the offset of the bad header in the stream. */
  offset = 0;

  /** Feeds one piece; returns the complete headers it finished, each with its stream offset. */
  push(chunk: Buffer): { header: PsHeader; offset: number }[] {
    const out: { header: PsHeader; offset: number }[] = [];
    let i = 0;
    if (this.have > 0) {
      const take = Math.min(PS_HEADER_SIZE - this.have, chunk.length);
      chunk.copy(this.partial, this.have, 0, take);
      this.have += take;
      i = take;
      if (this.have < PS_HEADER_SIZE) return out;
      out.push({ header: readHeader(this.partial), offset: this.offset });
      this.offset += PS_HEADER_SIZE;
      this.have = 0;
    }
    for (; i + PS_HEADER_SIZE <= chunk.length; i += PS_HEADER_SIZE) {
      out.push({ header: readHeader(chunk, i), offset: this.offset });
      this.offset += PS_HEADER_SIZE;
    }
    if (i < chunk.length) {
      chunk.copy(this.partial, 0, i);
      this.have = chunk.length - i;
    }
    return out;
  }

  /** Bytes of an unfinished header held back (non-zero at end of stream = truncated header). */
  get pending(): number {
    return this.have;
  }
}
