//! The native page-server client, driven by the event-loop thread, over plain TCP or TLS.
//!
//! ONE connection, because CRIU's page servers (`criu dump --lazy-pages`, `criu page-server --lazy-pages`)
//! accept exactly one and end the session when it closes. Replies come strictly in order on it, so a
//! fault's one-page GET waits behind every background byte already requested: the background is therefore
//! cut into small pieces and only a small window of them is on the wire at once (lanes.rs), so a fault
//! waits behind at most about one piece. Everything is non-blocking; the loop calls in when epoll says the
//! socket is readable/writable (or, under TLS, while decrypted bytes wait: `buffered`), and this module
//! hands completed replies back through callbacks. Replies are read straight into page-aligned buffers
//! (one reused page for faults, pooled buffers for background fetches), so over plain TCP the only copy
//! of the data after the kernel's socket buffer is UFFDIO_COPY itself.
//!
//! conn.rs: the connection (dialling, TLS, output, CLOSE); lanes.rs: what goes on the wire and in which
//! order; here: reading the replies against it, and the deadline of each.

mod conn;
mod lanes;

use std::fmt;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::errors::Coded;
use crate::pagebuf::PageBuf;
use crate::pagewire::{check_reply, Header, HDR};
use crate::poller::Poller;
use crate::table::PAGE;
use crate::transport::Got;
use conn::Conn;
use lanes::{Lanes, Sent};

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
  /// the TLS handshake failed (the reason: a refused certificate, an alert, a timeout)
  Tls(String, String),
}

