//! The page-server client's one connection: dialling (TCP, then the TLS handshake within the same time
//! limit), the transport (plain | TLS), output the socket did not take yet, epoll interest, and the end of
//! the session (CLOSE). Knows nothing of requests and replies beyond the CLOSE header and its status.

use std::net::{TcpStream, ToSocketAddrs};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::pki_types::ServerName;

use super::ConnectError;
use crate::pagewire::Header;
use crate::poller::Poller;
use crate::transport::{Got, Transport};

/// The one non-blocking connection: pending output and epoll interest.
pub struct Conn {
  fd: OwnedFd,
  pub transport: Transport,
  poller: Option<Poller>,
  tok: u64,
  /// Plain TCP output the socket did not take yet (TLS output waits inside rustls instead).
  out: Vec<u8>,
  out_off: usize,
  pollout: bool,
}

fn tcp(name: &str, address: &str, port: u16, timeout: Duration) -> Result<OwnedFd, ConnectError> {
  let addrs: Vec<_> = (address, port).to_socket_addrs().map_err(|e| ConnectError::Resolve(name.into(), e))?.collect();
  let mut last = std::io::Error::new(std::io::ErrorKind::NotFound, "the address resolved to nothing");
  for a in addrs {
    match TcpStream::connect_timeout(&a, timeout) {
      Ok(s) => {
        let setup = |e| ConnectError::Setup(name.into(), e);
        s.set_nodelay(true).map_err(setup)?;
        s.set_nonblocking(true).map_err(setup)?;
        return Ok(OwnedFd::from(s));
      }
      Err(e) => last = e,
    }
  }
  Err(ConnectError::Connect(name.into(), last))
}

/// Waits until `fd` is readable, or writable too when `out`: false when the deadline passed first.
fn wait(fd: RawFd, out: bool, deadline: Instant) -> bool {
  let left = deadline.saturating_duration_since(Instant::now());
  !left.is_zero() && crate::poller::wait_fd(fd, out, left)
}

/// The name the server certificate is checked against: the address dialled, as an IP address (IPv6
/// brackets and zone dropped) or a host name. An address that is neither (it still resolved) becomes
/// a name in the reserved `.invalid` domain, which no CA certifies: it passes only with the name check
/// off (`--tls-no-cn-verify`), never because some certificate happens to name a stand-in.
fn server_name(address: &str) -> Result<ServerName<'static>, rustls::pki_types::InvalidDnsNameError> {
  let bare = address.trim_start_matches('[').trim_end_matches(']');
  let bare = bare.split('%').next().unwrap_or(bare);
  if let Ok(ip) = bare.parse::<std::net::IpAddr>() {
    return Ok(ServerName::IpAddress(ip.into()));
  }
  ServerName::try_from(address.to_owned()).or_else(|_| ServerName::try_from("address-is-not-a-name.invalid".to_owned()))
}

impl Conn {
  /// Connects (blocking, at most `timeout` for the TCP connect and as long again for the TLS handshake),
  /// so a refused, unreachable or unauthenticated server is an error of the connect call itself.
  pub fn open(
    name: &str,
    address: &str,
    port: u16,
    timeout: Duration,
    tls: Option<Arc<rustls::ClientConfig>>,
  ) -> Result<Conn, ConnectError> {
    let fd = tcp(name, address, port, timeout)?;
    let transport = match tls {
      None => Transport::Plain,
      Some(cfg) => {
        let sni = server_name(address).map_err(|e| ConnectError::Tls(name.into(), e.to_string()))?;
        let c = rustls::ClientConnection::new(cfg, sni).map_err(|e| ConnectError::Tls(name.into(), e.to_string()))?;
        Transport::tls(c)
      }
    };
    let mut conn = Conn { fd, transport, poller: None, tok: 0, out: Vec::new(), out_off: 0, pollout: false };
    let deadline = Instant::now() + timeout;
    loop {
      match conn.transport.handshake(conn.raw()) {
        Ok(true) => return Ok(conn),
        Ok(false) => {
          if !wait(conn.raw(), conn.transport.pending_out(), deadline) || Instant::now() >= deadline {
            let why = format!("no TLS handshake within {} ms", timeout.as_millis());
            return Err(ConnectError::Tls(name.into(), why));
          }
        }
        Err(e) => {
          let why = e.to_string();
          return Err(ConnectError::Tls(name.into(), why.strip_prefix("TLS: ").unwrap_or(&why).to_string()));
        }
      }
    }
  }

  pub fn raw(&self) -> RawFd {
    self.fd.as_raw_fd()
  }

  /// Registers the socket with the loop's epoll under the given token.
  pub fn attach(&mut self, poller: &Poller, tok: u64) -> std::io::Result<()> {
    self.poller = Some(poller.clone());
    self.tok = tok;
    let events = libc::EPOLLIN | if self.pollout { libc::EPOLLOUT } else { 0 };
    poller.add(self.raw(), events as u32, tok)
  }

  /// Unregisters the socket.
  pub fn detach(&mut self) {
    if let Some(p) = self.poller.take() {
      p.remove(self.raw());
    }
  }

  /// Output waits for the socket.
  pub fn output_waits(&self) -> bool {
    self.out_off < self.out.len() || self.transport.pending_out()
  }

