//! One page-server connection's bytes, plain TCP or TLS, for our client and our server alike. Both are
//! non-blocking and driven by epoll; the owner keeps the socket and passes its fd in.
//!
//! The plain path is untouched by TLS: the client reads straight into its page buffers (one readv for a
//! fault's header and page) and the server writes straight out of the mapped pages files (its own
//! sendmsg, see crate::pageserver::conn). TLS goes through rustls: records are pulled off the socket
//! with `read_tls`, decrypted by `process_new_packets` and read out of rustls; each `write` becomes TLS
//! records of its own, pushed out with `write_tls` as far as the socket takes them. Two consequences
//! the owners handle: decrypted bytes can wait inside rustls where epoll cannot see them (`buffered`),
//! and encrypted bytes can wait for the socket (`pending_out`, then EPOLLOUT).

use std::io::{self, Read, Write};
use std::os::fd::RawFd;

use crate::tls::verify::describe;

/// What a read gave.
#[derive(Debug, PartialEq, Eq)]
pub enum Got {
  Bytes(usize),
  /// Nothing now (EAGAIN).
  Nothing,
  /// The peer closed the connection (a TLS peer with or without close_notify).
  Eof,
}

/// The socket as rustls's Read/Write: non-blocking, and a dead peer is EPIPE, never SIGPIPE.
struct Fd(RawFd);

impl Read for Fd {
  fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: receives into a live, writable slice of `buf.len()` bytes.
    let n = unsafe { libc::recv(self.0, buf.as_mut_ptr() as *mut libc::c_void, buf.len(), libc::MSG_DONTWAIT) };
    if n < 0 {
      return Err(io::Error::last_os_error());
    }
    Ok(n as usize)
  }
}

impl Write for Fd {
  fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
    send(self.0, buf)
  }
  fn flush(&mut self) -> io::Result<()> {
    Ok(())
  }
}

fn send(fd: RawFd, bytes: &[u8]) -> io::Result<usize> {
  // SAFETY: sends from a live slice; MSG_NOSIGNAL turns a dead peer into EPIPE instead of SIGPIPE.
  let n = unsafe {
    libc::send(fd, bytes.as_ptr() as *const libc::c_void, bytes.len(), libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT)
  };
  if n < 0 {
    return Err(io::Error::last_os_error());
  }
  Ok(n as usize)
}

fn tls_error(e: &rustls::Error) -> io::Error {
  io::Error::new(io::ErrorKind::InvalidData, format!("TLS: {}", describe(e)))
}

/// The transport of one connection.
pub enum Transport {
  Plain,
  Tls(Box<rustls::Connection>),
}

impl Transport {
  /// A TLS transport over `conn`, whose output we bound ourselves (writes go in only when what came before
  /// is out, so a header is never cut by rustls's own limit into two records).
  pub fn tls(conn: impl Into<rustls::Connection>) -> Transport {
    let mut c: rustls::Connection = conn.into();
    c.set_buffer_limit(None);
    Transport::Tls(Box::new(c))
  }

  pub fn is_tls(&self) -> bool {
    matches!(self, Transport::Tls(_))
  }