impl fmt::Display for ConnectError {
  fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
    match self {
      ConnectError::Resolve(a, e) => write!(f, "page server {a}: cannot resolve the address: {e}"),
      ConnectError::Connect(a, e) => write!(f, "page server {a}: cannot connect: {e}"),
      ConnectError::Setup(a, e) => write!(f, "page server {a}: cannot set up the connection: {e}"),
      ConnectError::Tls(a, why) => write!(f, "page server {a}: TLS handshake failed: {why}"),
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

/// The reply being read.
enum Reading {
  /// Its header (`have` bytes of it so far).
  Header { have: usize },
  /// A fault's page (`have` bytes of it so far).
  Fault { req: UrgentReq, have: usize },
  /// Background data: `left` bytes still to come into the fetch's buffer at `off`.
  Piece { fetch: u64, off: usize, left: usize, pages: u64 },
}

/// The client state owned by the loop thread.
pub struct PageClient {
  name: String,
  timeout: Duration,
  conn: Conn,
  lanes: Lanes,
  /// Since when the front request's reply has been awaited: each reply must be complete within the
  /// timeout of that (a server trickling a byte at a time cannot hold a fault forever).
  front_since: Instant,
  reading: Reading,
  hdr: [u8; HDR],
  /// The one page fault replies are read into (a fault's copy finishes before the next reply is read).
  page: PageBuf,
  /// The server has sent at least one byte.
  answered: bool,
}

fn unanswered(n: usize) -> String {
  if n > 0 {
    format!(" with {n} request(s) unanswered")
  } else {
    String::new()
  }
}

impl PageClient {
  /// Opens the connection on the calling thread (blocking: at most `timeout` to connect, and as long for
  /// the TLS handshake with `tls`), so a refused, unreachable or unauthenticated server is an error of the
  /// `connectPageServer` call itself.
  pub fn connect(
    address: &str,
    port: u16,
    timeout: Duration,
    tls: Option<Arc<rustls::ClientConfig>>,
  ) -> Result<PageClient, ConnectError> {
    let name = crate::hostport::host_port(address, port);
    let conn = Conn::open(&name, address, port, timeout, tls)?;
    Ok(PageClient {
      name,
      timeout,
      conn,
      lanes: Lanes::new(DEFAULT_WINDOW),
      front_since: Instant::now(),
      reading: Reading::Header { have: 0 },
      hdr: [0; HDR],
      page: PageBuf::new(PAGE as usize),
      answered: false,
    })
  }

  /// `address:port`, for messages.
  pub fn name(&self) -> &str {
    &self.name
  }

  /// Registers the socket with the loop's epoll under the given token.
  pub fn attach(&mut self, poller: &Poller, tok: u64) -> std::io::Result<()> {
    self.conn.attach(poller, tok)
  }

  /// Unregisters the socket (before dropping the client).
  pub fn detach(&mut self) {
    self.conn.detach()
  }

  /// Largest background window: bytes requested but not yet received while nothing faults (a fault shrinks
  /// the window to MIN_WINDOW, or to this if smaller). GETs are pieces of DEFAULT_PIECE after a fault,
  /// growing with the window up to MAX_PIECE.
  pub fn set_window(&mut self, bytes: u64) {
    self.lanes.set_window(bytes)
  }

  /// True while a fault's page is on its way (the faulting thread is frozen until it arrives).
  pub fn urgent_outstanding(&self) -> bool {
    self.lanes.urgent_outstanding()
  }

  /// The socket (for a caller that polls it itself).
  pub fn fd(&self) -> RawFd {
    self.conn.raw()
  }

  /// Output waits for the socket to take it (EPOLLOUT / POLLOUT, then `writable`).
  pub fn wants_write(&self) -> bool {
    self.conn.output_waits()
  }

  /// Under TLS, decrypted reply bytes wait inside rustls, where epoll cannot see them: read again.
  pub fn buffered(&mut self) -> bool {
    self.conn.buffered()
  }

  fn push(&mut self, s: Sent, stats: &SourceStats) -> Result<(), String> {
    let h = match s {
      Sent::Fault(r) => Header::get(r.pid, r.image, 1),
      Sent::Piece(p) => Header::get(p.pid, p.vaddr, p.pages),
    };
    self.conn.send(&h.encode())?;
    if self.lanes.outstanding() == 0 {
      self.front_since = Instant::now();
    }
    self.lanes.sent(s);
    stats.requests.fetch_add(1, Ordering::Relaxed);
    Ok(())
  }

  /// Sends the GET for a fault unless the same page (same process, generation) is already requested: the
  /// copy for the first fault wakes every thread waiting on the page. Returns true if a GET went out.
  pub fn request_page(&mut self, r: UrgentReq, stats: &SourceStats) -> Result<bool, String> {
    if self.lanes.fault_pending(&r) {
      return Ok(false);
    }
    self.push(Sent::Fault(r), stats)?;
    Ok(true)
  }

  /// Queues a background fetch and sends what the window allows.
  pub fn enqueue(&mut self, f: Fetch, stats: &SourceStats) -> Result<(), String> {
    self.lanes.enqueue(f);
    self.pump(stats)
  }

  /// Sends background pieces while the window has room.
  fn pump(&mut self, stats: &SourceStats) -> Result<(), String> {
    while let Some(p) = self.lanes.next_piece() {
      self.push(Sent::Piece(p), stats)?;
    }
    Ok(())
  }

  /// EPOLLOUT on the connection.
  pub fn writable(&mut self) -> Result<(), String> {
    self.conn.flush()
  }

  /// The front request's reply is complete.
  fn pop_front(&mut self) {
    self.lanes.pop_front();
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

  /// The end of the stream, in words: under TLS a server that hangs up before answering anything may
  /// have refused our certificate after the handshake (a TLS 1.3 client's handshake ends before the
  /// server has checked it).
  fn closed(&self, mid_reply: bool) -> String {
    let mid = if mid_reply { " in the middle of a reply" } else { "" };
    let hint = if self.conn.transport.is_tls() && !self.answered {
      " before answering anything: it may have refused our certificate (--tls-cert; CRIU's page server also \
       checks the client certificate's name against its own --address unless it runs with --tls-no-cn-verify)"
    } else {
      ""
    };
    format!("the server closed the connection{mid}{}{hint}", unanswered(self.lanes.outstanding()))
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
          let front = self.lanes.front();
          let got = match front {
            None => match self.conn.read_into(&mut self.hdr[have..])? {
              Got::Nothing => return Ok(()),
              Got::Eof => return Err(self.closed(false)),
              Got::Bytes(n) => return Err(format!("{n} unexpected bytes from the server (no request outstanding)")),
            },
            Some(Sent::Fault(_)) => {
              // SAFETY: the page buffer is PAGE bytes, owned by this client and not aliased meanwhile.
              let page = unsafe { std::slice::from_raw_parts_mut(self.page.as_ptr() as *mut u8, PAGE as usize) };
              self.conn.readv(&mut [&mut self.hdr[have..], page])?
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
            Got::Eof => return Err(self.closed(false)),
            Got::Bytes(n) => n,
          };
          self.answered = true;
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
                self.lanes.short_reply(p, got);
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
              Got::Eof => return Err(self.closed(true)),
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
            let take = left.min(budget - used);
            let buf = self.lanes.buf(fetch)?;
            let n = match self.conn.read_into(buf.slice_mut(off, take))? {
              Got::Nothing => return Ok(()),
              Got::Eof => return Err(self.closed(true)),
              Got::Bytes(n) => n,
            };
            used += n;
            self.lanes.received(n as u64);
            stats.fetch_bytes.fetch_add(n as u64, Ordering::Relaxed);
            self.reading = Reading::Piece { fetch, off: off + n, left: left - n, pages };
            continue;
          }
          self.pop_front();
          if let Some(f) = self.lanes.piece_done(fetch, pages)? {
            on_done(f);
          }
        }
      }
    }
  }

