/** lazy-pages: the library entry point for orchestrators. */
export { UserError } from './errors.js';
export { nativeVersion } from './native/index.js';
