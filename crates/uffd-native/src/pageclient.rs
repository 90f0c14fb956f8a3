//! The native page-server client, driven by the event-loop thread (plain TCP; TLS stays in TS).
//!
//! Two connections, because replies come strictly in order per connection: a fault's one-page GET on the
//! URGENT connection never waits behind megabytes of background data already queued on the BACKGROUND one.
//! Everything is non-blocking; the loop calls in when epoll says a socket is readable/writable, and this
//! module hands completed replies back through callbacks. Replies are read straight into page-aligned
//! buffers (one reused page for faults, pooled buffers for background fetches) so the only copy of the
//! data after the kernel's socket buffer is UFFDIO_COPY itself.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::net::{TcpStream, ToSocketAddrs};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::errors::Coded;
use crate::pagebuf::{PageBuf, Pool};
use crate::pagewire::{check_reply, Header, HDR};
use crate::table::PAGE;

/// Default limit of background bytes requested but not yet received.
pub const DEFAULT_WINDOW: u64 = 8 << 20;

/// Counters of the page source, readable from JS without touching the loop thread.
#[derive(Debug, Default)]
pub struct SourceStats {
  pub connected: AtomicBool,
  pub failed: AtomicBool,
  /// Faults served natively from the page server (one page each).
  pub faults_served: AtomicU64,
  /// Background reply bytes received.
  pub fetch_bytes: AtomicU64,
  /// GET requests sent (both connections, follow-ups included).
  pub requests: AtomicU64,
}

/// Errors connecting (thrown from `connectPageServer`).
#[derive(Debug)]
pub enum ConnectError {
  /// the address did not resolve
  Resolve(String, std::io::Error),
  /// no resolved address accepted a connection in time (the last error)
  Connect(String, std::io::Error),
  /// socket options could not be set
  Setup(String, std::io::Error),
}

impl fmt::Display for ConnectError {
  fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
    match self {
      ConnectError::Resolve(a, e) => write!(f, "page server {a}: cannot resolve the address: {e}"),
      ConnectError::Connect(a, e) => write!(f, "page server {a}: cannot connect: {e}"),
      ConnectError::Setup(a, e) => write!(f, "page server {a}: cannot set up the connection: {e}"),
    }
  }
}

impl Coded for ConnectError {
  fn code(&self) -> &'static str {
    "EPAGESERVER"
  }
}

/// A fault waiting for its page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UrgentReq {
  pub proc_id: u32,
  pub gen: u32,
  pub live: u64,
  pub image: u64,
  pub pid: u32,
}

/// A background request from TS.
pub struct Fetch {
  pub proc_id: u32,
  pub req_id: u32,
  pub gen: u32,
  pub pid: u32,
  pub image: u64,
  pub pages: u64,
  pub dst: u64,
  /// Allocated when the GET goes out (queued fetches hold no memory).
  pub buf: Option<PageBuf>,
  received: u64,
}

impl Fetch {
  /// A fetch of `pages` pages of image process `pid` at image address `image`, for live address `dst`.
  pub fn new(proc_id: u32, req_id: u32, gen: u32, pid: u32, image: u64, pages: u64, dst: u64) -> Fetch {
    Fetch { proc_id, req_id, gen, pid, image, pages, dst, buf: None, received: 0 }
  }
}

/// One GET on the background wire (a fetch needs several when the server replies short).
struct Wire {
  fetch: u64,
  pid: u32,
  vaddr: u64,
  pages: u64,
  /// First page of the fetch this GET asks for.
  page0: u64,
}

/// Data of the current background reply still to read.
struct Cur {
  fetch: u64,
  off: usize,
  left: usize,
  pages: u64,
}

/// One non-blocking TCP connection: pending output and epoll interest.
struct Conn {
  fd: OwnedFd,
  ep: RawFd,
  tok: u64,
  out: Vec<u8>,
  out_off: usize,
  pollout: bool,
  last_progress: Instant,
  name: &'static str,
}

fn errno() -> std::io::Error {
  std::io::Error::last_os_error()
}

impl Conn {
  fn raw(&self) -> RawFd {
    self.fd.as_raw_fd()
  }

  /// Writes `bytes` now, queueing what the socket does not take (then EPOLLOUT drains it).
  fn send(&mut self, bytes: &[u8]) -> Result<(), String> {
    if self.out_off < self.out.len() {
      self.out.extend_from_slice(bytes);
      return Ok(());
    }
    let n = self.write_some(bytes)?;
    if n < bytes.len() {
      self.out.clear();
      self.out_off = 0;
      self.out.extend_from_slice(&bytes[n..]);
      self.set_pollout(true);
    }
    Ok(())
  }

