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

use std::collections::{HashMap, VecDeque};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Instant;

use crate::image::PageImage;
use crate::msg::{self, Event, MSG_SIZE};
use crate::outbox::Outbox;
use crate::pagebuf::PageBuf;
use crate::pageclient::{Fetch, PageClient, SourceStats, UrgentReq};
use crate::table::{Kind, Table, PAGE};
use crate::uffd::{CopyResult, Uffd};

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

/// Per-process counters, readable from JS without touching the loop thread.
#[derive(Debug, Default)]
pub struct Counters {
  pub faults: AtomicU64,
  pub copy_pages: AtomicU64,
  pub zero_pages: AtomicU64,
  pub forwarded: AtomicU64,
  /// Faults served by the background copy that held their page (see `Loop::join_fault`).
  pub joined: AtomicU64,
  pub bytes: AtomicU64,
  pub paused: AtomicBool,
  pub gen: AtomicU32,
}

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
  done: u64,
  end: u64,
  /// Stretches `[from, to)` jumped over, copied once the current one is done.
  holes: Vec<(u64, u64)>,
  copied: u64,
  /// Of `copied`, the bytes of pieces run for a fault (reported as served, not in the completion).
  joined: u64,
  /// Set while `join_fault` runs a piece: what it copies counts in `joined`.
  for_fault: bool,
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
  fn jump_to(&mut self, at: u64) -> bool {
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
  fn next_stretch(&mut self) -> bool {
    while self.done >= self.end {
      let Some((a, b)) = self.holes.pop() else { return false };
      self.done = a;
      self.end = b;
    }
    true
  }
}

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

/// State shared by the JS handle and the thread.
pub struct Shared {
  cmds: Mutex<VecDeque<Cmd>>,
  wake: OwnedFd,
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
    crate::poller::wake(self.wake.as_raw_fd());
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
    let (ep, wake) = crate::poller::epoll_and_wake().map_err(StartError)?;
    epoll_add(ep.as_raw_fd(), wake.as_raw_fd(), token(TOK_WAKE, 0)).map_err(StartError)?;
    let shared = Arc::new(Shared {
      cmds: Mutex::new(VecDeque::new()),
      wake,
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
        let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| Loop::new(ep, s2).run()));
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

pub(crate) fn epoll_add(ep: RawFd, fd: RawFd, tok: u64) -> std::io::Result<()> {
  crate::poller::epoll_ctl(ep, libc::EPOLL_CTL_ADD, fd, libc::EPOLLIN as u32, tok)
}

fn epoll_del(ep: RawFd, fd: RawFd) {
  // An error (already removed) is irrelevant.
  let _ = crate::poller::epoll_ctl(ep, libc::EPOLL_CTL_DEL, fd, 0, 0);
}

fn pidfd_open(pid: i32) -> Option<OwnedFd> {
  // SAFETY: pidfd_open(2) takes a pid and flags by value (no pointers); a negative result is never used as
  // an fd (checked below).
  let r = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) } as RawFd;
  // SAFETY: only when r >= 0, so `r` is the new pidfd the kernel just returned: open, and owned by nothing
  // else that could close it.
  (r >= 0).then(|| unsafe { OwnedFd::from_raw_fd(r) })
}

