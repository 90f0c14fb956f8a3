//! The page server as a source: the loop thread is its client (faults' GETs and background fetches).

use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::job::{Job, Source};
use super::report::{How, Out, Status};
use super::{set_nice, token, Loop, TOK_PS};
use crate::pageclient::{Fetch, PageClient, UrgentReq};
use crate::table::PAGE;
use crate::uffd::CopyResult;

impl Loop {
  /// Starts using a connected page server; a previous one is closed and its fetches complete as `error`.
  pub(super) fn connect(&mut self, mut c: Box<PageClient>) {
    // A page server on this machine (loopback, tests, benchmarks) needs the CPU this thread would take
    // while it polls for a fault's reply: back to the default priority for a remote source.
    set_nice(0);
    if let Some(mut old) = self.client.take() {
      old.close_best_effort(std::time::Duration::from_millis(500));
      old.detach();
      self.fail_fetches(old.take_fetches());
    }
    if let Err(e) = c.attach(&self.poller, token(TOK_PS, 0)) {
      c.detach();
      let message = format!("page server {}: cannot watch the connection: {e}", c.name());
      self.shared.source.failed.store(true, Ordering::Relaxed);
      self.shared.source.connected.store(false, Ordering::Relaxed);
      self.out.push(Out::SourceError { message });
      return;
    }
    c.set_window(self.fetch_window);
    self.shared.source.connected.store(true, Ordering::Relaxed);
    self.shared.source.failed.store(false, Ordering::Relaxed);
    self.client = Some(c);
  }

  /// A background fetch from TS: cut into pieces on the connection (pipelined, within the window), copied when complete.
  pub(super) fn fetch(&mut self, f: Fetch) {
    let Some(c) = self.client.as_mut() else {
      // The source failed after JS checked it was connected: the request fails like the ones in flight did.
      self.out.push(Out::Done { proc_id: f.proc_id, req_id: f.req_id, status: Status::Error, bytes: 0, errno: None });
      return;
    };
    if let Err(m) = c.enqueue(f, &self.shared.source) {
      self.source_failed(m);
    }
  }

  pub(super) fn fail_fetches(&mut self, fetches: Vec<Fetch>) {
    for f in fetches {
      self.out.push(Out::Done { proc_id: f.proc_id, req_id: f.req_id, status: Status::Error, bytes: 0, errno: None });
    }
  }

  /// The source failed: report it once, stop using it, fail its outstanding fetches. Faults still waiting
  /// for a page stay blocked: TS kills those processes (waking them would let them re-fault into TS).
  pub(super) fn source_failed(&mut self, what: String) {
    let Some(mut c) = self.client.take() else { return };
    c.detach();
    let fetches = c.take_fetches();
    self.shared.source.failed.store(true, Ordering::Relaxed);
    self.shared.source.connected.store(false, Ordering::Relaxed);
    self.out.push(Out::SourceError { message: format!("page server {}: {what}", c.name()) });
    self.fail_fetches(fetches);
  }

  /// epoll timeout while requests are outstanding: wake up at the stall deadline.
  pub(super) fn source_timeout_ms(&self) -> i32 {
    match self.client.as_ref().and_then(|c| c.deadline()) {
      None => -1,
      Some(d) => {
        let ms = d.saturating_duration_since(std::time::Instant::now()).as_millis();
        (ms.min(i32::MAX as u128) as i32).saturating_add(1)
      }
    }
  }

  pub(super) fn check_source_stall(&mut self) {
    let Some(c) = self.client.as_ref() else { return };
    if let Err(m) = c.check_stall(std::time::Instant::now()) {
      self.source_failed(m);
    }
  }

  /// Readiness of the page-server socket. Background reads are bounded to one piece so faults (uffd events)
  /// are polled again in between; fault replies are read at once and copied in.
  pub(super) fn on_source(&mut self, flags: u32) {
    let Some(mut c) = self.client.take() else { return };
    let mut res = Ok(());
    if flags & libc::EPOLLOUT as u32 != 0 {
      res = c.writable();
    }
    if res.is_ok() && flags & (libc::EPOLLIN | libc::EPOLLHUP | libc::EPOLLERR) as u32 != 0 {
      let budget = self.piece as usize;
      let mut fetched = Vec::new();
      let shared = Arc::clone(&self.shared);
      res = c.read(budget, &shared.source, &mut |req, page| self.on_remote_page(req, page), &mut |f| fetched.push(f));
      for f in fetched {
        let len = f.pages * PAGE;
        let Some(buf) = f.buf else { continue };
        self.background.push_back(Job::new(f.proc_id, f.req_id, f.gen, Source::Fetched(buf), f.dst, len, false));
      }
    }
    self.client = Some(c);
    if let Err(m) = res {
      self.source_failed(m);
    }
  }

  /// A fault's page arrived: copy it in if the process still has the layout it faulted with, else just wake
  /// the thread (it re-faults against the table TS installs).
  pub(super) fn on_remote_page(&mut self, req: &UrgentReq, page: *const u8) {
    let Some(p) = self.procs.get(&req.proc_id) else { return };
    if p.dead {
      return;
    }
    if p.paused || p.gen != req.gen {
      let _ = p.uffd.wake(req.live, PAGE);
      return;
    }
    // SAFETY: `page` points at the client's PAGE-byte receive buffer, untouched until this call returns.
    let res = unsafe { p.uffd.copy(req.live, page, PAGE, 0) };
    if matches!(res, CopyResult::Copied(_)) {
      self.shared.source.faults_served.fetch_add(1, Ordering::Relaxed);
    }
    self.fault_result(req.proc_id, req.live, req.image, How::Copy, res);
  }
}
