//! The napi classes and functions (the JS boundary): argument conversion and error mapping only.

use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use napi::bindgen_prelude::{BigInt, BigUint64Array, Buffer, Float64Array, Function};
use napi::threadsafe_function::{ThreadsafeFunction, ThreadsafeFunctionCallMode};
use napi::Status;
use napi_derive::napi;

use crate::errors::{big_u64, to_napi, ArgError, NapiErr};

/// Spelled `Result` so napi-derive recognises fallible exports; errors carry a string code.
type Result<T> = std::result::Result<T, NapiErr>;
use crate::event_loop::{self, Cmd, Counters, Job, LoopHandle, Out, Source};
use crate::handover::{self, HandoverError, Report, Step};
use crate::image;
use crate::pageclient::{Fetch, PageClient};
use crate::pagewire::MAX_NR_PAGES;
use crate::table::{Table, PAGE};
use crate::uffd::{self, CopyResult, MODE_DONTWAKE};

/// Starts the guardian process (or shares the running one) and returns its pid: from now on, if
/// this process dies with tasks still owed pages, the guardian SIGKILLs them before their uffds
/// close. Throws `EGUARDIAN` when it cannot be started.
#[napi]
pub fn guardian_start() -> Result<u32> {
  crate::guardian::acquire().map_err(to_napi)
}

/// What userfaultfd offers this process (for `lazy-pages check`).
#[napi(object, object_from_js = false)]
pub struct UffdProbe {
  /// The UFFD_FEATURE_* bits the kernel offers, when a userfaultfd could be made.
  pub features: Option<BigInt>,
  /// Else the errno of userfaultfd(2) or UFFDIO_API (EPERM: not allowed to this user).
  pub errno: Option<i32>,
  /// The features a lazy-pages uffd needs (EVENT_FORK | EVENT_REMAP | EVENT_REMOVE | EVENT_UNMAP).
  pub required: BigInt,
}

/// Makes a userfaultfd (closed at once) and asks the kernel what it offers.
#[napi]
pub fn uffd_probe() -> UffdProbe {
  let required = BigInt::from(uffd::REQUIRED_FEATURES);
  match uffd::probe() {
    Ok(f) => UffdProbe { features: Some(BigInt::from(f)), errno: None, required },
    Err(e) => UffdProbe { features: None, errno: Some(e), required },
  }
}

/// One user of the guardian `pid` (what `guardianStart` returned) is done; the last one stops it
/// (it kills whatever is still owed first).
#[napi]
pub fn guardian_stop(pid: u32) {
  crate::guardian::release(pid);
}

/// Internal: the body of a guardian started as `node -e` (when no `lazy-pages-guardian` binary sits
/// next to the addon). Never returns in a guardian; anywhere else it throws `EGUARDIAN`.
#[napi]
pub fn run_guardian() -> Result<()> {
  let Some((sock, daemon)) = lazy_pages_guardian::inherited_fds() else {
    return Err(to_napi(crate::guardian::GuardianError(
      "runGuardian is internal: it runs only in a process the daemon started".into(),
    )));
  };
  lazy_pages_guardian::harden();
  std::process::exit(lazy_pages_guardian::run(sock, daemon));
}

/// The native core's version, for diagnostics.
#[napi]
pub fn native_version() -> String {
  env!("CARGO_PKG_VERSION").to_string()
}

/// Outcome of a COPY/ZEROPAGE as seen by JS.
#[napi(object, object_from_js = false)]
pub struct RawCopyOutcome {
  /// 'ok' | 'again' | 'exists' | 'noent' | 'gone' | 'error'
  pub status: String,
  pub bytes: f64,
  pub errno: Option<i32>,
  pub message: Option<String>,
}

fn outcome(r: CopyResult) -> RawCopyOutcome {
  let (status, bytes, errno) = match r {
    CopyResult::Copied(n) => ("ok", n, None),
    CopyResult::Again { copied } => ("again", copied, None),
    CopyResult::Exists => ("exists", 0, None),
    CopyResult::NoEnt => ("noent", 0, None),
    CopyResult::ProcessGone => ("gone", 0, None),
    CopyResult::Other(e) => ("error", 0, Some(e)),
  };
  RawCopyOutcome { status: status.into(), bytes: bytes as f64, errno, message: errno.map(uffd::errno_text) }
}

/// A read-only mapped pages image.
#[napi]
pub struct PageImage {
  inner: Option<image::PageImage>,
}

impl PageImage {
  fn get(&self) -> Result<&image::PageImage> {
    self.inner.as_ref().ok_or_else(|| to_napi(ArgError::Invalid("PageImage: already closed".into())))
  }
}

#[napi]
impl PageImage {
  /// Maps `path` read-only.
  #[napi(factory)]
  pub fn open(path: String) -> Result<PageImage> {
    Ok(PageImage { inner: Some(image::open(Path::new(&path)).map_err(to_napi)?) })
  }

  /// File size in bytes.
  #[napi(getter)]
  pub fn length(&self) -> Result<f64> {
    Ok(self.get()?.len() as f64)
  }

  /// A copy of `len` bytes at `offset` (bounds-checked).
  #[napi]
  pub fn read(&self, offset: f64, len: f64) -> Result<Buffer> {
    let (off, len) = (num_u64(offset, "offset")?, num_u64(len, "len")?);
    Ok(Buffer::from(self.get()?.slice(off, len).map_err(to_napi)?.to_vec()))
  }

  /// Drops this handle's reference (the mapping lives on while an EventLoop still uses it).
  #[napi]
  pub fn close(&mut self) {
    self.inner = None;
  }
}

