//! The translation table TS installs per process: live address ranges → where their data is.
//! Looked up by binary search on every fault, so it is a flat sorted Vec (no allocation on lookup).

use std::fmt;

use crate::errors::Coded;

/// Page size the daemon works in.
pub const PAGE: u64 = 4096;
/// u64 words per entry in the BigUint64Array TS passes.
pub const WORDS: usize = 6;

/// Where a range's data comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
  /// A mapped pages image (`image_id`, at `file_offset` for `live_start`).
  File,
  /// From the page server: `image_id` carries the IMAGE PID. With a native page-server client connected and a
  /// non-zero pid the loop fetches the page itself; otherwise the fault is forwarded to TS.
  Remote,
}

/// One range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
  pub live_start: u64,
  pub live_end: u64,
  pub image_start: u64,
  pub kind: Kind,
  pub image_id: u32,
  pub file_offset: u64,
}

impl Entry {
  /// Image address and file offset of live address `addr` (which must be inside the range).
  pub fn locate(&self, addr: u64) -> (u64, u64) {
    let d = addr - self.live_start;
    (self.image_start + d, self.file_offset + d)
  }
}

/// Errors validating a table.
#[derive(Debug, PartialEq, Eq)]
pub enum TableError {
  /// length is not a multiple of 6
  BadLength(usize),
  /// entry i: empty or inverted range
  Empty(usize),
  /// entry i: an address or offset is not page aligned
  Unaligned(usize),
  /// entry i: kind not 0 or 1
  BadKind(usize, u64),
  /// entry i overlaps or is before entry i-1
  Unsorted(usize),
  /// entry i names an image id that is not loaded
  UnknownImage(usize, u64),
  /// entry i reads past the end of its image
  PastImage(usize, u64, u64),
  /// entry i (remote) carries an image pid that does not fit a pid
  BadPid(usize, u64),
}

impl fmt::Display for TableError {
  fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
    match self {
      TableError::BadLength(n) => write!(f, "translation table: {n} words is not a multiple of {WORDS}"),
      TableError::Empty(i) => write!(f, "translation table entry {i}: liveEnd must be greater than liveStart"),
      TableError::Unaligned(i) => {
        write!(f, "translation table entry {i}: addresses and fileOffset must be multiples of 4096")
      }
      TableError::BadKind(i, k) => write!(f, "translation table entry {i}: kind {k} is not 0 (file) or 1 (remote)"),
      TableError::Unsorted(i) => write!(f, "translation table entry {i}: overlaps or precedes entry {}", i - 1),
      TableError::UnknownImage(i, id) => write!(f, "translation table entry {i}: image id {id} is not loaded"),
      TableError::BadPid(i, pid) => {
        write!(f, "translation table entry {i}: image pid {pid} of a remote entry is not a valid pid")
      }
      TableError::PastImage(i, end, size) => {
        write!(f, "translation table entry {i}: reads up to file offset {end}, past the image size {size}")
      }
    }
  }
}

impl Coded for TableError {
  fn code(&self) -> &'static str {
    "ETABLE"
  }
}

/// A validated, sorted table.
#[derive(Debug, Default, Clone)]
pub struct Table {
  entries: Vec<Entry>,
}