  /// Drives a handshake as far as the socket allows: Ok(true) once it is complete and flushed. Errors name
  /// the reason (a refused certificate, an alert from the peer, the peer hanging up).
  pub fn handshake(&mut self, fd: RawFd) -> io::Result<bool> {
    loop {
      match self.flush(fd) {
        Ok(true) => {}
        Ok(false) => return Ok(false),
        Err(e) => return Err(self.peer_alert(fd).unwrap_or(e)),
      }
      let Transport::Tls(c) = self else { return Ok(true) };
      if !c.is_handshaking() {
        return Ok(true);
      }
      match c.read_tls(&mut Fd(fd)) {
        Ok(0) => {
          return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "the peer closed the connection during the handshake",
          ))
        }
        Ok(_) => {
          if let Err(e) = c.process_new_packets() {
            // Our alert tells the peer why (best effort: the connection is closed next).
            let _ = c.write_tls(&mut Fd(fd));
            return Err(tls_error(&e));
          }
        }
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
        Err(e) => return Err(self.peer_alert(fd).unwrap_or(e)),
      }
    }
  }

  /// After the socket failed mid-handshake (EPIPE, ECONNRESET): the alert the peer sent before it hung
  /// up, if it is still to be read. A peer that refuses our certificate sends its alert and closes; we
  /// may be writing our next flight by then, and "broken pipe" would hide why it refused.
  fn peer_alert(&mut self, fd: RawFd) -> Option<io::Error> {
    let Transport::Tls(c) = self else { return None };
    for _ in 0..8 {
      match c.read_tls(&mut Fd(fd)) {
        Ok(0) | Err(_) => return None,
        Ok(_) => {
          if let Err(e) = c.process_new_packets() {
            return Some(tls_error(&e));
          }
        }
      }
    }
    None
  }

  /// Still handshaking (TLS only).
  pub fn handshaking(&self) -> bool {
    matches!(self, Transport::Tls(c) if c.is_handshaking())
  }

  /// Reads what there is into `buf`.
  pub fn read(&mut self, fd: RawFd, buf: &mut [u8]) -> io::Result<Got> {
    let c = match self {
      Transport::Plain => loop {
        match Fd(fd).read(buf) {
          Ok(0) => return Ok(Got::Eof),
          Ok(n) => return Ok(Got::Bytes(n)),
          Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(Got::Nothing),
          Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
          Err(e) => return Err(e),
        }
      },
      Transport::Tls(c) => c,
    };
    loop {
      match c.reader().read(buf) {
        Ok(0) if !buf.is_empty() => return Ok(Got::Eof), // close_notify
        Ok(n) => return Ok(Got::Bytes(n)),
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(Got::Eof),
        Err(e) => return Err(e),
      }
      // Nothing decrypted is waiting: pull records off the socket.
      match c.read_tls(&mut Fd(fd)) {
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(Got::Nothing),
        Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
        Err(e) => return Err(e),
      }
      if let Err(e) = c.process_new_packets() {
        let _ = c.write_tls(&mut Fd(fd));
        return Err(tls_error(&e));
      }
    }
  }

  /// Reads into `bufs` in order (plain: one readv, so a fault's header and page come in one syscall).
  pub fn readv(&mut self, fd: RawFd, bufs: &mut [&mut [u8]]) -> io::Result<Got> {
    if let Transport::Plain = self {
      let mut iov: Vec<libc::iovec> = bufs
        .iter_mut()
        .map(|b| libc::iovec { iov_base: b.as_mut_ptr() as *mut libc::c_void, iov_len: b.len() })
        .collect();
      loop {
        // SAFETY: every iovec describes one of `bufs`, live and exclusively borrowed for the call.
        let n = unsafe { libc::readv(fd, iov.as_mut_ptr(), iov.len() as i32) };
        if n > 0 {
          return Ok(Got::Bytes(n as usize));
        }
        if n == 0 {
          return Ok(Got::Eof);
        }
        let e = io::Error::last_os_error();
        match e.kind() {
          io::ErrorKind::Interrupted => {}
          io::ErrorKind::WouldBlock => return Ok(Got::Nothing),
          _ => return Err(e),
        }
      }
    }
    let mut total = 0;
    for b in bufs.iter_mut() {
      match self.read(fd, b)? {
        Got::Bytes(n) => {
          total += n;
          if n < b.len() {
            break;
          }
        }
        other if total == 0 => return Ok(other),
        _ => break,
      }
    }
    Ok(Got::Bytes(total))
  }

  /// Plain: sends what the socket takes now (0 when it is full). TLS: takes all of `bytes` as records of
  /// their own and sends what the socket takes; the rest waits in rustls (`pending_out`).
  pub fn write(&mut self, fd: RawFd, bytes: &[u8]) -> io::Result<usize> {
    match self {
      Transport::Plain => loop {
        match send(fd, bytes) {
          Ok(n) => return Ok(n),
          Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(0),
          Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
          Err(e) => return Err(e),
        }
      },
      Transport::Tls(c) => {
        c.writer().write_all(bytes)?;
        self.flush(fd)?;
        Ok(bytes.len())
      }
    }
  }

  /// Sends encrypted bytes waiting for the socket; Ok(true) once none waits (plain: always).
  pub fn flush(&mut self, fd: RawFd) -> io::Result<bool> {
    let Transport::Tls(c) = self else { return Ok(true) };
    while c.wants_write() {
      match c.write_tls(&mut Fd(fd)) {
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
        Err(e) => return Err(e),
      }
    }
    Ok(true)
  }

  /// Encrypted bytes wait for the socket (TLS only).
  pub fn pending_out(&self) -> bool {
    matches!(self, Transport::Tls(c) if c.wants_write())
  }

  /// Decrypted bytes wait inside rustls: epoll will not report them, so the owner reads again.
  pub fn buffered(&mut self) -> bool {
    match self {
      Transport::Plain => false,
      Transport::Tls(c) => c.process_new_packets().is_ok_and(|s| s.plaintext_bytes_to_read() > 0),
    }
  }

  /// TLS: says goodbye (close_notify), best effort.
  pub fn close_notify(&mut self, fd: RawFd) {
    if let Transport::Tls(c) = self {
      c.send_close_notify();
      let _ = self.flush(fd);
    }
  }
}
