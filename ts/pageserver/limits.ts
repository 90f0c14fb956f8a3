/**
 * The defaults of a page server's limits (the connection caps and the idle timeout), and how it names
 * addresses. The rules themselves (`--allow` networks, the caps) are parsed and applied natively
 * (crates/uffd-native/src/pageserver/limits.rs), where a bad `--allow` is refused before anything listens.
 */
import net from 'node:net';

/** At most this many connections at once (`--max-connections`); more are closed at accept. */
export const DEFAULT_MAX_CONNECTIONS = 64;
/** At most this many from one source IP (`--max-per-peer`): one restore needs one. */
export const DEFAULT_MAX_PER_PEER = 8;
/**
 * A connection with nothing in progress and no request for this long is closed (`--idle-timeout`).
 * Generous on purpose: a restoring daemon connects when it starts, before its restore, and with
 * `--no-background` asks for nothing while its processes touch no new page; closing its connection
 * makes it kill the processes it restored. The caps, not this, are what bound idle connections.
 */
export const DEFAULT_IDLE_TIMEOUT_MS = 10 * 60_000;

function v4bits(a: string): bigint {
  return a.split('.').reduce((n, o) => (n << 8n) | BigInt(Number(o)), 0n);
}

function v6bits(a: string): bigint {
  let s = a;
  const tail = /(\d+\.\d+\.\d+\.\d+)$/.exec(s);
  if (tail) {
    const v4 = v4bits(tail[1]!);
    s = `${s.slice(0, -tail[1]!.length)}${(v4 >> 16n).toString(16)}:${(v4 & 0xffffn).toString(16)}`;
  }
  const [head, rest] = s.includes('::') ? s.split('::') as [string, string] : [s, undefined];
  const hs = head ? head.split(':') : [];
  const ts = rest ? rest.split(':') : [];
  const groups = rest === undefined ? hs : [...hs, ...Array<string>(8 - hs.length - ts.length).fill('0'), ...ts];
  return groups.reduce((n, g) => (n << 16n) | BigInt(parseInt(g, 16)), 0n);
}

function v4text(b: bigint): string {
  return [24n, 16n, 8n, 0n].map((k) => String((b >> k) & 0xffn)).join('.');
}

function v6text(b: bigint): string {
  const groups = Array.from({ length: 8 }, (_, i) => ((b >> BigInt(112 - 16 * i)) & 0xffffn).toString(16));
  // The shortest form: the longest run of zero groups (two or more) becomes '::'.
  let best = [-1, 0];
  for (let i = 0; i < 8;) {
    if (groups[i] !== '0') {
      i++;
      continue;
    }
    let j = i;
    while (j < 8 && groups[j] === '0') j++;
    if (j - i > best[1]! && j - i > 1) best = [i, j - i];
    i = j;
  }
  if (best[0]! < 0) return groups.join(':');
  const [at, len] = best as [number, number];
  return `${groups.slice(0, at).join(':')}::${groups.slice(at + len).join(':')}`;
}

/** An IPv4-mapped IPv6 address (`::ffff:a.b.c.d`, how a dual-stack socket sees an IPv4 peer) is that IPv4 address. */
export function normalizeIp(address: string): string {
  const a = address.replace(/%.*$/, '');
  const m = /^::ffff:(\d+\.\d+\.\d+\.\d+)$/i.exec(a);
  if (m) return m[1]!;
  if (net.isIPv6(a)) {
    const b = v6bits(a);
    if (b >> 32n === 0xffffn) return v4text(b & 0xffffffffn);
    return v6text(b);
  }
  return a;
}

/** Loopback: 127.0.0.0/8, ::1 (and their IPv4-mapped forms). Only these are private to this machine. */
export function isLoopback(address: string): boolean {
  const a = normalizeIp(address);
  return a === '::1' || (net.isIPv4(a) && a.startsWith('127.'));
}

/** `ip:port`, or `[ip]:port` for IPv6, with the IP normalized (as the native engine prints peers). */
export function peerName(address: string | undefined, port: number | undefined): string {
  const ip = normalizeIp(address ?? '?');
  return net.isIPv6(ip) ? `[${ip}]:${port}` : `${ip}:${port}`;
}
