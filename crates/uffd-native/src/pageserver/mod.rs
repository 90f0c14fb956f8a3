//! The page server: one thread with one epoll serving every client connection of a page server (CRIU
//! page-server protocol, spec §7), over plain TCP or TLS. A fault's 1-page GET is answered within the
//! same epoll wakeup that read it, straight out of the mmapped pages file, instead of crossing Node's
//! event loop; big replies are written a bounded piece at a time, round robin over the connections that
//! have output pending, so a background stream never holds up another connection's fault.
//!
//! TLS (crate::tls: TLS 1.2, mutual authentication): each connection's handshake is driven by the same
//! epoll loop, non-blocking, so a slow or stuck handshaker holds up nobody; it must finish within the idle
//! timeout (at most 2 minutes). A session starts only once its handshake is done; a failed one is
//! reported as `tls-handshake-failed` with session 0. Events reach JS through an [`Outbox`] drained by a
//! threadsafe function.
//!
//! Limits (limits.rs): `--allow` networks, total and per-peer connection caps (a connection refused is
//! closed at accept, before a byte of it is read), an idle timeout, and a listener that stops being polled
//! for a while when accept() runs out of file descriptors instead of spinning on it.

pub mod catalog;
pub mod conn;
pub mod limits;
pub mod request;

use std::collections::{HashMap, VecDeque};
use std::net::{SocketAddr, TcpListener};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::outbox::Outbox;
use crate::poller::{Poller, Waker, EMPTY};
use crate::transport::Transport;
use catalog::Catalog;
use conn::{Conn, Read_, Turn};
use limits::{AcceptErr, Cidr, Gate};
use request::{End, Reason};

/// Most bytes written for one connection before the others get a turn (a 1-page reply always fits).
pub const TURN_BUDGET: u64 = 128 << 10;

/// How long the server keeps polling after its last request before it sleeps in epoll_wait.
const BUSY_POLL: std::time::Duration = std::time::Duration::from_micros(200);

/// Longest TLS handshake when there is no shorter idle timeout (what Node's TLS server allowed).
const HANDSHAKE_MAX: Duration = Duration::from_secs(120);

/// How long the listener is left alone after accept() failed for lack of fds (or memory).
pub const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Most connections accepted in one wakeup: a flood of connects cannot starve the connections being served.
const ACCEPT_BATCH: usize = 64;

/// While accept() keeps failing, at most one report per this long.
const ACCEPT_REPORT_EVERY: Duration = Duration::from_secs(10);

const TOK_WAKE: u64 = 0;
const TOK_LISTEN: u64 = 1;
/// Connection tokens are the session id plus this.
const TOK_CONN: u64 = 2;

/// How the server runs.
#[derive(Debug, Clone)]
pub struct Options {
  pub address: String,
  pub port: u16,
  /// A client that reads nothing of a pending reply for this long loses its session.
  pub stall: Duration,
  /// Largest reply in pages.
  pub max_reply_pages: u64,
  /// Stop accepting after this many sessions; stop once they have ended.
  pub sessions: Option<u32>,
  /// Most connections open at once (0 = no limit); more are closed at accept.
  pub max_connections: u32,
  /// Most connections open at once from one source IP (0 = no limit).
  pub max_per_peer: u32,
  /// A connection with no request in progress and none received for this long is closed (None = never).
  pub idle: Option<Duration>,
  /// `--allow` networks (`ADDR/LEN`): only peers inside one are served. Empty = everyone.
  pub allow: Vec<String>,
  /// Serve over TLS with this configuration (crate::tls::server_config).
  pub tls: Option<Arc<rustls::ServerConfig>>,
}

/// Reports to JS.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
  Started {
    session: u32,
    peer: String,
  },
  Ended {
    session: u32,
    peer: String,
    reason: Reason,
    detail: String,
    requests: u64,
    pages_sent: u64,
  },
  /// A connection closed at accept, before anything it sent was read.
  Refused {
    peer: String,
    reason: limits::Refusal,
    detail: String,
  },
  /// Something the operator should know that is not one session's business (accept() failing, …).
  Warning {
    message: String,
  },
  /// The thread has stopped (close, or the session limit reached and every session ended).
  Stopped {
    sessions: u32,
  },
}