fn num_u64(v: f64, what: &'static str) -> Result<u64> {
  if !(v >= 0.0 && v.fract() == 0.0 && v <= 9_007_199_254_740_991.0) {
    return Err(to_napi(ArgError::Invalid(format!("{what}: expected a non-negative integer, got {v}"))));
  }
  Ok(v as u64)
}

/// An owned userfaultfd.
#[napi]
pub struct Uffd {
  inner: Option<uffd::Uffd>,
}

impl Uffd {
  fn get(&self) -> Result<&uffd::Uffd> {
    self.inner.as_ref().ok_or_else(|| to_napi(ArgError::Invalid("Uffd: closed or handed to an EventLoop".into())))
  }
}

#[napi]
impl Uffd {
  /// A new userfaultfd with the lazy-pages features (EVENT_FORK|REMAP|REMOVE|UNMAP).
  #[napi(factory)]
  pub fn create() -> Result<Uffd> {
    Ok(Uffd { inner: Some(uffd::Uffd::create().map_err(to_napi)?) })
  }

  /// Takes ownership of `fd` after checking it is a userfaultfd.
  #[napi(factory)]
  pub fn adopt(fd: i32) -> Result<Uffd> {
    Ok(Uffd { inner: Some(uffd::Uffd::adopt(fd).map_err(to_napi)?) })
  }

  /// The fd number, or -1 once closed.
  #[napi(getter)]
  pub fn fd(&self) -> i32 {
    self.inner.as_ref().map(|u| u.raw()).unwrap_or(-1)
  }

  /// UFFDIO_REGISTER (MODE_MISSING); returns the allowed ioctl mask.
  #[napi]
  pub fn register(&self, start: BigInt, len: BigInt) -> Result<BigInt> {
    let r = self.get()?.register(big_u64(&start, "start")?, big_u64(&len, "len")?).map_err(to_napi)?;
    Ok(BigInt::from(r))
  }

  /// UFFDIO_UNREGISTER.
  #[napi]
  pub fn unregister(&self, start: BigInt, len: BigInt) -> Result<()> {
    self.get()?.unregister(big_u64(&start, "start")?, big_u64(&len, "len")?).map_err(to_napi)
  }

  /// UFFDIO_WAKE.
  #[napi]
  pub fn wake(&self, start: BigInt, len: BigInt) -> Result<()> {
    self.get()?.wake(big_u64(&start, "start")?, big_u64(&len, "len")?).map_err(to_napi)
  }

  /// UFFDIO_COPY `len` bytes from `image` at `file_offset` to `dst` (bounds-checked against the image).
  #[napi]
  pub fn copy_from_image(
    &self,
    image: &PageImage,
    file_offset: f64,
    dst: BigInt,
    len: f64,
    dontwake: Option<bool>,
  ) -> Result<RawCopyOutcome> {
    let (off, len) = (num_u64(file_offset, "fileOffset")?, num_u64(len, "len")?);
    let dst = big_u64(&dst, "dst")?;
    let img = image.get()?;
    let src = img.ptr_at(off, len).map_err(to_napi)?;
    let mode = if dontwake.unwrap_or(false) { MODE_DONTWAKE } else { 0 };
    // SAFETY: `src..src+len` was bounds-checked and `img` keeps the mapping alive during the call.
    Ok(outcome(unsafe { self.get()?.copy(dst, src, len, mode) }))
  }

  /// UFFDIO_COPY of `buf` to `dst`.
  #[napi]
  pub fn copy_from_buffer(&self, buf: Buffer, dst: BigInt, dontwake: Option<bool>) -> Result<RawCopyOutcome> {
    let dst = big_u64(&dst, "dst")?;
    let mode = if dontwake.unwrap_or(false) { MODE_DONTWAKE } else { 0 };
    // SAFETY: `buf` is borrowed for the whole call; pointer and length come from the same slice.
    Ok(outcome(unsafe { self.get()?.copy(dst, buf.as_ptr(), buf.len() as u64, mode) }))
  }

  /// UFFDIO_ZEROPAGE.
  #[napi]
  pub fn zeropage(&self, dst: BigInt, len: f64, dontwake: Option<bool>) -> Result<RawCopyOutcome> {
    let mode = if dontwake.unwrap_or(false) { MODE_DONTWAKE } else { 0 };
    Ok(outcome(self.get()?.zeropage(big_u64(&dst, "dst")?, num_u64(len, "len")?, mode)))
  }

  /// Closes the fd (its ranges are unregistered: later faults read zeros).
  #[napi]
  pub fn close(&mut self) {
    if let Some(u) = self.inner.take() {
      // A received uffd the daemon closes unserved: the guardian lets go of it too (before the close,
      // while the fd number still names it).
      crate::guardian::forget(u.raw());
    }
  }
}

/// One hand-over event (`type`: connected | task | zombie | finished | error | refused).
#[napi(object, object_from_js = false)]
pub struct RawHandoverEvent {
  #[napi(js_name = "type")]
  pub kind: String,
  pub pid: Option<i32>,
  /// The received userfaultfd (task): the receiver must adopt it.
  pub fd: Option<i32>,
  pub code: Option<String>,
  pub message: Option<String>,
}

