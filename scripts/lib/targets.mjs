// The Linux targets lazy-pages ships, and what each is called by Rust, napi-rs and npm.
// One table for the packaging scripts (package-platform.mjs, package-main.mjs, pack-local.mjs).
export const TARGETS = [
  { triple: 'x86_64-unknown-linux-gnu', platform: 'linux-x64-gnu', cpu: 'x64', libc: 'glibc' },
  { triple: 'x86_64-unknown-linux-musl', platform: 'linux-x64-musl', cpu: 'x64', libc: 'musl' },
  { triple: 'aarch64-unknown-linux-gnu', platform: 'linux-arm64-gnu', cpu: 'arm64', libc: 'glibc' },
  { triple: 'aarch64-unknown-linux-musl', platform: 'linux-arm64-musl', cpu: 'arm64', libc: 'musl' },
];

/** The binaries a platform package carries besides the addon, next to it. */
export const EXECUTABLES = ['lazy-pages-guardian', 'restore-sim'];

export const addonFile = (t) => `lazy-pages.${t.platform}.node`;
export const platformPackage = (t) => `lazy-pages-${t.platform}`;

export function targetByTriple(triple) {
  const t = TARGETS.find((x) => x.triple === triple);
  if (!t) throw new Error(`unknown target ${triple}: one of ${TARGETS.map((x) => x.triple).join(', ')}`);
  return t;
}

/** Parses `--name value` pairs; an unknown or valueless option is an error naming it. */
export function parseArgs(argv, names) {
  const out = {};
  for (let i = 0; i < argv.length; i += 2) {
    const name = argv[i]?.replace(/^--/, '');
    if (!names.includes(name) || argv[i + 1] === undefined) {
      throw new Error(`bad option ${argv[i]}: expected ${names.map((n) => `--${n} VALUE`).join(' ')}`);
    }
    out[name] = argv[i + 1];
  }
  for (const n of names) if (out[n] === undefined) throw new Error(`missing --${n}`);
  return out;
}
