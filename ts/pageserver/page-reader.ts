/**
 * Reads page data out of pages-N.img files. One small class on purpose: it is the seam where the
 * native read-only mmap (`PageImage` in ts/native) will replace plain `fs` reads later.
 */
import { open, type FileHandle } from 'node:fs/promises';
import { UserError } from '../errors.js';

export class PageReader {
  // One cached handle per file: a page server answers many GETs from the same few files.
  private readonly handles = new Map<string, Promise<FileHandle>>();

  /** Exactly `len` bytes of `file` at `offset`, in a fresh Buffer the caller may hand off. */
  async read(file: string, offset: bigint, len: number): Promise<Buffer> {
    const fh = await this.handle(file);
    const buf = Buffer.allocUnsafe(len);
    let done = 0;
    while (done < len) {
      const { bytesRead } = await fh.read(buf, done, len - done, Number(offset) + done);
      if (bytesRead === 0) {
        throw new UserError('EBADIMAGE', `${file}: offset 0x${(offset + BigInt(done)).toString(16)}: file ends before the page data the pagemap promises`);
      }
      done += bytesRead;
    }
    return buf;
  }

  private handle(file: string): Promise<FileHandle> {
    let h = this.handles.get(file);
    if (!h) {
      h = open(file, 'r').catch((e: NodeJS.ErrnoException) => {
        this.handles.delete(file);
        throw new UserError('EBADIMAGE', `${file}: cannot open: ${e.code ?? e.message}`);
      });
      this.handles.set(file, h);
    }
    return h;
  }

  async close(): Promise<void> {
    const all = [...this.handles.values()];
    this.handles.clear();
    await Promise.all(all.map((p) => p.then((h) => h.close(), () => undefined)));
  }
}