fn handover_event(r: Report) -> RawHandoverEvent {
  let ev = |kind: &str| RawHandoverEvent { kind: kind.into(), pid: None, fd: None, code: None, message: None };
  match r {
    Report::Connected { pid } => RawHandoverEvent { pid: Some(pid), ..ev("connected") },
    Report::Step(Step::Task { pid, fd }) => RawHandoverEvent { pid: Some(pid), fd: Some(fd), ..ev("task") },
    Report::Step(Step::Zombie { pid }) => RawHandoverEvent { pid: Some(pid), ..ev("zombie") },
    Report::Step(Step::Finished) => ev("finished"),
    Report::Error(e) => {
      use crate::errors::Coded;
      // The task whose hand-over went wrong, so the daemon can kill it (its own uffd is gone).
      let pid = match e {
        HandoverError::NoFd(p) | HandoverError::NotUffd(p, _) => Some(p),
        _ => None,
      };
      RawHandoverEvent { pid, code: Some(e.code().into()), message: Some(e.to_string()), ..ev("error") }
    }
    Report::Refused(m) => RawHandoverEvent { message: Some(m), ..ev("refused") },
  }
}

type HandoverTsfn = ThreadsafeFunction<RawHandoverEvent, (), RawHandoverEvent, Status, false>;

/// The CRIU hand-over socket.
#[napi]
pub struct HandoverListener {
  inner: Option<handover::Listener>,
  path: String,
}

#[napi]
impl HandoverListener {
  /// Binds `<workDir>/lazy-pages.socket` and reports events to `callback` (never blocking the JS thread).
  /// With `unpark`, that event loop's parked background requests start the moment the restorer says
  /// "restore finished", on this thread: CRIU resumes the restored tasks right after saying it, and
  /// the JS thread may be busy (or starved of CPU) for tens of milliseconds before it sees the event.
  #[napi(factory, ts_args_type = "workDir: string, callback: (ev: RawHandoverEvent) => void, unpark?: EventLoop")]
  pub fn listen(
    work_dir: String,
    callback: Function<RawHandoverEvent, ()>,
    unpark: Option<&EventLoop>,
  ) -> Result<HandoverListener> {
    let unpark = unpark.map(|l| l.handle.shared.clone());
    let tsfn: HandoverTsfn = callback
      .build_threadsafe_function()
      .callee_handled::<false>()
      .build()
      .map_err(|e| to_napi(ArgError::Invalid(format!("callback: {e}"))))?;
    let mut restorer = 0;
    let listener = handover::Listener::start(Path::new(&work_dir), move |r| {
      // The guardian holds each received uffd from this moment (before JS even sees it): a daemon
      // dying before it serves the task cannot close its last copy.
      match &r {
        Report::Connected { pid } => restorer = *pid,
        Report::Step(Step::Task { pid, fd }) => {
          crate::guardian::hold(*fd, *pid, restorer);
          // The event loop copies the runs preloaded for this task now, with a duplicate of its uffd,
          // while JS has not even heard of it (see early.rs).
          if let Some(shared) = &unpark {
            // SAFETY: F_DUPFD_CLOEXEC on an fd we hold (the hand-over just received it) has no
            // memory effects; the new fd is owned by the Uffd below, or by nobody if it failed.
            let dup = unsafe { libc::fcntl(*fd, libc::F_DUPFD_CLOEXEC, 0) };
            if dup >= 0 {
              // SAFETY: `dup` is a fresh duplicate of a uffd the hand-over checked, owned by nobody else.
              let uffd = unsafe { crate::uffd::Uffd::from_raw_uffd(dup) };
              shared.send(Cmd::Early { pid: *pid, uffd });
            }
          }
        }
        Report::Step(Step::Finished) => {
          if let Some(shared) = &unpark {
            shared.send(Cmd::Unpark);
          }
        }
        _ => {}
      }
      tsfn.call(handover_event(r), ThreadsafeFunctionCallMode::NonBlocking);
    })
    .map_err(to_napi)?;
    let path = listener.path().to_string_lossy().into_owned();
    Ok(HandoverListener { inner: Some(listener), path })
  }

  /// Socket path.
  #[napi(getter)]
  pub fn path(&self) -> String {
    self.path.clone()
  }

  /// Stops listening and unlinks the socket. Idempotent.
  #[napi]
  pub fn close(&mut self) {
    if let Some(mut l) = self.inner.take() {
      l.close();
    }
  }
}

/// One event-loop report, as a discriminated union on `type` (the TS facade documents each).
#[napi(discriminant_case = "kebab-case", object_from_js = false)]
pub enum LoopEvent {
  Served { proc_id: u32, live: BigInt, images: Float64Array, lens: Float64Array, zero_pages: f64 },
  PageFault { proc_id: u32, address: BigInt, flags: BigInt, gen: u32 },
  Fork { proc_id: u32, child_proc_id: u32 },
  Remap { proc_id: u32, from: BigInt, to: BigInt, len: BigInt },
  Remove { proc_id: u32, start: BigInt, end: BigInt },
  Unmap { proc_id: u32, start: BigInt, end: BigInt },
  Done { proc_id: u32, req_id: u32, status: event_loop::Status, bytes: f64, errno: Option<i32> },
  Exit { proc_id: u32 },
  Gone { proc_id: u32, reason: String },
  Error { proc_id: Option<u32>, message: String },
  SourceError { message: String },
  EarlyDone { pid: i32, bytes: f64, at_ms: f64 },
}

