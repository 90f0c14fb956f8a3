/**
 * Reads page data out of pages-N.img files through the native core's read-only mmap (`PageImage`):
 * a synchronous copy out of the page cache, no thread-pool hop per GET (which cost a fault tens of
 * microseconds when reads went through `fs`).
 */
import { UserError } from '../errors.js';
import { PageImage } from '../native/index.js';

export class PageReader {
  // One mapping per file: a page server answers many GETs from the same few files.
  private readonly images = new Map<string, PageImage>();

  /** Exactly `len` bytes of `file` at `offset`, in a fresh Buffer the caller may hand off. */
  async read(file: string, offset: bigint, len: number): Promise<Buffer> {
    const img = this.image(file);
    if (offset + BigInt(len) > BigInt(img.length)) {
      throw new UserError('EBADIMAGE', `${file}: offset 0x${offset.toString(16)}: file ends before the page data the pagemap promises`);
    }
    return img.read(Number(offset), len);
  }

  private image(file: string): PageImage {
    let img = this.images.get(file);
    if (!img) {
      try {
        img = PageImage.open(file);
      } catch (e) {
        throw new UserError('EBADIMAGE', `${file}: cannot open: ${(e as Error).message}`);
      }
      this.images.set(file, img);
    }
    return img;
  }

  async close(): Promise<void> {
    for (const img of this.images.values()) img.close();
    this.images.clear();
  }
}
