//! A served process, and how it ends: its exit (pidfd), or its uffd no longer servable.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::Arc;

use super::report::Out;
use super::stats::Counters;
use super::Loop;
use crate::table::Table;
use crate::uffd::Uffd;

/// One served process (its uffd and what the loop knows of it).
pub(super) struct Proc {
  pub(super) uffd: Uffd,
  pub(super) pidfd: Option<OwnedFd>,
  pub(super) paused: bool,
  /// Layout events (FORK/REMAP/REMOVE/UNMAP) read from this uffd so far. A table installed by TS
  /// reflects only the events TS had applied: if we have read more since, the process stays paused
  /// (the kernel let the process run on as soon as we *read* the event, not when TS applied it).
  pub(super) events_read: u32,
  pub(super) gen: u32,
  pub(super) table: Table,
  pub(super) queued: Vec<(u64, u64)>,
  pub(super) counters: Arc<Counters>,
  pub(super) dead: bool,
}

/// A pidfd for `pid`, to hear of its exit (None: gone already, or not a pid of our namespace).
pub(super) fn pidfd_open(pid: i32) -> Option<OwnedFd> {
  // SAFETY: pidfd_open(2) takes a pid and flags by value (no pointers); a negative result is never used as
  // an fd (checked below).
  let r = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) } as RawFd;
  // SAFETY: only when r >= 0, so `r` is the new pidfd the kernel just returned: open, and owned by nothing
  // else that could close it.
  (r >= 0).then(|| unsafe { OwnedFd::from_raw_fd(r) })
}

impl Loop {
  pub(super) fn on_exit(&mut self, proc_id: u32) {
    if let Some(p) = self.procs.get_mut(&proc_id) {
      if let Some(fd) = p.pidfd.take() {
        self.poller.remove(fd.as_raw_fd());
      }
    }
    self.out.push(Out::Exit { proc_id });
  }

  pub(super) fn mark_gone(&mut self, proc_id: u32, reason: String) {
    if self.mark_dead(proc_id) {
      self.out.push(Out::Gone { proc_id, reason });
    }
  }

  /// Stop watching a process's uffd; false if it was already dead.
  pub(super) fn mark_dead(&mut self, proc_id: u32) -> bool {
    let Some(p) = self.procs.get_mut(&proc_id) else { return true };
    if p.dead {
      return false;
    }
    p.dead = true;
    self.poller.remove(p.uffd.raw());
    true
  }
}