fn loop_event(o: Out) -> LoopEvent {
  let b = BigInt::from;
  match o {
    Out::Served { proc_id, images, lens, zero_pages, last_live, .. } => LoopEvent::Served {
      proc_id,
      live: b(last_live),
      images: Float64Array::new(images),
      lens: Float64Array::new(lens),
      zero_pages: zero_pages as f64,
    },
    Out::PageFault { proc_id, address, flags, gen } => {
      LoopEvent::PageFault { proc_id, address: b(address), flags: b(flags), gen }
    }
    Out::Fork { proc_id, child_proc_id } => LoopEvent::Fork { proc_id, child_proc_id },
    Out::Remap { proc_id, from, to, len } => LoopEvent::Remap { proc_id, from: b(from), to: b(to), len: b(len) },
    Out::Remove { proc_id, start, end } => LoopEvent::Remove { proc_id, start: b(start), end: b(end) },
    Out::Unmap { proc_id, start, end } => LoopEvent::Unmap { proc_id, start: b(start), end: b(end) },
    Out::Done { proc_id, req_id, status, bytes, errno } => {
      LoopEvent::Done { proc_id, req_id, status, bytes: bytes as f64, errno }
    }
    Out::Exit { proc_id } => LoopEvent::Exit { proc_id },
    Out::Gone { proc_id, reason } => LoopEvent::Gone { proc_id, reason },
    Out::Error { proc_id, message } => LoopEvent::Error { proc_id, message },
    Out::SourceError { message } => LoopEvent::SourceError { message },
    Out::EarlyDone { pid, bytes, at_ms } => LoopEvent::EarlyDone { pid, bytes: bytes as f64, at_ms },
  }
}

/// Per-process counters.
#[napi(object, object_from_js = false)]
pub struct RawStats {
  pub faults: f64,
  pub copy_pages: f64,
  pub zero_pages: f64,
  pub forwarded: f64,
  /// Faults served by the background copy that held their page.
  pub joined: f64,
  pub bytes: f64,
  pub paused: bool,
  pub gen: u32,
}

/// Counters of the native page-server client.
#[napi(object, object_from_js = false)]
pub struct RawSourceStats {
  /// A page server is connected and has not failed.
  pub connected: bool,
  /// The last page server failed (a `source-error` was reported).
  pub failed: bool,
  /// Faults served from the page server by the loop thread.
  pub faults_served: f64,
  /// Their bytes (4096 per fault).
  pub fault_bytes: f64,
  /// Background reply bytes received.
  pub fetch_bytes: f64,
  /// GET requests sent (follow-ups of short replies included).
  pub requests: f64,
}

/// The threadsafe function of a [`BatchCallback`]: called with nothing, it builds its batch in JS.
type BatchTsfn<R> = ThreadsafeFunction<(), (), Vec<R>, Status, false>;

/// A JS callback that receives events in batches from a native thread, for the event loop and the
/// page server alike.
///
/// `notify` (called on the native thread) schedules one non-blocking call; on the JS thread the
/// call drains `take(shared)`, maps it and hands the array over. `shared` exists only once the
/// thread has started, so it is set into `slot` afterwards. Emptying `tsfn` (on close) releases the
/// threadsafe function, so Node can exit, and breaks the cycle callback -> shared -> notify.
struct BatchCallback<S, R: napi::bindgen_prelude::ToNapiValue + 'static> {
  slot: Arc<std::sync::OnceLock<Arc<S>>>,
  tsfn: Arc<std::sync::Mutex<Option<BatchTsfn<R>>>>,
}

impl<S: Send + Sync + 'static, R: napi::bindgen_prelude::ToNapiValue + 'static> BatchCallback<S, R> {
  fn new<E: 'static>(callback: Function<Vec<R>, ()>, take: fn(&S) -> Vec<E>, map: fn(E) -> R) -> Result<Self> {
    let slot: Arc<std::sync::OnceLock<Arc<S>>> = Arc::new(std::sync::OnceLock::new());
    let slot_js = slot.clone();
    let tsfn = callback
      .build_threadsafe_function::<()>()
      .callee_handled::<false>()
      .build_callback(move |_ctx| {
        let batch = slot_js.get().map(|s| take(s)).unwrap_or_default();
        Ok(batch.into_iter().map(map).collect::<Vec<_>>())
      })
      .map_err(|e| to_napi(ArgError::Invalid(format!("callback: {e}"))))?;
    Ok(BatchCallback { slot, tsfn: Arc::new(std::sync::Mutex::new(Some(tsfn))) })
  }

  /// What the native thread calls when a batch is ready.
  fn notify(&self) -> Box<dyn Fn() + Send + Sync> {
    let t = self.tsfn.clone();
    Box::new(move || {
      if let Some(f) = t.lock().unwrap_or_else(|p| p.into_inner()).as_ref() {
        f.call((), ThreadsafeFunctionCallMode::NonBlocking);
      }
    })
  }

  /// Connects the callback to the started thread's shared state.
  fn started(&self, shared: Arc<S>) {
    let _ = self.slot.set(shared);
  }

  /// Releases the threadsafe function (Node may exit; no more calls).
  fn release(&self) {
    self.tsfn.lock().unwrap_or_else(|p| p.into_inner()).take();
  }
}

/// The fast-path event loop (one native thread).
#[napi]
pub struct EventLoop {
  handle: LoopHandle,
  callback: BatchCallback<event_loop::Shared, LoopEvent>,
  images: std::collections::HashMap<u32, image::PageImage>,
  next_image: u32,
}

impl EventLoop {
  fn live(&self) -> Result<()> {
    if self.handle.is_closed() {
      return Err(to_napi(ArgError::Invalid("EventLoop: already closed".into())));
    }
    Ok(())
  }