  /// Drains queued output after EPOLLOUT.
  fn flush(&mut self) -> Result<(), String> {
    while self.out_off < self.out.len() {
      let (off, len) = (self.out_off, self.out.len());
      let n = {
        let out = std::mem::take(&mut self.out);
        let r = self.write_some(&out[off..len]);
        self.out = out;
        r?
      };
      if n == 0 {
        return Ok(());
      }
      self.out_off += n;
    }
    self.out.clear();
    self.out_off = 0;
    self.set_pollout(false);
    Ok(())
  }

  fn write_some(&self, bytes: &[u8]) -> Result<usize, String> {
    loop {
      // SAFETY: sends from a live slice; MSG_NOSIGNAL turns a dead peer into EPIPE instead of SIGPIPE.
      let n = unsafe {
        libc::send(self.raw(), bytes.as_ptr() as *const libc::c_void, bytes.len(), libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT)
      };
      if n >= 0 {
        return Ok(n as usize);
      }
      let e = errno();
      match e.raw_os_error() {
        Some(libc::EINTR) => continue,
        Some(libc::EAGAIN) => return Ok(0),
        _ => return Err(format!("{} connection: send failed: {e}", self.name)),
      }
    }
  }

  fn set_pollout(&mut self, on: bool) {
    if self.pollout == on {
      return;
    }
    self.pollout = on;
    let events = libc::EPOLLIN | if on { libc::EPOLLOUT } else { 0 };
    let mut ev = libc::epoll_event { events: events as u32, u64: self.tok };
    // SAFETY: `ev` is valid for the call; the fd is registered in `ep` (attach) and open.
    unsafe { libc::epoll_ctl(self.ep, libc::EPOLL_CTL_MOD, self.raw(), &mut ev) };
  }

  /// Reads into `buf`: Ok(Some(n>0)), Ok(None) on EAGAIN, Err on EOF or error.
  fn read_into(&mut self, buf: &mut [u8], what: impl Fn() -> String) -> Result<Option<usize>, String> {
    loop {
      // SAFETY: reads into a live, writable slice of exactly `buf.len()` bytes.
      let n = unsafe { libc::read(self.raw(), buf.as_mut_ptr() as *mut libc::c_void, buf.len()) };
      if n > 0 {
        self.last_progress = Instant::now();
        return Ok(Some(n as usize));
      }
      if n == 0 {
        return Err(format!("the server closed the {} connection{}", self.name, what()));
      }
      let e = errno();
      match e.raw_os_error() {
        Some(libc::EINTR) => continue,
        Some(libc::EAGAIN) => return Ok(None),
        _ => return Err(format!("{} connection: read failed: {e}", self.name)),
      }
    }
  }
}

/// The client state owned by the loop thread.
pub struct PageClient {
  name: String,
  timeout: Duration,
  urgent: Conn,
  bg: Conn,
  /// Faults whose GET is on the urgent wire, in order.
  ufifo: VecDeque<UrgentReq>,
  uhdr: [u8; HDR],
  uhdr_have: usize,
  uhdr_checked: bool,
  udata_have: usize,
  /// The one page urgent replies are read into (a fault's copy finishes before the next reply is read).
  page: PageBuf,
  fetches: HashMap<u64, Fetch>,
  next_fetch: u64,
  queued: VecDeque<Fetch>,
  wire: VecDeque<Wire>,
  bhdr: [u8; HDR],
  bhdr_have: usize,
  cur: Option<Cur>,
  outstanding: u64,
  window: u64,
  pool: Pool,
}

fn connect_one(name: &str, address: &str, port: u16, timeout: Duration) -> Result<OwnedFd, ConnectError> {
  let addrs: Vec<_> =
    (address, port).to_socket_addrs().map_err(|e| ConnectError::Resolve(name.into(), e))?.collect();
  let mut last = std::io::Error::new(std::io::ErrorKind::NotFound, "the address resolved to nothing");
  for a in addrs {
    match TcpStream::connect_timeout(&a, timeout) {
      Ok(s) => {
        let setup = |e| ConnectError::Setup(name.into(), e);
        s.set_nodelay(true).map_err(setup)?;
        s.set_nonblocking(true).map_err(setup)?;
        return Ok(OwnedFd::from(s));
      }
      Err(e) => last = e,
    }
  }
  Err(ConnectError::Connect(name.into(), last))
}

