//! THE FAST PATH: one native thread, one epoll, owning the uffds of every served process.
//!
//! Faults are served from the installed translation table straight out of the mmapped image (read + one
//! ioctl per fault, no allocation, no lock shared with JS). Everything else TS asks for (tables, copies,
//! wakes, unregisters) is queued to this same thread, so it is serialised with event reads: that is what
//! makes acting on layout-change events race-free.
//!
//! Correctness rule for non-cooperative events (FORK/REMAP/REMOVE/UNMAP): the kernel queues faults before
//! events, and once an event has been read COPY no longer fails with EAGAIN. So faults that precede an event in
//! the same read batch are only woken (the thread re-faults), the process is PAUSED at the event, and later
//! faults are queued until TS installs the next table (with a new generation).
//!
//! The loop itself (this file: the thread, its wait and what wakes it) and its parts, one job each:
//! commands.rs (what JS asks), faults.rs (reading uffds, serving faults), layout.rs (layout events),
//! procs.rs (a served process and its end), background.rs (copies in pieces, early copies),
//! remote.rs (the page server as a source), report.rs (what goes to JS, and when), job.rs (a copy
//! request), stats.rs (counters JS reads).

mod background;
mod commands;
mod faults;
mod job;
mod layout;
mod procs;
mod remote;
mod report;
mod stats;

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Instant;

pub use commands::Cmd;
pub use job::{Job, Source};
pub use report::{How, Out, Status};
pub use stats::Counters;

use crate::image::PageImage;
use crate::outbox::Outbox;
use crate::pagebuf::PageBuf;
use crate::pageclient::{PageClient, SourceStats};
use crate::poller::{Poller, Waker, EMPTY};
use crate::table::PAGE;
use procs::Proc;

/// Messages read per read(): a batch.
const BATCH: usize = 64;
/// Default size of one piece of a long copy.
pub const DEFAULT_PIECE: u64 = 1 << 20;

const TOK_WAKE: u64 = 0;
const TOK_UFFD: u64 = 1;
const TOK_PIDFD: u64 = 2;
const TOK_PS: u64 = 3;

fn token(kind: u64, id: u32) -> u64 {
  (kind << 32) | id as u64
}

/// State shared by the JS handle and the thread.
pub struct Shared {
  cmds: Mutex<VecDeque<Cmd>>,
  waker: Waker,
  stop: AtomicBool,
  /// Next process id (the thread allocates ids for fork children too).
  pub next_proc: AtomicU32,
  /// Counters by process id (for `stats`).
  pub counters: Mutex<HashMap<u32, Arc<Counters>>>,
  /// Reports to JS.
  pub outbox: Outbox<Out>,
  /// Counters of the page server client.
  pub source: SourceStats,
  /// While set, commands are queued without waking the thread (`hold`/`release`): JS queues many
  /// requests in one go, and a wake-up per request let the loop thread (nice -10) preempt the JS
  /// thread once per request on two cores (256 requests took ~45 ms to queue).
  held: AtomicBool,
}

impl Shared {
  /// Queues a command and wakes the thread.
  pub fn send(&self, c: Cmd) {
    self.cmds.lock().unwrap_or_else(|p| p.into_inner()).push_back(c);
    if !self.held.load(Ordering::SeqCst) {
      self.kick();
    }
  }

  /// Queue commands without waking the thread until `release`.
  pub fn hold(&self) {
    self.held.store(true, Ordering::SeqCst);
  }

  /// Wake the thread once for everything queued since `hold`.
  pub fn release(&self) {
    if self.held.swap(false, Ordering::SeqCst) {
      self.kick();
    }
  }

  fn kick(&self) {
    self.waker.wake();
  }
}

/// The JS-side handle: owns the thread.
pub struct LoopHandle {
  pub shared: Arc<Shared>,
  thread: Option<JoinHandle<()>>,
}

/// Errors starting the loop.
#[derive(Debug)]
pub struct StartError(pub std::io::Error);

impl std::fmt::Display for StartError {
  fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
    write!(f, "event loop: cannot start: {}", self.0)
  }
}

impl crate::errors::Coded for StartError {
  fn code(&self) -> &'static str {
    "ELOOP"
  }
}

