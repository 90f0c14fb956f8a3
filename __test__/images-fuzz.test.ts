// Fuzz: >= 10,000 mutated images (seeded, reproducible) must each parse or end in an ImageError.
import test from 'ava';
import { cpSync, mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { Checkpoint, ImageError, writeSyntheticCheckpoint } from '../ts/images/index.js';
import { prng } from '../ts/images/synth.js';
import { fixturesDir } from './images-helpers.js';

const ITERATIONS = 10_000;

test('10,000 mutated images: success or ImageError, nothing else', async (t) => {
  const root = mkdtempSync(path.join(os.tmpdir(), 'lp-fuzz-'));
  t.teardown(() => rmSync(root, { recursive: true, force: true }));
  const synthDir = path.join(root, 'synth');
  await writeSyntheticCheckpoint({ out: synthDir, size: 600 * 4096, vmas: 3, procs: 2, pidBase: 1_300_000, holes: 0.2, seed: 3 });
  const fixDir = path.join(root, 'fixture');
  cpSync(path.join(fixturesDir, 'fork-tree'), fixDir, { recursive: true });
  const bases = [synthDir, fixDir].map((dir) => ({
    dir,
    files: readdirSync(dir).filter((f) => f.endsWith('.img') && !f.startsWith('pages-') && (/^(inventory|pstree|core|mm|pagemap)/.test(f)))
      .map((f) => ({ name: f, bytes: readFileSync(path.join(dir, f)) })),
  }));
  const rand = prng(0xc0ffee);
  const int = (n: number) => Math.floor(rand() * n);
  const counts = { ok: 0, imageError: 0 };
  const t0 = performance.now();
  for (let i = 0; i < ITERATIONS; i++) {
    const base = bases[i % bases.length]!;
    const target = base.files[int(base.files.length)]!;
    const b = Buffer.from(target.bytes);
    let mutated: Buffer = b;
    const kind = int(4);
    if (kind === 0) {
      // Byte flips.
      for (let k = 1 + int(4); k > 0; k--) b[int(b.length)] ^= 1 << int(8);
    } else if (kind === 1) {
      mutated = b.subarray(0, int(b.length));
    } else if (kind === 2) {
      // Length-field edit: find a record boundary by walking the framing, then rewrite its size.
      let pos = target.name === 'inventory.img' ? 4 : 8;
      const stops: number[] = [];
      while (pos + 4 <= b.length) {
        stops.push(pos);
        pos += 4 + b.readUInt32LE(pos);
      }
      if (stops.length) {
        const at = stops[int(stops.length)]!;
        const choices = [0, 1, b.readUInt32LE(at) + 1, b.readUInt32LE(at) - 1, 0xffffffff, int(64)];
        b.writeUInt32LE(choices[int(choices.length)]! >>> 0, at);
      }
    } else {
      // Random bytes spliced in.
      const at = int(b.length);
      const junk = Buffer.from(Array.from({ length: 1 + int(8) }, () => int(256)));
      mutated = Buffer.concat([b.subarray(0, at), junk, b.subarray(at)]);
    }
    const file = path.join(base.dir, target.name);
    writeFileSync(file, mutated);
    try {
      await Checkpoint.open(base.dir);
      counts.ok++;
    } catch (e) {
      if (!(e instanceof ImageError)) {
        t.fail(`iteration ${i} (${target.name}, mutation ${kind}) threw a non-ImageError: ${(e as Error)?.stack ?? e}`);
        break;
      }
      if (!e.message.includes(base.dir)) t.fail(`iteration ${i}: message does not name a file in the dir: ${e.message}`);
      counts.imageError++;
    } finally {
      writeFileSync(file, target.bytes);
    }
  }
  const s = (performance.now() - t0) / 1000;
  t.log(`${ITERATIONS} mutations in ${s.toFixed(1)} s: ${counts.ok} parsed, ${counts.imageError} ImageError`);
  t.is(counts.ok + counts.imageError, ITERATIONS);
  t.true(counts.imageError > ITERATIONS / 2);
});