impl PageClient {
  /// Opens both connections (blocking, at most `timeout` each) on the calling thread, so a refused or
  /// unreachable server is an error of the `connectPageServer` call itself.
  pub fn connect(address: &str, port: u16, timeout: Duration) -> Result<PageClient, ConnectError> {
    let name = if address.contains(':') { format!("[{address}]:{port}") } else { format!("{address}:{port}") };
    let u = connect_one(&name, address, port, timeout)?;
    let b = connect_one(&name, address, port, timeout)?;
    let conn = |fd, name| Conn {
      fd,
      ep: -1,
      tok: 0,
      out: Vec::new(),
      out_off: 0,
      pollout: false,
      last_progress: Instant::now(),
      name,
    };
    Ok(PageClient {
      name,
      timeout,
      urgent: conn(u, "urgent"),
      bg: conn(b, "background"),
      ufifo: VecDeque::with_capacity(64),
      uhdr: [0; HDR],
      uhdr_have: 0,
      uhdr_checked: false,
      udata_have: 0,
      page: PageBuf::new(PAGE as usize),
      fetches: HashMap::new(),
      next_fetch: 1,
      queued: VecDeque::new(),
      wire: VecDeque::new(),
      bhdr: [0; HDR],
      bhdr_have: 0,
      cur: None,
      outstanding: 0,
      window: DEFAULT_WINDOW,
      pool: Pool::new(2 * DEFAULT_WINDOW as usize),
    })
  }

  /// `address:port`, for messages.
  pub fn name(&self) -> &str {
    &self.name
  }

  /// Registers both sockets with the loop's epoll under the given tokens.
  pub fn attach(&mut self, ep: RawFd, urgent_tok: u64, bg_tok: u64) -> std::io::Result<()> {
    for (c, tok) in [(&mut self.urgent, urgent_tok), (&mut self.bg, bg_tok)] {
      c.ep = ep;
      c.tok = tok;
      let mut ev = libc::epoll_event { events: libc::EPOLLIN as u32, u64: tok };
      // SAFETY: `ev` is valid for the call; both fds are open.
      if unsafe { libc::epoll_ctl(ep, libc::EPOLL_CTL_ADD, c.raw(), &mut ev) } != 0 {
        return Err(errno());
      }
    }
    Ok(())
  }

  /// Unregisters both sockets (before dropping the client).
  pub fn detach(&mut self) {
    for c in [&self.urgent, &self.bg] {
      if c.ep >= 0 {
        // SAFETY: removing our own fd from the loop's epoll; an error (not registered) is irrelevant.
        unsafe { libc::epoll_ctl(c.ep, libc::EPOLL_CTL_DEL, c.raw(), std::ptr::null_mut()) };
      }
    }
  }

  /// Background window (bytes requested but not received before further fetches queue locally).
  pub fn set_window(&mut self, bytes: u64) {
    self.window = bytes.max(PAGE);
    self.pool.set_limit(2 * self.window as usize);
  }

  /// True while a fault's page is on its way (the faulting thread is frozen until it arrives).
  pub fn urgent_outstanding(&self) -> bool {
    !self.ufifo.is_empty()
  }

  /// Sends the GET for a fault unless the same page (same process, generation) is already requested: the
  /// copy for the first fault wakes every thread waiting on the page. Returns true if a GET went out.
  pub fn request_page(&mut self, r: UrgentReq, stats: &SourceStats) -> Result<bool, String> {
    if self.ufifo.iter().any(|q| q.proc_id == r.proc_id && q.live == r.live && q.gen == r.gen) {
      return Ok(false);
    }
    if self.ufifo.is_empty() {
      self.urgent.last_progress = Instant::now();
    }
    self.urgent.send(&Header::get(r.pid, r.image, 1).encode())?;
    self.ufifo.push_back(r);
    stats.requests.fetch_add(1, Ordering::Relaxed);
    Ok(true)
  }

  /// Queues a background fetch and sends what the window allows.
  pub fn enqueue(&mut self, f: Fetch, stats: &SourceStats) -> Result<(), String> {
    self.queued.push_back(f);
    self.pump(stats)
  }

