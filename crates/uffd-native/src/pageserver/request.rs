//! How a page-server session judges a request: the rules, the end reasons (ts/pageserver/events.ts spells
//! them for the library) and the wording naming the offending field and stream offset.

use crate::pagewire::{Header, GET, MAX_NR_PAGES};

/// FORCE_CLOSE ends a session like CLOSE.
pub const FORCE_CLOSE: u32 = 0x1024;
const CLOSE: u32 = crate::pagewire::CLOSE;

/// Why a session ended: `SessionEndReason` in JS, spelled in kebab-case ("client-stalled").
#[napi_derive::napi(string_enum = "kebab-case", js_name = "SessionEndReason")]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
  Close,
  ClientDisconnected,
  ClientDisconnectedMidReply,
  ClientStalled,
  ClientIdle,
  MalformedHeader,
  UnknownCommand,
  UnsupportedCommand,
  BadRequest,
  UnknownPid,
  NoSuchPages,
  ImageError,
  /// TLS: the handshake failed or did not finish in time (no session was started).
  TlsHandshakeFailed,
  ServerClosing,
}

impl Reason {
  /// A normal end (CLOSE, or a disconnect with nothing pending).
  pub fn ok(self) -> bool {
    matches!(self, Reason::Close | Reason::ClientDisconnected)
  }

  /// Ends after which replies already written should still reach the client: the connection is shut down
  /// for writing (FIN after the data) instead of being reset.
  pub fn graceful(self) -> bool {
    matches!(
      self,
      Reason::Close
        | Reason::MalformedHeader
        | Reason::UnknownCommand
        | Reason::UnsupportedCommand
        | Reason::BadRequest
        | Reason::UnknownPid
        | Reason::NoSuchPages
    )
  }
}

/// A session's end: the reason and a human explanation naming the offending field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct End {
  pub reason: Reason,
  pub detail: String,
}

impl End {
  pub fn new(reason: Reason, detail: impl Into<String>) -> End {
    End { reason, detail: detail.into() }
  }
}

/// Command names as CRIU spells them (for messages).
pub fn command_name(cmd: u32) -> String {
  let c = cmd & 0xffff;
  let name = match c {
    1 => "ADD",
    2 => "HOLE",
    3 => "OPEN",
    4 => "OPEN2",
    5 => "PARENT",
    6 => "ADD_F",
    7 => "GET",
    0x1023 => "CLOSE",
    0x1024 => "FORCE_CLOSE",
    _ => return format!("0x{c:x}"),
  };
  name.into()
}

fn known(c: u32) -> bool {
  matches!(c, 1..=7 | CLOSE | FORCE_CLOSE)
}

/// The checks made as a header arrives (before any reply): known command and, for GET, a sane page count,
/// a page-aligned address and a pid that fits an int32. `offset` is the header's offset in the stream.
pub fn check_header(h: &Header, offset: u64) -> Result<(), End> {
  let at = format!(" at stream offset {offset}");
  let c = h.cmd & 0xffff;
  if !known(c) {
    return Err(End::new(Reason::UnknownCommand, format!("unknown page-server command 0x{:x}{at}", h.cmd)));
  }
  if c != GET {
    return Ok(());
  }
  if h.nr_pages == 0 || h.nr_pages > MAX_NR_PAGES {
    return Err(End::new(Reason::BadRequest, format!("GET nr_pages {} is outside 1..{MAX_NR_PAGES}{at}", h.nr_pages)));
  }
  if !h.vaddr.is_multiple_of(4096) {
    return Err(End::new(Reason::BadRequest, format!("GET vaddr 0x{:x} is not page aligned{at}", h.vaddr)));
  }
  if h.dst_id == 0 || h.dst_id > 0x7fff_ffff {
    return Err(End::new(Reason::BadRequest, format!("GET dst_id {} is not a valid pid{at}", h.dst_id)));
  }
  Ok(())
}

/// What a (checked) request asks for when its turn comes.
#[derive(Debug, PartialEq, Eq)]
pub enum Ask {
  Get { pid: u32, vaddr: u64, pages: u64 },
  Close(String),
}

/// The checks made when a request's turn comes: only GET and CLOSE belong to a lazy-pages session.
pub fn classify(h: &Header) -> Result<Ask, End> {
  match h.cmd & 0xffff {
    GET => Ok(Ask::Get { pid: h.dst_id as u32, vaddr: h.vaddr, pages: h.nr_pages }),
    CLOSE | FORCE_CLOSE => Ok(Ask::Close(format!("client sent {}", command_name(h.cmd)))),
    _ => Err(End::new(
      Reason::UnsupportedCommand,
      format!("command {} is not part of a lazy-pages session (only GET and CLOSE are)", command_name(h.cmd)),
    )),
  }
}

#[cfg(test)]
mod tests {
  use super::*;

  fn h(cmd: u32, nr_pages: u64, vaddr: u64, dst_id: u64) -> Header {
    Header { cmd, nr_pages, vaddr, dst_id }
  }

  #[test]
  fn verdicts_name_the_field_and_the_offset() {
    let e = check_header(&h(0x99, 1, 0, 1), 0).unwrap_err();
    assert_eq!(
      (e.reason, e.detail.as_str()),
      (Reason::UnknownCommand, "unknown page-server command 0x99 at stream offset 0")
    );
    let e = check_header(&h(0xffff_ffff, 0, 0, 0), 32).unwrap_err();
    assert_eq!(e.detail, "unknown page-server command 0xffffffff at stream offset 32");
    let e = check_header(&h(GET, 1 << 63, 0, 1), 0).unwrap_err();
    assert_eq!(e.detail, "GET nr_pages 9223372036854775808 is outside 1..1048576 at stream offset 0");
    assert_eq!(check_header(&h(GET, 0, 0, 1), 0).unwrap_err().reason, Reason::BadRequest);
    assert!(check_header(&h(GET, 1, 12, 1), 0).unwrap_err().detail.contains("not page aligned"));
    assert!(check_header(&h(GET, 1, 0, 1 << 31), 0).unwrap_err().detail.contains("not a valid pid"));
    assert!(check_header(&h(GET, 1 << 20, 0x1000, 5), 0).is_ok());
    assert!(check_header(&h(4, 0, 0, 1), 0).is_ok());
    assert!(classify(&h(4, 0, 0, 1)).unwrap_err().detail.contains("OPEN2"));
    assert_eq!(classify(&h(FORCE_CLOSE, 0, 0, 0)).unwrap(), Ask::Close("client sent FORCE_CLOSE".into()));
    assert_eq!(classify(&h(GET, 3, 0x2000, 9)).unwrap(), Ask::Get { pid: 9, vaddr: 0x2000, pages: 3 });
  }
}
