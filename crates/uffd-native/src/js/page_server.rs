//! The `NativePageServer` class (the page server, plain TCP or TLS) and what it reports.

use std::path::Path;

use napi::bindgen_prelude::{BigUint64Array, Function};
use napi_derive::napi;

use super::batch_callback::BatchCallback;
use super::tls_files::RawTlsFiles;
use super::Result;
use crate::errors::{to_napi, ArgError};
use crate::image;
use crate::pageserver::limits::Refusal;
use crate::pageserver::request::Reason;
use crate::pageserver::Event;
use crate::pagewire::MAX_NR_PAGES;

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
  /// Serve over TLS (mutual X.509 authentication) with these files.
  pub tls: Option<RawTlsFiles>,
}

/// The servable runs of one image pid: `[start, end, imageId, fileOffset]*`, sorted.
#[napi(object)]
pub struct RawPageServerPid {
  pub pid: u32,
  pub runs: BigUint64Array,
}

/// One page-server report, as a discriminated union on `type` (the wording of ts/pageserver/events.ts;
/// a session's `ok`: a normal end, CLOSE or a disconnect with nothing pending).
#[napi(discriminant_case = "kebab-case", object_from_js = false)]
pub enum PageServerEvent {
  SessionStarted {
    session: u32,
    peer: String,
  },
  SessionEnded {
    session: u32,
    peer: String,
    reason: Reason,
    detail: String,
    ok: bool,
    requests: f64,
    pages_sent: f64,
  },
  /// A connection closed at accept, before anything it sent was read (no session is counted).
  Refused {
    peer: String,
    reason: Refusal,
    detail: String,
  },
  Warning {
    message: String,
  },
  /// The thread has stopped (close, or the session limit reached and every session ended).
  Stopped {
    sessions: u32,
  },
}

fn ps_event(e: Event) -> PageServerEvent {
  match e {
    Event::Started { session, peer } => PageServerEvent::SessionStarted { session, peer },
    Event::Ended { session, peer, reason, detail, requests, pages_sent } => PageServerEvent::SessionEnded {
      session,
      peer,
      reason,
      detail,
      ok: reason.ok(),
      requests: requests as f64,
      pages_sent: pages_sent as f64,
    },
    Event::Refused { peer, reason, detail } => PageServerEvent::Refused { peer, reason, detail },
    Event::Warning { message } => PageServerEvent::Warning { message },
    Event::Stopped { sessions } => PageServerEvent::Stopped { sessions },
  }
}

/// The native page server (plain TCP or TLS): one thread serving every connection.
#[napi]
pub struct NativePageServer {
  handle: Option<crate::pageserver::Handle>,
  callback: BatchCallback<crate::pageserver::Shared, PageServerEvent>,
  address: String,
  port: u32,
}

#[napi]
impl NativePageServer {
  /// Binds and listens (throws `ELISTEN` naming address:port), maps `images` (pages file paths, by image id)
  /// and starts serving; `callback` receives batches of events. Keeps Node alive until `close()`.
  #[napi(
    factory,
    ts_args_type = "options: RawPageServerOptions, catalog: RawPageServerPid[], images: string[], callback: (events: PageServerEvent[]) => void"
  )]
  pub fn start(
    options: RawPageServerOptions,
    catalog: Vec<RawPageServerPid>,
    images: Vec<String>,
    callback: Function<Vec<PageServerEvent>, ()>,
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
      tls: match options.tls {
        Some(t) => Some(crate::tls::server_config(&t.into()).map_err(to_napi)?),
        None => None,
      },
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
  pub fn close(&mut self) -> Vec<PageServerEvent> {
    let Some(mut h) = self.handle.take() else { return Vec::new() };
    h.close();
    let rest = h.shared.outbox.take();
    self.callback.release();
    rest.into_iter().map(ps_event).collect()
  }
}
