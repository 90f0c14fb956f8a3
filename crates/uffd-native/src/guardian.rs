//! The guardian client: starts the guardian process (crates/guardian) and tells it about every task
//! whose userfaultfd this process serves, so that if this process dies by any means (SIGKILL, the
//! OOM killer, a panic, an uncaught exception) the tasks still owed pages are SIGKILLed before their
//! uffds can close, instead of reading zeros.
//!
//! One guardian per process, shared by every daemon (event loop) in it: `acquire` starts it or
//! counts one more user, `release` stops it cleanly when the last user is done. The hooks (`hold`,
//! `add`, `forked`, `watch`, `release_task`, `forget`, `loop_closed`) are called by the hand-over
//! listener and the event loop at the moments a uffd arrives, is served, is identified, is done;
//! without a running guardian they do nothing (native unit tests, an embedder that opted out).
//!
//! Ordering is the whole point: the listening socket and the restorer's connection are duplicated
//! to the guardian (`listening`, `connection`: a connection not accepted yet, and uffds still queued
//! in one, survive the daemon), a uffd is duplicated on the
//! hand-over thread as soon as it is read (`hold`), and again with the task's pidfd the moment the
//! event loop starts serving it (`add`); a FORK's new uffd goes out in the same loop iteration that
//! read it. So there is no moment at which the daemon's death would close the last copy of an owed
//! uffd.
//!
//! Where the guardian program comes from: `LAZY_PAGES_GUARDIAN` (a path, or `node`), else
//! `lazy-pages-guardian` next to this addon (a source build copies it there), else this very addon
//! run by node (`node -e` loading it and calling `runGuardian`), which works wherever the addon
//! loads, e.g. a published install whose platform package carries only the addon.

use std::collections::HashSet;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::PathBuf;
use std::process::{Child, Command};
use std::sync::{Arc, Mutex};

use lazy_pages_guardian::procfs;
use lazy_pages_guardian::wire::{self, Kind, Msg};

use crate::errors::Coded;

/// The guardian could not be started.
#[derive(Debug)]
pub struct GuardianError(pub String);

impl std::fmt::Display for GuardianError {
  fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
    write!(f, "cannot start the guardian process: {}", self.0)
  }
}

impl Coded for GuardianError {
  fn code(&self) -> &'static str {
    "EGUARDIAN"
  }
}

struct Client {
  sock: OwnedFd,
  pid: u32,
  users: u32,
  child: Option<Child>,
  /// fd numbers of received uffds the guardian holds that no `add` has taken over yet.
  held: HashSet<RawFd>,
  /// A send failed (the guardian is gone): said once, then quiet.
  broken: bool,
}

static CLIENT: Mutex<Option<Client>> = Mutex::new(None);

fn client() -> std::sync::MutexGuard<'static, Option<Client>> {
  CLIENT.lock().unwrap_or_else(|p| p.into_inner())
}

/// How long a starting guardian may take to say it runs (node takes tens of ms, more under load).
const READY_WITHIN: std::time::Duration = std::time::Duration::from_secs(10);

/// The script a node-run guardian executes: load this addon, run the guardian, never return.
const NODE_SCRIPT: &str = "const m = { exports: {} }; process.dlopen(m, process.argv[1]); m.exports.runGuardian();";

/// Path of the shared object this code is in (the .node addon), from the dynamic loader.
fn addon_path() -> Option<PathBuf> {
  // SAFETY: zero is a valid Dl_info.
  let mut info: libc::Dl_info = unsafe { std::mem::zeroed() };
  // SAFETY: dladdr reads the address of one of our own functions and fills `info`; dli_fname, when
  // set, points at a NUL-terminated string owned by the loader for as long as we are loaded.
  let ok = unsafe { libc::dladdr(addon_path as *const libc::c_void, &mut info) } != 0;
  if !ok || info.dli_fname.is_null() {
    return None;
  }
  // SAFETY: checked non-null above; a C string from the loader.
  let name = unsafe { std::ffi::CStr::from_ptr(info.dli_fname) };
  use std::os::unix::ffi::OsStrExt;
  Some(PathBuf::from(std::ffi::OsStr::from_bytes(name.to_bytes())))
}

