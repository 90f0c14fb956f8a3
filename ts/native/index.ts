/**
 * The native core (crates/uffd-native) behind a documented, typed facade.
 * This folder is the only importer of the generated binding.
 */
import { binding } from './binding.js';

/** Version of the loaded native addon. */
export function nativeVersion(): string {
  return binding.nativeVersion();
}
