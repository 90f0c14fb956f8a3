//! The `EventLoop` class (the fast path's thread) and what it reports (`LoopEvent`, counters).

use std::sync::atomic::Ordering;
use std::sync::Arc;

use napi::bindgen_prelude::{BigInt, BigUint64Array, Buffer, Float64Array, Function};
use napi_derive::napi;

use super::args::{num_u64, page_multiple};
use super::batch_callback::BatchCallback;
use super::page_image::PageImage;
use super::tls_files::RawTlsFiles;
use super::uffd::Uffd;
use super::Result;
use crate::errors::{big_u64, to_napi, ArgError};
use crate::event_loop::{self, Cmd, Counters, Job, LoopHandle, Out, Source};
use crate::image;
use crate::pageclient::{Fetch, PageClient};
use crate::pagewire::MAX_NR_PAGES;
use crate::table::{Table, PAGE};

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

/// The fast-path event loop (one native thread).
#[napi]
pub struct EventLoop {
  pub(super) handle: LoopHandle,
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

  /// Installs a translation table (packed as table.rs says: `TABLE_WORDS` u64 per entry),
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

  /// Connects the loop thread to a CRIU page server over plain TCP, or TLS with `tls` (one connection,
  /// TCP_NODELAY, as CRIU's page servers accept): faults in remote table entries with an image pid are
  /// then served natively, and `fetch` works. Connecting (and the TLS handshake) blocks this call for at
  /// most `timeoutMs` each; failures throw `EPAGESERVER` naming address:port, unusable TLS files `EOPTION`
  /// naming the option and file. `timeoutMs` is also the longest one reply may take, from when it is
  /// awaited to its last byte.
  #[napi]
  pub fn connect_page_server(
    &self,
    address: String,
    port: u32,
    timeout_ms: u32,
    tls: Option<RawTlsFiles>,
  ) -> Result<()> {
    self.live()?;
    let (port, timeout_ms) = super::args::server_port_and_timeout(port, timeout_ms)?;
    let s = &self.handle.shared.source;
    if s.connected.load(Ordering::Relaxed) {
      return Err(to_napi(ArgError::Invalid("connectPageServer: a page server is already connected".into())));
    }
    let tls = match tls {
      Some(t) => Some(crate::tls::client_config(&t.into()).map_err(to_napi)?),
      None => None,
    };
    let c =
      PageClient::connect(&address, port, std::time::Duration::from_millis(timeout_ms as u64), tls).map_err(to_napi)?;
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
