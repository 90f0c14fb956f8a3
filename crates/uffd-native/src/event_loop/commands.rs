//! Commands from JS (and the hand-over thread) to the loop thread, and how the loop carries them out.

use std::collections::VecDeque;
use std::os::fd::AsRawFd;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use super::job::Job;
use super::procs::{pidfd_open, Proc};
use super::report::Out;
use super::stats::Counters;
use super::{token, Loop, RESUME_GRACE, TOK_PIDFD, TOK_UFFD};
use crate::image::PageImage;
use crate::pageclient::{Fetch, PageClient};
use crate::table::{Table, PAGE};
use crate::uffd::Uffd;

/// Commands from JS to the loop thread.
pub enum Cmd {
  AddImage(u32, PageImage),
  AddProcess {
    proc_id: u32,
    uffd: Uffd,
    pid: i32,
    counters: Arc<Counters>,
  },
  Install {
    proc_id: u32,
    gen: u32,
    table: Table,
    applied: u32,
  },
  Job(Job),
  Wake {
    proc_id: u32,
    start: u64,
    len: u64,
  },
  Unregister {
    proc_id: u32,
    start: u64,
    len: u64,
  },
  Pause(u32),
  /// Watch `pid` (a forked child found by TS) for exit, as `AddProcess` does for handed-over tasks.
  Watch {
    proc_id: u32,
    pid: i32,
  },
  Remove(u32),
  /// Piece size while faults come, and while none do.
  PieceBytes(u64, u64),
  /// Use this page server for remote table entries and `Fetch` (replaces a previous one).
  Connect(Box<PageClient>),
  Fetch(Fetch),
  FetchWindow(u64),
  /// Keep background jobs queued from now on, apart, until `Unpark`: they are queued while the restore
  /// is still going (the JS thread has the CPU then) and start the moment the restore is finished (the
  /// hand-over thread sends `Unpark`), with one command. Not earlier: copying while CRIU restores
  /// takes the CPU its restore needs (two cores here) and delayed the program's resume by ~20 ms.
  Park,
  /// "Restore finished" (sent by the hand-over thread): run the parked jobs first, in the order they
  /// came, then the rest; early copies go on only as early.rs says.
  Unpark,
  /// Runs to copy into the task `pid` (its checkpoint pid) as soon as its uffd arrives (see early.rs).
  Preload {
    pid: i32,
    runs: Vec<crate::early::Run>,
  },
  /// A duplicate of the uffd of task `pid`, from the hand-over thread: copy its preloaded runs now.
  Early {
    pid: i32,
    uffd: Uffd,
  },
}

impl Loop {
  pub(super) fn drain_commands(&mut self) {
    self.shared.waker.drain();
    loop {
      let cmd = self.shared.cmds.lock().unwrap_or_else(|p| p.into_inner()).pop_front();
      let Some(cmd) = cmd else { break };
      self.on_command(cmd);
    }
  }

