/** CRIU checkpoint images: parsing, the checkpoint model, page lookup and a synthetic writer. */
export { PAGE_SIZE, PE_LAZY, PE_PARENT, PE_PRESENT, MAGIC } from './constants.js';
export { ImageError } from './errors.js';
export type { Vma } from './vma.js';
export { isLazyVma } from './vma.js';
export type { DataLocation, PageRange } from './page-index.js';
export { PageIndex } from './page-index.js';
export type { ProcessImage, TaskState } from './process.js';
export { pageStats } from './process.js';
export { Checkpoint, type ShmemInfo } from './checkpoint.js';
export { machineMemoryBytes, type CheckpointOptions } from './limits.js';
export { writeSyntheticCheckpoint, type SynthOptions } from './synth.js';
export { patternWord, fillPatternPage, checkPatternPage } from './pattern.js';