fn is_executable(p: &std::path::Path) -> bool {
  use std::os::unix::fs::PermissionsExt;
  std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

fn node_command() -> Result<Command, GuardianError> {
  let node =
    std::fs::read_link("/proc/self/exe").map_err(|e| GuardianError(format!("cannot find the node executable: {e}")))?;
  let addon = addon_path().ok_or_else(|| GuardianError("cannot find the native addon's path".into()))?;
  let mut c = Command::new(node);
  c.arg("-e").arg(NODE_SCRIPT).arg(addon);
  // The child is a plain node: no loaders or flags of ours, no IPC channel (fd 3 is the guardian's).
  for v in ["NODE_OPTIONS", "NODE_CHANNEL_FD", "NODE_CHANNEL_SERIALIZATION_MODE", "NODE_UNIQUE_ID"] {
    c.env_remove(v);
  }
  Ok(c)
}

fn command() -> Result<Command, GuardianError> {
  match std::env::var_os("LAZY_PAGES_GUARDIAN") {
    Some(v) if v == "node" => node_command(),
    Some(v) => Ok(Command::new(v)),
    None => match addon_path().map(|a| a.with_file_name("lazy-pages-guardian")).filter(|p| is_executable(p)) {
      Some(p) => Ok(Command::new(p)),
      None => node_command(),
    },
  }
}

fn start() -> Result<Client, GuardianError> {
  let mut cmd = command()?;
  cmd.arg("lazy-pages-guardian").arg("--daemon-pid").arg(std::process::id().to_string());
  let (sock, mut child) =
    lazy_pages_guardian::spawn(&mut cmd).map_err(|e| GuardianError(format!("{:?}: {e}", cmd.get_program())))?;
  // Wait until it says it runs (own session, signals ignored): a guardian that cannot run (a wrong
  // LAZY_PAGES_GUARDIAN, a broken install) is found out now, while the daemon can still refuse to
  // start, rather than when it is needed.
  let mut p = libc::pollfd { fd: sock.as_raw_fd(), events: libc::POLLIN, revents: 0 };
  let until = std::time::Instant::now() + READY_WITHIN;
  let ready = loop {
    let left = until.saturating_duration_since(std::time::Instant::now()).as_millis() as i32;
    // SAFETY: `p` is one initialized pollfd living across the call, and nfds is 1, so poll(2) touches
    // nothing else.
    let r = unsafe { libc::poll(&mut p, 1, left) };
    if r < 0 && std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted && left > 0 {
      continue;
    }
    break match wire::recv(sock.as_raw_fd()) {
      Ok(wire::Recv::Msg(m, _)) if m.kind == Kind::Ready => Ok(()),
      Ok(wire::Recv::Empty) => Err(format!("it did not answer within {} s", READY_WITHIN.as_secs())),
      Ok(_) => Err("it exited at once".to_string()),
      Err(e) => Err(e.to_string()),
    };
  };
  if let Err(why) = ready {
    let _ = child.kill();
    let status = child.wait().map(|s| format!(" ({s})")).unwrap_or_default();
    return Err(GuardianError(format!("{:?}: {why}{status}", cmd.get_program())));
  }
  Ok(Client { sock, pid: child.id(), users: 0, child: Some(child), held: HashSet::new(), broken: false })
}

/// Starts the guardian, or counts one more user of the running one; returns its pid.
pub fn acquire() -> Result<u32, GuardianError> {
  let mut g = client();
  if g.as_ref().is_some_and(|c| c.broken) {
    // A message could not be delivered: its picture of what is owed is wrong (a task it never heard
    // of, or one it would still kill though it is complete). It must not act on that picture, so it
    // is SIGKILLed rather than told goodbye (it is our child, not reaped yet: the pid is its own).
    // The daemons that were warned keep running unprotected; a new daemon gets a new guardian.
    let mut old = g.take().expect("checked");
    if let Some(child) = old.child.as_mut() {
      let _ = child.kill();
    }
    stop(old, false);
  }
  if g.is_none() {
    *g = Some(start()?);
  }
  let c = g.as_mut().expect("set above");
  c.users += 1;
  Ok(c.pid)
}

/// One user of the guardian `pid` (what `acquire` returned) is done; the last one stops it cleanly:
/// it kills whatever is still owed (none when the daemon released every task), lets go of the rest
/// and exits. A user of a guardian that has since been replaced counts for nothing here.
pub fn release(pid: u32) {
  let mut g = client();
  let Some(c) = g.as_mut().filter(|c| c.pid == pid) else { return };
  c.users = c.users.saturating_sub(1);
  if c.users == 0 {
    stop(g.take().expect("checked"), true);
  }
}

fn stop(mut c: Client, bye: bool) {
  if bye && !c.broken {
    let _ = wire::send(c.sock.as_raw_fd(), &Msg::new(Kind::Bye), &[]);
  }
  drop(c.sock);
  // It is our child: reap it without blocking the caller (it may wait for killed tasks to exit).
  if let Some(mut child) = c.child.take() {
    let _ = std::thread::Builder::new().name("lazy-pages-guardian-reaper".into()).spawn(move || {
      let _ = child.wait();
    });
  }
}

/// The running guardian's pid, if any.
pub fn pid() -> Option<u32> {
  client().as_ref().map(|c| c.pid)
}

/// A loop's identity for the guardian (unique while the loop lives; `loop_closed` ends it).
pub fn loop_id<T>(shared: &Arc<T>) -> u64 {
  Arc::as_ptr(shared) as usize as u64
}

/// Sends one message; on the first failure returns the warning to report, later ones are quiet.
fn send(c: &mut Client, m: Msg, fds: &[RawFd]) -> Result<(), String> {
  if c.broken {
    return Ok(());
  }
  match wire::send(c.sock.as_raw_fd(), &m, fds) {
    Ok(()) => Ok(()),
    Err(e) => {
      c.broken = true;
      let msg = format!(
        "guardian (pid {}): cannot reach it ({e}): processes are no longer protected should the daemon die",
        c.pid
      );
      // Also on stderr at once: the hand-over thread's hooks have nobody to report to.
      let line = format!("lazy-pages: {msg}\n");
      // SAFETY: write(2) of our own buffer to fd 2; a failure (closed stderr) is ignored on purpose.
      unsafe { libc::write(2, line.as_ptr() as *const libc::c_void, line.len()) };
      Err(msg)
    }
  }
}

fn with_client(f: impl FnOnce(&mut Client) -> Result<(), String>) -> Result<(), String> {
  match client().as_mut() {
    Some(c) => f(c),
    None => Ok(()),
  }
}

/// Hand-over thread: a uffd was just received for `ns_pid` (as the restorer, pid `restorer`, names
/// it). The guardian holds a duplicate until `add` (or `forget`) names the same fd number; should
/// the daemon die first, it finds the task among the restorer's descendants and kills it.
pub fn hold(fd: RawFd, ns_pid: i32, restorer: i32) {
  let _ = with_client(|c| {
    let m = Msg { kind: Kind::Hold, pid: ns_pid, proc_id: restorer.max(0) as u32, aux: fd as u32, loop_id: 0 };
    send(c, m, &[fd])?;
    c.held.insert(fd);
    Ok(())
  });
}

/// Hand-over thread: the restorer's connection was accepted. The guardian keeps a copy of the socket,
/// so uffds the restorer has sent but this process has not read yet are not lost should it die: the
/// guardian takes them off the socket and kills their tasks. Keep the returned guard as long as the
/// connection is served: dropping it tells the guardian to let go of its copy.
pub fn connection(fd: RawFd, restorer: i32) -> ConnGuard {
  let _ = with_client(|c| {
    send(c, Msg { kind: Kind::Conn, pid: 0, proc_id: restorer.max(0) as u32, aux: fd as u32, loop_id: 0 }, &[fd])
  });
  ConnGuard(fd, Kind::ConnDone)
}

/// Hand-over thread: it listens on `fd`. A restorer can connect and send everything before this
/// process accepts it; the guardian's copy of the listening socket keeps such a connection (and the
/// uffds in it) from being dropped should this process die. Keep the guard while listening.
pub fn listening(fd: RawFd) -> ConnGuard {
  let _ = with_client(|c| send(c, Msg { kind: Kind::Listen, pid: 0, proc_id: 0, aux: fd as u32, loop_id: 0 }, &[fd]));
  ConnGuard(fd, Kind::ListenDone)
}

/// See [`connection`] and [`listening`]: dropping it tells the guardian to let go of its copy.
pub struct ConnGuard(RawFd, Kind);

impl Drop for ConnGuard {
  fn drop(&mut self) {
    let (fd, kind) = (self.0, self.1);
    let _ = with_client(|c| send(c, Msg { kind, pid: 0, proc_id: 0, aux: fd as u32, loop_id: 0 }, &[]));
  }
}

/// A held uffd is about to be closed without being served (the daemon refused the task): let go.
/// Called before the close, so its fd number cannot have been reused yet.
pub fn forget(fd: RawFd) {
  let _ = with_client(|c| {
    if !c.held.remove(&fd) {
      return Ok(());
    }
    send(c, Msg { kind: Kind::Forget, pid: 0, proc_id: 0, aux: fd as u32, loop_id: 0 }, &[])
  });
}

/// Event loop: it now serves `uffd` as `proc_id`; `pid` is the task's verified real pid, 0 if not
/// known (a forked child, or a task that could not be identified).
pub fn add(loop_id: u64, proc_id: u32, uffd: RawFd, pid: i32) -> Result<(), String> {
  with_client(|c| {
    c.held.remove(&uffd);
    let pidfd = if pid > 0 { procfs::pidfd_open(pid) } else { None };
    let mut fds = vec![uffd];
    if let Some(p) = &pidfd {
      fds.push(p.as_raw_fd());
    }
    send(c, Msg { kind: Kind::Add, pid, proc_id, aux: uffd as u32, loop_id }, &fds)
  })
}

/// Event loop: `child` is the uffd of a task `parent` forked (sent right after its `add`).
pub fn forked(loop_id: u64, parent: u32, child: u32) -> Result<(), String> {
  with_client(|c| send(c, Msg { kind: Kind::Forked, pid: 0, proc_id: child, aux: parent, loop_id }, &[]))
}

/// Event loop: the real pid of `proc_id` (a forked child) was identified.
pub fn watch(loop_id: u64, proc_id: u32, pid: i32) -> Result<(), String> {
  with_client(|c| {
    let Some(pidfd) = procfs::pidfd_open(pid) else { return Ok(()) };
    send(c, Msg { kind: Kind::Watch, pid, proc_id, aux: 0, loop_id }, &[pidfd.as_raw_fd()])
  })
}

/// Event loop: nothing is owed to `proc_id` any more (done, exited, or killed by the daemon).
pub fn release_task(loop_id: u64, proc_id: u32) -> Result<(), String> {
  with_client(|c| send(c, Msg { kind: Kind::Release, pid: 0, proc_id, aux: 0, loop_id }, &[]))
}

/// JS, after the loop `loop_id` was closed: every process it served was complete, so what it did
/// not release (a child forked by a complete parent, read after the daemon had finished) is owed
/// nothing: the guardian lets go of it rather than kill it.
pub fn loop_done(loop_id: u64) {
  let _ = with_client(|c| send(c, Msg { kind: Kind::LoopDone, pid: 0, proc_id: 0, aux: 0, loop_id }, &[]));
}

/// Event loop: the loop stopped; what it did not release stays owed.
pub fn loop_closed(loop_id: u64) {
  let _ = with_client(|c| send(c, Msg { kind: Kind::LoopClosed, pid: 0, proc_id: 0, aux: 0, loop_id }, &[]));
}
