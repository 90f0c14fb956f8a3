// Shared helpers of the images-*.test.ts files (not a test file itself: ava only runs *.test.ts).
import path from 'node:path';
import { fileURLToPath } from 'node:url';

export const repoRoot = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
/** The fixtures sit beside the repo (CI clones the repo with a copy of shared/ next to it). */
export const fixturesDir = path.join(repoRoot, '..', 'shared', 'fixtures', 'criu-images');
export const FIXTURES = ['single-anon', 'mremap', 'fork-tree', 'mixed-vmas', 'lazy-remote'] as const;