  fn known_proc(&self, proc_id: u32) -> Result<()> {
    self.live()?;
    if !self.handle.shared.counters.lock().unwrap_or_else(|p| p.into_inner()).contains_key(&proc_id) {
      return Err(to_napi(ArgError::UnknownId("procId", proc_id as i64)));
    }
    Ok(())
  }

  fn job(&self, job: Job) -> Result<()> {
    self.known_proc(job.proc_id)?;
    self.handle.shared.send(Cmd::Job(job));
    Ok(())
  }
}

fn page_multiple(v: u64, what: &'static str) -> Result<u64> {
  if !v.is_multiple_of(PAGE) {
    return Err(to_napi(ArgError::Invalid(format!("{what}: must be a multiple of 4096, got {v}"))));
  }
  Ok(v)
}

#[napi]
impl EventLoop {
  /// Starts the loop thread; `callback` receives batches of events (an array per call).
  #[napi(constructor, ts_args_type = "callback: (events: LoopEvent[]) => void")]
  pub fn new(callback: Function<Vec<LoopEvent>, ()>) -> Result<EventLoop> {
    let callback = BatchCallback::new(callback, |s: &event_loop::Shared| s.outbox.take(), loop_event)?;
    let handle = LoopHandle::start(callback.notify()).map_err(to_napi)?;
    callback.started(handle.shared.clone());
    Ok(EventLoop { handle, callback, images: Default::default(), next_image: 1 })
  }

  /// Shares a pages image with the loop; returns its image id for tables and `copy`.
  #[napi]
  pub fn add_image(&mut self, img: &PageImage) -> Result<u32> {
    self.live()?;
    let m = img.get()?.clone();
    let id = self.next_image;
    self.next_image += 1;
    self.images.insert(id, m.clone());
    self.handle.shared.send(Cmd::AddImage(id, m));
    Ok(id)
  }

  /// Takes ownership of `uffd` (the JS object is emptied) and serves it; the process starts PAUSED.
  /// `pid > 0` also opens a pidfd to report `exit`.
  #[napi]
  pub fn add_process(&mut self, uffd: &mut Uffd, pid: i32) -> Result<u32> {
    self.live()?;
    uffd.get()?;
    let u = uffd.inner.take().expect("checked above");
    let id = self.handle.shared.next_proc.fetch_add(1, Ordering::SeqCst);
    let counters = Arc::new(Counters::default());
    counters.paused.store(true, Ordering::Relaxed);
    self.handle.shared.counters.lock().unwrap_or_else(|p| p.into_inner()).insert(id, counters.clone());
    self.handle.shared.send(Cmd::AddProcess { proc_id: id, uffd: u, pid, counters });
    Ok(id)
  }

  /// Installs a translation table (6 u64 per entry: liveStart, liveEnd, imageStart, kind, imageId, fileOffset),
  /// sets the generation and resumes the process (queued faults are then served) — unless the loop has
  /// read more layout events for it than the `applied` events this table reflects: then it stays paused.
  #[napi]
  pub fn install_table(&self, proc_id: u32, gen: u32, entries: BigUint64Array, applied: u32) -> Result<()> {
    self.known_proc(proc_id)?;
    let images = &self.images;
    let table = Table::parse(&entries, &|id| u32::try_from(id).ok().and_then(|id| images.get(&id).map(|m| m.len())))
      .map_err(to_napi)?;
    self.handle.shared.send(Cmd::Install { proc_id, gen, table, applied });
    Ok(())
  }

  /// Copies `len` bytes of image `imageId` at `fileOffset` to `dst`, in pieces; completes with a `done` event.
  #[napi]
  // The parameters are the JS method's positional arguments (napi maps each one to one), called from
  // ts/native on every request: a struct here would only mean an options object to build in JS.
  #[allow(clippy::too_many_arguments)]
  pub fn copy(
    &self,
    proc_id: u32,
    req_id: u32,
    gen: u32,
    image_id: u32,
    file_offset: f64,
    dst: BigInt,
    len: f64,
    urgent: bool,
  ) -> Result<()> {
    let (off, len) = (num_u64(file_offset, "fileOffset")?, page_multiple(num_u64(len, "len")?, "len")?);
    let dst = page_multiple(big_u64(&dst, "dst")?, "dst")?;
    let img = self.images.get(&image_id).ok_or_else(|| to_napi(ArgError::UnknownId("imageId", image_id as i64)))?;
    // Checked here so a bad request fails at the call site, naming the image file.
    img.ptr_at(off, len).map_err(to_napi)?;
    self.job(Job::new(proc_id, req_id, gen, Source::Image(img.clone(), off), dst, len, urgent))
  }

  /// Queue the requests that follow without waking the loop thread, until `release` (one wake-up
  /// for a whole pump instead of one per request).
  #[napi]
  pub fn hold(&self) {
    self.handle.shared.hold();
  }

  /// Wake the loop thread once for what was queued since `hold`.
  #[napi]
  pub fn release(&self) {
    self.handle.shared.release();
  }

  /// Runs to copy into task `pid` (its checkpoint pid) the moment its uffd is handed over, before
  /// the task runs (see early.rs): `lens[i]` bytes of image `imageId` at `offsets[i]` to `dsts[i]`.
  #[napi]
  pub fn preload(
    &self,
    pid: i32,
    image_id: u32,
    offsets: Float64Array,
    dsts: Float64Array,
    lens: Float64Array,
  ) -> Result<()> {
    let img = self.images.get(&image_id).ok_or_else(|| to_napi(ArgError::UnknownId("imageId", image_id as i64)))?;
    if offsets.len() != dsts.len() || dsts.len() != lens.len() {
      return Err(to_napi(ArgError::Invalid("offsets, dsts and lens must have the same length".into())));
    }
    let mut runs = Vec::with_capacity(lens.len());
    for i in 0..lens.len() {
      let off = num_u64(offsets[i], "offsets")?;
      let dst = page_multiple(num_u64(dsts[i], "dsts")?, "dsts")?;
      let len = page_multiple(num_u64(lens[i], "lens")?, "lens")?;
      img.ptr_at(off, len).map_err(to_napi)?;
      runs.push(crate::early::Run { img: img.clone(), off, dst, len });
    }
    self.handle.shared.send(Cmd::Preload { pid, runs });
    Ok(())
  }

