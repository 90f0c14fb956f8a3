/** Encodes image files: header magics, then `u32 size` + protobuf payload records. */
import { toBinary, type DescMessage, type MessageShape } from '@bufbuild/protobuf';
import { MAGIC } from './constants.js';

export function encodeImage<D extends DescMessage>(magic: number, schema: D, msgs: MessageShape<D>[]): Buffer {
  return encodeRecords(magic, msgs.map((m) => toBinary(schema, m)));
}

/** Frames already-encoded payloads (records of mixed types, e.g. a pagemap head and its entries). */
export function encodeRecords(magic: number, payloads: Uint8Array[]): Buffer {
  const header = magic === MAGIC.inventory ? [magic] : [MAGIC.common, magic];
  const size = header.length * 4 + payloads.reduce((n, p) => n + 4 + p.byteLength, 0);
  const out = Buffer.alloc(size);
  let pos = 0;
  for (const m of header) pos = out.writeUInt32LE(m, pos);
  for (const p of payloads) {
    pos = out.writeUInt32LE(p.byteLength, pos);
    out.set(p, pos);
    pos += p.byteLength;
  }
  return out;
}