impl LoopHandle {
  /// Starts the thread; `notify` schedules a JS callback that drains `shared.outbox`.
  pub fn start(notify: Box<dyn Fn() + Send + Sync>) -> Result<LoopHandle, StartError> {
    let (poller, waker) = (Poller::new().map_err(StartError)?, Waker::new().map_err(StartError)?);
    poller.add(waker.fd(), libc::EPOLLIN as u32, token(TOK_WAKE, 0)).map_err(StartError)?;
    let shared = Arc::new(Shared {
      cmds: Mutex::new(VecDeque::new()),
      waker,
      stop: AtomicBool::new(false),
      next_proc: AtomicU32::new(1),
      counters: Mutex::new(HashMap::new()),
      outbox: Outbox::new(notify),
      source: SourceStats::default(),
      held: AtomicBool::new(false),
    });
    let s2 = shared.clone();
    let thread = std::thread::Builder::new()
      .name("lazy-pages-uffd".into())
      .spawn(move || {
        raise_priority();
        // A panic here would leave every owed process blocked on a uffd nobody serves, with the daemon
        // alive (so the guardian would not act). Abort instead: the daemon dies, and the guardian
        // SIGKILLs what is owed before the uffds close.
        let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| Loop::new(poller, s2).run()));
        if run.is_err() {
          eprintln!("lazy-pages: the native event loop panicked: aborting, so that the guardian kills the processes still owed pages");
          std::process::abort();
        }
      })
      .map_err(StartError)?;
    Ok(LoopHandle { shared, thread: Some(thread) })
  }

  /// Stops the thread (closing every uffd and pidfd it owns). Idempotent.
  pub fn close(&mut self) {
    self.shared.stop.store(true, Ordering::SeqCst);
    self.shared.kick();
    if let Some(t) = self.thread.take() {
      let _ = t.join();
    }
  }

  /// True once closed.
  pub fn is_closed(&self) -> bool {
    self.thread.is_none()
  }
}

impl Drop for LoopHandle {
  fn drop(&mut self) {
    self.close();
  }
}

/// Makes the calling thread (the loop) win the CPU over the daemon's JS thread.
///
/// Why: on a small machine the restored program, this thread and the JS thread (batches, GC) compete
/// for the cores. A faulting thread is frozen until this thread serves it, so when the scheduler ran
/// JS first a fault waited a whole time slice: fault p99 of a real restore was ~1 ms against CRIU's
/// ~0.2 ms. A nice value below the JS thread's fixes the order without real-time scheduling (which
/// could starve the restored program). Best effort: without CAP_SYS_NICE it stays as it was.
fn raise_priority() {
  set_nice(-10);
}

/// Sets the calling thread's nice value (best effort).
fn set_nice(nice: i32) {
  // SAFETY: plain syscalls on the calling thread (gettid cannot fail; setpriority's error is ignored).
  unsafe {
    let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
    libc::setpriority(libc::PRIO_PROCESS, tid, nice);
  }
}

/// How long after "restore finished" background pieces stay fault-sized (see `Cmd::Unpark`): CRIU
/// resumes the tasks after stopping them at sigreturn and detaching, a few milliseconds.
const RESUME_GRACE: std::time::Duration = std::time::Duration::from_millis(10);
/// How long routine reports ("served") may wait for company before JS is woken for them.
const REPORT_DELAY: std::time::Duration = std::time::Duration::from_millis(2);
/// ... or how many of them.
const REPORT_BATCH: usize = 1024;

/// Background pieces while no fault has come for QUIET_AFTER (see `Loop::piece_now`).
pub const QUIET_PIECE: u64 = 512 << 10;
const QUIET_AFTER: std::time::Duration = std::time::Duration::from_millis(2);

/// How long the loop polls for an outstanding fault reply before it sleeps in epoll_wait.
const URGENT_SPIN: std::time::Duration = std::time::Duration::from_micros(80);

