/** The pages files the native core copies from: each opened (mmapped) once, on first use, by path. */
import { PageImage, type EventLoop } from '../native/index.js';

export class PageImages {
  private readonly ids = new Map<string, number>();
  private readonly open: PageImage[] = [];

  constructor(private readonly loop: EventLoop) {}

  /** The loop's id of `file`'s image, opening and adding it the first time. */
  id(file: string): number {
    let id = this.ids.get(file);
    if (id === undefined) {
      const img = PageImage.open(file);
      this.open.push(img);
      id = this.loop.addImage(img);
      this.ids.set(file, id);
    }
    return id;
  }

  /** Unmap every image (after the loop has closed: it copies from them until then). */
  close(): void {
    for (const img of this.open) img.close();
  }
}