  fn pump(&mut self, stats: &SourceStats) -> Result<(), String> {
    while let Some(f) = self.queued.front() {
      let bytes = f.pages * PAGE;
      if self.outstanding > 0 && self.outstanding + bytes > self.window {
        break;
      }
      let mut f = self.queued.pop_front().expect("front exists");
      f.buf = Some(self.pool.get(bytes as usize));
      let id = self.next_fetch;
      self.next_fetch += 1;
      self.send_bg(Wire { fetch: id, pid: f.pid, vaddr: f.image, pages: f.pages, page0: 0 }, stats)?;
      self.outstanding += bytes;
      self.fetches.insert(id, f);
    }
    Ok(())
  }

  fn send_bg(&mut self, w: Wire, stats: &SourceStats) -> Result<(), String> {
    if self.wire.is_empty() {
      self.bg.last_progress = Instant::now();
    }
    self.bg.send(&Header::get(w.pid, w.vaddr, w.pages).encode())?;
    self.wire.push_back(w);
    stats.requests.fetch_add(1, Ordering::Relaxed);
    Ok(())
  }

  /// EPOLLOUT on one of the connections.
  pub fn writable(&mut self, urgent: bool) -> Result<(), String> {
    if urgent {
      self.urgent.flush()
    } else {
      self.bg.flush()
    }
  }

  /// Reads every complete urgent reply available; `on_page(req, page)` gets each (the page pointer is valid
  /// for the call only). Errors are the source failing.
  pub fn read_urgent(&mut self, on_page: &mut dyn FnMut(&UrgentReq, *const u8)) -> Result<(), String> {
    loop {
      let pending = self.ufifo.len();
      let mut iov = [
        libc::iovec {
          // SAFETY: the header buffer has HDR bytes; uhdr_have <= HDR, so this stays in bounds (len may be 0).
          iov_base: unsafe { self.uhdr.as_mut_ptr().add(self.uhdr_have) } as *mut libc::c_void,
          iov_len: HDR - self.uhdr_have,
        },
        libc::iovec {
          // SAFETY: the page buffer has PAGE bytes; udata_have <= PAGE.
          iov_base: unsafe { (self.page.as_ptr() as *mut u8).add(self.udata_have) } as *mut libc::c_void,
          iov_len: PAGE as usize - self.udata_have,
        },
      ];
      // One readv takes header and page together: one syscall per fault reply in the common case.
      // SAFETY: both iovecs describe live, writable memory owned by `self` (no other reference exists while
      // `&mut self` is held).
      let n = unsafe { libc::readv(self.urgent.raw(), iov.as_mut_ptr(), 2) };
      if n == 0 {
        return Err(format!(
          "the server closed the urgent connection{}",
          if pending > 0 { format!(" with {pending} request(s) unanswered") } else { String::new() }
        ));
      }
      if n < 0 {
        let e = errno();
        match e.raw_os_error() {
          Some(libc::EINTR) => continue,
          Some(libc::EAGAIN) => return Ok(()),
          _ => return Err(format!("urgent connection: read failed: {e}")),
        }
      }
      let n = n as usize;
      self.urgent.last_progress = Instant::now();
      let Some(req) = self.ufifo.front().copied() else {
        return Err(format!("{n} unexpected bytes on the urgent connection (no request outstanding)"));
      };
      let h = n.min(HDR - self.uhdr_have);
      self.uhdr_have += h;
      self.udata_have += n - h;
      if self.uhdr_have == HDR && !self.uhdr_checked {
        check_reply(&Header::decode(&self.uhdr), req.pid, req.image, 1)?;
        self.uhdr_checked = true;
      }
      if self.udata_have == PAGE as usize {
        self.ufifo.pop_front();
        self.uhdr_have = 0;
        self.udata_have = 0;
        self.uhdr_checked = false;
        on_page(&req, self.page.as_ptr());
      }
    }
  }

  /// Reads at most `budget` bytes of background data (then the loop polls faults again); each fetch whose
  /// pages have all arrived goes to `on_done`. Short replies are followed up here.
  pub fn read_background(
    &mut self,
    budget: usize,
    stats: &SourceStats,
    on_done: &mut dyn FnMut(Fetch),
  ) -> Result<(), String> {
    let mut used = 0usize;
    let res = self.read_background_inner(budget, &mut used, stats, on_done);
    // Received bytes opened the window: send what waited (also after EAGAIN).
    res.and_then(|_| self.pump(stats))
  }