struct Loop {
  poller: Poller,
  shared: Arc<Shared>,
  procs: HashMap<u32, Proc>,
  images: HashMap<u32, PageImage>,
  urgent: VecDeque<Job>,
  background: VecDeque<Job>,
  /// Background jobs held back by `Cmd::Park` (None: not parked).
  parked: Option<VecDeque<Job>>,
  /// Runs preloaded per checkpoint pid, waiting for that task's uffd (until "restore finished").
  preloads: HashMap<i32, Vec<crate::early::Run>>,
  /// Tasks being given their preloaded runs.
  early: Vec<crate::early::Early>,
  /// "Restore finished" was heard (`Unpark`): the restored tasks may run.
  finished: bool,
  piece: u64,
  /// When the last fault was read (pieces grow while none comes: see `piece_now`).
  last_fault: Option<Instant>,
  quiet_piece: u64,
  out: Vec<Out>,
  /// The native page-server client, plain TCP or TLS (None: no page server; remote faults go to TS).
  client: Option<Box<PageClient>>,
  fetch_window: u64,
  /// The page a local fault's data is read into before its copy.
  fault_buf: PageBuf,
  /// Since when routine reports have been held back (see `flush`).
  routine_since: Option<Instant>,
}

impl Loop {
  fn new(poller: Poller, shared: Arc<Shared>) -> Loop {
    Loop {
      poller,
      shared,
      procs: HashMap::new(),
      images: HashMap::new(),
      urgent: VecDeque::new(),
      background: VecDeque::new(),
      parked: None,
      preloads: HashMap::new(),
      early: Vec::new(),
      finished: false,
      piece: DEFAULT_PIECE,
      last_fault: None,
      quiet_piece: DEFAULT_PIECE.max(QUIET_PIECE),
      out: Vec::with_capacity(256),
      client: None,
      fetch_window: crate::pageclient::DEFAULT_WINDOW,
      fault_buf: PageBuf::new(PAGE as usize),
      routine_since: None,
    }
  }

  fn run(mut self) {
    let mut evs = [EMPTY; 32];
    let mut spin_since: Option<Instant> = None;
    loop {
      // Under TLS, reply bytes can wait decrypted inside rustls, where epoll does not see them.
      let tls_input = self.client.as_mut().is_some_and(|c| c.buffered());
      let busy = !self.urgent.is_empty() || !self.background.is_empty() || tls_input;
      // While a fault's page is on the wire, poll for the reply for a short while instead of
      // sleeping: the faulting thread is frozen until it arrives, and waking this thread from an
      // idle CPU costs tens of microseconds on a VM. Bounded, and only with a reply outstanding.
      let awaiting = self.client.as_ref().is_some_and(|c| c.urgent_outstanding());
      let spinning = awaiting && spin_since.get_or_insert_with(Instant::now).elapsed() < URGENT_SPIN;
      if !awaiting {
        spin_since = None;
      }
      let timeout = if busy || spinning {
        0
      } else {
        let t = self.report_timeout_ms(self.source_timeout_ms());
        match self.early_wait_ms() {
          Some(p) if t < 0 || p < t => p,
          _ => t,
        }
      };
      let ready = match self.poller.wait(&mut evs, timeout) {
        Ok(ready) => ready,
        Err(e) => {
          self.out.push(Out::Error { proc_id: None, message: format!("event loop: epoll_wait failed: {e}") });
          self.flush_now();
          return;
        }
      };
      for ev in ready {
        let (tok, flags) = (ev.u64, ev.events);
        let id = tok as u32;
        match tok >> 32 {
          TOK_WAKE => self.drain_commands(),
          TOK_UFFD => self.on_uffd(id, flags),
          TOK_PIDFD => self.on_exit(id),
          TOK_PS => self.on_source(flags),
          _ => {}
        }
      }
      if self.client.as_mut().is_some_and(|c| c.buffered()) {
        self.on_source(libc::EPOLLIN as u32);
      }
      self.check_source_stall();
      if self.shared.stop.load(Ordering::SeqCst) {
        if let Some(c) = self.client.as_mut() {
          c.close_best_effort(std::time::Duration::from_millis(500));
        }
        self.flush_now();
        crate::guardian::loop_closed(crate::guardian::loop_id(&self.shared));
        return; // dropping `self` closes every uffd/pidfd
      }
      self.run_one_piece();
      self.flush();
    }
  }
}
