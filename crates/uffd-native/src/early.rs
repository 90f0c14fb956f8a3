//! Early copies: a recorded working set installed while the restore is still going, before the
//! restored task runs.
//!
//! CRIU hands a task's userfaultfd over early in the restore, then its restorer moves each lazy VMA
//! to its final address and only then registers it (`vma_remap` + `enable_uffd`), and the task is
//! resumed a few milliseconds after "restore finished". The daemon's JavaScript hears of the task
//! milliseconds after the hand-over, often after the task already runs; so the hand-over thread
//! passes a duplicate of the uffd straight to the event loop, which copies the runs preloaded for
//! that pid (`Cmd::Preload`) as soon as their VMAs are registered.
//!
//! Why this is safe: the kernel refuses UFFDIO_COPY into a range that is not registered with this
//! userfaultfd (ENOENT), and a range is registered only at its final address; nothing but the
//! program itself changes the layout afterwards. After "restore finished" the program may run, so
//! early copies go on only for a task whose uffd the loop serves (they wait until JS has added it)
//! and from which it has read no layout event (fork, mremap, munmap, madvise(DONTNEED)): until one is read, the layout is the
//! restorer's (an event in progress makes the copy fail with EAGAIN, and the kernel holds the
//! program until the event is read). A page already present (EEXIST) is skipped. What is not copied
//! early is copied by the daemon's ordinary requests, which skip what is present.
use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::image::PageImage;
use crate::pagebuf::PageBuf;
use crate::table::PAGE;
use crate::uffd::{CopyResult, Uffd};

/// Runs up to this long are read with pread into a buffer, longer ones copied from the mapping: copying
/// scattered single pages out of the mapping made the kernel map whole page-cache folios around each
/// in the daemon (its RSS grew to the size of the image), as on the fault path.
const BUFFERED: u64 = 64 << 10;

/// How long a run whose range is not registered yet waits before it is tried again: registration
/// comes a few milliseconds after the hand-over, and the whole window is a few milliseconds.
const RETRY: Duration = Duration::from_micros(200);

/// One run of pages to copy: `len` bytes of `img` at `off` to `dst` in the task.
pub struct Run {
  pub img: PageImage,
  pub off: u64,
  pub dst: u64,
  pub len: u64,
}

/// The early copies of one task.
pub struct Early {
  /// The task's checkpoint pid.
  pub pid: i32,
  uffd: Uffd,
  runs: VecDeque<Run>,
  retry_at: Option<Instant>,
  /// Bytes placed so far (for the loop's statistics).
  pub copied: u64,
  /// The event loop's process id of the same uffd, once JS has added it (see `same_uffd`).
  pub proc_id: Option<u32>,
  /// Page-aligned buffer for the short runs (UFFDIO_COPY wants a page-aligned source).
  buf: PageBuf,
}

impl Early {
  pub fn new(pid: i32, uffd: Uffd, runs: VecDeque<Run>) -> Early {
    Early { pid, uffd, runs, retry_at: None, copied: 0, proc_id: None, buf: PageBuf::new(BUFFERED as usize) }
  }

  /// Is `fd` the same open userfaultfd as ours (a duplicate of one file description)? kcmp(2):
  /// every userfaultfd shares one anonymous inode, so only the file description tells them apart.
  pub fn same_uffd(&self, fd: std::os::fd::RawFd) -> bool {
    let me = std::process::id() as libc::pid_t;
    const KCMP_FILE: libc::c_int = 0;
    // SAFETY: kcmp only compares two fds of this process; no memory is passed.
    unsafe { libc::syscall(libc::SYS_kcmp, me, me, KCMP_FILE, self.uffd.raw(), fd) == 0 }
  }

  /// Every run was copied (or found present): not ended by an error or the task's end.
  pub fn is_complete(&self) -> bool {
    self.runs.is_empty()
  }

  /// When it is worth trying again (None: now).
  pub fn due(&self) -> Option<Instant> {
    self.retry_at
  }

  /// Copies runs in order for about `budget` bytes. False once there is nothing left to do (all
  /// copied, the task gone, or an error that retrying will not mend): then drop it.
  pub fn step(&mut self, budget: u64) -> bool {
    if self.retry_at.is_some_and(|t| Instant::now() < t) {
      return true;
    }
    self.retry_at = None;
    let mut spent = 0;
    while spent < budget {
      let Some(run) = self.runs.front_mut() else { return false };
      let chunk = run.len.min(budget.max(PAGE));
      let res = if chunk <= BUFFERED {
        if run.img.read_at(run.off, self.buf.slice_mut(0, chunk as usize)).is_err() {
          return false;
        }
        // SAFETY: the buffer is ours, page aligned, at least `chunk` bytes, and lives across the call.
        unsafe { self.uffd.copy(run.dst, self.buf.as_ptr(), chunk, 0) }
      } else {
        match run.img.ptr_at(run.off, chunk) {
          Ok(src) => {
            run.img.populate(run.off, chunk);
            // SAFETY: ptr_at bounds-checked the source range, and the PageImage (an Arc of the
            // mapping) held by the run keeps it mapped for the call.
            let r = unsafe { self.uffd.copy(run.dst, src, chunk, 0) };
            run.img.piece_copied(chunk);
            r
          }
          Err(_) => return false,
        }
      };
      let advance = match res {
        CopyResult::Copied(n) => {
          self.copied += n;
          n.min(chunk)
        }
        CopyResult::Again { copied } if copied > 0 => {
          self.copied += copied;
          copied
        }
        // Present already (a fault, or the restorer touched it): skip the page.
        CopyResult::Exists => PAGE,
        // Not registered yet (or a non-cooperative event pending): this run waits, in order.
        CopyResult::NoEnt | CopyResult::Again { .. } => {
          self.retry_at = Some(Instant::now() + RETRY);
          return true;
        }
        CopyResult::ProcessGone | CopyResult::Other(_) => return false,
      };
      run.off += advance;
      run.dst += advance;
      run.len -= advance.min(run.len);
      if run.len == 0 {
        self.runs.pop_front();
      }
      spent += advance.max(PAGE);
    }
    true
  }
}