impl Table {
  /// Parses and validates `words`; `image_size(id)` returns the size of a loaded image (None if unknown).
  pub fn parse(words: &[u64], image_size: &dyn Fn(u64) -> Option<u64>) -> Result<Table, TableError> {
    if !words.len().is_multiple_of(WORDS) {
      return Err(TableError::BadLength(words.len()));
    }
    let mut entries = Vec::with_capacity(words.len() / WORDS);
    for (i, w) in words.chunks_exact(WORDS).enumerate() {
      let (ls, le, is, kind, id, off) = (w[0], w[1], w[2], w[3], w[4], w[5]);
      if le <= ls {
        return Err(TableError::Empty(i));
      }
      if !ls.is_multiple_of(PAGE) || !le.is_multiple_of(PAGE) || !is.is_multiple_of(PAGE) || !off.is_multiple_of(PAGE) {
        return Err(TableError::Unaligned(i));
      }
      let kind = match kind {
        0 => Kind::File,
        1 => Kind::Remote,
        k => return Err(TableError::BadKind(i, k)),
      };
      if let Some(prev) = entries.last() {
        let prev: &Entry = prev;
        if ls < prev.live_end {
          return Err(TableError::Unsorted(i));
        }
      }
      if kind == Kind::File {
        let size = image_size(id).ok_or(TableError::UnknownImage(i, id))?;
        let end = off.saturating_add(le - ls);
        if end > size {
          return Err(TableError::PastImage(i, end, size));
        }
      } else if id > i32::MAX as u64 {
        return Err(TableError::BadPid(i, id));
      }
      entries.push(Entry {
        live_start: ls,
        live_end: le,
        image_start: is,
        kind,
        image_id: id as u32,
        file_offset: off,
      });
    }
    Ok(Table { entries })
  }

  /// The entry containing `addr`, if any (binary search).
  pub fn lookup(&self, addr: u64) -> Option<&Entry> {
    let i = self.entries.partition_point(|e| e.live_start <= addr);
    if i == 0 {
      return None;
    }
    let e = &self.entries[i - 1];
    (addr < e.live_end).then_some(e)
  }

  /// Number of entries.
  pub fn len(&self) -> usize {
    self.entries.len()
  }

  /// True when empty.
  pub fn is_empty(&self) -> bool {
    self.entries.is_empty()
  }
}

#[cfg(test)]
mod tests {
  use super::*;

  fn sizes(id: u64) -> Option<u64> {
    (id == 0).then_some(0x10000)
  }

  #[test]
  fn validates() {
    assert_eq!(Table::parse(&[1, 2, 3], &sizes).unwrap_err(), TableError::BadLength(3));
    assert_eq!(Table::parse(&[0x2000, 0x1000, 0, 0, 0, 0], &sizes).unwrap_err(), TableError::Empty(0));
    assert_eq!(Table::parse(&[0x1001, 0x2000, 0, 0, 0, 0], &sizes).unwrap_err(), TableError::Unaligned(0));
    assert_eq!(Table::parse(&[0x1000, 0x2000, 0, 2, 0, 0], &sizes).unwrap_err(), TableError::BadKind(0, 2));
    assert_eq!(
      Table::parse(&[0x1000, 0x3000, 0, 0, 0, 0, 0x2000, 0x4000, 0, 0, 0, 0], &sizes).unwrap_err(),
      TableError::Unsorted(1)
    );
    assert_eq!(Table::parse(&[0x1000, 0x2000, 0, 0, 9, 0], &sizes).unwrap_err(), TableError::UnknownImage(0, 9));
    assert_eq!(
      Table::parse(&[0x1000, 0x2000, 0, 0, 0, 0x10000], &sizes).unwrap_err(),
      TableError::PastImage(0, 0x11000, 0x10000)
    );
    // remote entries need no image
    assert!(Table::parse(&[0x1000, 0x2000, 0, 1, 9, 0], &sizes).is_ok());
    assert_eq!(Table::parse(&[0x1000, 0x2000, 0, 1, 1 << 40, 0], &sizes).unwrap_err(), TableError::BadPid(0, 1 << 40));
    assert!(TableError::Unsorted(1).to_string().contains("entry 1"));
  }

  #[test]
  fn looks_up() {
    let t = Table::parse(&[0x1000, 0x3000, 0x9000, 0, 0, 0x2000, 0x5000, 0x6000, 0x5000, 1, 0, 0], &sizes).unwrap();
    assert!(t.lookup(0x0fff).is_none());
    let e = t.lookup(0x2000).unwrap();
    assert_eq!(e.kind, Kind::File);
    assert_eq!(e.locate(0x2000), (0xa000, 0x3000));
    assert!(t.lookup(0x3000).is_none());
    assert_eq!(t.lookup(0x5fff).unwrap().kind, Kind::Remote);
    assert!(t.lookup(0x6000).is_none());
    assert!(Table::default().lookup(0).is_none());
  }
}