  /// Writes `bytes` now (under TLS as records of their own), queueing what the socket does not take
  /// (then EPOLLOUT drains it).
  pub fn send(&mut self, bytes: &[u8]) -> Result<(), String> {
    let fd = self.raw();
    if self.transport.is_tls() {
      self.transport.write(fd, bytes).map_err(|e| format!("send failed: {e}"))?;
    } else if self.out_off < self.out.len() {
      self.out.extend_from_slice(bytes);
    } else {
      let n = self.transport.write(fd, bytes).map_err(|e| format!("send failed: {e}"))?;
      if n < bytes.len() {
        self.out.clear();
        self.out_off = 0;
        self.out.extend_from_slice(&bytes[n..]);
      }
    }
    self.set_pollout(self.output_waits());
    Ok(())
  }

  /// Drains queued output after EPOLLOUT.
  pub fn flush(&mut self) -> Result<(), String> {
    let fd = self.raw();
    self.transport.flush(fd).map_err(|e| format!("send failed: {e}"))?;
    while self.out_off < self.out.len() {
      let n = self.transport.write(fd, &self.out[self.out_off..]).map_err(|e| format!("send failed: {e}"))?;
      if n == 0 {
        break;
      }
      self.out_off += n;
    }
    if self.out_off >= self.out.len() {
      self.out.clear();
      self.out_off = 0;
    }
    self.set_pollout(self.output_waits());
    Ok(())
  }

  fn set_pollout(&mut self, on: bool) {
    if self.pollout == on || self.poller.is_none() {
      self.pollout = on;
      return;
    }
    self.pollout = on;
    let events = libc::EPOLLIN | if on { libc::EPOLLOUT } else { 0 };
    // The fd is registered in `poller` (attach) and open; an error cannot be acted on here.
    if let Some(p) = &self.poller {
      let _ = p.modify(self.raw(), events as u32, self.tok);
    }
  }

  /// Reads into `bufs` in order (plain: one readv, so a fault's reply header and page arrive in one syscall).
  pub fn readv(&mut self, bufs: &mut [&mut [u8]]) -> Result<Got, String> {
    let fd = self.raw();
    self.transport.readv(fd, bufs).map_err(|e| format!("read failed: {e}"))
  }

  pub fn read_into(&mut self, buf: &mut [u8]) -> Result<Got, String> {
    let fd = self.raw();
    self.transport.read(fd, buf).map_err(|e| format!("read failed: {e}"))
  }

  /// Decrypted input waits inside rustls (epoll cannot see it).
  pub fn buffered(&mut self) -> bool {
    self.transport.buffered()
  }

  /// Ends the session: sends CLOSE and reads what the server still sends until it closes or is quiet for
  /// a moment, at most `max`. With `status` (nothing else was outstanding), the first 4 bytes are CLOSE's
  /// status and a non-zero one is an error; otherwise everything read is dropped.
  ///
  /// Why read at all: closing a TCP socket with unread data in it sends a reset, and CRIU's page servers
  /// then end with "Unexpected data: Connection reset by peer" and exit 1 (seen with background pieces
  /// still in flight when the last process finished).
  pub fn close(&mut self, max: Duration, status: bool) -> Result<(), String> {
    let deadline = Instant::now() + max;
    self.flush()?;
    while self.output_waits() {
      if !wait(self.raw(), true, deadline) || Instant::now() >= deadline {
        return Err("the server takes no more requests".into());
      }
      self.flush()?;
    }
    self.send(&Header::close().encode())?;
    let mut buf = vec![0u8; 64 << 10];
    let (mut st, mut have) = ([0u8; 4], 0usize);
    loop {
      if self.output_waits() {
        self.flush()?;
      }
      let quiet = Instant::now() + Duration::from_millis(50);
      if !self.transport.buffered() && !wait(self.raw(), self.output_waits(), deadline.min(quiet)) {
        break; // quiet (or poll failed): nothing more is coming soon
      }
      match self.read_into(&mut buf)? {
        Got::Bytes(n) => {
          let take = n.min(4 - have);
          st[have..have + take].copy_from_slice(&buf[..take]);
          have += take;
        }
        Got::Nothing => {
          if Instant::now() >= deadline {
            break;
          }
        }
        Got::Eof => break,
      }
    }
    if status && have == 4 && i32::from_le_bytes(st) != 0 {
      return Err(format!("the server answered CLOSE with status {}", i32::from_le_bytes(st)));
    }
    Ok(())
  }
}

#[cfg(test)]
mod tests {
  use super::*;

  #[test]
  fn the_server_name_is_the_address_dialled_or_a_name_no_ca_certifies() {
    let ip = |s: &str| match server_name(s).unwrap() {
      ServerName::IpAddress(a) => Some(std::net::IpAddr::from(a)),
      _ => None,
    };
    assert_eq!(ip("10.0.0.1"), Some("10.0.0.1".parse().unwrap()));
    assert_eq!(ip("[fe80::1%eth0]"), Some("fe80::1".parse().unwrap()));
    assert_eq!(ip("::1"), Some("::1".parse().unwrap()));
    let dns = |s: &str| match server_name(s).unwrap() {
      ServerName::DnsName(d) => d.as_ref().to_owned(),
      _ => String::new(),
    };
    assert_eq!(dns("page-server.example"), "page-server.example");
    assert_eq!(dns("not a name!"), "address-is-not-a-name.invalid");
  }
}