/// Errors starting the server.
#[derive(Debug)]
pub enum ServerError {
  /// bind/listen failed: `host:port` and the errno name (or message).
  Listen(String, String),
  /// the thread or its fds could not be created
  Start(std::io::Error),
  /// a bad option (an `--allow` that is not a network)
  Option(String),
}

impl std::fmt::Display for ServerError {
  fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
    match self {
      ServerError::Listen(at, why) => write!(f, "page server: cannot listen on {at}: {why}"),
      ServerError::Start(e) => write!(f, "page server: cannot start: {e}"),
      ServerError::Option(m) => write!(f, "{m}"),
    }
  }
}

impl crate::errors::Coded for ServerError {
  fn code(&self) -> &'static str {
    match self {
      ServerError::Listen(..) => "ELISTEN",
      ServerError::Start(_) => "ENATIVE",
      ServerError::Option(_) => "EOPTION",
    }
  }
}

fn errno_name(e: &std::io::Error) -> String {
  match e.raw_os_error() {
    Some(libc::EADDRINUSE) => "EADDRINUSE".into(),
    Some(libc::EADDRNOTAVAIL) => "EADDRNOTAVAIL".into(),
    Some(libc::EACCES) => "EACCES".into(),
    Some(libc::EINVAL) => "EINVAL".into(),
    _ => e.to_string(),
  }
}

/// State shared by the JS handle and the thread.
pub struct Shared {
  stop: AtomicBool,
  waker: Waker,
  /// Reports to JS.
  pub outbox: Outbox<Event>,
}

/// The JS-side handle: owns the thread.
pub struct Handle {
  pub shared: Arc<Shared>,
  thread: Option<JoinHandle<()>>,
  /// The address actually bound (port 0 = the ephemeral port chosen).
  pub local: SocketAddr,
}

impl Handle {
  /// Ends every session ('server-closing') and joins the thread. Idempotent.
  pub fn close(&mut self) {
    self.shared.stop.store(true, Ordering::SeqCst);
    self.shared.waker.wake();
    if let Some(t) = self.thread.take() {
      let _ = t.join();
    }
  }
}

impl Drop for Handle {
  fn drop(&mut self) {
    self.close();
  }
}

/// Binds and listens (synchronously, so the caller learns the real port), then starts the thread.
pub fn start(opts: Options, cat: Catalog, notify: Box<dyn Fn() + Send + Sync>) -> Result<Handle, ServerError> {
  let allow = opts.allow.iter().map(|a| Cidr::parse(a)).collect::<Result<Vec<_>, _>>().map_err(ServerError::Option)?;
  let at = crate::hostport::host_port(&opts.address, opts.port);
  let listener = TcpListener::bind((opts.address.as_str(), opts.port))
    .map_err(|e| ServerError::Listen(at.clone(), errno_name(&e)))?;
  listener.set_nonblocking(true).map_err(|e| ServerError::Listen(at.clone(), errno_name(&e)))?;
  let local = listener.local_addr().map_err(|e| ServerError::Listen(at, errno_name(&e)))?;
  let (poller, waker) = (Poller::new().map_err(ServerError::Start)?, Waker::new().map_err(ServerError::Start)?);
  let epi = libc::EPOLLIN as u32;
  poller.add(waker.fd(), epi, TOK_WAKE).map_err(ServerError::Start)?;
  poller.add(listener.as_raw_fd(), epi, TOK_LISTEN).map_err(ServerError::Start)?;
  let shared = Arc::new(Shared { stop: AtomicBool::new(false), waker, outbox: Outbox::new(notify) });
  let s2 = shared.clone();
  let gate = Gate::new(allow, opts.max_connections, opts.max_per_peer);
  let server = Server {
    gate,
    accept_paused_until: None,
    accept_failing: None,
    poller,
    shared: s2,
    listener: Some(listener),
    cat,
    opts,
    conns: HashMap::new(),
    ready: VecDeque::new(),
    next_conn: 0,
    started: 0,
    ended: 0,
    out: Vec::new(),
    buf: vec![0u8; 64 << 10],
  };
  let thread = std::thread::Builder::new()
    .name("lazy-pages-psrv".into())
    .spawn(move || server.run())
    .map_err(ServerError::Start)?;
  Ok(Handle { shared, thread: Some(thread), local })
}

