//! Who may connect to the native page server and how many at once: `--allow` CIDRs (IPv4 and IPv6), the
//! total and per-peer (per source IP) connection caps, and what an accept() failure means. A bad `--allow` is refused here, before anything
//! listens, with the words the CLI prints.

use std::collections::HashMap;
use std::net::IpAddr;

/// One `--allow` network: an address and a prefix length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
  net: IpAddr,
  prefix: u8,
}

/// An IPv4-mapped IPv6 address (`::ffff:a.b.c.d`, how a dual-stack socket sees an IPv4 peer) is that IPv4
/// address: `--allow 10.0.0.0/8` must match it.
pub fn normalize(ip: IpAddr) -> IpAddr {
  match ip {
    IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
    v4 => v4,
  }
}

impl Cidr {
  /// `ADDR/LEN` or a bare address (a single host). The host bits must be zero: `10.0.0.1/8` is refused, as
  /// it is most likely a typo for a host.
  pub fn parse(s: &str) -> Result<Cidr, String> {
    let bad = |why: &str| format!("--allow {s}: {why}");
    let (addr, len) = match s.split_once('/') {
      Some((a, l)) => (a, Some(l)),
      None => (s, None),
    };
    let ip: IpAddr =
      addr.trim().parse().map_err(|_| bad("not an IPv4 or IPv6 address (expected e.g. 10.0.0.0/24 or fd00::/64)"))?;
    let ip = normalize(ip);
    let max: u8 = if ip.is_ipv4() { 32 } else { 128 };
    let prefix = match len {
      None => max,
      Some(l) => match l.trim().parse::<u8>() {
        Ok(p) if p <= max && l.trim().chars().all(|c| c.is_ascii_digit()) => p,
        _ => return Err(bad(&format!("the prefix length must be 0-{max}"))),
      },
    };
    let c = Cidr { net: ip, prefix };
    if c.mask(ip) != bits(ip) {
      return Err(bad(&format!("host bits are set (did you mean {}/{prefix}?)", from_bits(ip, c.mask(ip)))));
    }
    Ok(c)
  }

  fn mask(&self, ip: IpAddr) -> u128 {
    let width: u32 = if ip.is_ipv4() { 32 } else { 128 };
    let keep = if self.prefix == 0 { 0 } else { u128::MAX << (width - self.prefix as u32) };
    let keep = if width == 32 { keep & 0xffff_ffff } else { keep };
    bits(ip) & keep
  }

  /// True when `ip` (normalized) lies in this network; an IPv4 peer never matches an IPv6 network.
  pub fn contains(&self, ip: IpAddr) -> bool {
    let ip = normalize(ip);
    ip.is_ipv4() == self.net.is_ipv4() && self.mask(ip) == bits(self.net)
  }
}

impl std::fmt::Display for Cidr {
  fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
    write!(f, "{}/{}", self.net, self.prefix)
  }
}

fn bits(ip: IpAddr) -> u128 {
  match ip {
    IpAddr::V4(a) => u32::from(a) as u128,
    IpAddr::V6(a) => u128::from(a),
  }
}

fn from_bits(like: IpAddr, b: u128) -> IpAddr {
  match like {
    IpAddr::V4(_) => IpAddr::V4((b as u32).into()),
    IpAddr::V6(_) => IpAddr::V6(b.into()),
  }
}

/// Why a connection was closed at accept, before any byte of it was read: `RefusalReason` in JS,
/// spelled in kebab-case ("not-allowed"), as in ts/pageserver/events.ts.
#[napi_derive::napi(string_enum = "kebab-case", js_name = "RefusalReason")]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
  NotAllowed,
  TooManyConnections,
  TooManyFromPeer,
}

/// The admission rules and the connections counted against them.
pub struct Gate {
  allow: Vec<Cidr>,
  /// 0 = no limit.
  max_total: u32,
  max_per_peer: u32,
  total: u32,
  per_peer: HashMap<IpAddr, u32>,
}

impl Gate {
  pub fn new(allow: Vec<Cidr>, max_total: u32, max_per_peer: u32) -> Gate {
    Gate { allow, max_total, max_per_peer, total: 0, per_peer: HashMap::new() }
  }

  /// Admits `ip` (counting it until [`Gate::leave`]) or says why not, with the log line's detail.
  pub fn admit(&mut self, ip: IpAddr) -> Result<(), (Refusal, String)> {
    let ip = normalize(ip);
    if !self.allow.is_empty() && !self.allow.iter().any(|c| c.contains(ip)) {
      let list: Vec<String> = self.allow.iter().map(|c| c.to_string()).collect();
      return Err((Refusal::NotAllowed, format!("{ip} is not in --allow {}", list.join(", "))));
    }
    if self.max_total > 0 && self.total >= self.max_total {
      return Err((
        Refusal::TooManyConnections,
        format!("{} connections already open (--max-connections {})", self.total, self.max_total),
      ));
    }
    let n = self.per_peer.get(&ip).copied().unwrap_or(0);
    if self.max_per_peer > 0 && n >= self.max_per_peer {
      return Err((
        Refusal::TooManyFromPeer,
        format!("{ip} already has {n} connections open (--max-per-peer {})", self.max_per_peer),
      ));
    }
    self.total += 1;
    *self.per_peer.entry(ip).or_insert(0) += 1;
    Ok(())
  }

