/**
 * The real CRIU 4.2 in post-copy migrations: lazy pages fetched over TCP with CRIU's page-server
 * protocol, every byte checked by the restored program. The modes, as users run them:
 *   - `criu dump --lazy-pages --address A --port P` (the frozen task serves its memory) -> our daemon,
 *     over loopback and between two network namespaces joined by a veth pair;
 *   - `criu page-server --lazy-pages` serving a plain dump dir -> our daemon;
 *   - `lazy-pages page-server` serving a plain dump dir -> our daemon;
 *   - `lazy-pages page-server` -> CRIU's own `criu lazy-pages --page-server`.
 * The destination always restores from its own copy of the images, into a new pid namespace.
 * CRIU's page servers accept exactly one TCP connection: a daemon must do all its work over it.
 */
import test from 'ava';

import { assertRun, criuTest, lazyRestore, onDemandPages, scenarios, type LazyRestoreOptions, type Scenario } from './helpers/criu.js';
import { hasIp, makeNetnsPair } from './helpers/netns.js';

const sc = scenarios('small');

interface Mode {
  title: string;
  source: LazyRestoreOptions['source'];
  daemon: LazyRestoreOptions['daemon'];
  netns?: boolean;
  scenarios: Scenario[];
}

const all = Object.values(sc);
const modes: Mode[] = [
  { title: 'criu dump --lazy-pages -> lazy-pages daemon (loopback)', source: 'criu-lazy-dump', daemon: 'ours', scenarios: all },
  { title: 'criu dump --lazy-pages -> lazy-pages daemon (two network namespaces, veth)', source: 'criu-lazy-dump', daemon: 'ours', netns: true, scenarios: all },
  { title: 'criu page-server --lazy-pages -> lazy-pages daemon', source: 'criu-page-server', daemon: 'ours', scenarios: all },
  { title: 'lazy-pages page-server -> lazy-pages daemon', source: 'our-page-server', daemon: 'ours', scenarios: all },
  { title: 'lazy-pages page-server -> criu lazy-pages', source: 'our-page-server', daemon: 'criu', scenarios: all },
];

for (const m of modes) {
  for (const s of m.scenarios) {
    const title = `${m.title}: ${s.title}`;
    if (m.netns && !hasIp()) {
      test.skip(`${title} [no ip(8)]`, () => undefined);
      continue;
    }
    criuTest(title, async (t) => {
      const ns = m.netns ? makeNetnsPair(t) : undefined;
      const o: LazyRestoreOptions = {
        scenario: s,
        source: m.source,
        daemon: m.daemon,
        netns: ns ? { src: ns.ns1, dst: ns.ns2, srcAddress: ns.addr1 } : undefined,
      };
      const r = await lazyRestore(t, o);
      assertRun(t, o, r);
      if (m.daemon === 'ours') {
        const p = onDemandPages(r.daemonLog);
        t.log(`our daemon: ${p.onDemand} pages on demand, ${p.background} in background, ${p.processes} processes`);
      }
    }, { serial: true });
  }
}
