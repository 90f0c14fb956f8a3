//! The page-server client for a thread that waits for its pages: fetches the pages asked for over the
//! client's one connection (pipelined, faults as urgent GETs and the rest as background pieces, exactly
//! as the event loop uses it) and returns their bytes. For tools and tests that check a page server;
//! restores use the client inside the event loop (event_loop.rs), which copies replies straight in.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::errors::Coded;
use crate::pageclient::{ConnectError, Fetch, PageClient, SourceStats, UrgentReq};
use crate::pagewire::MAX_NR_PAGES;
use crate::table::PAGE;

/// Pages to fetch: `pages` pages of image process `pid` from image address `vaddr`.
#[derive(Debug, Clone, Copy)]
pub struct Ask {
  pub pid: u32,
  pub vaddr: u64,
  pub pages: u64,
  /// A fault's page (one page): its GET goes out at once, behind at most the background window.
  pub urgent: bool,
}

/// Errors of a fetch.
#[derive(Debug)]
pub enum FetchError {
  /// an ask that no page server could answer (the message names it)
  Invalid(String),
  /// the page server failed (the message names it and why); the client stays failed
  Source(String),
}

impl std::fmt::Display for FetchError {
  fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
    match self {
      FetchError::Invalid(m) | FetchError::Source(m) => write!(f, "{m}"),
    }
  }
}

impl Coded for FetchError {
  fn code(&self) -> &'static str {
    match self {
      FetchError::Invalid(_) => "EINVALARG",
      FetchError::Source(_) => "EPAGESERVER",
    }
  }
}

pub struct Fetcher {
  client: PageClient,
  stats: SourceStats,
  /// Why the source failed: it stays failed.
  failed: Option<String>,
  closed: bool,
}

impl Fetcher {
  /// Connects (and shakes hands) within `timeout`; `timeout` also bounds each reply, as in the loop.
  pub fn connect(
    address: &str,
    port: u16,
    timeout: Duration,
    tls: Option<Arc<rustls::ClientConfig>>,
  ) -> Result<Fetcher, ConnectError> {
    let client = PageClient::connect(address, port, timeout, tls)?;
    Ok(Fetcher { client, stats: SourceStats::default(), failed: None, closed: false })
  }

  fn fail(&mut self, why: String) -> FetchError {
    let m = format!("page server {}: {why}", self.client.name());
    self.failed = Some(m.clone());
    FetchError::Source(m)
  }

  /// The bytes of every ask, in order; blocks until all have arrived or the source failed.
  pub fn fetch(&mut self, asks: &[Ask]) -> Result<Vec<Vec<u8>>, FetchError> {
    if let Some(m) = &self.failed {
      return Err(FetchError::Source(m.clone()));
    }
    if self.closed {
      return Err(FetchError::Invalid(format!("page server {}: fetch after close", self.client.name())));
    }
    for a in asks {
      if a.pages == 0
        || a.pages > MAX_NR_PAGES
        || !a.vaddr.is_multiple_of(PAGE)
        || a.pid == 0
        || a.pid > i32::MAX as u32
      {
        return Err(FetchError::Invalid(format!(
          "fetch of {} pages at 0x{:x} of pid {}: expected 1..{MAX_NR_PAGES} pages at a page-aligned address of a pid",
          a.pages, a.vaddr, a.pid
        )));
      }
    }
    let mut out: Vec<Option<Vec<u8>>> = vec![None; asks.len()];
    let mut left = asks.len();
    for (i, a) in asks.iter().enumerate() {
      let sent = if a.urgent && a.pages == 1 {
        let r = UrgentReq { proc_id: 0, gen: 0, live: i as u64, image: a.vaddr, pid: a.pid };
        self.client.request_page(r, &self.stats).map(|_| ())
      } else {
        self.client.enqueue(Fetch::new(0, i as u32, 0, a.pid, a.vaddr, a.pages, 0), &self.stats)
      };
      if let Err(m) = sent {
        return Err(self.fail(m));
      }
    }
    while left > 0 {
      let fd = self.client.fd();
      if !self.client.buffered() {
        let wait =
          self.client.deadline().map_or(Duration::from_millis(50), |d| d.saturating_duration_since(Instant::now()));
        crate::poller::wait_fd(fd, self.client.wants_write(), wait.min(Duration::from_secs(1)));
      }
      let mut done = Vec::new();
      let mut fetched = Vec::new();
      let res = self.client.writable().and_then(|_| {
        self.client.read(
          usize::MAX,
          &self.stats,
          &mut |r, p| {
            // SAFETY: `p` is the client's PAGE-byte page buffer, valid for this call.
            let page = unsafe { std::slice::from_raw_parts(p, PAGE as usize) };
            done.push((r.live as usize, page.to_vec()));
          },
          &mut |f| fetched.push(f),
        )
      });
      for mut f in fetched {
        let n = (f.pages * PAGE) as usize;
        let bytes = f.buf.as_mut().map(|b| b.slice_mut(0, n).to_vec()).unwrap_or_default();
        done.push((f.req_id as usize, bytes));
        if let Some(b) = f.buf {
          self.client.recycle(b);
        }
      }
      for (i, bytes) in done {
        if out[i].replace(bytes).is_none() {
          left -= 1;
        }
      }
      if let Err(m) = res.and_then(|_| self.client.check_stall(Instant::now())) {
        return Err(self.fail(m));
      }
    }
    Ok(out.into_iter().map(|b| b.expect("every ask answered")).collect())
  }

  /// Ends the session with CLOSE; a non-zero status from the server is an error.
  pub fn close(&mut self, max: Duration) -> Result<(), FetchError> {
    if self.closed || self.failed.is_some() {
      return Ok(());
    }
    self.closed = true;
    self.client.close(max).map_err(|m| self.fail(m))
  }
}
