//! The oracle: what the bytes at an IMAGE address must be, computed independently of any daemon
//! (pages files are read here with pread, the fixtures' pattern is recomputed, the rest is zero).
use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;

use crate::layout::{Expect, ExpectKind};

/// The fixtures' pattern word for 8-byte aligned address `a` (README of the fixtures).
pub fn pattern_word(a: u64, xor: u64) -> u64 {
  (a ^ 0x5_DEEC_E66D).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ xor
}

pub struct Oracle {
  entries: Vec<Expect>,
  files: HashMap<PathBuf, File>,
}

impl Oracle {
  /// `entries` must be sorted by start and disjoint (the layout loader guarantees it).
  pub fn new(entries: Vec<Expect>) -> Self {
    Oracle { entries, files: HashMap::new() }
  }

  /// Fills `buf` with the expected content of image addresses `[addr, addr + buf.len())`.
  pub fn fill(&mut self, addr: u64, buf: &mut [u8]) -> Result<(), String> {
    buf.fill(0);
    let end = addr + buf.len() as u64;
    let first = self.entries.partition_point(|e| e.end <= addr);
    for i in first..self.entries.len() {
      let e = &self.entries[i];
      if e.start >= end {
        break;
      }
      let lo = e.start.max(addr);
      let hi = e.end.min(end);
      let out = &mut buf[(lo - addr) as usize..(hi - addr) as usize];
      match &e.kind {
        ExpectKind::Zero => {}
        ExpectKind::Pattern { xor } => fill_pattern(lo, out, *xor),
        ExpectKind::File { file, offset } => {
          let off = offset + (lo - e.start);
          let f = match self.files.get(file) {
            Some(f) => f,
            None => {
              let f = File::open(file).map_err(|err| format!("cannot open {}: {err}", file.display()))?;
              self.files.entry(file.clone()).or_insert(f)
            }
          };
          read_exact_at(f, out, off).map_err(|err| format!("{} at offset {off}: {err}", file.display()))?;
        }
      }
    }
    Ok(())
  }
}

fn fill_pattern(lo: u64, out: &mut [u8], xor: u64) {
  for (i, b) in out.iter_mut().enumerate() {
    let a = lo + i as u64;
    let w = pattern_word(a & !7, xor).to_le_bytes();
    *b = w[(a & 7) as usize];
  }
}

/// pread until full; a short file is an error (the layout promised data that is not there).
pub fn read_exact_at(f: &File, mut buf: &mut [u8], mut off: u64) -> Result<(), String> {
  while !buf.is_empty() {
    match f.read_at(buf, off) {
      Ok(0) => return Err(format!("file ends before {} more bytes", buf.len())),
      Ok(n) => {
        buf = &mut buf[n..];
        off += n as u64;
      }
      Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
      Err(e) => return Err(e.to_string()),
    }
  }
  Ok(())
}

#[cfg(test)]
mod tests {
  use super::*;

  #[test]
  fn pattern_and_zero_fill_by_image_address() {
    let mut o = Oracle::new(vec![Expect { start: 0x1000, end: 0x2000, kind: ExpectKind::Pattern { xor: 1 << 56 } }]);
    let mut buf = vec![0xAAu8; 0x2000];
    o.fill(0x1000, &mut buf).unwrap();
    let w = u64::from_le_bytes(buf[8..16].try_into().unwrap());
    assert_eq!(w, ((0x1008u64 ^ 0x5DEECE66D).wrapping_mul(0x9E3779B97F4A7C15)) ^ (1 << 56));
    assert!(buf[0x1000..].iter().all(|&b| b == 0), "bytes outside every entry are zero");
  }
}
