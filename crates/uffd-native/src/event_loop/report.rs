//! What the loop reports to JS, and when: served facts wait briefly for company, everything else goes at once.

use std::time::Instant;

use super::{Loop, REPORT_BATCH, REPORT_DELAY};
use crate::table::PAGE;

/// How a page was served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum How {
  Copy,
  Zero,
}

/// Completion status of a request (a string enum in JS: "ok", "again", "exists", "noent", ...).
#[napi_derive::napi(string_enum = "lowercase", js_name = "DoneStatus")]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
  Ok,
  Again,
  Exists,
  NoEnt,
  Gone,
  Stale,
  Error,
}

/// Reports to TS.
#[derive(Debug, Clone, PartialEq)]
pub enum Out {
  /// Pages the fast path served to one process, in order, since the last report of another kind:
  /// copied runs as (image address, bytes) pairs (contiguous pages merged), zero pages counted, and
  /// the live address of the last one. One report for a storm of faults, not one per fault: TS takes
  /// them as two typed arrays (the per-fault objects and BigInts cost JS ~4 µs a fault).
  Served {
    proc_id: u32,
    images: Vec<f64>,
    lens: Vec<f64>,
    zero_pages: u64,
    last_live: u64,
    next_live: u64,
  },
  PageFault {
    proc_id: u32,
    address: u64,
    flags: u64,
    gen: u32,
  },
  Fork {
    proc_id: u32,
    child_proc_id: u32,
  },
  Remap {
    proc_id: u32,
    from: u64,
    to: u64,
    len: u64,
  },
  Remove {
    proc_id: u32,
    start: u64,
    end: u64,
  },
  Unmap {
    proc_id: u32,
    start: u64,
    end: u64,
  },
  Done {
    proc_id: u32,
    req_id: u32,
    status: Status,
    bytes: u64,
    errno: Option<i32>,
  },
  Exit {
    proc_id: u32,
  },
  Gone {
    proc_id: u32,
    reason: String,
  },
  Error {
    proc_id: Option<u32>,
    message: String,
  },
  /// The page server failed (named, with what happened); it is no longer used.
  SourceError {
    message: String,
  },
  /// Every preloaded run of task `pid` (checkpoint pid) was copied early, `bytes` placed (the rest was
  /// present already), the last at `at_ms` (ms since the Unix epoch: a benchmark compares it with when
  /// the restore started).
  EarlyDone {
    pid: i32,
    bytes: u64,
    at_ms: f64,
  },
}

impl Loop {
  /// Hands the reports to JS, unless they are all routine "served" facts younger than REPORT_DELAY.
  ///
  /// Why: waking the JS thread costs a context switch and CPU that the restored program and this thread
  /// need (two cores here): reported at once, every fault of a real restore woke JS for one event, and a
  /// fault's latency doubled against `criu lazy-pages`. A served fact is bookkeeping (the page is in;
  /// TS settles it and counts it), so it can wait a little and travel in a batch; layout events,
  /// completions and errors go at once.
  pub(super) fn flush(&mut self) {
    if self.out.is_empty() {
      self.routine_since = None;
      return;
    }
    let now = Instant::now();
    let since = *self.routine_since.get_or_insert(now);
    let urgent = self.out.iter().any(|o| !matches!(o, Out::Served { .. }));
    if urgent || self.out.len() >= REPORT_BATCH || now.duration_since(since) >= REPORT_DELAY {
      self.flush_now();
    }
  }

  pub(super) fn flush_now(&mut self) {
    self.routine_since = None;
    self.shared.outbox.push_all(&mut self.out);
  }

  /// epoll timeout: no later than the deadline of reports held back by `flush`.
  pub(super) fn report_timeout_ms(&self, timeout: i32) -> i32 {
    let Some(since) = self.routine_since else { return timeout };
    let left = REPORT_DELAY.saturating_sub(since.elapsed()).as_millis() as i32 + 1;
    if timeout < 0 {
      left
    } else {
      timeout.min(left)
    }
  }

  /// Appends a served page to the process's current report (see `Out::Served`), merging a copied
  /// page with the previous run when both its live and image addresses follow on.
  pub(super) fn record_served(&mut self, proc_id: u32, live: u64, image: u64, how: How) {
    self.record_served_run(proc_id, live, image, PAGE, how);
  }

  /// `record_served` for `len` bytes of contiguous pages (live and image alike).
  pub(super) fn record_served_run(&mut self, proc_id: u32, live: u64, image: u64, len: u64, how: How) {
    let fresh = !matches!(self.out.last(), Some(Out::Served { proc_id: pp, .. }) if *pp == proc_id);
    if fresh {
      self.out.push(Out::Served {
        proc_id,
        images: Vec::new(),
        lens: Vec::new(),
        zero_pages: 0,
        last_live: live,
        next_live: 0,
      });
    }
    let Some(Out::Served { images, lens, zero_pages, last_live, next_live, .. }) = self.out.last_mut() else {
      unreachable!()
    };
    match how {
      How::Zero => *zero_pages += len / PAGE,
      How::Copy => {
        let n = images.len();
        if n > 0 && *next_live == live && images[n - 1] + lens[n - 1] == image as f64 {
          lens[n - 1] += len as f64;
        } else {
          images.push(image as f64);
          lens.push(len as f64);
        }
        *next_live = live + len;
      }
    }
    *last_live = live;
  }
}