  pub(super) fn on_command(&mut self, cmd: Cmd) {
    match cmd {
      Cmd::AddImage(id, img) => {
        self.images.insert(id, img);
      }
      Cmd::AddProcess { proc_id, uffd, pid, counters } => {
        // First of all, before anything can fail: the guardian holds a duplicate from now on.
        self.guardian(crate::guardian::add(crate::guardian::loop_id(&self.shared), proc_id, uffd.raw(), pid));
        if let Err(e) = self.poller.add(uffd.raw(), libc::EPOLLIN as u32, token(TOK_UFFD, proc_id)) {
          self.out.push(Out::Error { proc_id: Some(proc_id), message: format!("event loop: cannot watch uffd: {e}") });
        }
        // No pidfd (gone already, or a pid of another namespace): do not guess. Its exit then shows as
        // ESRCH on the next copy (a wrong "exit" would close the uffd of a live process).
        let pidfd = if pid > 0 { pidfd_open(pid) } else { None };
        if let Some(fd) = &pidfd {
          let _ = self.poller.add(fd.as_raw_fd(), libc::EPOLLIN as u32, token(TOK_PIDFD, proc_id));
        }
        counters.paused.store(true, Ordering::Relaxed);
        for e in self.early.iter_mut().filter(|e| e.proc_id.is_none()) {
          if e.same_uffd(uffd.raw()) {
            e.proc_id = Some(proc_id);
          }
        }
        self.procs.insert(
          proc_id,
          Proc {
            uffd,
            pidfd,
            paused: true,
            events_read: 0,
            gen: 0,
            table: Table::default(),
            queued: Vec::new(),
            counters,
            dead: false,
          },
        );
      }
      Cmd::Install { proc_id, gen, table, applied } => {
        let Some(p) = self.procs.get_mut(&proc_id) else { return };
        p.table = table;
        p.gen = gen;
        if applied < p.events_read {
          // An event newer than this table is already read (and its batch is on its way to TS):
          // serving from this table could land pages at addresses that have moved. Stay paused;
          // TS installs again once it has applied that event.
          return;
        }
        p.paused = false;
        p.counters.paused.store(false, Ordering::Relaxed);
        p.counters.gen.store(gen, Ordering::Relaxed);
        let queued = std::mem::take(&mut p.queued);
        for (addr, flags) in queued {
          self.serve(proc_id, addr, flags);
        }
      }
      Cmd::Job(j) => {
        if j.urgent {
          self.urgent.push_back(j)
        } else if let Some(q) = self.parked.as_mut() {
          q.push_back(j)
        } else {
          self.background.push_back(j)
        }
      }
      Cmd::Park => {
        self.parked.get_or_insert_with(VecDeque::new);
      }
      Cmd::Unpark => {
        if let Some(mut q) = self.parked.take() {
          q.append(&mut self.background);
          self.background = q;
        }
        // From now on the program runs and may move its memory: early copies (by image address) go on
        // only for tasks the loop serves, until it reads a layout event from them (see early.rs).
        self.finished = true;
        // The restored tasks resume a few milliseconds from now and fault at once: background pieces
        // stay small meanwhile, as if faults came, so the first faults do not wait behind quiet-size
        // pieces (512 KiB) started before the program ran.
        self.last_fault = Some(Instant::now() + RESUME_GRACE);
        self.preloads.clear();
      }
      Cmd::Preload { pid, runs } => {
        self.preloads.entry(pid).or_default().extend(runs);
      }
      Cmd::Early { pid, uffd } => {
        if let Some(runs) = self.preloads.remove(&pid) {
          self.early.push(crate::early::Early::new(pid, uffd, runs.into()));
        }
      }
      Cmd::Wake { proc_id, start, len } => {
        if let Some(p) = self.procs.get(&proc_id) {
          if let Err(e) = p.uffd.wake(start, len) {
            self.out.push(Out::Error { proc_id: Some(proc_id), message: e.to_string() });
          }
        }
      }
      Cmd::Unregister { proc_id, start, len } => {
        // After MADV_DONTNEED (a REMOVE event) the range must read zeros. Unregistering makes the kernel
        // give them; if that fails, the range is already out of the table TS installs with it, and a
        // fault outside the table gets a zero page: the same zeros, one round trip each. So a failure
        // loses nothing and is not the process's end: ENOMEM comes when the process is exiting (the
        // kernel cannot take its mm: seen in CI as threads ended) or a VMA cannot be split; others warn.
        if let Some(p) = self.procs.get(&proc_id) {
          if let Err(e) = p.uffd.unregister(start, len) {
            if e.errno != libc::ENOMEM && e.errno != libc::ESRCH {
              self.out.push(Out::Error {
                proc_id: None,
                message: format!("{e} (faults there are served zero pages instead)"),
              });
            }
          }
        }
      }
      Cmd::Watch { proc_id, pid } => {
        self.guardian(crate::guardian::watch(crate::guardian::loop_id(&self.shared), proc_id, pid));
        let poller = &self.poller;
        if let Some(p) = self.procs.get_mut(&proc_id) {
          if p.pidfd.is_none() {
            if let Some(fd) = pidfd_open(pid) {
              let _ = poller.add(fd.as_raw_fd(), libc::EPOLLIN as u32, token(TOK_PIDFD, proc_id));
              p.pidfd = Some(fd);
            }
          }
        }
      }
      Cmd::Pause(proc_id) => {
        if let Some(p) = self.procs.get_mut(&proc_id) {
          p.paused = true;
          p.counters.paused.store(true, Ordering::Relaxed);
        }
      }
      Cmd::Remove(proc_id) => {
        self.guardian(crate::guardian::release_task(crate::guardian::loop_id(&self.shared), proc_id));
        if let Some(p) = self.procs.remove(&proc_id) {
          self.poller.remove(p.uffd.raw());
          if let Some(fd) = &p.pidfd {
            self.poller.remove(fd.as_raw_fd());
          }
        }
        self.shared.counters.lock().unwrap_or_else(|p| p.into_inner()).remove(&proc_id);
      }
      Cmd::PieceBytes(b, quiet) => {
        self.piece = b.max(PAGE) / PAGE * PAGE;
        self.quiet_piece = quiet.max(self.piece) / PAGE * PAGE;
      }
      Cmd::Connect(c) => self.connect(c),
      Cmd::Fetch(f) => self.fetch(f),
      Cmd::FetchWindow(b) => {
        self.fetch_window = b;
        if let Some(c) = self.client.as_mut() {
          c.set_window(b);
        }
      }
    }
  }

  /// A guardian send failed (it is gone): say so once, as a warning.
  pub(super) fn guardian(&mut self, r: Result<(), String>) {
    if let Err(message) = r {
      self.out.push(Out::Error { proc_id: None, message });
    }
  }
}
