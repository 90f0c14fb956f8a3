/** The package's entry point exposes what the README promises to embedders. */
import test from 'ava';

import * as lib from '../ts/index.js';

test('the library exports the daemon, the page server, the checkpoint model and the error type', (t) => {
  t.is(typeof lib.startLazyPagesDaemon, 'function');
  t.is(typeof lib.startPageServer, 'function');
  t.is(typeof lib.Checkpoint.open, 'function');
  t.is(typeof lib.writeSyntheticCheckpoint, 'function');
  t.is(lib.SOCKET_NAME, 'lazy-pages.socket');
  t.true(new lib.ImageError('/x', 0, 'bad') instanceof lib.UserError);
});