  /// Background requests from now on wait, queued, until "restore finished" (see `Cmd::Park`).
  #[napi]
  pub fn park(&self) {
    self.handle.shared.send(Cmd::Park);
  }

  /// Copies `buf` to `dst`; completes with a `done` event.
  #[napi]
  pub fn copy_buffer(&self, proc_id: u32, req_id: u32, gen: u32, buf: Buffer, dst: BigInt, urgent: bool) -> Result<()> {
    let dst = page_multiple(big_u64(&dst, "dst")?, "dst")?;
    let len = page_multiple(buf.len() as u64, "buffer length")?;
    self.job(Job::new(proc_id, req_id, gen, Source::Buffer(buf.to_vec()), dst, len, urgent))
  }

  /// Zero-fills `dst..dst+len`; completes with a `done` event.
  #[napi]
  pub fn zero(&self, proc_id: u32, req_id: u32, gen: u32, dst: BigInt, len: f64, urgent: bool) -> Result<()> {
    let dst = page_multiple(big_u64(&dst, "dst")?, "dst")?;
    let len = page_multiple(num_u64(len, "len")?, "len")?;
    self.job(Job::new(proc_id, req_id, gen, Source::Zero, dst, len, urgent))
  }

  /// UFFDIO_WAKE on the loop thread.
  #[napi]
  pub fn wake(&self, proc_id: u32, start: BigInt, len: BigInt) -> Result<()> {
    self.known_proc(proc_id)?;
    let (start, len) = (big_u64(&start, "start")?, big_u64(&len, "len")?);
    self.handle.shared.send(Cmd::Wake { proc_id, start, len });
    Ok(())
  }

  /// UFFDIO_UNREGISTER on the loop thread (for REMOVE: later reads there see zeros).
  #[napi]
  pub fn unregister(&self, proc_id: u32, start: BigInt, len: BigInt) -> Result<()> {
    self.known_proc(proc_id)?;
    let (start, len) = (big_u64(&start, "start")?, big_u64(&len, "len")?);
    self.handle.shared.send(Cmd::Unregister { proc_id, start, len });
    Ok(())
  }

  /// Watches `pid` for exit (reported as `exit`): for a forked child whose pid TS found.
  #[napi]
  pub fn watch_pid(&self, proc_id: u32, pid: i32) -> Result<()> {
    self.known_proc(proc_id)?;
    if pid <= 0 {
      return Err(to_napi(ArgError::Invalid(format!("watchPid: pid must be positive, got {pid}"))));
    }
    self.handle.shared.send(Cmd::Watch { proc_id, pid });
    Ok(())
  }

  /// Pauses a process: its faults are queued until the next `installTable`.
  #[napi]
  pub fn pause(&self, proc_id: u32) -> Result<()> {
    self.known_proc(proc_id)?;
    self.handle.shared.send(Cmd::Pause(proc_id));
    Ok(())
  }

  /// Stops serving a process and closes its uffd. Closing a uffd makes later faults read ZEROS: when data is
  /// left, kill the process BEFORE calling this.
  #[napi]
  pub fn remove_process(&self, proc_id: u32) -> Result<()> {
    self.known_proc(proc_id)?;
    self.handle.shared.send(Cmd::Remove(proc_id));
    Ok(())
  }