struct Server {
  gate: Gate,
  /// The listener is out of epoll until then (accept() ran out of fds).
  accept_paused_until: Option<Instant>,
  /// accept() has been failing since: (first failure, failures, last report).
  accept_failing: Option<(Instant, u64, Instant)>,
  poller: Poller,
  shared: Arc<Shared>,
  /// None once the session limit is reached.
  listener: Option<TcpListener>,
  cat: Catalog,
  opts: Options,
  /// Connections by their own number (also their epoll token); a session number is given at its start.
  conns: HashMap<u32, Conn>,
  /// Connections with output to write and room to write it, in turn order.
  ready: VecDeque<u32>,
  next_conn: u32,
  /// Sessions started (the last session number).
  started: u32,
  ended: u32,
  out: Vec<Event>,
  buf: Vec<u8>,
}

impl Server {
  fn run(mut self) {
    let mut evs = [EMPTY; 64];
    let mut last_activity = Instant::now();
    loop {
      // Right after traffic, poll instead of sleeping for a short while: a restoring process faults
      // page after page, and each GET then finds this thread awake instead of paying a wake-up.
      let timeout = if last_activity.elapsed() < BUSY_POLL { 0 } else { self.timeout_ms() };
      let Ok(ready) = self.poller.wait(&mut evs, timeout) else {
        break; // cannot happen with valid arguments; stop cleanly rather than spin
      };
      if !ready.is_empty() {
        last_activity = Instant::now();
      }
      for ev in ready {
        let (tok, flags) = (ev.u64, ev.events);
        match tok {
          TOK_WAKE => self.shared.waker.drain(),
          TOK_LISTEN => self.accept_all(),
          t => self.on_conn((t - TOK_CONN) as u32, flags),
        }
      }
      if self.shared.stop.load(Ordering::SeqCst) {
        break;
      }
      self.resume_accepts();
      // One round: every connection with output pending writes up to its budget.
      for _ in 0..self.ready.len() {
        let Some(id) = self.ready.pop_front() else { break };
        if let Some(c) = self.conns.get_mut(&id) {
          c.in_ready = false;
          self.serve(id);
        }
      }
      self.check_deadlines();
      let limit_done = self.listener.is_none() && self.conns.is_empty();
      if limit_done {
        break;
      }
      self.flush();
    }
    self.stop_all();
  }

  fn flush(&mut self) {
    self.shared.outbox.push_all(&mut self.out);
  }

  fn stop_all(&mut self) {
    let ids: Vec<u32> = self.conns.keys().copied().collect();
    let mut ids = ids;
    ids.sort_unstable();
    for id in ids {
      // Lingering ones have ended already; handshaking ones never were sessions.
      let quiet = self.conns.get(&id).is_some_and(|c| c.linger_until.is_some() || c.handshake_until.is_some());
      if quiet {
        self.drop_conn(id);
      } else {
        self.end(id, End::new(Reason::ServerClosing, "the page server is shutting down"));
        self.drop_conn(id);
      }
    }
    self.listener = None;
    self.out.push(Event::Stopped { sessions: self.ended });
    self.flush();
  }

