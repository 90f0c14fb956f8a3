//! What the native page server can serve: per image pid, sorted runs of lazy pages whose data is in a pages
//! file, with an O(log n) lookup. Built from the TS catalog (ts/pageserver/catalog.ts: the runs), which owns the
//! knowledge of the image format; this side only checks the runs are usable.

use std::collections::HashMap;

use crate::image::PageImage;

const PAGE: u64 = 4096;

/// The packed layout JS hands over (`NativePageServer.start`): per pid a `BigUint64Array` of
/// `CATALOG_RUN_WORDS` words per run, `start, end, imageId, fileOffset`. Exported, so the facade's
/// packer (ts/native `packCatalogRuns`) writes this layout from here, the one definition.
#[napi_derive::napi]
pub const CATALOG_RUN_WORDS: u32 = 4;
const WORDS: usize = CATALOG_RUN_WORDS as usize;

/// A contiguous run: image addresses `start..end` are at `offset..` of image `image`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Run {
  pub start: u64,
  pub end: u64,
  pub image: usize,
  pub offset: u64,
}

/// Runs by pid plus the images they point into.
#[derive(Default)]
pub struct Catalog {
  by_pid: HashMap<u32, Vec<Run>>,
  images: Vec<PageImage>,
}

impl Catalog {
  /// A catalog over `images` (indexed by image id) with no pids yet.
  pub fn new(images: Vec<PageImage>) -> Catalog {
    Catalog { by_pid: HashMap::new(), images }
  }

  /// Adds the runs of `pid` from `[start, end, imageId, fileOffset]*` words. Errors name the pid and run
  /// index: a bad table is a programming error in the caller, but must not turn into a wrong page served.
  pub fn add_pid(&mut self, pid: u32, words: &[u64]) -> Result<(), String> {
    if !words.len().is_multiple_of(WORDS) {
      return Err(format!("catalog of pid {pid}: {} words is not a whole number of {WORDS}-word runs", words.len()));
    }
    let mut runs = Vec::with_capacity(words.len() / WORDS);
    for (i, w) in words.chunks_exact(WORDS).enumerate() {
      let r = Run { start: w[0], end: w[1], image: w[2] as usize, offset: w[3] };
      if r.start >= r.end || !r.start.is_multiple_of(PAGE) || !r.end.is_multiple_of(PAGE) {
        return Err(format!(
          "catalog of pid {pid}: run {i} 0x{:x}-0x{:x} is empty or not page aligned",
          r.start, r.end
        ));
      }
      if w[2] >= self.images.len() as u64 {
        return Err(format!("catalog of pid {pid}: run {i} names image {} of {}", w[2], self.images.len()));
      }
      if let Some(prev) = runs.last() {
        let prev: &Run = prev;
        if prev.end > r.start {
          return Err(format!("catalog of pid {pid}: run {i} at 0x{:x} is not after the previous run", r.start));
        }
      }
      runs.push(r);
    }
    self.by_pid.insert(pid, runs);
    Ok(())
  }

  /// True when `pid` is in the checkpoint (even with nothing servable).
  pub fn has_pid(&self, pid: u32) -> bool {
    self.by_pid.contains_key(&pid)
  }

  /// The run of `pid` holding `vaddr`.
  pub fn find(&self, pid: u32, vaddr: u64) -> Option<&Run> {
    let runs = self.by_pid.get(&pid)?;
    let i = runs.partition_point(|r| r.start <= vaddr);
    let r = runs.get(i.checked_sub(1)?)?;
    (vaddr < r.end).then_some(r)
  }

  /// The image a run points into.
  pub fn image(&self, id: usize) -> &PageImage {
    &self.images[id]
  }
}

#[cfg(test)]
mod tests {
  use super::*;

  #[test]
  fn finds_runs_and_rejects_bad_tables() {
    let mut c = Catalog::new(Vec::new());
    assert!(c.add_pid(1, &[0x1000, 0x3000, 0, 0]).unwrap_err().contains("image 0 of 0"));
    let mut c2 = Catalog { images: vec![], by_pid: HashMap::new() };
    c2.by_pid.insert(
      7,
      vec![
        Run { start: 0x1000, end: 0x3000, image: 0, offset: 0 },
        Run { start: 0x5000, end: 0x6000, image: 0, offset: 0x2000 },
      ],
    );
    assert_eq!(c2.find(7, 0x1000).unwrap().start, 0x1000);
    assert_eq!(c2.find(7, 0x2000).unwrap().start, 0x1000);
    assert!(c2.find(7, 0x3000).is_none());
    assert!(c2.find(7, 0x0).is_none());
    assert_eq!(c2.find(7, 0x5000).unwrap().offset, 0x2000);
    assert!(c2.find(8, 0x1000).is_none());
    assert!(c.add_pid(1, &[1, 2, 3]).unwrap_err().contains("3 words"));
    assert!(c.add_pid(1, &[0x1000, 0x1000, 0, 0]).unwrap_err().contains("empty"));
  }
}
