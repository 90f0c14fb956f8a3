//! The native page-server client, driven by the event-loop thread (plain TCP; TLS stays in TS).
//!
//! ONE connection, because CRIU's page servers (`criu dump --lazy-pages`, `criu page-server --lazy-pages`)
//! accept exactly one and end the session when it closes. Replies come strictly in order on it, so a
//! fault's one-page GET waits behind every background byte already requested: the background is therefore
//! cut into small pieces and only a small window of them is on the wire at once (`set_window`), so a fault
//! waits behind at most about one piece. Everything is non-blocking; the loop calls in when epoll says the
//! socket is readable/writable, and this module hands completed replies back through callbacks. Replies are
//! read straight into page-aligned buffers (one reused page for faults, pooled buffers for background
//! fetches) so the only copy of the data after the kernel's socket buffer is UFFDIO_COPY itself.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::net::{TcpStream, ToSocketAddrs};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::errors::Coded;
use crate::pagebuf::{PageBuf, Pool};
use crate::pagewire::{check_reply, Header, HDR};
use crate::poller::Poller;
use crate::table::PAGE;

/// Background bytes requested but not yet received right after a fault: two pieces, so the server always
/// has the next piece to send while the client takes one, and the next fault's reply queues behind at most
/// that. Without faults the window grows by a piece per piece received (doubling every round trip, as
/// TCP's slow start) up to the maximum, and a fault shrinks it back at once (CRIU resets its chunk size on
/// every fault the same way).
pub const MIN_WINDOW: u64 = 128 << 10;
/// Default largest background window (bytes in flight when nothing faults).
pub const DEFAULT_WINDOW: u64 = 4 << 20;
/// Background GET size right after a fault (a fetch from TS is cut into GETs).
pub const DEFAULT_PIECE: u64 = 64 << 10;
/// Largest background GET, once the window has grown (no fault for a while): GETs a quarter of the
/// window, so that several are still in flight. Why: a page server answers GET by GET (CRIU's splices
/// each reply from its page pipe), so few large GETs move more per second than many small ones; a
/// fault cuts what is not sent yet back to DEFAULT_PIECE pieces, so its reply never queues behind one.
pub const MAX_PIECE: u64 = 1 << 20;

