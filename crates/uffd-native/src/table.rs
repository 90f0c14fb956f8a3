//! The translation table TS installs per process: live address ranges → where their data is.
//! Looked up by binary search on every fault, so it is a flat sorted Vec (no allocation on lookup).

use std::fmt;

use crate::errors::Coded;

/// Page size the daemon works in.
pub const PAGE: u64 = 4096;

/// The packed layout JS hands over (`installTable`): a `BigUint64Array` of `TABLE_WORDS` words per
/// entry, `liveStart, liveEnd, imageStart, kind, source, fileOffset`, where `kind` is
/// [`TABLE_KIND_FILE`] (`source`: the image id, then the file offset for `liveStart`) or
/// [`TABLE_KIND_REMOTE`] (`source`: the image pid, 0 when unknown; `fileOffset` unused). Packed,
/// not an array of objects: a table is rebuilt on every layout event, and reading objects field by
/// field through napi costs far more than one typed array. These constants are exported, so the
/// facade's packer (ts/native `packTable`) writes this layout from here, the one definition.
#[napi_derive::napi]
pub const TABLE_WORDS: u32 = 6;
/// `kind` of an entry served from a pages image.
#[napi_derive::napi]
pub const TABLE_KIND_FILE: u32 = 0;
/// `kind` of an entry served from the page server.
#[napi_derive::napi]
pub const TABLE_KIND_REMOTE: u32 = 1;
const WORDS: usize = TABLE_WORDS as usize;

/// Where a range's data comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
  /// A mapped pages image (its id in the event loop), at file offset `offset` for `live_start`.
  File { image: u32, offset: u64 },
  /// The page server. With a native page-server client connected and the IMAGE pid known, the loop
  /// fetches the page itself (a GET names the pid); otherwise the fault is forwarded to TS.
  Remote { pid: Option<u32> },
}

/// One range: live addresses `[live_start, live_end)` hold the image's pages from `image_start` on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
  pub live_start: u64,
  pub live_end: u64,
  pub image_start: u64,
  pub source: Source,
}

impl Entry {
  /// How far live address `addr` (which must be inside the range) is from the range's start.
  fn delta(&self, addr: u64) -> u64 {
    addr - self.live_start
  }

  /// Image address of live address `addr` (inside the range).
  pub fn image_addr(&self, addr: u64) -> u64 {
    self.image_start + self.delta(addr)
  }

  /// File offset of live address `addr` (inside the range), in a [`Source::File`] entry's image.
  pub fn file_offset(&self, offset: u64, addr: u64) -> u64 {
    offset + self.delta(addr)
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
      if let Some(prev) = entries.last() {
        let prev: &Entry = prev;
        if ls < prev.live_end {
          return Err(TableError::Unsorted(i));
        }
      }
      let source = match kind {
        k if k == TABLE_KIND_FILE as u64 => {
          let size = image_size(id).ok_or(TableError::UnknownImage(i, id))?;
          let end = off.saturating_add(le - ls);
          if end > size {
            return Err(TableError::PastImage(i, end, size));
          }
          Source::File { image: id as u32, offset: off }
        }
        k if k == TABLE_KIND_REMOTE as u64 => {
          let pid = u32::try_from(id).ok().filter(|p| *p <= i32::MAX as u32).ok_or(TableError::BadPid(i, id))?;
          Source::Remote { pid: (pid != 0).then_some(pid) }
        }
        k => return Err(TableError::BadKind(i, k)),
      };
      entries.push(Entry { live_start: ls, live_end: le, image_start: is, source });
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
    // remote entries need no image; their source word is the image pid (0: unknown)
    let t = Table::parse(&[0x1000, 0x2000, 0, 1, 9, 0], &sizes).unwrap();
    assert_eq!(t.lookup(0x1000).unwrap().source, Source::Remote { pid: Some(9) });
    assert_eq!(Table::parse(&[0x1000, 0x2000, 0, 1, 1 << 40, 0], &sizes).unwrap_err(), TableError::BadPid(0, 1 << 40));
    assert!(TableError::Unsorted(1).to_string().contains("entry 1"));
  }

  #[test]
  fn looks_up() {
    let t = Table::parse(&[0x1000, 0x3000, 0x9000, 0, 0, 0x2000, 0x5000, 0x6000, 0x5000, 1, 0, 0], &sizes).unwrap();
    assert!(t.lookup(0x0fff).is_none());
    let e = t.lookup(0x2000).unwrap();
    assert_eq!(e.source, Source::File { image: 0, offset: 0x2000 });
    assert_eq!(e.image_addr(0x2000), 0xa000);
    assert_eq!(e.file_offset(0x2000, 0x2000), 0x3000);
    assert!(t.lookup(0x3000).is_none());
    assert_eq!(t.lookup(0x5fff).unwrap().source, Source::Remote { pid: None });
    assert!(t.lookup(0x6000).is_none());
    assert!(Table::default().lookup(0).is_none());
  }
}
