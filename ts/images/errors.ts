import { UserError } from '../errors.js';

/**
 * A checkpoint image that cannot be used. Always names the file and the byte offset where the
 * problem was found, so a user can look at it with `xxd` or `crit`.
 */
export class ImageError extends UserError {
  override name = 'ImageError';
  readonly file: string;
  readonly offset: number;
  constructor(file: string, offset: number, what: string, options?: { cause?: unknown }) {
    super('EBADIMAGE', `${file}: at byte ${offset}: ${what}`, options);
    this.file = file;
    this.offset = offset;
  }
}

/** Formats an address the way CRIU's tools do. */
export function hex(v: bigint | number): string {
  return '0x' + v.toString(16);
}