/// Counters of the page source, readable from JS without touching the loop thread.
#[derive(Debug, Default)]
pub struct SourceStats {
  pub connected: AtomicBool,
  pub failed: AtomicBool,
  /// Faults served natively from the page server (one page each).
  pub faults_served: AtomicU64,
  /// Background reply bytes received.
  pub fetch_bytes: AtomicU64,
  /// GET requests sent (follow-ups included).
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

/// One GET on the background wire (a fetch needs several: it is cut into pieces, and the server may reply
/// short).
#[derive(Clone, Copy)]
struct Piece {
  fetch: u64,
  pid: u32,
  vaddr: u64,
  pages: u64,
  /// First page of the fetch this GET asks for.
  page0: u64,
}

/// A request on the wire, in the order the replies will come.
#[derive(Clone, Copy)]
enum Sent {
  Fault(UrgentReq),
  Piece(Piece),
}

/// The reply being read.
enum Reading {
  /// Its header (`have` bytes of it so far).
  Header { have: usize },
  /// A fault's page (`have` bytes of it so far).
  Fault { req: UrgentReq, have: usize },
  /// Background data: `left` bytes still to come into the fetch's buffer at `off`.
  Piece { fetch: u64, off: usize, left: usize, pages: u64 },
}

/// The one non-blocking TCP connection: pending output and epoll interest.
struct Conn {
  fd: OwnedFd,
  poller: Option<Poller>,
  tok: u64,
  out: Vec<u8>,
  out_off: usize,
  pollout: bool,
}

fn errno() -> std::io::Error {
  std::io::Error::last_os_error()
}

/// What a read of the connection gave.
enum Got {
  Bytes(usize),
  /// EAGAIN: nothing more now.
  Nothing,
  /// The server closed the connection.
  Eof,
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
        libc::send(
          self.raw(),
          bytes.as_ptr() as *const libc::c_void,
          bytes.len(),
          libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT,
        )
      };
      if n >= 0 {
        return Ok(n as usize);
      }
      let e = errno();
      match e.raw_os_error() {
        Some(libc::EINTR) => continue,
        Some(libc::EAGAIN) => return Ok(0),
        _ => return Err(format!("send failed: {e}")),
      }
    }
  }

  fn set_pollout(&mut self, on: bool) {
    if self.pollout == on || self.poller.is_none() {
      self.pollout = on;
      return;
    }
    self.pollout = on;
    let events = libc::EPOLLIN | if on { libc::EPOLLOUT } else { 0 };
    // The fd is registered in `poller` (attach) and open; an error cannot be acted on here.
    if let Some(p) = &self.poller {
      let _ = p.modify(self.raw(), events as u32, self.tok);
    }
  }

  /// Reads into the given buffers (one readv): a fault's reply header and page arrive in one syscall.
  fn readv(&mut self, iov: &mut [libc::iovec]) -> Result<Got, String> {
    loop {
      // SAFETY: the caller passes iovecs describing live, writable memory it owns exclusively.
      let n = unsafe { libc::readv(self.raw(), iov.as_mut_ptr(), iov.len() as i32) };
      if n > 0 {
        return Ok(Got::Bytes(n as usize));
      }
      if n == 0 {
        return Ok(Got::Eof);
      }
      let e = errno();
      match e.raw_os_error() {
        Some(libc::EINTR) => continue,
        Some(libc::EAGAIN) => return Ok(Got::Nothing),
        _ => return Err(format!("read failed: {e}")),
      }
    }
  }

  fn read_into(&mut self, buf: &mut [u8]) -> Result<Got, String> {
    let mut iov = [libc::iovec { iov_base: buf.as_mut_ptr() as *mut libc::c_void, iov_len: buf.len() }];
    self.readv(&mut iov)
  }
}

/// The client state owned by the loop thread.
pub struct PageClient {
  name: String,
  timeout: Duration,
  conn: Conn,
  /// Requests on the wire, in reply order; the front one's reply is being read.
  sent: VecDeque<Sent>,
  /// Since when the front request's reply has been awaited: each reply must be complete within the
  /// timeout of that (a server trickling a byte at a time cannot hold a fault forever).
  front_since: Instant,
  faults_sent: usize,
  reading: Reading,
  hdr: [u8; HDR],
  /// The one page fault replies are read into (a fault's copy finishes before the next reply is read).
  page: PageBuf,
  fetches: HashMap<u64, Fetch>,
  next_fetch: u64,
  /// Fetches from TS not yet cut into pieces (they hold no memory).
  queued: VecDeque<Fetch>,
  /// Pieces cut but not yet sent (of at most one fetch, plus follow-ups of short replies).
  pieces: VecDeque<Piece>,
  /// Background bytes requested and not yet received.
  on_wire: u64,
  /// The window now (between MIN_WINDOW and `max_window`).
  window: u64,
  max_window: u64,
  piece_pages: u64,
  pool: Pool,
}