  /// Counters of a process.
  #[napi]
  pub fn stats(&self, proc_id: u32) -> Result<RawStats> {
    self.live()?;
    let map = self.handle.shared.counters.lock().unwrap_or_else(|p| p.into_inner());
    let c = map.get(&proc_id).ok_or_else(|| to_napi(ArgError::UnknownId("procId", proc_id as i64)))?;
    let l = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed) as f64;
    Ok(RawStats {
      faults: l(&c.faults),
      copy_pages: l(&c.copy_pages),
      zero_pages: l(&c.zero_pages),
      forwarded: l(&c.forwarded),
      joined: l(&c.joined),
      bytes: l(&c.bytes),
      paused: c.paused.load(Ordering::Relaxed),
      gen: c.gen.load(Ordering::Relaxed),
    })
  }

  /// Connects the loop thread to a CRIU page server over plain TCP (one connection, TCP_NODELAY, as CRIU's page servers accept): faults in
  /// remote table entries (5th word = image pid, non-zero) are then served natively, and `fetch` works.
  /// Connecting blocks this call for at most `timeoutMs`; failures throw `EPAGESERVER` naming
  /// address:port. `timeoutMs` is also the longest one reply may take, from when it is awaited to its last byte.
  #[napi]
  pub fn connect_page_server(&self, address: String, port: u32, timeout_ms: u32) -> Result<()> {
    self.live()?;
    let port = u16::try_from(port)
      .ok()
      .filter(|p| *p > 0)
      .ok_or_else(|| to_napi(ArgError::Invalid(format!("port: expected 1-65535, got {port}"))))?;
    if timeout_ms == 0 {
      return Err(to_napi(ArgError::Invalid("timeoutMs: must be positive".into())));
    }
    let s = &self.handle.shared.source;
    if s.connected.load(Ordering::Relaxed) {
      return Err(to_napi(ArgError::Invalid("connectPageServer: a page server is already connected".into())));
    }
    let c =
      PageClient::connect(&address, port, std::time::Duration::from_millis(timeout_ms as u64)).map_err(to_napi)?;
    // Marked here (not only on the thread) so a `fetch` right after this call is accepted.
    s.connected.store(true, Ordering::Relaxed);
    s.failed.store(false, Ordering::Relaxed);
    self.handle.shared.send(Cmd::Connect(Box::new(c)));
    Ok(())
  }

  /// Fetches `pages` pages of image process `imagePid` at image address `image` from the page server and
  /// copies them to `dst` (same rules as `copy`: stale gen, pieces, EEXIST pages skipped); completes with
  /// `done` (`error` if the source fails first).
  #[napi]
  // The parameters are the JS method's positional arguments (napi maps each one to one), called from
  // ts/native on every request: a struct here would only mean an options object to build in JS.
  #[allow(clippy::too_many_arguments)]
  pub fn fetch(
    &self,
    proc_id: u32,
    req_id: u32,
    gen: u32,
    image_pid: u32,
    image: BigInt,
    pages: u32,
    dst: BigInt,
  ) -> Result<()> {
    let image = page_multiple(big_u64(&image, "image")?, "image")?;
    let dst = page_multiple(big_u64(&dst, "dst")?, "dst")?;
    if pages == 0 || pages as u64 > MAX_NR_PAGES {
      return Err(to_napi(ArgError::Invalid(format!("pages: expected 1..{MAX_NR_PAGES}, got {pages}"))));
    }
    if image_pid == 0 || image_pid > i32::MAX as u32 {
      return Err(to_napi(ArgError::Invalid(format!("imagePid: expected a pid, got {image_pid}"))));
    }
    self.known_proc(proc_id)?;
    if !self.handle.shared.source.connected.load(Ordering::Relaxed) {
      let why = if self.handle.shared.source.failed.load(Ordering::Relaxed) {
        "the page server failed"
      } else {
        "no page server is connected (call connectPageServer first)"
      };
      return Err(to_napi(ArgError::Invalid(format!("fetch: {why}"))));
    }
    self.handle.shared.send(Cmd::Fetch(Fetch::new(proc_id, req_id, gen, image_pid, image, pages as u64, dst)));
    Ok(())
  }

  /// Background bytes requested from the page server but not yet received before further fetches queue
  /// (default 8 MiB; at least one page).
  #[napi]
  pub fn set_fetch_window(&self, bytes: f64) -> Result<()> {
    self.live()?;
    self.handle.shared.send(Cmd::FetchWindow(num_u64(bytes, "bytes")?));
    Ok(())
  }

  /// Counters of the page-server client.
  #[napi]
  pub fn source_stats(&self) -> Result<RawSourceStats> {
    self.live()?;
    let s = &self.handle.shared.source;
    let l = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed) as f64;
    Ok(RawSourceStats {
      connected: s.connected.load(Ordering::Relaxed),
      failed: s.failed.load(Ordering::Relaxed),
      faults_served: l(&s.faults_served),
      fault_bytes: l(&s.faults_served) * PAGE as f64,
      fetch_bytes: l(&s.fetch_bytes),
      requests: l(&s.requests),
    })
  }

  /// Size of one piece of a long copy while faults come, and once none has for a while (rounded to
  /// pages; defaults 1 MiB and 512 KiB; the quiet size is never below the other).
  #[napi]
  pub fn set_piece_bytes(&self, bytes: f64, quiet_bytes: Option<f64>) -> Result<()> {
    self.live()?;
    let quiet = match quiet_bytes {
      Some(q) => num_u64(q, "quietBytes")?,
      None => crate::event_loop::QUIET_PIECE,
    };
    self.handle.shared.send(Cmd::PieceBytes(num_u64(bytes, "bytes")?, quiet));
    Ok(())
  }

  /// Stops the thread, closes every fd, releases the callback so Node can exit. Idempotent.
  /// `complete`: every process served was complete, so the guardian lets go of whatever the loop did
  /// not release (otherwise it stays owed: killed if the daemon dies or stops the guardian).
  #[napi]
  pub fn close(&mut self, complete: Option<bool>) {
    let was_open = !self.handle.is_closed();
    self.handle.close();
    if was_open && complete == Some(true) {
      crate::guardian::loop_done(crate::guardian::loop_id(&self.handle.shared));
    }
    self.callback.release();
  }
}

/// Options of [`NativePageServer::start`].
#[napi(object)]
pub struct RawPageServerOptions {
  pub address: String,
  pub port: u32,
  pub stall_timeout_ms: u32,
  /// Largest reply in pages (clamped to 1..2^20).
  pub max_reply_pages: f64,
  /// Stop accepting after this many sessions; stop once they have ended.
  pub sessions: Option<u32>,
  /// Most connections at once, in total and from one source IP (0 or absent = no limit).
  pub max_connections: Option<u32>,
  pub max_per_peer: Option<u32>,
  /// A connection with nothing in progress and no request for this long is closed (0 or absent = never).
  pub idle_timeout_ms: Option<u32>,
  /// Only peers inside one of these networks (`ADDR/LEN`) are served (absent or empty = everyone).
  pub allow: Option<Vec<String>>,
}