  fn read_background_inner(
    &mut self,
    budget: usize,
    used: &mut usize,
    stats: &SourceStats,
    on_done: &mut dyn FnMut(Fetch),
  ) -> Result<(), String> {
    while *used < budget {
      let Some(cur) = self.cur.as_mut() else {
        let pending = self.wire.len();
        let what = move || if pending > 0 { format!(" with {pending} request(s) unanswered") } else { String::new() };
        let have = self.bhdr_have;
        let Some(n) = self.bg.read_into(&mut self.bhdr[have..], what)? else { return Ok(()) };
        let Some(w) = self.wire.front() else {
          return Err(format!("{n} unexpected bytes on the background connection (no request outstanding)"));
        };
        self.bhdr_have += n;
        *used += n;
        if self.bhdr_have < HDR {
          continue;
        }
        self.bhdr_have = 0;
        let got = check_reply(&Header::decode(&self.bhdr), w.pid, w.vaddr, w.pages)?;
        let w = self.wire.pop_front().expect("front exists");
        if got < w.pages {
          let rest = Wire { fetch: w.fetch, pid: w.pid, vaddr: w.vaddr + got * PAGE, pages: w.pages - got, page0: w.page0 + got };
          self.send_bg(rest, stats)?;
        }
        self.cur = Some(Cur { fetch: w.fetch, off: (w.page0 * PAGE) as usize, left: (got * PAGE) as usize, pages: got });
        continue;
      };
      let Some(f) = self.fetches.get_mut(&cur.fetch) else {
        return Err("internal: a reply for a fetch that no longer exists".into());
      };
      let Some(buf) = f.buf.as_mut() else {
        return Err("internal: a fetch on the wire without a buffer".into());
      };
      let take = cur.left.min(budget - *used).max(1);
      let dst = buf.slice_mut(cur.off, take);
      let Some(n) = self.bg.read_into(dst, || " in the middle of a reply".to_string())? else { return Ok(()) };
      cur.off += n;
      cur.left -= n;
      *used += n;
      self.outstanding = self.outstanding.saturating_sub(n as u64);
      stats.fetch_bytes.fetch_add(n as u64, Ordering::Relaxed);
      if cur.left == 0 {
        f.received += cur.pages;
        let (id, done) = (cur.fetch, f.received >= f.pages);
        self.cur = None;
        if done {
          let f = self.fetches.remove(&id).expect("present");
          on_done(f);
        }
      }
    }
    Ok(())
  }

  /// When a connection with requests outstanding last made progress + the timeout.
  pub fn deadline(&self) -> Option<Instant> {
    let u = (!self.ufifo.is_empty()).then(|| self.urgent.last_progress + self.timeout);
    let b = (!self.wire.is_empty()).then(|| self.bg.last_progress + self.timeout);
    match (u, b) {
      (Some(a), Some(b)) => Some(a.min(b)),
      (a, b) => a.or(b),
    }
  }

  /// The stall message if a deadline has passed.
  pub fn check_stall(&self, now: Instant) -> Result<(), String> {
    let ms = self.timeout.as_millis();
    if !self.ufifo.is_empty() && now >= self.urgent.last_progress + self.timeout {
      return Err(format!("no reply on the urgent connection for {ms} ms ({} request(s) outstanding)", self.ufifo.len()));
    }
    if !self.wire.is_empty() && now >= self.bg.last_progress + self.timeout {
      return Err(format!("no reply on the background connection for {ms} ms ({} request(s) outstanding)", self.wire.len()));
    }
    Ok(())
  }

  /// Takes every fetch not yet completed (queued or on the wire): the source failed or is being replaced.
  pub fn take_fetches(&mut self) -> Vec<Fetch> {
    let mut all: Vec<Fetch> = self.queued.drain(..).collect();
    all.extend(self.fetches.drain().map(|(_, f)| f));
    self.wire.clear();
    self.cur = None;
    self.outstanding = 0;
    all
  }

  /// Returns a copied fetch's buffer for reuse.
  pub fn recycle(&mut self, b: PageBuf) {
    self.pool.put(b);
  }

  /// Sends CLOSE on both connections, best effort and without blocking (the status reply is not awaited:
  /// the loop is shutting down).
  pub fn close_best_effort(&mut self) {
    let close = Header::close().encode();
    for c in [&mut self.urgent, &mut self.bg] {
      if c.out_off >= c.out.len() {
        let _ = c.write_some(&close);
      }
    }
  }
}
