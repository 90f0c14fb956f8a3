//! Framing on the master <-> process pipes: `[u8 tag][u32 len LE][payload]`.
//! Process -> master tags: F forked (payload: real pid i32), R ready, H handed over, E error (text),
//! S result (JSON), L latencies (u64 LE each). Master -> process: one byte commands (see `Cmd`).
use std::os::fd::RawFd;

pub mod cmd {
  pub const HANDOVER: u8 = b'H';
  pub const HANDOVER_BAD_FD: u8 = b'B';
  pub const WORK: u8 = b'W';
  pub const EXIT: u8 = b'X';
}

pub fn write_all(fd: RawFd, mut buf: &[u8]) -> Result<(), String> {
  while !buf.is_empty() {
    // SAFETY: `buf` is a valid readable slice for the duration of the call.
    let n = unsafe { libc::write(fd, buf.as_ptr().cast(), buf.len()) };
    if n < 0 {
      let e = std::io::Error::last_os_error();
      if e.kind() == std::io::ErrorKind::Interrupted {
        continue;
      }
      return Err(e.to_string());
    }
    buf = &buf[n as usize..];
  }
  Ok(())
}

pub fn send(fd: RawFd, tag: u8, payload: &[u8]) -> Result<(), String> {
  let mut v = Vec::with_capacity(5 + payload.len());
  v.push(tag);
  v.extend_from_slice(&(payload.len() as u32).to_le_bytes());
  v.extend_from_slice(payload);
  write_all(fd, &v)
}

/// Blocking read of one command byte; None on EOF (the master is gone) or error.
pub fn read_cmd(fd: RawFd) -> Option<u8> {
  let mut b = 0u8;
  loop {
    // SAFETY: reads at most one byte into a local.
    let n = unsafe { libc::read(fd, (&mut b as *mut u8).cast(), 1) };
    if n == 1 {
      return Some(b);
    }
    if n < 0 && std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
      continue;
    }
    return None;
  }
}

/// Accumulates bytes from a non-blocking pipe and splits them into frames.
#[derive(Default)]
pub struct Reader {
  buf: Vec<u8>,
  pub eof: bool,
}

impl Reader {
  /// Reads whatever is available now; sets `eof` on end of file.
  pub fn pump(&mut self, fd: RawFd) {
    let mut tmp = [0u8; 65536];
    loop {
      // SAFETY: `tmp` is a writable local buffer of the given size.
      let n = unsafe { libc::read(fd, tmp.as_mut_ptr().cast(), tmp.len()) };
      if n > 0 {
        self.buf.extend_from_slice(&tmp[..n as usize]);
        continue;
      }
      if n == 0 {
        self.eof = true;
      } else if std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
        continue;
      }
      return;
    }
  }

  pub fn next_frame(&mut self) -> Option<(u8, Vec<u8>)> {
    if self.buf.len() < 5 {
      return None;
    }
    let len = u32::from_le_bytes(self.buf[1..5].try_into().unwrap()) as usize;
    if self.buf.len() < 5 + len {
      return None;
    }
    let tag = self.buf[0];
    let payload = self.buf[5..5 + len].to_vec();
    self.buf.drain(..5 + len);
    Some((tag, payload))
  }
}
