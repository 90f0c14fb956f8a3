//! Decoding of `struct uffd_msg` (32 bytes: u8 event at 0, the union at 8). Pure: no syscalls.

use std::fmt;

use crate::{EVENT_FORK, EVENT_PAGEFAULT, EVENT_REMAP, EVENT_REMOVE, EVENT_UNMAP};

/// Size of one `struct uffd_msg`.
pub const MSG_SIZE: usize = 32;

/// One decoded userfaultfd event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
  /// A thread faulted on a missing page (`flags`: WRITE 1, WP 2).
  PageFault { flags: u64, address: u64, ptid: u32 },
  /// The process forked; `ufd` is a NEW uffd installed in our fd table for the child.
  Fork { ufd: u32 },
  /// mremap moved `len` bytes from `from` to `to`.
  Remap { from: u64, to: u64, len: u64 },
  /// madvise(DONTNEED/REMOVE) dropped `start..end`.
  Remove { start: u64, end: u64 },
  /// munmap of `start..end`.
  Unmap { start: u64, end: u64 },
}

impl Event {
  /// True for the non-cooperative events (everything but a page fault).
  pub fn is_layout_change(&self) -> bool {
    !matches!(self, Event::PageFault { .. })
  }
}

/// Errors decoding a message.
#[derive(Debug, PartialEq, Eq)]
pub enum MsgError {
  /// fewer than 32 bytes
  Short(usize),
  /// an event code this daemon does not know
  Unknown(u8),
}

impl fmt::Display for MsgError {
  fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
    match self {
      MsgError::Short(n) => write!(f, "uffd_msg: short read of {n} bytes (a message is {MSG_SIZE})"),
      MsgError::Unknown(e) => write!(f, "uffd_msg: unknown event 0x{e:02x}"),
    }
  }
}

fn u64_at(b: &[u8], off: usize) -> u64 {
  let mut a = [0u8; 8];
  a.copy_from_slice(&b[off..off + 8]);
  u64::from_ne_bytes(a)
}

fn u32_at(b: &[u8], off: usize) -> u32 {
  let mut a = [0u8; 4];
  a.copy_from_slice(&b[off..off + 4]);
  u32::from_ne_bytes(a)
}

/// Decodes one message from the first 32 bytes of `b`.
pub fn decode(b: &[u8]) -> Result<Event, MsgError> {
  if b.len() < MSG_SIZE {
    return Err(MsgError::Short(b.len()));
  }
  Ok(match b[0] {
    EVENT_PAGEFAULT => Event::PageFault { flags: u64_at(b, 8), address: u64_at(b, 16), ptid: u32_at(b, 24) },
    EVENT_FORK => Event::Fork { ufd: u32_at(b, 8) },
    EVENT_REMAP => Event::Remap { from: u64_at(b, 8), to: u64_at(b, 16), len: u64_at(b, 24) },
    EVENT_REMOVE => Event::Remove { start: u64_at(b, 8), end: u64_at(b, 16) },
    EVENT_UNMAP => Event::Unmap { start: u64_at(b, 8), end: u64_at(b, 16) },
    other => return Err(MsgError::Unknown(other)),
  })
}

#[cfg(test)]
mod tests {
  use super::*;

  fn msg(ev: u8, words: &[(usize, u64)]) -> [u8; 32] {
    let mut b = [0u8; 32];
    b[0] = ev;
    for &(off, v) in words {
      b[off..off + 8].copy_from_slice(&v.to_ne_bytes());
    }
    b
  }

  #[test]
  fn decodes_every_event() {
    let mut pf = msg(0x12, &[(8, 1), (16, 0x7f00_1234_5000)]);
    pf[24..28].copy_from_slice(&4242u32.to_ne_bytes());
    assert_eq!(decode(&pf).unwrap(), Event::PageFault { flags: 1, address: 0x7f00_1234_5000, ptid: 4242 });
    let mut fork = [0u8; 32];
    fork[0] = 0x13;
    fork[8..12].copy_from_slice(&17u32.to_ne_bytes());
    assert_eq!(decode(&fork).unwrap(), Event::Fork { ufd: 17 });
    assert_eq!(
      decode(&msg(0x14, &[(8, 0x1000), (16, 0x9000), (24, 0x2000)])).unwrap(),
      Event::Remap { from: 0x1000, to: 0x9000, len: 0x2000 }
    );
    assert_eq!(decode(&msg(0x15, &[(8, 0x1000), (16, 0x3000)])).unwrap(), Event::Remove { start: 0x1000, end: 0x3000 });
    assert_eq!(decode(&msg(0x16, &[(8, 0x4000), (16, 0x5000)])).unwrap(), Event::Unmap { start: 0x4000, end: 0x5000 });
    assert!(decode(&msg(0x16, &[])).unwrap().is_layout_change());
    assert!(!decode(&pf).unwrap().is_layout_change());
  }

  #[test]
  fn rejects_unknown_and_short() {
    assert_eq!(decode(&msg(0x99, &[])), Err(MsgError::Unknown(0x99)));
    assert_eq!(decode(&[0x12; 31]), Err(MsgError::Short(31)));
    assert!(MsgError::Unknown(0x99).to_string().contains("0x99"));
  }
}
