/**
 * Tests that cannot run here (a missing tool, not root) are registered with test.skip, so ava lists
 * them as skipped (with the reason in the title) instead of passing a placeholder test.
 */
import test, { type ImplementationFn } from 'ava';

/** Registers a test: test, test.serial, or another skipUnless. */
export type Register = (title: string, fn: ImplementationFn<[]>) => void;

/** `reg` when `ok`; otherwise registers the test as skipped with `[why]` appended to its title. */
export function skipUnless(ok: boolean, why: string, reg: Register = test): Register {
  return ok ? reg : (title, fn) => test.skip(`${title} [${why}]`, fn);
}
