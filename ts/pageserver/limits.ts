/**
 * Who may connect to a page server and how many at once, for both engines: `--allow` networks (IPv4
 * and IPv6), the total and per-peer (per source IP) connection caps, and their defaults. The native
 * engine applies the same rules with the same words (crates/uffd-native/src/pageserver/limits.rs);
 * this side parses the options (so a bad one is refused before anything listens) and runs them for
 * the TS engine (TLS).
 */
import net from 'node:net';
import { UserError } from '../errors.js';
import type { RefusalReason } from './events.js';

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

/** One `--allow` network. */
export interface Cidr {
  v6: boolean;
  /** The network's address as a number (128 bits for IPv6, 32 for IPv4). */
  bits: bigint;
  prefix: number;
  /** `ADDR/LEN`, as given to the native engine and printed in messages. */
  text: string;
}

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

/** `ADDR/LEN` or a bare address (one host). Host bits must be zero: `10.0.0.1/8` is refused as a likely typo. */
export function parseCidr(s: string): Cidr {
  const bad = (why: string) => new UserError('EOPTION', `--allow ${s}: ${why}`);
  const slash = s.indexOf('/');
  const addr = normalizeIp((slash < 0 ? s : s.slice(0, slash)).trim());
  const family = net.isIP(addr);
  if (family === 0 || s.slice(0, slash < 0 ? undefined : slash).includes('%')) {
    throw bad('not an IPv4 or IPv6 address (expected e.g. 10.0.0.0/24 or fd00::/64)');
  }
  const v6 = family === 6;
  const max = v6 ? 128 : 32;
  let prefix = max;
  if (slash >= 0) {
    const l = s.slice(slash + 1).trim();
    if (!/^\d{1,3}$/.test(l) || Number(l) > max) throw bad(`the prefix length must be 0-${max}`);
    prefix = Number(l);
  }
  const bits = v6 ? v6bits(addr) : v4bits(addr);
  const net_ = bits & mask(v6, prefix);
  const text = (b: bigint) => (v6 ? v6text(b) : v4text(b));
  if (net_ !== bits) throw bad(`host bits are set (did you mean ${text(net_)}/${prefix}?)`);
  return { v6, bits, prefix, text: `${text(bits)}/${prefix}` };
}

function mask(v6: boolean, prefix: number): bigint {
  const width = v6 ? 128n : 32n;
  const all = (1n << width) - 1n;
  return prefix === 0 ? 0n : (all << (width - BigInt(prefix))) & all;
}

/** True when `address` (a peer's, normalized) lies in `c`; an IPv4 peer never matches an IPv6 network. */
export function cidrContains(c: Cidr, address: string): boolean {
  const a = normalizeIp(address);
  const family = net.isIP(a);
  if (family === 0 || (family === 6) !== c.v6) return false;
  const bits = c.v6 ? v6bits(a) : v4bits(a);
  return (bits & mask(c.v6, c.prefix)) === c.bits;
}

/** Loopback: 127.0.0.0/8, ::1 (and their IPv4-mapped forms). Only these are private to this machine. */
export function isLoopback(address: string): boolean {
  const a = normalizeIp(address);
  return a === '::1' || (net.isIPv4(a) && a.startsWith('127.'));
}

/** The admission rules and the connections counted against them (the TS engine's; the native engine has its own). */
export class Gate {
  private total = 0;
  private readonly perPeer = new Map<string, number>();

  constructor(private readonly allow: Cidr[], private readonly maxTotal: number, private readonly maxPerPeer: number) {}

  /** Admits a peer at `address` (counting it until {@link leave}), or says why not. */
  admit(address: string): { reason: RefusalReason; detail: string } | undefined {
    const ip = normalizeIp(address);
    if (this.allow.length > 0 && !this.allow.some((c) => cidrContains(c, ip))) {
      return { reason: 'not-allowed', detail: `${ip} is not in --allow ${this.allow.map((c) => c.text).join(', ')}` };
    }
    if (this.maxTotal > 0 && this.total >= this.maxTotal) {
      return { reason: 'too-many-connections', detail: `${this.total} connections already open (--max-connections ${this.maxTotal})` };
    }
    const n = this.perPeer.get(ip) ?? 0;
    if (this.maxPerPeer > 0 && n >= this.maxPerPeer) {
      return { reason: 'too-many-from-peer', detail: `${ip} already has ${n} connections open (--max-per-peer ${this.maxPerPeer})` };
    }
    this.total++;
    this.perPeer.set(ip, n + 1);
    return undefined;
  }

  leave(address: string): void {
    const ip = normalizeIp(address);
    this.total = Math.max(0, this.total - 1);
    const n = (this.perPeer.get(ip) ?? 1) - 1;
    if (n <= 0) this.perPeer.delete(ip);
    else this.perPeer.set(ip, n);
  }
}

/** `ip:port`, or `[ip]:port` for IPv6, with the IP normalized (as the native engine prints peers). */
export function peerName(address: string | undefined, port: number | undefined): string {
  const ip = normalizeIp(address ?? '?');
  return net.isIPv6(ip) ? `[${ip}]:${port}` : `${ip}:${port}`;
}
