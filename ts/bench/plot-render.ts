/**
 * Draws a plot (plot.ts) with Vega, headlessly: no canvas (renderer 'none', toSVG). Run in a worker
 * thread when lazy-pages runs compiled (the CLI bundle cannot import() Vega: see plot.ts), in
 * process from the TypeScript sources (tests), where a worker could not load TypeScript.
 */
import { isMainThread, parentPort, workerData } from 'node:worker_threads';
import type { Spec } from 'vega';

/** The SVG text of a Vega spec. */
export async function vegaToSvg(spec: Record<string, unknown>): Promise<string> {
  const { parse, View } = await import('vega');
  const view = new View(parse(spec as Spec), { renderer: 'none' });
  try {
    return await view.toSVG();
  } finally {
    view.finalize();
  }
}

/** What plot.ts gives the worker. */
export interface RenderRequest {
  lazyPagesPlot: Record<string, unknown>;
}

// As the worker (no top-level await: this module is in the CommonJS CLI bundle too, never run there)
const req = workerData as RenderRequest | undefined;
if (!isMainThread && parentPort && req?.lazyPagesPlot) {
  const port = parentPort;
  void vegaToSvg(req.lazyPagesPlot).then((svg) => port.postMessage(svg));
}
