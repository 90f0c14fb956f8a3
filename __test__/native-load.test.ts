import test from 'ava';
import { nativeVersion } from '../ts/native/index.js';

test('the native addon loads through the facade', (t) => {
  t.regex(nativeVersion(), /^\d+\.\d+\.\d+$/);
});
