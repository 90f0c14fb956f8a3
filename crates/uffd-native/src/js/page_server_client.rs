//! The `PageServerClient` class: napi shell of [`crate::pagefetch::Fetcher`], the native page-server client on its
//! own (no event loop), for tools and tests that check a page server. Connecting, fetching and closing
//! block a libuv worker thread, never the JS thread (a page server may be served by this same process).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use napi::bindgen_prelude::{AsyncTask, BigInt, Buffer};
use napi::{Env, Task};
use napi_derive::napi;

use super::tls_files::RawTlsFiles;
use super::Result;
use crate::errors::{to_napi, ArgError, Coded};
use crate::pagefetch::{Ask, Fetcher};

/// Pages to fetch: `pages` pages of image process `pid` from image address `vaddr` (`urgent`: as a fault).
#[napi(object)]
pub struct RawAsk {
  pub pid: u32,
  pub vaddr: BigInt,
  pub pages: u32,
  pub urgent: Option<bool>,
}

/// What a client call gave: its pages, or an error (`code`, `message`) the facade throws.
#[napi(object, object_from_js = false)]
pub struct RawClientOutcome {
  pub pages: Option<Vec<Buffer>>,
  pub code: Option<String>,
  pub message: Option<String>,
}

struct Dial {
  address: String,
  port: u16,
  timeout: Duration,
  tls: Option<Arc<rustls::ClientConfig>>,
}

/// The connection once made (None before `connect`).
type Slot = Arc<Mutex<Option<Fetcher>>>;

enum Job {
  Connect(Arc<Dial>),
  Fetch(std::result::Result<Vec<Ask>, (&'static str, String)>),
  Close,
}

pub struct ClientTask {
  slot: Slot,
  job: Option<Job>,
}

type Outcome = std::result::Result<Vec<Vec<u8>>, (&'static str, String)>;

fn coded<E: Coded>(e: E) -> (&'static str, String) {
  (e.code(), e.to_string())
}

impl Task for ClientTask {
  type Output = Outcome;
  type JsValue = RawClientOutcome;

  fn compute(&mut self) -> napi::Result<Outcome> {
    let mut slot = self.slot.lock().unwrap_or_else(|p| p.into_inner());
    Ok(match self.job.take() {
      Some(Job::Connect(d)) => match Fetcher::connect(&d.address, d.port, d.timeout, d.tls.clone()) {
        Ok(f) => {
          *slot = Some(f);
          Ok(Vec::new())
        }
        Err(e) => Err(coded(e)),
      },
      Some(Job::Fetch(Err(e))) => Err(e),
      Some(Job::Fetch(Ok(asks))) => match slot.as_mut() {
        Some(f) => f.fetch(&asks).map_err(coded),
        None => {
          Err(coded(ArgError::Invalid("fetch: not connected (connect first; a closed client stays closed)".into())))
        }
      },
      // The connection is dropped here, not when JS collects the object: a page server counts it
      // against its caps until it closes.
      Some(Job::Close) => match slot.take() {
        Some(mut f) => f.close(Duration::from_secs(2)).map(|_| Vec::new()).map_err(coded),
        None => Ok(Vec::new()),
      },
      None => Ok(Vec::new()),
    })
  }

  fn resolve(&mut self, _env: Env, output: Outcome) -> napi::Result<RawClientOutcome> {
    Ok(match output {
      Ok(pages) => {
        RawClientOutcome { pages: Some(pages.into_iter().map(Buffer::from).collect()), code: None, message: None }
      }
      Err((code, message)) => RawClientOutcome { pages: None, code: Some(code.into()), message: Some(message) },
    })
  }
}

/// The native page-server client on its own: one connection (plain TCP, or TLS with `tls`), pipelined
/// fetches, CLOSE. Every call runs on a worker thread and resolves with a {@link RawClientOutcome}.
#[napi]
pub struct PageServerClient {
  dial: Arc<Dial>,
  slot: Slot,
}

#[napi]
impl PageServerClient {
  /// Checks the arguments and loads the TLS files (throws `EOPTION` naming a bad one); connects nothing yet.
  /// `timeoutMs` bounds the connect, the TLS handshake, and each reply.
  #[napi(constructor)]
  pub fn new(address: String, port: u32, timeout_ms: u32, tls: Option<RawTlsFiles>) -> Result<PageServerClient> {
    let (port, timeout_ms) = super::args::server_port_and_timeout(port, timeout_ms)?;
    let tls = match tls {
      Some(t) => Some(crate::tls::client_config(&t.into()).map_err(to_napi)?),
      None => None,
    };
    let dial = Dial { address, port, timeout: Duration::from_millis(timeout_ms as u64), tls };
    Ok(PageServerClient { dial: Arc::new(dial), slot: Arc::new(Mutex::new(None)) })
  }

  /// Connects (and shakes hands).
  #[napi(ts_return_type = "Promise<RawClientOutcome>")]
  pub fn connect(&self) -> AsyncTask<ClientTask> {
    AsyncTask::new(ClientTask { slot: self.slot.clone(), job: Some(Job::Connect(self.dial.clone())) })
  }

  /// Fetches every ask over the one connection, pipelined; resolves with their pages in order.
  #[napi(ts_return_type = "Promise<RawClientOutcome>")]
  pub fn fetch(&self, asks: Vec<RawAsk>) -> AsyncTask<ClientTask> {
    let asks = asks
      .iter()
      .map(|a| {
        let (signed, vaddr, lossless) = a.vaddr.get_u64();
        if signed || !lossless {
          return Err(coded(ArgError::NotU64("vaddr")));
        }
        Ok(Ask { pid: a.pid, vaddr, pages: a.pages as u64, urgent: a.urgent.unwrap_or(false) })
      })
      .collect();
    AsyncTask::new(ClientTask { slot: self.slot.clone(), job: Some(Job::Fetch(asks)) })
  }

  /// Sends CLOSE and checks the status the server answers.
  #[napi(ts_return_type = "Promise<RawClientOutcome>")]
  pub fn close(&self) -> AsyncTask<ClientTask> {
    AsyncTask::new(ClientTask { slot: self.slot.clone(), job: Some(Job::Close) })
  }
}