fn connect_one(name: &str, address: &str, port: u16, timeout: Duration) -> Result<OwnedFd, ConnectError> {
  let addrs: Vec<_> = (address, port).to_socket_addrs().map_err(|e| ConnectError::Resolve(name.into(), e))?.collect();
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

fn unanswered(n: usize) -> String {
  if n > 0 {
    format!(" with {n} request(s) unanswered")
  } else {
    String::new()
  }
}

impl PageClient {
  /// Opens the connection (blocking, at most `timeout`) on the calling thread, so a refused or unreachable
  /// server is an error of the `connectPageServer` call itself.
  pub fn connect(address: &str, port: u16, timeout: Duration) -> Result<PageClient, ConnectError> {
    let name = if address.contains(':') { format!("[{address}]:{port}") } else { format!("{address}:{port}") };
    let fd = connect_one(&name, address, port, timeout)?;
    let mut c = PageClient {
      name,
      timeout,
      conn: Conn { fd, poller: None, tok: 0, out: Vec::new(), out_off: 0, pollout: false },
      sent: VecDeque::with_capacity(64),
      front_since: Instant::now(),
      faults_sent: 0,
      reading: Reading::Header { have: 0 },
      hdr: [0; HDR],
      page: PageBuf::new(PAGE as usize),
      fetches: HashMap::new(),
      next_fetch: 1,
      queued: VecDeque::new(),
      pieces: VecDeque::new(),
      on_wire: 0,
      window: 0,
      max_window: 0,
      piece_pages: 1,
      pool: Pool::new(0),
    };
    c.set_window(DEFAULT_WINDOW);
    Ok(c)
  }

  /// `address:port`, for messages.
  pub fn name(&self) -> &str {
    &self.name
  }

  /// Registers the socket with the loop's epoll under the given token.
  pub fn attach(&mut self, poller: &Poller, tok: u64) -> std::io::Result<()> {
    self.conn.poller = Some(poller.clone());
    self.conn.tok = tok;
    let events = libc::EPOLLIN | if self.conn.pollout { libc::EPOLLOUT } else { 0 };
    poller.add(self.conn.raw(), events as u32, tok)
  }

  /// Unregisters the socket (before dropping the client).
  pub fn detach(&mut self) {
    if let Some(p) = self.conn.poller.take() {
      p.remove(self.conn.raw());
    }
  }

  /// Largest background window: bytes requested but not yet received while nothing faults (a fault shrinks
  /// the window to MIN_WINDOW, or to this if smaller). GETs are pieces of DEFAULT_PIECE after a fault,
  /// growing with the window up to MAX_PIECE.
  pub fn set_window(&mut self, bytes: u64) {
    self.max_window = bytes.max(PAGE);
    self.window = self.max_window.min(MIN_WINDOW);
    self.piece_pages = (self.window / 2).clamp(PAGE, DEFAULT_PIECE) / PAGE;
    self.pool.set_limit(2 * self.max_window as usize + 4 * DEFAULT_PIECE as usize);
  }

  /// True while a fault's page is on its way (the faulting thread is frozen until it arrives).
  pub fn urgent_outstanding(&self) -> bool {
    self.faults_sent > 0
  }

  fn push(&mut self, s: Sent, stats: &SourceStats) -> Result<(), String> {
    let h = match s {
      Sent::Fault(r) => Header::get(r.pid, r.image, 1),
      Sent::Piece(p) => Header::get(p.pid, p.vaddr, p.pages),
    };
    self.conn.send(&h.encode())?;
    if self.sent.is_empty() {
      self.front_since = Instant::now();
    }
    self.sent.push_back(s);
    stats.requests.fetch_add(1, Ordering::Relaxed);
    Ok(())
  }

  /// Sends the GET for a fault unless the same page (same process, generation) is already requested: the
  /// copy for the first fault wakes every thread waiting on the page. Returns true if a GET went out.
  pub fn request_page(&mut self, r: UrgentReq, stats: &SourceStats) -> Result<bool, String> {
    let same = |s: &Sent| matches!(s, Sent::Fault(q) if q.proc_id == r.proc_id && q.live == r.live && q.gen == r.gen);
    if self.faults_sent > 0 && self.sent.iter().any(same) {
      return Ok(false);
    }
    self.push(Sent::Fault(r), stats)?;
    self.faults_sent += 1;
    self.window = self.max_window.min(MIN_WINDOW);
    self.recut();
    Ok(true)
  }

  /// GET size for the next fetch cut into pieces (see MAX_PIECE).
  fn piece_pages_now(&self) -> u64 {
    (self.window / 4 / PAGE).clamp(self.piece_pages, (MAX_PIECE / PAGE).max(self.piece_pages))
  }

  /// Cuts the pieces not sent yet back to the small size (a fault came: the window is small again).
  fn recut(&mut self) {
    if self.pieces.iter().all(|p| p.pages <= self.piece_pages) {
      return;
    }
    let small = self.piece_pages;
    let old = std::mem::take(&mut self.pieces);
    for p in old {
      let mut k = 0;
      while k < p.pages {
        let pages = small.min(p.pages - k);
        self.pieces.push_back(Piece {
          fetch: p.fetch,
          pid: p.pid,
          vaddr: p.vaddr + k * PAGE,
          pages,
          page0: p.page0 + k,
        });
        k += pages;
      }
    }
  }

  /// Queues a background fetch and sends what the window allows.
  pub fn enqueue(&mut self, f: Fetch, stats: &SourceStats) -> Result<(), String> {
    self.queued.push_back(f);
    self.pump(stats)
  }

  /// Sends background pieces while the window has room, cutting the next fetch when the pieces run out.
  fn pump(&mut self, stats: &SourceStats) -> Result<(), String> {
    loop {
      if self.pieces.is_empty() {
        let Some(mut f) = self.queued.pop_front() else { return Ok(()) };
        f.buf = Some(self.pool.get((f.pages * PAGE) as usize));
        let id = self.next_fetch;
        self.next_fetch += 1;
        let mut page0 = 0;
        let per = self.piece_pages_now();
        while page0 < f.pages {
          let pages = per.min(f.pages - page0);
          self.pieces.push_back(Piece { fetch: id, pid: f.pid, vaddr: f.image + page0 * PAGE, pages, page0 });
          page0 += pages;
        }
        self.fetches.insert(id, f);
      }
      let p = *self.pieces.front().expect("not empty");
      let bytes = p.pages * PAGE;
      if self.on_wire > 0 && self.on_wire + bytes > self.window {
        return Ok(());
      }
      self.pieces.pop_front();
      self.push(Sent::Piece(p), stats)?;
      self.on_wire += bytes;
    }
  }

  /// EPOLLOUT on the connection.
  pub fn writable(&mut self) -> Result<(), String> {
    self.conn.flush()
  }

  /// The front request's reply is complete.
  fn pop_front(&mut self) {
    if let Some(Sent::Fault(_)) = self.sent.pop_front() {
      self.faults_sent -= 1;
    }
    self.reading = Reading::Header { have: 0 };
    self.front_since = Instant::now();
  }

  /// Reads what the connection has: each fault's page goes to `on_page(req, page)` (the pointer is valid
  /// for the call only), each fetch whose pages have all arrived to `on_done`. At most `budget` bytes of
  /// background data are read per call (then the loop looks at faults again); fault replies are always read.
  /// Errors are the source failing.
  pub fn read(
    &mut self,
    budget: usize,
    stats: &SourceStats,
    on_page: &mut dyn FnMut(&UrgentReq, *const u8),
    on_done: &mut dyn FnMut(Fetch),
  ) -> Result<(), String> {
    let res = self.read_inner(budget, stats, on_page, on_done);
    // Received bytes opened the window: send what waited (also after EAGAIN).
    res.and_then(|_| self.pump(stats))
  }

  fn read_inner(
    &mut self,
    budget: usize,
    stats: &SourceStats,
    on_page: &mut dyn FnMut(&UrgentReq, *const u8),
    on_done: &mut dyn FnMut(Fetch),
  ) -> Result<(), String> {
    let mut used = 0usize;
    loop {
      match self.reading {
        Reading::Header { have } => {
          let front = self.sent.front().copied();
          let got = match front {
            None => match self.conn.read_into(&mut self.hdr[have..])? {
              Got::Nothing => return Ok(()),
              Got::Eof => return Err("the server closed the connection".into()),
              Got::Bytes(n) => return Err(format!("{n} unexpected bytes from the server (no request outstanding)")),
            },
            Some(Sent::Fault(_)) => {
              let mut iov = [
                libc::iovec {
                  // SAFETY: `have` < HDR, so the pointer stays inside the header buffer.
                  iov_base: unsafe { self.hdr.as_mut_ptr().add(have) } as *mut libc::c_void,
                  iov_len: HDR - have,
                },
                libc::iovec { iov_base: self.page.as_ptr() as *mut libc::c_void, iov_len: PAGE as usize },
              ];
              self.conn.readv(&mut iov)?
            }
            Some(Sent::Piece(_)) => {
              if used >= budget {
                return Ok(());
              }
              self.conn.read_into(&mut self.hdr[have..])?
            }
          };
          let n = match got {
            Got::Nothing => return Ok(()),
            Got::Eof => return Err(format!("the server closed the connection{}", unanswered(self.sent.len()))),
            Got::Bytes(n) => n,
          };
          let h = n.min(HDR - have);
          if have + h < HDR {
            self.reading = Reading::Header { have: have + h };
            continue;
          }
          let hdr = Header::decode(&self.hdr);
          match front.expect("a request is outstanding") {
            Sent::Fault(req) => {
              check_reply(&hdr, req.pid, req.image, 1)?;
              self.reading = Reading::Fault { req, have: n - h };
            }
            Sent::Piece(p) => {
              used += n;
              let got = check_reply(&hdr, p.pid, p.vaddr, p.pages)?;
              if got < p.pages {
                // A short reply (the server clamps at the end of a contiguous range): ask for the rest next.
                self.on_wire = self.on_wire.saturating_sub((p.pages - got) * PAGE);
                let rest = Piece { vaddr: p.vaddr + got * PAGE, pages: p.pages - got, page0: p.page0 + got, ..p };
                self.pieces.push_front(rest);
              }
              self.reading = Reading::Piece {
                fetch: p.fetch,
                off: (p.page0 * PAGE) as usize,
                left: (got * PAGE) as usize,
                pages: got,
              };
            }
          }
        }
        Reading::Fault { req, have } => {
          if have < PAGE as usize {
            // SAFETY: the page buffer has PAGE bytes and `have` < PAGE.
            let rest = unsafe {
              std::slice::from_raw_parts_mut((self.page.as_ptr() as *mut u8).add(have), PAGE as usize - have)
            };
            match self.conn.read_into(rest)? {
              Got::Nothing => return Ok(()),
              Got::Eof => {
                return Err(format!(
                  "the server closed the connection in the middle of a reply{}",
                  unanswered(self.sent.len())
                ))
              }
              Got::Bytes(n) => self.reading = Reading::Fault { req, have: have + n },
            }
            continue;
          }
          self.pop_front();
          on_page(&req, self.page.as_ptr());
        }
        Reading::Piece { fetch, off, left, pages } => {
          if left > 0 {
            if used >= budget {
              return Ok(());
            }
            let Some(f) = self.fetches.get_mut(&fetch) else {
              return Err("internal: a reply for a fetch that no longer exists".into());
            };
            let Some(buf) = f.buf.as_mut() else {
              return Err("internal: a fetch on the wire without a buffer".into());
            };
            let take = left.min(budget - used);
            let n = match self.conn.read_into(buf.slice_mut(off, take))? {
              Got::Nothing => return Ok(()),
              Got::Eof => {
                return Err(format!(
                  "the server closed the connection in the middle of a reply{}",
                  unanswered(self.sent.len())
                ))
              }
              Got::Bytes(n) => n,
            };
            used += n;
            self.on_wire = self.on_wire.saturating_sub(n as u64);
            stats.fetch_bytes.fetch_add(n as u64, Ordering::Relaxed);
            self.reading = Reading::Piece { fetch, off: off + n, left: left - n, pages };
            continue;
          }
          self.pop_front();
          self.window = (self.window + pages * PAGE).min(self.max_window);
          let Some(f) = self.fetches.get_mut(&fetch) else {
            return Err("internal: a reply for a fetch that no longer exists".into());
          };
          f.received += pages;
          if f.received >= f.pages {
            let f = self.fetches.remove(&fetch).expect("present");
            on_done(f);
          }
        }
      }
    }
  }

  /// When the front request's reply is due (None: nothing outstanding).
  pub fn deadline(&self) -> Option<Instant> {
    (!self.sent.is_empty()).then(|| self.front_since + self.timeout)
  }

  /// The stall message if the deadline has passed.
  pub fn check_stall(&self, now: Instant) -> Result<(), String> {
    match self.deadline() {
      Some(d) if now >= d => Err(format!(
        "no complete reply for {} ms ({} request(s) outstanding)",
        self.timeout.as_millis(),
        self.sent.len()
      )),
      _ => Ok(()),
    }
  }

  /// Takes every fetch not yet completed (queued or on the wire): the source failed or is being replaced.
  pub fn take_fetches(&mut self) -> Vec<Fetch> {
    let mut all: Vec<Fetch> = self.queued.drain(..).collect();
    all.extend(self.fetches.drain().map(|(_, f)| f));
    self.sent.retain(|s| matches!(s, Sent::Fault(_)));
    self.pieces.clear();
    self.reading = Reading::Header { have: 0 };
    self.on_wire = 0;
    all
  }

  /// Returns a copied fetch's buffer for reuse.
  pub fn recycle(&mut self, b: PageBuf) {
    self.pool.put(b);
  }

  /// Ends the session: sends CLOSE and reads (and drops) what the server still sends (replies to GETs in
  /// flight, then CLOSE's status) until it closes or is quiet for a moment, at most `max`.
  ///
  /// Why read at all: closing a TCP socket with unread data in it sends a reset, and CRIU's page servers
  /// then end with "Unexpected data: Connection reset by peer" and exit 1 (seen with background pieces
  /// still in flight when the last process finished).
  pub fn close_best_effort(&mut self, max: Duration) {
    let _ = self.conn.flush();
    if self.conn.out_off < self.conn.out.len() || self.conn.write_some(&Header::close().encode()).is_err() {
      return;
    }
    let deadline = Instant::now() + max;
    let mut buf = vec![0u8; 64 << 10];
    loop {
      let left = deadline.saturating_duration_since(Instant::now());
      if left.is_zero() {
        return;
      }
      let mut pfd = libc::pollfd { fd: self.conn.raw(), events: libc::POLLIN, revents: 0 };
      let wait = left.min(Duration::from_millis(50)).as_millis() as i32;
      // SAFETY: one valid pollfd for the duration of the call.
      if unsafe { libc::poll(&mut pfd, 1, wait) } <= 0 {
        return; // quiet (or poll failed): nothing more is coming soon
      }
      match self.conn.read_into(&mut buf) {
        Ok(Got::Bytes(_)) | Ok(Got::Nothing) => continue,
        _ => return, // closed by the server, or an error
      }
    }
  }
}

#[cfg(test)]
mod tests {
  use super::*;
  use std::io::{Read, Write};
  use std::net::TcpListener;

  fn reply(pid: u32, vaddr: u64, pages: u64, fill: u8) -> Vec<u8> {
    let mut v =
      Header { cmd: crate::pagewire::REPLY_CMD, nr_pages: pages, vaddr, dst_id: pid as u64 }.encode().to_vec();
    v.extend(std::iter::repeat_n(fill, (pages * PAGE) as usize));
    v
  }

  /// Reads until `want` is satisfied or 2 s pass.
  fn drive(
    c: &mut PageClient,
    stats: &SourceStats,
    want: impl Fn(&[(u64, u8)], &[u64]) -> bool,
  ) -> (Vec<(u64, u8)>, Vec<u64>) {
    let (mut pages, mut done) = (Vec::new(), Vec::new());
    let t0 = Instant::now();
    while !want(&pages, &done) && t0.elapsed() < Duration::from_secs(2) {
      // SAFETY: `p` points at the client's page buffer, valid for the callback.
      c.read(1 << 20, stats, &mut |r, p| pages.push((r.live, unsafe { *p })), &mut |f| done.push(f.image)).unwrap();
    }
    (pages, done)
  }

  #[test]
  fn one_connection_carries_faults_and_pieces_in_order() {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let stats = SourceStats::default();
    let mut c = PageClient::connect("127.0.0.1", port, Duration::from_secs(2)).unwrap();
    let (mut s, _) = l.accept().unwrap();
    // A second connection would be the bug CRIU's one-connection servers refuse.
    l.set_nonblocking(true).unwrap();
    c.enqueue(Fetch::new(1, 1, 0, 9, 0x10000, 40, 0x90000), &stats).unwrap();
    c.request_page(UrgentReq { proc_id: 1, gen: 0, live: 0x5000, image: 0x5000, pid: 9 }, &stats).unwrap();
    // Window 128 KiB: two 16-page pieces went out, then the fault.
    let mut req = [0u8; 3 * HDR];
    s.read_exact(&mut req).unwrap();
    let hs: Vec<Header> = req.chunks(HDR).map(|b| Header::decode(b.try_into().unwrap())).collect();
    assert_eq!((hs[0].vaddr, hs[0].nr_pages), (0x10000, 16));
    assert_eq!((hs[1].vaddr, hs[1].nr_pages), (0x20000, 16));
    assert_eq!((hs[2].vaddr, hs[2].nr_pages), (0x5000, 1));
    // First piece answered short (10 of 16 pages): the rest is asked for again.
    s.write_all(&reply(9, 0x10000, 10, 1)).unwrap();
    s.write_all(&reply(9, 0x20000, 16, 2)).unwrap();
    s.write_all(&reply(9, 0x5000, 1, 7)).unwrap();
    let (pages, _) = drive(&mut c, &stats, |p, _| !p.is_empty());
    assert_eq!(pages, vec![(0x5000, 7)]);
    assert!(!c.urgent_outstanding());
    let mut more = [0u8; 2 * HDR];
    s.read_exact(&mut more).unwrap();
    let hs: Vec<Header> = more.chunks(HDR).map(|b| Header::decode(b.try_into().unwrap())).collect();
    assert_eq!((hs[0].vaddr, hs[0].nr_pages), (0x1a000, 6));
    assert_eq!((hs[1].vaddr, hs[1].nr_pages), (0x30000, 8));
    s.write_all(&reply(9, 0x1a000, 6, 3)).unwrap();
    s.write_all(&reply(9, 0x30000, 8, 4)).unwrap();
    let (_, done) = drive(&mut c, &stats, |_, d| !d.is_empty());
    assert_eq!(done, vec![0x10000]);
    assert!(l.accept().is_err(), "the client opened a second connection");
    assert_eq!(c.deadline(), None);
  }

  #[test]
  fn a_trickling_server_misses_the_deadline() {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let stats = SourceStats::default();
    let mut c = PageClient::connect("127.0.0.1", port, Duration::from_millis(200)).unwrap();
    let (mut s, _) = l.accept().unwrap();
    c.request_page(UrgentReq { proc_id: 1, gen: 0, live: 0x5000, image: 0x5000, pid: 9 }, &stats).unwrap();
    let r = reply(9, 0x5000, 1, 7);
    let t0 = Instant::now();
    let mut i = 0;
    let err = loop {
      s.write_all(&r[i..i + 1]).unwrap();
      i += 1;
      std::thread::sleep(Duration::from_millis(10));
      c.read(1 << 20, &stats, &mut |_, _| (), &mut |_| ()).unwrap();
      if let Err(e) = c.check_stall(Instant::now()) {
        break e;
      }
    };
    assert!(t0.elapsed() < Duration::from_secs(1));
    assert_eq!(err, "no complete reply for 200 ms (1 request(s) outstanding)");
  }
}