  fn timeout_ms(&self) -> i32 {
    if !self.ready.is_empty() {
      return 0;
    }
    let now = Instant::now();
    let mut next: Option<Instant> = None;
    for c in self.conns.values() {
      let d = if let Some(l) = c.linger_until {
        Some(l)
      } else if let Some(h) = c.handshake_until {
        Some(h)
      } else if c.blocked {
        Some(c.last_progress + self.opts.stall)
      } else if !c.has_work() {
        self.opts.idle.map(|i| c.idle_since + i)
      } else {
        None
      };
      if let Some(d) = d {
        next = Some(next.map_or(d, |n| n.min(d)));
      }
    }
    if let Some(p) = self.accept_paused_until {
      next = Some(next.map_or(p, |n| n.min(p)));
    }
    match next {
      None => -1,
      Some(d) => (d.saturating_duration_since(now).as_millis() as i32).saturating_add(1),
    }
  }

  fn accept_all(&mut self) {
    for _ in 0..ACCEPT_BATCH {
      let Some(l) = self.listener.as_ref() else { return };
      let (stream, addr) = match l.accept() {
        Ok(x) => x,
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
          self.accept_recovered();
          return;
        }
        Err(e) => match limits::classify_accept_error(&e) {
          // That one connection is lost; the server keeps listening.
          AcceptErr::Retry => continue,
          // The connection stays in the backlog and the listener stays readable: accepting again at once
          // would spin a CPU until an fd frees up. Leave the listener alone for a while instead.
          AcceptErr::BackOff(what) => {
            self.pause_accepts(what, &e);
            return;
          }
        },
      };
      self.accept_recovered();
      let ip = limits::normalize(addr.ip());
      let peer = crate::hostport::host_port(&ip.to_string(), addr.port());
      if let Err((why, detail)) = self.gate.admit(ip) {
        // Closed before anything it sent is read; the other connections never notice.
        drop(stream);
        self.out.push(Event::Refused { peer, reason: why, detail });
        continue;
      }
      if stream.set_nonblocking(true).is_err() {
        self.gate.leave(ip);
        continue;
      }
      // A fault's GET reply must leave at once, not wait for Nagle.
      let _ = stream.set_nodelay(true);
      let transport = match &self.opts.tls {
        None => Transport::Plain,
        Some(cfg) => match rustls::ServerConnection::new(cfg.clone()) {
          Ok(t) => Transport::tls(t),
          Err(e) => {
            self.gate.leave(ip);
            self.out.push(Event::Warning { message: format!("{peer}: cannot start TLS: {e}") });
            continue;
          }
        },
      };
      let tls = transport.is_tls();
      self.next_conn += 1;
      let id = self.next_conn;
      let mut c = Conn::new(stream, transport, 0, peer);
      c.ip = ip;
      c.interest = libc::EPOLLIN as u32;
      if tls {
        // A handshake is a request in progress for no longer than the idle timeout.
        c.handshake_until = Some(Instant::now() + self.opts.idle.map_or(HANDSHAKE_MAX, |i| i.min(HANDSHAKE_MAX)));
      }
      if self.poller.add(c.stream.as_raw_fd(), c.interest, TOK_CONN + id as u64).is_err() {
        self.gate.leave(ip);
        continue;
      }
      self.conns.insert(id, c);
      if !tls {
        self.start_session(id);
      }
    }
  }

  /// Connection `id` becomes a session (plain TCP: at accept; TLS: once its handshake is done). The last
  /// session allowed (`--sessions`) closes the listener.
  fn start_session(&mut self, id: u32) {
    if self.opts.sessions.is_some_and(|n| self.started >= n) {
      // A TLS connection accepted before the last session started, whose handshake ended after it.
      let d = "the page server had already started its last session (--sessions)";
      self.end(id, End::new(Reason::ServerClosing, d));
      return;
    }
    let Some(c) = self.conns.get_mut(&id) else { return };
    self.started += 1;
    c.session = self.started;
    c.idle_since = Instant::now();
    self.out.push(Event::Started { session: c.session, peer: c.peer.clone() });
    if self.opts.sessions.is_some_and(|n| self.started >= n) {
      if let Some(l) = self.listener.take() {
        if self.accept_paused_until.take().is_none() {
          self.poller.remove(l.as_raw_fd());
        }
      }
    }
  }

  /// TLS: drives connection `id`'s handshake on readiness; false while it is not done (or it failed).
  fn handshake(&mut self, id: u32) -> bool {
    let Some(c) = self.conns.get_mut(&id) else { return false };
    if c.handshake_until.is_none() {
      return true;
    }
    match c.transport.handshake(c.stream.as_raw_fd()) {
      Ok(true) => {
        c.handshake_until = None;
        self.start_session(id);
        self.conns.contains_key(&id)
      }
      Ok(false) => {
        self.sync_interest(id);
        false
      }
      Err(e) => {
        let why = e.to_string();
        self.handshake_failed(id, why.strip_prefix("TLS: ").unwrap_or(&why).to_string());
        false
      }
    }
  }

  /// A handshake failed or ran out of time: reported with session 0 (no session was started), and closed.
  fn handshake_failed(&mut self, id: u32, detail: String) {
    let Some(c) = self.conns.get(&id) else { return };
    self.out.push(Event::Ended {
      session: 0,
      peer: c.peer.clone(),
      reason: Reason::TlsHandshakeFailed,
      detail,
      requests: 0,
      pages_sent: 0,
    });
    self.drop_conn(id);
  }

  /// accept() failed for want of a resource: the listener leaves epoll for [`ACCEPT_BACKOFF`].
  fn pause_accepts(&mut self, what: &str, e: &std::io::Error) {
    let now = Instant::now();
    if let Some(l) = self.listener.as_ref() {
      if self.accept_paused_until.is_none() {
        self.poller.remove(l.as_raw_fd());
      }
    }
    self.accept_paused_until = Some(now + ACCEPT_BACKOFF);
    let ms = ACCEPT_BACKOFF.as_millis();
    match &mut self.accept_failing {
      None => {
        self.accept_failing = Some((now, 1, now));
        self.out.push(Event::Warning {
          message: format!(
            "accept failed: {what}: {e}; new connections wait in the backlog, trying again every {ms} ms"
          ),
        });
      }
      Some((since, n, last)) => {
        *n += 1;
        if now.duration_since(*last) >= ACCEPT_REPORT_EVERY {
          *last = now;
          let message = format!(
            "accept still failing: {what}, for {} s ({n} tries); new connections wait in the backlog",
            since.elapsed().as_secs()
          );
          self.out.push(Event::Warning { message });
        }
      }
    }
  }

  /// accept() works again after failing: one line says so.
  fn accept_recovered(&mut self) {
    if let Some((since, n, _)) = self.accept_failing.take() {
      let message = format!("accepting connections again after {} ms ({n} failed tries)", since.elapsed().as_millis());
      self.out.push(Event::Warning { message });
    }
  }

  /// The back-off is over: the listener goes back into epoll (level-triggered, so a waiting connection is
  /// reported at once).
  fn resume_accepts(&mut self) {
    let Some(until) = self.accept_paused_until else { return };
    if Instant::now() < until {
      return;
    }
    self.accept_paused_until = None;
    if let Some(l) = self.listener.as_ref() {
      let _ = self.poller.add(l.as_raw_fd(), libc::EPOLLIN as u32, TOK_LISTEN);
    }
  }

  fn on_conn(&mut self, id: u32, flags: u32) {
    if !self.handshake(id) {
      return;
    }
    let Some(c) = self.conns.get_mut(&id) else { return };
    let hup = flags & (libc::EPOLLHUP | libc::EPOLLERR) as u32 != 0;
    if c.linger_until.is_some() {
      if c.discard(&mut self.buf) || hup {
        self.drop_conn(id);
      }
      return;
    }
    if flags & libc::EPOLLOUT as u32 != 0 || hup {
      // Writable again (or failed: the next write says how).
      c.blocked = false;
    }
    // (Under TLS, requests can also wait decrypted from the handshake's last read.)
    if flags & (libc::EPOLLIN as u32) != 0 || hup || c.input_buffered() {
      if let Read_::Ended(e) = c.read(&mut self.buf) {
        self.end(id, e);
        return;
      }
    }
    // Served now, in this same wakeup: this is what makes a fault's reply fast.
    if !c.in_ready && !c.blocked && c.has_work() {
      self.serve(id);
    } else {
      self.sync_interest(id);
    }
  }

  fn serve(&mut self, id: u32) {
    let Some(c) = self.conns.get_mut(&id) else { return };
    if c.blocked {
      self.sync_interest(id);
      return;
    }
    match c.serve(&self.cat, TURN_BUDGET, self.opts.max_reply_pages) {
      Turn::Idle | Turn::Blocked => {}
      Turn::Yield => {
        c.in_ready = true;
        self.ready.push_back(id);
      }
      Turn::Ended(e) => {
        self.end(id, e);
        return;
      }
    }
    // TLS: requests read into rustls while the queue was full wait there, unseen by epoll.
    if c.input_buffered() {
      if let Read_::Ended(e) = c.read(&mut self.buf) {
        self.end(id, e);
        return;
      }
      if !c.in_ready && c.has_work() {
        c.in_ready = true;
        self.ready.push_back(id);
      }
    }
    self.sync_interest(id);
  }

  fn sync_interest(&mut self, id: u32) {
    let Some(c) = self.conns.get_mut(&id) else { return };
    let want = c.wanted_interest();
    if want != c.interest {
      c.interest = want;
      let _ = self.poller.modify(c.stream.as_raw_fd(), want, TOK_CONN + id as u64);
    }
  }

  /// Reports the end of a session; a graceful end keeps the socket until the client has read its replies.
  fn end(&mut self, id: u32, e: End) {
    let Some(c) = self.conns.get_mut(&id) else { return };
    self.ended += 1;
    self.out.push(Event::Ended {
      session: c.session,
      peer: c.peer.clone(),
      reason: e.reason,
      detail: e.detail,
      requests: c.requests,
      pages_sent: c.pages_sent,
    });
    if e.reason.graceful() {
      // FIN after the replies already written; we read (and drop) until the client closes, for at most
      // the stall timeout, so closing never resets a connection whose replies are still in flight.
      c.finish_writing();
      c.linger_until = Some(Instant::now() + self.opts.stall);
      c.blocked = false;
      self.sync_interest(id);
    } else {
      self.drop_conn(id);
    }
  }

  fn drop_conn(&mut self, id: u32) {
    if let Some(c) = self.conns.remove(&id) {
      self.poller.remove(c.stream.as_raw_fd());
      self.gate.leave(c.ip);
    }
  }

  fn check_deadlines(&mut self) {
    let now = Instant::now();
    let stall = self.opts.stall;
    let idle = self.opts.idle;
    let mut stalled = Vec::new();
    let mut expired = Vec::new();
    let mut idled = Vec::new();
    let mut slow = Vec::new();
    for (id, c) in &self.conns {
      if let Some(h) = c.handshake_until {
        // Not a session yet: only the handshake's own deadline applies.
        if now >= h {
          slow.push(*id);
        }
      } else if c.linger_until.is_some_and(|l| now >= l) {
        expired.push(*id);
      } else if c.linger_until.is_none() && c.blocked && now >= c.last_progress + stall {
        stalled.push(*id);
      } else if c.linger_until.is_none() && !c.has_work() && idle.is_some_and(|i| now >= c.idle_since + i) {
        // Nothing in progress and no request for the idle timeout (a header's first bytes do not count:
        // a byte now and then keeps nothing open).
        idled.push(*id);
      }
    }
    for id in expired {
      self.drop_conn(id);
    }
    for id in slow {
      let ms = self.opts.idle.map_or(HANDSHAKE_MAX, |i| i.min(HANDSHAKE_MAX)).as_millis();
      self.handshake_failed(id, format!("no TLS handshake within {ms} ms"));
    }
    for id in stalled {
      let d = format!("the client read nothing for {} ms with a reply pending", stall.as_millis());
      self.end(id, End::new(Reason::ClientStalled, d));
    }
    for id in idled {
      let d = format!("no request for {} ms (--idle-timeout)", idle.unwrap_or_default().as_millis());
      self.end(id, End::new(Reason::ClientIdle, d));
    }
  }
}
