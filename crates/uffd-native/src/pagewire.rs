//! CRIU's page-server wire format (spec §7), for our client and our server alike: a 32-byte
//! little-endian header `{u32 cmd; 4 pad; u64 nr_pages; u64 vaddr; u64 dst_id}`, followed by nr_pages×4096
//! bytes in a GET reply, or by an i32 status in a CLOSE reply.

/// Header size in bytes.
pub const HDR: usize = 32;
/// GET: `{7, n, image vaddr, pid}`.
pub const GET: u32 = 7;
/// CLOSE: ends the session (answered by an i32 status).
pub const CLOSE: u32 = 0x1023;
/// `cmd` of every GET reply: (PE_PRESENT << 16) | ADD_F.
pub const REPLY_CMD: u32 = 0x0004_0006;
/// Largest nr_pages in one GET (our server refuses more: a garbage header is no giant transfer).
pub const MAX_NR_PAGES: u64 = 1 << 20;

/// A decoded header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
  pub cmd: u32,
  pub nr_pages: u64,
  pub vaddr: u64,
  pub dst_id: u64,
}

impl Header {
  /// Encodes into 32 bytes (padding zeroed).
  pub fn encode(&self) -> [u8; HDR] {
    let mut b = [0u8; HDR];
    b[0..4].copy_from_slice(&self.cmd.to_le_bytes());
    b[8..16].copy_from_slice(&self.nr_pages.to_le_bytes());
    b[16..24].copy_from_slice(&self.vaddr.to_le_bytes());
    b[24..32].copy_from_slice(&self.dst_id.to_le_bytes());
    b
  }

  /// Decodes 32 bytes without judging them.
  pub fn decode(b: &[u8; HDR]) -> Header {
    let u64_at = |o: usize| u64::from_le_bytes(b[o..o + 8].try_into().expect("8 bytes"));
    Header {
      cmd: u32::from_le_bytes(b[0..4].try_into().expect("4 bytes")),
      nr_pages: u64_at(8),
      vaddr: u64_at(16),
      dst_id: u64_at(24),
    }
  }

  /// A GET for `pages` pages at image address `vaddr` of image process `pid`.
  pub fn get(pid: u32, vaddr: u64, pages: u64) -> Header {
    Header { cmd: GET, nr_pages: pages, vaddr, dst_id: pid as u64 }
  }

  /// The CLOSE request.
  pub fn close() -> Header {
    Header { cmd: CLOSE, nr_pages: 0, vaddr: 0, dst_id: 0 }
  }
}

/// Checks a GET reply against the request it answers; `Ok(n')` is the number of pages that follow.
/// The error text names what arrived and what was expected, for the `source-error` message.
pub fn check_reply(h: &Header, pid: u32, vaddr: u64, pages: u64) -> Result<u64, String> {
  if h.cmd != REPLY_CMD {
    return Err(format!("reply command 0x{:x} for the GET of 0x{vaddr:x} pid {pid}, expected 0x{REPLY_CMD:x}", h.cmd));
  }
  if h.vaddr != vaddr || h.dst_id != pid as u64 {
    return Err(format!("reply for 0x{:x} pid {}, expected 0x{vaddr:x} pid {pid}", h.vaddr, h.dst_id));
  }
  if h.nr_pages == 0 || h.nr_pages > pages {
    return Err(format!(
      "reply of {} pages for the GET of {pages} pages at 0x{vaddr:x} pid {pid}, expected 1..{pages}",
      h.nr_pages
    ));
  }
  Ok(h.nr_pages)
}

#[cfg(test)]
mod tests {
  use super::*;

  #[test]
  fn round_trip_and_layout() {
    let h = Header::get(7, 0x1000, 3);
    let b = h.encode();
    assert_eq!(&b[0..4], &[7, 0, 0, 0]);
    assert_eq!(&b[4..8], &[0, 0, 0, 0]);
    assert_eq!(b[8], 3);
    assert_eq!(&b[16..19], &[0, 0x10, 0]);
    assert_eq!(b[24], 7);
    assert_eq!(Header::decode(&b), h);
  }

  #[test]
  fn checks_replies() {
    let ok = Header { cmd: REPLY_CMD, nr_pages: 2, vaddr: 0x2000, dst_id: 7 };
    assert_eq!(check_reply(&ok, 7, 0x2000, 4), Ok(2));
    let wrong = Header { vaddr: 0x1000, ..ok };
    assert_eq!(check_reply(&wrong, 7, 0x2000, 4).unwrap_err(), "reply for 0x1000 pid 7, expected 0x2000 pid 7");
    assert!(check_reply(&Header { cmd: 6, ..ok }, 7, 0x2000, 4).unwrap_err().contains("command 0x6"));
    assert!(check_reply(&Header { nr_pages: 5, ..ok }, 7, 0x2000, 4).unwrap_err().contains("5 pages"));
    assert!(check_reply(&Header { nr_pages: 0, ..ok }, 7, 0x2000, 4).is_err());
  }
}
