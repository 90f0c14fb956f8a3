//! Background work: copy requests run a piece at a time between event reads, early copies first.

use std::sync::atomic::Ordering;
use std::time::Instant;

use super::job::{Job, Source};
use super::report::{Out, Status};
use super::{Loop, QUIET_AFTER};
use crate::table::PAGE;
use crate::uffd::CopyResult;

impl Loop {
  /// Runs one piece (≤ piece bytes) of the first request, urgent ones first; early copies (a
  /// working set) before the background, as they are what the program touches first.
  pub(super) fn run_one_piece(&mut self) {
    let urgent = !self.urgent.is_empty();
    // While a fault's page is on the wire, background copies wait: they would take the CPU the
    // page server and the faulting process need (two cores here), for a few microseconds each.
    if !urgent && self.client.as_ref().is_some_and(|c| c.urgent_outstanding()) {
      return;
    }
    if !urgent && self.run_early() {
      return;
    }
    let Some(mut job) = (if urgent { self.urgent.pop_front() } else { self.background.pop_front() }) else {
      return;
    };
    match self.step(&mut job) {
      Some(done) => {
        self.out.push(done);
        if let (Source::Fetched(b), Some(c)) = (job.src, self.client.as_mut()) {
          c.recycle(b);
        }
      }
      None => {
        if urgent {
          self.urgent.push_front(job)
        } else {
          self.background.push_front(job)
        }
      }
    }
  }

  /// One turn of early copies, if one is due; true if it ran. After "restore finished", a task's early
  /// copies wait until JS has added its uffd to the loop, and end once a layout event of it has been
  /// read (or it is gone): see early.rs.
  pub(super) fn run_early(&mut self) -> bool {
    if self.early.is_empty() {
      return false;
    }
    let procs = &self.procs;
    self.early.retain(|e| e.proc_id.is_none_or(|id| procs.get(&id).is_some_and(|p| p.events_read == 0 && !p.dead)));
    let now = Instant::now();
    let finished = self.finished;
    let Some(i) =
      self.early.iter().position(|e| (!finished || e.proc_id.is_some()) && e.due().is_none_or(|t| t <= now))
    else {
      return false;
    };
    let budget = self.piece_now();
    if !self.early[i].step(budget) {
      let e = self.early.swap_remove(i);
      if e.is_complete() {
        let at_ms =
          std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64() * 1000.0);
        self.out.push(Out::EarlyDone { pid: e.pid, bytes: e.copied, at_ms });
      }
    }
    true
  }

  /// How long epoll may sleep before an early copy is due (None: none is waiting). After "restore
  /// finished" one whose task JS has not added yet is not waiting: adding it wakes the loop anyway.
  pub(super) fn early_wait_ms(&self) -> Option<i32> {
    let ms = |due: Option<Instant>| match due {
      Some(t) => t.saturating_duration_since(Instant::now()).as_millis() as i32 + 1,
      None => 0,
    };
    self.early.iter().filter(|e| !self.finished || e.proc_id.is_some()).map(|e| ms(e.due())).min()
  }

  /// The size of the next background piece: the set one while faults come, the quiet one (QUIET_PIECE
  /// unless set) when none has for QUIET_AFTER.
  ///
  /// Why: a fault waits for the piece being copied (one thread does both), so pieces are small while a
  /// program faults; once it stops, bigger pieces cost fewer calls per byte (and less CPU) for the rest.
  pub(super) fn piece_now(&self) -> u64 {
    match self.last_fault {
      Some(t) if t.elapsed() < QUIET_AFTER => self.piece,
      _ => self.quiet_piece,
    }
  }

  /// Advances a job by one piece; returns its completion when finished.
  ///
  /// EEXIST: a page already present is skipped and the copy continues page by page; `bytes` counts only the
  /// bytes this request placed, and the status is `exists` only if nothing at all was placed.
  /// EAGAIN: a partial copy continues with the next piece; EAGAIN with nothing copied (a layout change is
  /// pending) completes as `again` with the bytes placed so far.
  pub(super) fn step(&mut self, job: &mut Job) -> Option<Out> {
    let done = |job: &Job, status: Status, errno: Option<i32>| {
      Some(Out::Done { proc_id: job.proc_id, req_id: job.req_id, status, bytes: job.copied - job.joined, errno })
    };
    let Some(p) = self.procs.get(&job.proc_id) else { return done(job, Status::Gone, None) };
    if p.dead {
      return done(job, Status::Gone, None);
    }
    if p.paused || p.gen != job.gen {
      return done(job, Status::Stale, None);
    }
    if !job.next_stretch() {
      return done(job, if job.copied == 0 && job.len > 0 { Status::Exists } else { Status::Ok }, None);
    }
    let chunk = (job.end - job.done).min(self.piece_now());
    let dst = job.dst + job.done;
    let res = match &job.src {
      Source::Zero => p.uffd.zeropage(dst, chunk, 0),
      Source::Image(img, off) => match img.ptr_at(off + job.done, chunk) {
        Ok(src) => {
          img.populate(off + job.done, chunk);
          // SAFETY: the range was bounds-checked by ptr_at and the Arc keeps the mapping alive.
          let r = unsafe { p.uffd.copy(dst, src, chunk, 0) };
          img.piece_copied(chunk);
          r
        }
        Err(e) => {
          self.out.push(Out::Error { proc_id: Some(job.proc_id), message: e.to_string() });
          return done(job, Status::Error, Some(libc::ERANGE));
        }
      },
      // SAFETY: the Vec lives in the job for the duration of the call; done+chunk <= len == vec.len().
      Source::Buffer(v) => unsafe { p.uffd.copy(dst, v.as_ptr().add(job.done as usize), chunk, 0) },
      // SAFETY: the buffer lives in the job; done+chunk <= len <= buffer length (checked when the job was made).
      Source::Fetched(b) => unsafe { p.uffd.copy(dst, b.as_ptr().add(job.done as usize), chunk, 0) },
    };
    let counters = p.counters.clone();
    let account = |n: u64, job: &mut Job| {
      job.done += n;
      job.copied += n;
      if job.for_fault {
        job.joined += n;
      }
      counters.bytes.fetch_add(n, Ordering::Relaxed);
      match job.src {
        Source::Zero => counters.zero_pages.fetch_add(n / PAGE, Ordering::Relaxed),
        _ => counters.copy_pages.fetch_add(n / PAGE, Ordering::Relaxed),
      };
    };
    match res {
      CopyResult::Copied(n) => {
        account(n.min(chunk), job);
        None
      }
      CopyResult::Again { copied } if copied > 0 => {
        account(copied, job);
        None
      }
      CopyResult::Again { .. } => done(job, Status::Again, None),
      CopyResult::Exists => {
        job.done += PAGE.min(job.end - job.done);
        None
      }
      CopyResult::NoEnt => done(job, Status::NoEnt, None),
      CopyResult::ProcessGone => {
        let id = job.proc_id;
        self.mark_gone(id, "the process is gone (ESRCH)".into());
        done(job, Status::Gone, None)
      }
      CopyResult::Other(e) => done(job, Status::Error, Some(e)),
    }
  }
}
