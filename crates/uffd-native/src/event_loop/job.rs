//! A copy request from JS (or a fetched reply) and how it walks its pages, jumping to a fault.

use crate::image::PageImage;
use crate::pagebuf::PageBuf;

/// Where a request's bytes come from.
pub enum Source {
  Image(PageImage, u64),
  Buffer(Vec<u8>),
  /// A background fetch's reply (page aligned; returned to the client's pool when the copy completes).
  Fetched(PageBuf),
  Zero,
}

/// A TS-driven request.
pub struct Job {
  pub proc_id: u32,
  pub req_id: u32,
  pub gen: u32,
  pub src: Source,
  pub dst: u64,
  pub len: u64,
  pub urgent: bool,
  /// Offset of the next piece, and the end of the stretch being copied now (`len`, unless a fault
  /// made the copy jump ahead: see `Loop::join_fault`).
  pub(super) done: u64,
  pub(super) end: u64,
  /// Stretches `[from, to)` jumped over, copied once the current one is done.
  pub(super) holes: Vec<(u64, u64)>,
  pub(super) copied: u64,
  /// Of `copied`, the bytes of pieces run for a fault (reported as served, not in the completion).
  pub(super) joined: u64,
  /// Set while `join_fault` runs a piece: what it copies counts in `joined`.
  pub(super) for_fault: bool,
}

impl Job {
  /// A new request of `len` bytes to `dst`.
  pub fn new(proc_id: u32, req_id: u32, gen: u32, src: Source, dst: u64, len: u64, urgent: bool) -> Job {
    Job {
      proc_id,
      req_id,
      gen,
      src,
      dst,
      len,
      urgent,
      done: 0,
      end: len,
      holes: Vec::new(),
      copied: 0,
      joined: 0,
      for_fault: false,
    }
  }

  /// Moves the copy to offset `at` (page-aligned, inside the job, not copied yet): what is left of
  /// the current stretch before `at` becomes a hole. False if `at` was copied already (or is outside).
  pub(super) fn jump_to(&mut self, at: u64) -> bool {
    if at >= self.done && at < self.end {
      if at > self.done {
        self.holes.push((self.done, at));
      }
      self.done = at;
      return true;
    }
    let Some(i) = self.holes.iter().position(|&(a, b)| at >= a && at < b) else { return false };
    let (a, b) = self.holes[i];
    if self.done < self.end {
      self.holes.push((self.done, self.end));
    }
    if at > a {
      self.holes[i] = (a, at);
    } else {
      self.holes.swap_remove(i);
    }
    self.done = at;
    self.end = b;
    true
  }

  /// Past the end of the current stretch: on to the next hole. False when nothing is left.
  pub(super) fn next_stretch(&mut self) -> bool {
    while self.done >= self.end {
      let Some((a, b)) = self.holes.pop() else { return false };
      self.done = a;
      self.end = b;
    }
    true
  }
}

#[cfg(test)]
mod tests {
  use super::*;
  use crate::table::PAGE;

  /// Walks a job as `step` does (one page per piece, every page copied), returning page offsets in order.
  fn walk(job: &mut Job, mut on: impl FnMut(&mut Job, u64)) -> Vec<u64> {
    let mut order = Vec::new();
    while job.next_stretch() {
      let at = job.done;
      order.push(at / PAGE);
      job.done += PAGE;
      on(job, at);
    }
    order
  }

  #[test]
  fn a_jump_copies_from_the_fault_then_fills_what_it_skipped_each_page_once() {
    let mut job = Job::new(1, 1, 1, Source::Zero, 0x1000_0000, 10 * PAGE, false);
    let order = walk(&mut job, |j, at| {
      if at == PAGE {
        assert!(j.jump_to(7 * PAGE)); // a fault ahead of the copy
      }
      if at == 8 * PAGE {
        assert!(j.jump_to(4 * PAGE)); // a fault in what was skipped
        assert!(!j.jump_to(7 * PAGE), "page 7 is copied already");
      }
    });
    assert_eq!(order, vec![0, 1, 7, 8, 4, 5, 6, 9, 2, 3]);
    let mut sorted = order.clone();
    sorted.sort();
    assert_eq!(sorted, (0..10).collect::<Vec<_>>());
  }

  #[test]
  fn a_jump_outside_the_job_or_to_a_copied_page_is_refused() {
    let mut job = Job::new(1, 1, 1, Source::Zero, 0, 4 * PAGE, false);
    job.done = 2 * PAGE;
    assert!(!job.jump_to(PAGE));
    assert!(!job.jump_to(4 * PAGE));
    assert!(job.jump_to(3 * PAGE));
    assert_eq!(walk(&mut job, |_, _| {}), vec![3, 2]);
  }
}
