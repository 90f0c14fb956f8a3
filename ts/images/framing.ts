/**
 * Image framing: magic header, then `u32 size` + protobuf payload records until end of file.
 * This is the only place that knows the byte layout of an image file.
 */
import { readFileSync } from 'node:fs';
import { fromBinary, isFieldSet, type DescMessage, type MessageShape } from '@bufbuild/protobuf';
import { MAGIC } from './constants.js';
import { ImageError, hex } from './errors.js';

export interface RawRecord {
  /** Byte offset of the record's size field in the file. */
  offset: number;
  payload: Uint8Array;
}

const LABEL_REQUIRED = 2; // FieldDescriptorProto.Label.LABEL_REQUIRED

/** Reads a whole image file; an unreadable file is an ImageError at offset 0. */
export function readImageBytes(file: string): Buffer {
  try {
    return readFileSync(file);
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    throw new ImageError(file, 0, code === 'ENOENT' ? 'file is missing' : `cannot read (${code ?? e})`, { cause: e });
  }
}

/**
 * Checks the header and splits the records. `magic` is the image's own magic; every image but
 * inventory.img carries the common (or service) magic before it.
 */
export function splitRecords(file: string, buf: Uint8Array, magic: number): RawRecord[] {
  const dv = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
  let pos = 0;
  const need = (n: number, what: string) => {
    if (buf.byteLength - pos < n) throw new ImageError(file, pos, `file truncated: expected ${what}`);
  };
  if (magic !== MAGIC.inventory) {
    need(4, 'the common magic');
    const common = dv.getUint32(pos, true);
    if (common !== MAGIC.common && common !== MAGIC.service) {
      throw new ImageError(file, pos, `wrong magic ${hex(common)}: not a CRIU image (expected ${hex(MAGIC.common)})`);
    }
    pos += 4;
  }
  need(4, 'the image magic');
  const own = dv.getUint32(pos, true);
  if (own !== magic) throw new ImageError(file, pos, `wrong image magic ${hex(own)} (expected ${hex(magic)})`);
  pos += 4;
  const out: RawRecord[] = [];
  while (pos < buf.byteLength) {
    need(4, 'a record size');
    const size = dv.getUint32(pos, true);
    if (size > buf.byteLength - pos - 4) {
      throw new ImageError(file, pos, `record size ${size} runs past the end of the file (${buf.byteLength - pos - 4} bytes left)`);
    }
    out.push({ offset: pos, payload: buf.subarray(pos + 4, pos + 4 + size) });
    pos += 4 + size;
  }
  return out;
}

/** Decodes one record and checks proto2 `required` fields (protobuf-es does not). */
export function decodeRecord<D extends DescMessage>(file: string, rec: RawRecord, schema: D): MessageShape<D> {
  let msg: MessageShape<D>;
  try {
    msg = fromBinary(schema, rec.payload);
  } catch (e) {
    throw new ImageError(file, rec.offset, `corrupt ${schema.name} record: ${(e as Error).message}`, { cause: e });
  }
  const missing = missingRequired(schema, msg as never, '');
  if (missing) throw new ImageError(file, rec.offset, `${schema.name} record lacks required field ${missing}`);
  return msg;
}

/** Returns the dotted path of the first unset required field, recursing into set sub-messages. */
function missingRequired(schema: DescMessage, msg: Record<string, unknown>, prefix: string): string | undefined {
  for (const f of schema.fields) {
    if (f.proto.label === LABEL_REQUIRED && !isFieldSet(msg as never, f)) return prefix + f.name;
    if (f.fieldKind === 'message' && isFieldSet(msg as never, f)) {
      const m = missingRequired(f.message, msg[f.localName] as Record<string, unknown>, `${prefix}${f.name}.`);
      if (m) return m;
    } else if (f.fieldKind === 'list' && f.listKind === 'message') {
      const list = msg[f.localName] as Record<string, unknown>[];
      for (let i = 0; i < list.length; i++) {
        const m = missingRequired(f.message, list[i]!, `${prefix}${f.name}[${i}].`);
        if (m) return m;
      }
    }
  }
  return undefined;
}

/** Reads an image whose records all share one message type. */
export function readImage<D extends DescMessage>(file: string, magic: number, schema: D): { rec: RawRecord; msg: MessageShape<D> }[] {
  return splitRecords(file, readImageBytes(file), magic).map((rec) => ({ rec, msg: decodeRecord(file, rec, schema) }));
}