struct Proc {
  uffd: Uffd,
  pidfd: Option<OwnedFd>,
  paused: bool,
  /// Layout events (FORK/REMAP/REMOVE/UNMAP) read from this uffd so far. A table installed by TS
  /// reflects only the events TS had applied: if we have read more since, the process stays paused
  /// (the kernel let the process run on as soon as we *read* the event, not when TS applied it).
  events_read: u32,
  gen: u32,
  table: Table,
  queued: Vec<(u64, u64)>,
  counters: Arc<Counters>,
  dead: bool,
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

/// How long routine reports ("served") may wait for company before JS is woken for them.
/// How long after "restore finished" background pieces stay fault-sized (see `Cmd::Unpark`): CRIU
/// resumes the tasks after stopping them at sigreturn and detaching, a few milliseconds.
const RESUME_GRACE: std::time::Duration = std::time::Duration::from_millis(10);
const REPORT_DELAY: std::time::Duration = std::time::Duration::from_millis(2);
/// ... or how many of them.
const REPORT_BATCH: usize = 1024;

/// Background pieces while no fault has come for QUIET_AFTER (see `Loop::piece_now`).
pub const QUIET_PIECE: u64 = 512 << 10;
const QUIET_AFTER: std::time::Duration = std::time::Duration::from_millis(2);

/// How long the loop polls for an outstanding fault reply before it sleeps in epoll_wait.
const URGENT_SPIN: std::time::Duration = std::time::Duration::from_micros(80);

struct Loop {
  ep: OwnedFd,
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
  /// The native page-server client (None: remote faults go to TS).
  client: Option<Box<PageClient>>,
  fetch_window: u64,
  /// The page a local fault's data is read into before its copy.
  fault_buf: PageBuf,
  /// Since when routine reports have been held back (see `flush`).
  routine_since: Option<Instant>,
}

impl Loop {
  fn new(ep: OwnedFd, shared: Arc<Shared>) -> Loop {
    Loop {
      ep,
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
    // SAFETY: zero is a valid epoll_event.
    let mut evs: [libc::epoll_event; 32] = unsafe { std::mem::zeroed() };
    let mut spin_since: Option<Instant> = None;
    loop {
      let busy = !self.urgent.is_empty() || !self.background.is_empty();
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
      // SAFETY: `evs` is a valid buffer of 32 events.
      let n = unsafe { libc::epoll_wait(self.ep.as_raw_fd(), evs.as_mut_ptr(), 32, timeout) };
      if n < 0 {
        let e = std::io::Error::last_os_error();
        if e.kind() != std::io::ErrorKind::Interrupted {
          self.out.push(Out::Error { proc_id: None, message: format!("event loop: epoll_wait failed: {e}") });
          self.flush_now();
          return;
        }
      }
      for ev in evs.iter().take(n.max(0) as usize) {
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

  /// Hands the reports to JS, unless they are all routine "served" facts younger than REPORT_DELAY.
  ///
  /// Why: waking the JS thread costs a context switch and CPU that the restored program and this thread
  /// need (two cores here): reported at once, every fault of a real restore woke JS for one event, and a
  /// fault's latency doubled against `criu lazy-pages`. A served fact is bookkeeping (the page is in;
  /// TS settles it and counts it), so it can wait a little and travel in a batch; layout events,
  /// completions and errors go at once.
  fn flush(&mut self) {
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

  fn flush_now(&mut self) {
    self.routine_since = None;
    self.shared.outbox.push_all(&mut self.out);
  }

  /// epoll timeout: no later than the deadline of reports held back by `flush`.
  fn report_timeout_ms(&self, timeout: i32) -> i32 {
    let Some(since) = self.routine_since else { return timeout };
    let left = REPORT_DELAY.saturating_sub(since.elapsed()).as_millis() as i32 + 1;
    if timeout < 0 {
      left
    } else {
      timeout.min(left)
    }
  }

  fn drain_commands(&mut self) {
    let mut buf = [0u8; 8];
    // SAFETY: reads the eventfd counter into an 8-byte buffer (EAGAIN when already drained is fine).
    unsafe { libc::read(self.shared.wake.as_raw_fd(), buf.as_mut_ptr() as *mut libc::c_void, 8) };
    loop {
      let cmd = self.shared.cmds.lock().unwrap_or_else(|p| p.into_inner()).pop_front();
      let Some(cmd) = cmd else { break };
      self.on_command(cmd);
    }
  }

  fn on_command(&mut self, cmd: Cmd) {
    match cmd {
      Cmd::AddImage(id, img) => {
        self.images.insert(id, img);
      }
      Cmd::AddProcess { proc_id, uffd, pid, counters } => {
        // First of all, before anything can fail: the guardian holds a duplicate from now on.
        self.guardian(crate::guardian::add(crate::guardian::loop_id(&self.shared), proc_id, uffd.raw(), pid));
        if let Err(e) = epoll_add(self.ep.as_raw_fd(), uffd.raw(), token(TOK_UFFD, proc_id)) {
          self.out.push(Out::Error { proc_id: Some(proc_id), message: format!("event loop: cannot watch uffd: {e}") });
        }
        // No pidfd (gone already, or a pid of another namespace): do not guess. Its exit then shows as
        // ESRCH on the next copy (a wrong "exit" would close the uffd of a live process).
        let pidfd = if pid > 0 { pidfd_open(pid) } else { None };
        if let Some(fd) = &pidfd {
          let _ = epoll_add(self.ep.as_raw_fd(), fd.as_raw_fd(), token(TOK_PIDFD, proc_id));
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
        let ep = self.ep.as_raw_fd();
        if let Some(p) = self.procs.get_mut(&proc_id) {
          if p.pidfd.is_none() {
            if let Some(fd) = pidfd_open(pid) {
              let _ = epoll_add(ep, fd.as_raw_fd(), token(TOK_PIDFD, proc_id));
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
          epoll_del(self.ep.as_raw_fd(), p.uffd.raw());
          if let Some(fd) = &p.pidfd {
            epoll_del(self.ep.as_raw_fd(), fd.as_raw_fd());
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
  fn guardian(&mut self, r: Result<(), String>) {
    if let Err(message) = r {
      self.out.push(Out::Error { proc_id: None, message });
    }
  }

  fn on_exit(&mut self, proc_id: u32) {
    if let Some(p) = self.procs.get_mut(&proc_id) {
      if let Some(fd) = p.pidfd.take() {
        epoll_del(self.ep.as_raw_fd(), fd.as_raw_fd());
      }
    }
    self.out.push(Out::Exit { proc_id });
  }

  fn mark_gone(&mut self, proc_id: u32, reason: String) {
    if self.mark_dead(proc_id) {
      self.out.push(Out::Gone { proc_id, reason });
    }
  }

  /// Stop watching a process's uffd; false if it was already dead.
  fn mark_dead(&mut self, proc_id: u32) -> bool {
    let Some(p) = self.procs.get_mut(&proc_id) else { return true };
    if p.dead {
      return false;
    }
    p.dead = true;
    epoll_del(self.ep.as_raw_fd(), p.uffd.raw());
    true
  }

  /// Reads and handles every message the uffd has (batches of 64).
  fn on_uffd(&mut self, proc_id: u32, ep_flags: u32) {
    let mut buf = [0u8; BATCH * MSG_SIZE];
    loop {
      let Some(p) = self.procs.get(&proc_id) else { return };
      let fd = p.uffd.raw();
      // SAFETY: reads into our stack buffer of the given size.
      let n = unsafe { libc::read(fd, buf.as_mut_ptr() as *mut libc::c_void, buf.len()) };
      if n < 0 {
        let e = std::io::Error::last_os_error();
        match e.raw_os_error() {
          Some(libc::EAGAIN) => {
            if ep_flags & (libc::EPOLLHUP | libc::EPOLLERR) as u32 != 0 {
              self.mark_gone(proc_id, "the userfaultfd hung up (process exited)".into());
            }
          }
          Some(libc::EINTR) => continue,
          // The process is still there (EMFILE/ENFILE/ENOMEM: the kernel could not install a
          // FORK's new uffd, and keeps the event queued): it must be killed, not treated as gone.
          _ => {
            self.mark_dead(proc_id);
            self
              .out
              .push(Out::Error { proc_id: Some(proc_id), message: format!("read from its userfaultfd failed: {e}") });
          }
        }
        return;
      }
      let n = n as usize;
      if n == 0 {
        self.mark_gone(proc_id, "the userfaultfd reached end of file".into());
        return;
      }
      let count = n / MSG_SIZE;
      // Index of the first layout-change event in this batch (faults before it are only woken).
      let first_event = (0..count).find(|&i| buf[i * MSG_SIZE] != 0x12);
      for i in 0..count {
        let m = &buf[i * MSG_SIZE..(i + 1) * MSG_SIZE];
        match msg::decode(m) {
          Ok(Event::PageFault { flags, address, .. }) => {
            self.last_fault = Some(Instant::now());
            let addr = address & !(PAGE - 1);
            let p = self.procs.get_mut(&proc_id).expect("proc present");
            p.counters.faults.fetch_add(1, Ordering::Relaxed);
            if first_event.is_some_and(|k| i < k) {
              // The layout may already differ from the table: let the thread re-fault after TS catches up.
              let _ = p.uffd.wake(addr, PAGE);
            } else if p.paused {
              p.queued.push((addr, flags));
            } else {
              self.serve(proc_id, addr, flags);
            }
          }
          Ok(ev) => self.on_layout_event(proc_id, ev),
          Err(e) => self.out.push(Out::Error { proc_id: Some(proc_id), message: e.to_string() }),
        }
      }
      if n < buf.len() {
        return;
      }
    }
  }

  fn on_layout_event(&mut self, proc_id: u32, ev: Event) {
    let p = self.procs.get_mut(&proc_id).expect("proc present");
    p.paused = true;
    p.events_read = p.events_read.wrapping_add(1);
    p.counters.paused.store(true, Ordering::Relaxed);
    match ev {
      Event::Fork { ufd } => {
        // SAFETY: the kernel installed `ufd` in our fd table for the child; nobody else owns it.
        let uffd = unsafe { Uffd::from_raw_uffd(ufd as RawFd) };
        let child = self.shared.next_proc.fetch_add(1, Ordering::SeqCst);
        let counters = Arc::new(Counters::default());
        self.shared.counters.lock().unwrap_or_else(|p| p.into_inner()).insert(child, counters.clone());
        self.on_command(Cmd::AddProcess { proc_id: child, uffd, pid: 0, counters });
        self.guardian(crate::guardian::forked(crate::guardian::loop_id(&self.shared), proc_id, child));
        self.out.push(Out::Fork { proc_id, child_proc_id: child });
      }
      Event::Remap { from, to, len } => self.out.push(Out::Remap { proc_id, from, to, len }),
      Event::Remove { start, end } => self.out.push(Out::Remove { proc_id, start, end }),
      Event::Unmap { start, end } => self.out.push(Out::Unmap { proc_id, start, end }),
      Event::PageFault { .. } => {}
    }
  }

  /// A fault inside a queued background copy of the same process is served by that copy: the copy
  /// jumps to the faulting page (what it jumped over is done afterwards) and copies one piece from
  /// there at once, which wakes the thread. True if the page went in that way.
  ///
  /// Why: a program that reads its memory in order catches up with the background copy and then
  /// faulted on nearly every page at the copy's front, page by page (each a round trip through this
  /// thread); served by a whole piece, it finds the next pages in and the copy stays ahead. Nothing
  /// is copied twice and no other work is added: the piece was going to be copied anyway.
  fn join_fault(&mut self, proc_id: u32, addr: u64) -> bool {
    let gen = match self.procs.get(&proc_id) {
      Some(p) if !p.paused && !p.dead => p.gen,
      _ => return false,
    };
    let found = self
      .background
      .iter()
      .position(|j| j.proc_id == proc_id && j.gen == gen && addr >= j.dst && addr - j.dst < j.len);
    let Some(i) = found else { return false };
    let mut job = self.background.remove(i).expect("index from position");
    if !job.jump_to(addr - job.dst) {
      // Copied already by this job: the page is in (or being re-faulted after a layout change).
      self.background.insert(i, job);
      return false;
    }
    // The piece is reported as served (the fault's process counts these pages as on demand, at once)
    // rather than in the copy's completion, which can come after the process has read them all and exited.
    let before = job.joined;
    job.for_fault = true;
    let out = self.step(&mut job);
    job.for_fault = false;
    let n = job.joined - before;
    match out {
      Some(done) => self.out.push(done),
      None => self.background.push_front(job),
    }
    if n == 0 {
      return false;
    }
    let image = self.procs.get(&proc_id).and_then(|p| {
      p.counters.joined.fetch_add(1, Ordering::Relaxed);
      p.table.lookup(addr).map(|e| e.locate(addr).0)
    });
    if let Some(image) = image {
      self.record_served_run(proc_id, addr, image, n, How::Copy);
    }
    true
  }

  /// Serves one fault of a running process from its table.
  fn serve(&mut self, proc_id: u32, addr: u64, flags: u64) {
    if self.join_fault(proc_id, addr) {
      return;
    }
    let Some(p) = self.procs.get(&proc_id) else { return };
    let entry = p.table.lookup(addr).copied();
    let (res, how, image) = match entry {
      Some(e) if e.kind == Kind::File => {
        let (image_addr, off) = e.locate(addr);
        // A fault's page is read with pread into one reused buffer, not copied from the mapping: a copy from
        // the mapping maps the source page in the daemon, and the kernel maps its neighbours with it
        // (fault-around, whole large folios), so random faults grew the daemon's RSS by hundreds of MiB.
        let read = match self.images.get(&e.image_id) {
          Some(img) => img.read_at(off, self.fault_buf.slice_mut(0, PAGE as usize)).map_err(|e| e.to_string()),
          None => Err(format!("image {} missing for 0x{addr:x}", e.image_id)),
        };
        if let Err(message) = read {
          self.out.push(Out::Error { proc_id: Some(proc_id), message });
          let _ = p.uffd.wake(addr, PAGE);
          return;
        }
        // SAFETY: the buffer holds PAGE bytes just read and is not touched until the call returns.
        let res = unsafe { p.uffd.copy(addr, self.fault_buf.as_ptr(), PAGE, 0) };
        (res, How::Copy, image_addr)
      }
      // A remote range with a connected page server: the loop thread fetches the page itself.
      Some(e) if e.image_id != 0 && self.client.is_some() => {
        let (image, _) = e.locate(addr);
        let req = UrgentReq { proc_id, gen: p.gen, live: addr, image, pid: e.image_id };
        let client = self.client.as_mut().expect("checked above");
        if let Err(m) = client.request_page(req, &self.shared.source) {
          self.source_failed(m);
        }
        return;
      }
      Some(_) => {
        p.counters.forwarded.fetch_add(1, Ordering::Relaxed);
        self.out.push(Out::PageFault { proc_id, address: addr, flags, gen: p.gen });
        return;
      }
      None => (p.uffd.zeropage(addr, PAGE, 0), How::Zero, addr),
    };
    self.fault_result(proc_id, addr, image, how, res);
  }

  /// Accounts and reports the outcome of serving one fault (local or remote).
  fn fault_result(&mut self, proc_id: u32, addr: u64, image: u64, how: How, res: CopyResult) {
    let Some(p) = self.procs.get(&proc_id) else { return };
    match res {
      CopyResult::Copied(_) => {
        let c = &p.counters;
        match how {
          How::Copy => c.copy_pages.fetch_add(1, Ordering::Relaxed),
          How::Zero => c.zero_pages.fetch_add(1, Ordering::Relaxed),
        };
        c.bytes.fetch_add(PAGE, Ordering::Relaxed);
        self.record_served(proc_id, addr, image, how);
      }
      // Already there, or a layout change is in flight: wake so the thread proceeds or re-faults.
      CopyResult::Exists | CopyResult::Again { .. } | CopyResult::NoEnt => {
        let _ = p.uffd.wake(addr, PAGE);
      }
      CopyResult::ProcessGone => self.mark_gone(proc_id, "the process is gone (ESRCH)".into()),
      CopyResult::Other(e) => {
        let _ = p.uffd.wake(addr, PAGE);
        self.out.push(Out::Error {
          proc_id: Some(proc_id),
          message: format!("serving fault at 0x{addr:x} failed: {}", crate::uffd::errno_text(e)),
        });
      }
    }
  }

  // ------------------------------------------------------------------ page server (remote source)

  /// Starts using a connected page server; a previous one is closed and its fetches complete as `error`.
  fn connect(&mut self, mut c: Box<PageClient>) {
    // A page server on this machine (loopback, tests, benchmarks) needs the CPU this thread would take
    // while it polls for a fault's reply: back to the default priority for a remote source.
    set_nice(0);
    if let Some(mut old) = self.client.take() {
      old.close_best_effort(std::time::Duration::from_millis(500));
      old.detach();
      self.fail_fetches(old.take_fetches());
    }
    let ep = self.ep.as_raw_fd();
    if let Err(e) = c.attach(ep, token(TOK_PS, 0)) {
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
  fn fetch(&mut self, f: Fetch) {
    let Some(c) = self.client.as_mut() else {
      // The source failed after JS checked it was connected: the request fails like the ones in flight did.
      self.out.push(Out::Done { proc_id: f.proc_id, req_id: f.req_id, status: Status::Error, bytes: 0, errno: None });
      return;
    };
    if let Err(m) = c.enqueue(f, &self.shared.source) {
      self.source_failed(m);
    }
  }

  fn fail_fetches(&mut self, fetches: Vec<Fetch>) {
    for f in fetches {
      self.out.push(Out::Done { proc_id: f.proc_id, req_id: f.req_id, status: Status::Error, bytes: 0, errno: None });
    }
  }

  /// The source failed: report it once, stop using it, fail its outstanding fetches. Faults still waiting
  /// for a page stay blocked: TS kills those processes (waking them would let them re-fault into TS).
  fn source_failed(&mut self, what: String) {
    let Some(mut c) = self.client.take() else { return };
    c.detach();
    let fetches = c.take_fetches();
    self.shared.source.failed.store(true, Ordering::Relaxed);
    self.shared.source.connected.store(false, Ordering::Relaxed);
    self.out.push(Out::SourceError { message: format!("page server {}: {what}", c.name()) });
    self.fail_fetches(fetches);
  }

  /// epoll timeout while requests are outstanding: wake up at the stall deadline.
  fn source_timeout_ms(&self) -> i32 {
    match self.client.as_ref().and_then(|c| c.deadline()) {
      None => -1,
      Some(d) => {
        let ms = d.saturating_duration_since(std::time::Instant::now()).as_millis();
        (ms.min(i32::MAX as u128) as i32).saturating_add(1)
      }
    }
  }

  fn check_source_stall(&mut self) {
    let Some(c) = self.client.as_ref() else { return };
    if let Err(m) = c.check_stall(std::time::Instant::now()) {
      self.source_failed(m);
    }
  }

  /// Readiness of the page-server socket. Background reads are bounded to one piece so faults (uffd events)
  /// are polled again in between; fault replies are read at once and copied in.
  fn on_source(&mut self, flags: u32) {
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
  fn on_remote_page(&mut self, req: &UrgentReq, page: *const u8) {
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

  /// Appends a served page to the process's current report (see `Out::Served`), merging a copied
  /// page with the previous run when both its live and image addresses follow on.
  fn record_served(&mut self, proc_id: u32, live: u64, image: u64, how: How) {
    self.record_served_run(proc_id, live, image, PAGE, how);
  }

  /// `record_served` for `len` bytes of contiguous pages (live and image alike).
  fn record_served_run(&mut self, proc_id: u32, live: u64, image: u64, len: u64, how: How) {
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

  /// Runs one piece (≤ piece bytes) of the first request, urgent ones first; early copies (a
  /// working set) before the background, as they are what the program touches first.
  fn run_one_piece(&mut self) {
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
  fn run_early(&mut self) -> bool {
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
  fn early_wait_ms(&self) -> Option<i32> {
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
  fn piece_now(&self) -> u64 {
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
  fn step(&mut self, job: &mut Job) -> Option<Out> {
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

#[cfg(test)]
mod tests {
  use super::*;

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
