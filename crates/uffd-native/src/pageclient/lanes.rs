//! The two lanes of requests that share the page-server connection: urgent fault GETs, which go out at
//! once, and background fetches, cut into pieces of which only a window is on the wire at a time. Also
//! the order the replies will come in (the server answers strictly in order). No I/O: the client asks
//! what to send and tells what arrived.

use std::collections::{HashMap, VecDeque};

use super::{Fetch, UrgentReq, DEFAULT_PIECE, MAX_PIECE, MIN_WINDOW};
use crate::pagebuf::{PageBuf, Pool};
use crate::table::PAGE;

/// One GET on the background wire (a fetch needs several: it is cut into pieces, and the server may reply
/// short).
#[derive(Clone, Copy)]
pub struct Piece {
  pub fetch: u64,
  pub pid: u32,
  pub vaddr: u64,
  pub pages: u64,
  /// First page of the fetch this GET asks for.
  pub page0: u64,
}

/// A request on the wire, in the order the replies will come.
#[derive(Clone, Copy)]
pub enum Sent {
  Fault(UrgentReq),
  Piece(Piece),
}

pub struct Lanes {
  /// Requests on the wire, in reply order; the front one's reply is being read.
  sent: VecDeque<Sent>,
  faults_sent: usize,
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

impl Lanes {
  pub fn new(max_window: u64) -> Lanes {
    let mut l = Lanes {
      sent: VecDeque::with_capacity(64),
      faults_sent: 0,
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
    l.set_window(max_window);
    l
  }

  /// See PageClient::set_window.
  pub fn set_window(&mut self, bytes: u64) {
    self.max_window = bytes.max(PAGE);
    self.window = self.max_window.min(MIN_WINDOW);
    self.piece_pages = (self.window / 2).clamp(PAGE, DEFAULT_PIECE) / PAGE;
    self.pool.set_limit(2 * self.max_window as usize + 4 * DEFAULT_PIECE as usize);
  }

  pub fn urgent_outstanding(&self) -> bool {
    self.faults_sent > 0
  }

  /// Requests on the wire.
  pub fn outstanding(&self) -> usize {
    self.sent.len()
  }

  /// The request whose reply comes next.
  pub fn front(&self) -> Option<Sent> {
    self.sent.front().copied()
  }

  /// The same page (process, generation) is already requested: the copy for the first fault wakes every
  /// thread waiting on it.
  pub fn fault_pending(&self, r: &UrgentReq) -> bool {
    let same = |s: &Sent| matches!(s, Sent::Fault(q) if q.proc_id == r.proc_id && q.live == r.live && q.gen == r.gen);
    self.faults_sent > 0 && self.sent.iter().any(same)
  }

  /// `s` went on the wire.
  pub fn sent(&mut self, s: Sent) {
    if let Sent::Fault(_) = s {
      self.faults_sent += 1;
      // A fault came: the window is small again, and what is not sent yet is cut small.
      self.window = self.max_window.min(MIN_WINDOW);
      self.recut();
    }
    self.sent.push_back(s);
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
        self.pieces.push_back(Piece { vaddr: p.vaddr + k * PAGE, pages, page0: p.page0 + k, ..p });
        k += pages;
      }
    }
  }

  /// Queues a background fetch.
  pub fn enqueue(&mut self, f: Fetch) {
    self.queued.push_back(f);
  }

  /// The next background piece the window has room for (cutting the next fetch when the pieces run out);
  /// it counts as on the wire from here.
  pub fn next_piece(&mut self) -> Option<Piece> {
    if self.pieces.is_empty() {
      let mut f = self.queued.pop_front()?;
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
    let p = *self.pieces.front()?;
    let bytes = p.pages * PAGE;
    if self.on_wire > 0 && self.on_wire + bytes > self.window {
      return None;
    }
    self.pieces.pop_front();
    self.on_wire += bytes;
    Some(p)
  }

  /// The front request's reply is complete.
  pub fn pop_front(&mut self) {
    if let Some(Sent::Fault(_)) = self.sent.pop_front() {
      self.faults_sent -= 1;
    }
  }

  /// A piece was answered with only `got` of its pages (the server clamps at the end of a contiguous
  /// range): the rest is asked for next.
  pub fn short_reply(&mut self, p: Piece, got: u64) {
    self.on_wire = self.on_wire.saturating_sub((p.pages - got) * PAGE);
    self.pieces.push_front(Piece { vaddr: p.vaddr + got * PAGE, pages: p.pages - got, page0: p.page0 + got, ..p });
  }

  /// Background bytes arrived.
  pub fn received(&mut self, n: u64) {
    self.on_wire = self.on_wire.saturating_sub(n);
  }

  /// The buffer a fetch's reply data goes into.
  pub fn buf(&mut self, fetch: u64) -> Result<&mut PageBuf, String> {
    let f = self.fetches.get_mut(&fetch).ok_or("internal: a reply for a fetch that no longer exists")?;
    f.buf.as_mut().ok_or_else(|| "internal: a fetch on the wire without a buffer".to_string())
  }

  /// A piece's `pages` have all arrived: the window grows by them (no fault meanwhile); returns the fetch
  /// once all its pages are in.
  pub fn piece_done(&mut self, fetch: u64, pages: u64) -> Result<Option<Fetch>, String> {
    self.window = (self.window + pages * PAGE).min(self.max_window);
    let f = self.fetches.get_mut(&fetch).ok_or("internal: a reply for a fetch that no longer exists")?;
    f.received += pages;
    Ok((f.received >= f.pages).then(|| self.fetches.remove(&fetch).expect("present")))
  }

  /// Takes every fetch not yet completed (queued or on the wire); faults stay.
  pub fn take_fetches(&mut self) -> Vec<Fetch> {
    let mut all: Vec<Fetch> = self.queued.drain(..).collect();
    all.extend(self.fetches.drain().map(|(_, f)| f));
    self.sent.retain(|s| matches!(s, Sent::Fault(_)));
    self.pieces.clear();
    self.on_wire = 0;
    all
  }

  pub fn recycle(&mut self, b: PageBuf) {
    self.pool.put(b);
  }
}