  /// A connection admitted for `ip` has closed.
  pub fn leave(&mut self, ip: IpAddr) {
    let ip = normalize(ip);
    self.total = self.total.saturating_sub(1);
    if let Some(n) = self.per_peer.get_mut(&ip) {
      *n -= 1;
      if *n == 0 {
        self.per_peer.remove(&ip);
      }
    }
  }
}

/// What an accept() error means for the listener.
#[derive(Debug, PartialEq, Eq)]
pub enum AcceptErr {
  /// That one connection is gone (the peer reset it, a network error the man page says to retry on).
  Retry,
  /// Out of a resource (EMFILE, ENFILE, ENOBUFS, ENOMEM, or anything unexpected): the listener stays readable,
  /// so accepting again at once would spin; stop polling it for a while.
  BackOff(&'static str),
}

pub fn classify_accept_error(e: &std::io::Error) -> AcceptErr {
  match e.raw_os_error() {
    Some(libc::ECONNABORTED | libc::EPROTO | libc::EPERM | libc::ENETDOWN | libc::ENOPROTOOPT | libc::EHOSTDOWN)
    | Some(libc::ENONET | libc::EHOSTUNREACH | libc::EOPNOTSUPP | libc::ENETUNREACH | libc::EINTR) => AcceptErr::Retry,
    Some(libc::EMFILE) => AcceptErr::BackOff("EMFILE (this process has no file descriptor left: ulimit -n)"),
    Some(libc::ENFILE) => AcceptErr::BackOff("ENFILE (the system has no file descriptor left)"),
    Some(libc::ENOBUFS | libc::ENOMEM) => AcceptErr::BackOff("ENOMEM (out of socket memory)"),
    _ => AcceptErr::BackOff("an unexpected error"),
  }
}

#[cfg(test)]
mod tests {
  use super::*;

  fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
  }

  #[test]
  fn cidrs_match_ipv4_ipv6_and_mapped_peers() {
    let c = Cidr::parse("10.1.0.0/16").unwrap();
    assert!(c.contains(ip("10.1.200.3")));
    assert!(c.contains(ip("::ffff:10.1.0.9")));
    assert!(!c.contains(ip("10.2.0.1")));
    assert!(!c.contains(ip("::1")));
    let h = Cidr::parse("127.0.0.2").unwrap();
    assert_eq!(h.to_string(), "127.0.0.2/32");
    assert!(h.contains(ip("127.0.0.2")) && !h.contains(ip("127.0.0.1")));
    let v6 = Cidr::parse("fd00:1::/32").unwrap();
    assert!(v6.contains(ip("fd00:1::5")) && !v6.contains(ip("fd00:2::5")) && !v6.contains(ip("10.0.0.1")));
    assert!(Cidr::parse("0.0.0.0/0").unwrap().contains(ip("1.2.3.4")));
    assert!(!Cidr::parse("0.0.0.0/0").unwrap().contains(ip("2001::1")));
    assert!(Cidr::parse("::/0").unwrap().contains(ip("2001::1")));
    assert!(Cidr::parse("::ffff:10.0.0.0/104").is_err(), "a mapped address takes an IPv4 prefix");
    assert!(Cidr::parse("::ffff:10.0.0.0/8").unwrap().contains(ip("10.9.9.9")));
  }

  #[test]
  fn bad_cidrs_are_named() {
    assert_eq!(
      Cidr::parse("10.0.0.1/8").unwrap_err(),
      "--allow 10.0.0.1/8: host bits are set (did you mean 10.0.0.0/8?)"
    );
    assert!(Cidr::parse("10.0.0.0/33").unwrap_err().contains("0-32"));
    assert!(Cidr::parse("fd00::/129").unwrap_err().contains("0-128"));
    assert!(Cidr::parse("10.0.0.0/+8").is_err());
    assert!(Cidr::parse("example.com/8").unwrap_err().contains("not an IPv4 or IPv6 address"));
    assert!(Cidr::parse("").is_err());
  }

  #[test]
  fn the_gate_counts_per_peer_and_in_total() {
    let mut g = Gate::new(vec![], 3, 2);
    assert!(g.admit(ip("127.0.0.1")).is_ok());
    assert!(g.admit(ip("::ffff:127.0.0.1")).is_ok());
    assert_eq!(g.admit(ip("127.0.0.1")).unwrap_err().0, Refusal::TooManyFromPeer);
    assert!(g.admit(ip("127.0.0.2")).is_ok());
    let (r, d) = g.admit(ip("127.0.0.3")).unwrap_err();
    assert_eq!((r, d.as_str()), (Refusal::TooManyConnections, "3 connections already open (--max-connections 3)"));
    g.leave(ip("127.0.0.1"));
    assert!(g.admit(ip("127.0.0.3")).is_ok());
    let mut only = Gate::new(vec![Cidr::parse("127.0.0.2/32").unwrap()], 0, 0);
    let (r, d) = only.admit(ip("127.0.0.1")).unwrap_err();
    assert_eq!((r, d.as_str()), (Refusal::NotAllowed, "127.0.0.1 is not in --allow 127.0.0.2/32"));
    for _ in 0..1000 {
      assert!(only.admit(ip("127.0.0.2")).is_ok(), "0 = no cap");
    }
  }

  #[test]
  fn fd_exhaustion_backs_off() {
    let e = std::io::Error::from_raw_os_error(libc::EMFILE);
    assert!(matches!(classify_accept_error(&e), AcceptErr::BackOff(m) if m.starts_with("EMFILE")));
    assert_eq!(classify_accept_error(&std::io::Error::from_raw_os_error(libc::ECONNABORTED)), AcceptErr::Retry);
  }
}