  /// When the front request's reply is due (None: nothing outstanding).
  pub fn deadline(&self) -> Option<Instant> {
    (self.lanes.outstanding() > 0).then(|| self.front_since + self.timeout)
  }

  /// The stall message if the deadline has passed.
  pub fn check_stall(&self, now: Instant) -> Result<(), String> {
    match self.deadline() {
      Some(d) if now >= d => Err(format!(
        "no complete reply for {} ms ({} request(s) outstanding)",
        self.timeout.as_millis(),
        self.lanes.outstanding()
      )),
      _ => Ok(()),
    }
  }

  /// Takes every fetch not yet completed (queued or on the wire): the source failed or is being replaced.
  pub fn take_fetches(&mut self) -> Vec<Fetch> {
    self.reading = Reading::Header { have: 0 };
    self.lanes.take_fetches()
  }

  /// Returns a copied fetch's buffer for reuse.
  pub fn recycle(&mut self, b: PageBuf) {
    self.lanes.recycle(b);
  }

  /// Ends the session: sends CLOSE and reads (and drops) what the server still sends (replies to GETs in
  /// flight, then CLOSE's status) until it closes or is quiet for a moment, at most `max`.
  pub fn close_best_effort(&mut self, max: Duration) {
    let _ = self.conn.close(max, false);
  }

  /// Ends a session with nothing outstanding: sends CLOSE and checks the status the server answers.
  pub fn close(&mut self, max: Duration) -> Result<(), String> {
    let idle = self.lanes.outstanding() == 0;
    self.conn.close(max, idle)
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

  /// A client connected to a loopback listener: the listener, the client, the server's end, stats.
  fn connected(timeout: Duration) -> (TcpListener, PageClient, std::net::TcpStream, SourceStats) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let c = PageClient::connect("127.0.0.1", port, timeout, None).unwrap();
    let (s, _) = l.accept().unwrap();
    (l, c, s, SourceStats::default())
  }

  #[test]
  fn one_connection_carries_faults_and_pieces_in_order() {
    let (l, mut c, mut s, stats) = connected(Duration::from_secs(2));
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
    let (_l, mut c, mut s, stats) = connected(Duration::from_millis(200));
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