/// The servable runs of one image pid: `[start, end, imageId, fileOffset]*`, sorted.
#[napi(object)]
pub struct RawPageServerPid {
  pub pid: u32,
  pub runs: BigUint64Array,
}

/// One page-server report (`type`: session-started | session-ended | refused | warning | stopped).
#[napi(object, object_from_js = false)]
pub struct RawPageServerEvent {
  #[napi(js_name = "type")]
  pub kind: String,
  pub session: Option<u32>,
  pub peer: Option<String>,
  pub reason: Option<String>,
  pub detail: Option<String>,
  pub ok: Option<bool>,
  pub requests: Option<f64>,
  pub pages_sent: Option<f64>,
  pub sessions: Option<u32>,
}

fn ps_event(e: crate::pageserver::Event) -> RawPageServerEvent {
  use crate::pageserver::Event;
  let ev = |kind: &str| RawPageServerEvent {
    kind: kind.into(),
    session: None,
    peer: None,
    reason: None,
    detail: None,
    ok: None,
    requests: None,
    pages_sent: None,
    sessions: None,
  };
  match e {
    Event::Started { session, peer } => {
      RawPageServerEvent { session: Some(session), peer: Some(peer), ..ev("session-started") }
    }
    Event::Ended { session, peer, reason, detail, requests, pages_sent } => RawPageServerEvent {
      session: Some(session),
      peer: Some(peer),
      reason: Some(reason.as_str().into()),
      ok: Some(reason.ok()),
      detail: Some(detail),
      requests: Some(requests as f64),
      pages_sent: Some(pages_sent as f64),
      ..ev("session-ended")
    },
    Event::Refused { peer, reason, detail } => {
      RawPageServerEvent { peer: Some(peer), reason: Some(reason.into()), detail: Some(detail), ..ev("refused") }
    }
    Event::Warning { message } => RawPageServerEvent { detail: Some(message), ..ev("warning") },
    Event::Stopped { sessions } => RawPageServerEvent { sessions: Some(sessions), ..ev("stopped") },
  }
}

/// The native page-server engine (plain TCP): one thread serving every connection.
#[napi]
pub struct NativePageServer {
  handle: Option<crate::pageserver::Handle>,
  callback: BatchCallback<crate::pageserver::Shared, RawPageServerEvent>,
  address: String,
  port: u32,
}

#[napi]
impl NativePageServer {
  /// Binds and listens (throws `ELISTEN` naming address:port), maps `images` (pages file paths, by image id)
  /// and starts serving; `callback` receives batches of events. Keeps Node alive until `close()`.
  #[napi(
    factory,
    ts_args_type = "options: RawPageServerOptions, catalog: RawPageServerPid[], images: string[], callback: (events: RawPageServerEvent[]) => void"
  )]
  pub fn start(
    options: RawPageServerOptions,
    catalog: Vec<RawPageServerPid>,
    images: Vec<String>,
    callback: Function<Vec<RawPageServerEvent>, ()>,
  ) -> Result<NativePageServer> {
    use crate::pageserver::{self, catalog::Catalog};
    let port = u16::try_from(options.port)
      .map_err(|_| to_napi(ArgError::Invalid(format!("port: expected 0-65535, got {}", options.port))))?;
    if options.stall_timeout_ms == 0 {
      return Err(to_napi(ArgError::Invalid("stallTimeoutMs: must be positive".into())));
    }
    let max_reply_pages =
      if options.max_reply_pages >= 1.0 { (options.max_reply_pages as u64).min(MAX_NR_PAGES) } else { 1 };
    let mut maps = Vec::with_capacity(images.len());
    for p in &images {
      maps.push(image::open(Path::new(p)).map_err(to_napi)?);
    }
    let mut cat = Catalog::new(maps);
    for p in &catalog {
      cat.add_pid(p.pid, &p.runs).map_err(|m| to_napi(ArgError::Invalid(m)))?;
    }
    let callback = BatchCallback::new(callback, |s: &pageserver::Shared| s.outbox.take(), ps_event)?;
    let opts = pageserver::Options {
      address: options.address,
      port,
      stall: std::time::Duration::from_millis(options.stall_timeout_ms as u64),
      max_reply_pages,
      sessions: options.sessions.filter(|n| *n > 0),
      max_connections: options.max_connections.unwrap_or(0),
      max_per_peer: options.max_per_peer.unwrap_or(0),
      idle: options.idle_timeout_ms.filter(|ms| *ms > 0).map(|ms| std::time::Duration::from_millis(ms as u64)),
      allow: options.allow.unwrap_or_default(),
    };
    let handle = pageserver::start(opts, cat, callback.notify()).map_err(to_napi)?;
    callback.started(handle.shared.clone());
    let (address, port) = (handle.local.ip().to_string(), handle.local.port() as u32);
    Ok(NativePageServer { handle: Some(handle), callback, address, port })
  }

  /// The bound address.
  #[napi(getter)]
  pub fn address(&self) -> String {
    self.address.clone()
  }

  /// The bound port (the real one when 0 was asked).
  #[napi(getter)]
  pub fn port(&self) -> u32 {
    self.port
  }

  /// Ends every session ('server-closing'), joins the thread and releases the callback; returns the events
  /// not yet delivered (so none is lost to the release). Idempotent.
  #[napi]
  pub fn close(&mut self) -> Vec<RawPageServerEvent> {
    let Some(mut h) = self.handle.take() else { return Vec::new() };
    h.close();
    let rest = h.shared.outbox.take();
    self.callback.release();
    rest.into_iter().map(ps_event).collect()
  }
}
