//! The CRIU hand-over receiver (spec §2): a unix socket `<work_dir>/lazy-pages.socket` on which exactly one
//! restorer sends, per task, an i32 pid and (for live tasks) a 1-byte message carrying its userfaultfd, and
//! finally the u32 0x52535446 ("restore finished").
//!
//! Split in two: `read_protocol` is the pure protocol driver over a `Source` (unit-tested with a scripted
//! source), and `Listener` does the socket work on its own thread so the JS thread never blocks.

use std::fmt;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use crate::errors::Coded;
use crate::poller::{Poller, Waker, EMPTY};
use crate::uffd::fd_kind;

/// Name of the socket inside the work dir (CRIU's fixed name).
pub const SOCKET_NAME: &str = "lazy-pages.socket";
/// "restore finished" marker, read as u32.
pub const RESTORE_FINISHED: u32 = 0x5253_5446;

/// One step of the protocol.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
  /// A live task and its userfaultfd (already checked to be a userfaultfd; the receiver owns it).
  Task { pid: i32, fd: RawFd },
  /// A zombie task (sent as -pid, no fd).
  Zombie { pid: i32 },
  /// All tasks restored.
  Finished,
}

/// Errors of the hand-over protocol and of setting up the socket.
#[derive(Debug)]
pub enum HandoverError {
  /// the restorer hung up before "restore finished"
  HangUp,
  /// the stream ended in the middle of a 4-byte pid (bytes received)
  Truncated(usize),
  /// the pid's message carried no fd
  NoFd(i32),
  /// pid 0 is not valid
  PidZero,
  /// the fd received for a pid is not a userfaultfd
  NotUffd(i32, String),
  /// read error on the socket
  Io(io::Error),
  /// the socket path does not fit in sun_path
  PathTooLong(PathBuf),
  /// the path exists and is not a socket
  NotASocket(PathBuf),
  /// bind/listen failed (dir named)
  Bind(PathBuf, io::Error),
}

impl fmt::Display for HandoverError {
  fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
    match self {
      HandoverError::HangUp => {
        write!(f, "hand-over: the restorer hung up before \"restore finished\" (restore failed)")
      }
      HandoverError::Truncated(n) => write!(f, "hand-over: connection closed after {n} of 4 bytes of a pid"),
      HandoverError::NoFd(pid) => write!(f, "hand-over: the message for pid {pid} carried no file descriptor"),
      HandoverError::PidZero => write!(f, "hand-over: received pid 0, which is not a valid task id"),
      HandoverError::NotUffd(pid, what) => {
        write!(f, "hand-over: the fd sent for pid {pid} is not a userfaultfd (it is {what})")
      }
      HandoverError::Io(e) if e.kind() == io::ErrorKind::WouldBlock => {
        write!(f, "hand-over: the restorer stalled for {STEP_TIMEOUT_SECS} s in the middle of a step (restore failed)")
      }
      HandoverError::Io(e) => write!(f, "hand-over: socket read failed: {e}"),
      HandoverError::PathTooLong(p) => write!(
        f,
        "{}: socket path is too long for a unix socket (max 107 bytes); use a shorter work dir (-W)",
        p.display()
      ),
      HandoverError::NotASocket(p) => write!(f, "{}: exists and is not a socket; refusing to remove it", p.display()),
      HandoverError::Bind(dir, e) => write!(f, "{}: cannot create {SOCKET_NAME} in this work dir: {e}", dir.display()),
    }
  }
}

impl Coded for HandoverError {
  fn code(&self) -> &'static str {
    match self {
      HandoverError::NotUffd(..) => "ENOTUFFD",
      HandoverError::PathTooLong(_) | HandoverError::NotASocket(_) | HandoverError::Bind(..) => "ESOCKET",
      _ => "EHANDOVER",
    }
  }
}

/// A byte source that may carry fds (a unix socket, or a scripted source in tests).
pub trait Source {
  /// Reads up to `buf.len()` bytes; returns bytes read (0 = EOF) and any fds attached to them.
  fn read_some(&mut self, buf: &mut [u8]) -> io::Result<(usize, Vec<RawFd>)>;
}

fn close_fds(fds: Vec<RawFd>) {
  for fd in fds {
    // SAFETY: fds received via SCM_RIGHTS are ours to close; each is closed exactly once.
    drop(unsafe { OwnedFd::from_raw_fd(fd) });
  }
}

/// Reads exactly 4 bytes (a pid or the finished marker). `Ok(None)` = clean EOF before any byte.
fn read_word<S: Source>(src: &mut S) -> Result<Option<[u8; 4]>, HandoverError> {
  let mut w = [0u8; 4];
  let mut got = 0;
  while got < 4 {
    let (n, fds) = src.read_some(&mut w[got..]).map_err(HandoverError::Io)?;
    // fds never travel with the pid bytes; drop any so they do not leak.
    close_fds(fds);
    if n == 0 {
      return if got == 0 { Ok(None) } else { Err(HandoverError::Truncated(got)) };
    }
    got += n;
  }
  Ok(Some(w))
}

/// Reads the next protocol step. `is_uffd` decides whether a received fd is a userfaultfd (returns what it is
/// otherwise); a non-uffd fd is closed.
pub fn next_step<S: Source>(src: &mut S, is_uffd: &dyn Fn(RawFd) -> Result<(), String>) -> Result<Step, HandoverError> {
  let w = read_word(src)?.ok_or(HandoverError::HangUp)?;
  if u32::from_ne_bytes(w) == RESTORE_FINISHED {
    return Ok(Step::Finished);
  }
  let pid = i32::from_ne_bytes(w);
  if pid == 0 {
    return Err(HandoverError::PidZero);
  }
  if pid < 0 {
    return Ok(Step::Zombie { pid: pid.checked_neg().unwrap_or(i32::MAX) });
  }
  let mut b = [0u8; 1];
  let (n, mut fds) = src.read_some(&mut b).map_err(HandoverError::Io)?;
  if n == 0 {
    close_fds(fds);
    return Err(HandoverError::HangUp);
  }
  if fds.is_empty() {
    return Err(HandoverError::NoFd(pid));
  }
  let fd = fds.remove(0);
  close_fds(fds);
  if let Err(what) = is_uffd(fd) {
    close_fds(vec![fd]);
    return Err(HandoverError::NotUffd(pid, what));
  }
  Ok(Step::Task { pid, fd })
}

/// Checks with /proc that `fd` is a userfaultfd.
pub fn proc_is_uffd(fd: RawFd) -> Result<(), String> {
  match fd_kind(fd) {
    Some(k) if k == crate::uffd::UFFD_LINK => Ok(()),
    Some(k) => Err(k),
    None => Err("not an open fd".into()),
  }
}

/// A connected unix stream socket read with recvmsg so SCM_RIGHTS fds are collected.
pub struct SocketSource(pub OwnedFd);

impl Source for SocketSource {
  fn read_some(&mut self, buf: &mut [u8]) -> io::Result<(usize, Vec<RawFd>)> {
    // Room for a few fds: a misbehaving peer sending more must not truncate silently into a leak.
    let mut cbuf = [0u64; 16];
    loop {
      let mut iov = libc::iovec { iov_base: buf.as_mut_ptr() as *mut libc::c_void, iov_len: buf.len() };
      // SAFETY: zero is a valid bit pattern for msghdr (null pointers, zero lengths).
      let mut mh: libc::msghdr = unsafe { std::mem::zeroed() };
      mh.msg_iov = &mut iov;
      mh.msg_iovlen = 1;
      mh.msg_control = cbuf.as_mut_ptr() as *mut libc::c_void;
      mh.msg_controllen = std::mem::size_of_val(&cbuf) as _;
      // SAFETY: `mh` points at live buffers (`buf`, `cbuf`) for the duration of the call.
      let n = unsafe { libc::recvmsg(self.0.as_raw_fd(), &mut mh, libc::MSG_CMSG_CLOEXEC) };
      if n < 0 {
        let e = io::Error::last_os_error();
        if e.kind() == io::ErrorKind::Interrupted {
          continue;
        }
        return Err(e);
      }
      let mut fds = Vec::new();
      // SAFETY: CMSG_* walk the control buffer the kernel just filled, bounded by msg_controllen.
      unsafe {
        let mut c = libc::CMSG_FIRSTHDR(&mh);
        while !c.is_null() {
          if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_RIGHTS {
            let data = libc::CMSG_DATA(c) as *const RawFd;
            let count = ((*c).cmsg_len as usize - libc::CMSG_LEN(0) as usize) / std::mem::size_of::<RawFd>();
            for i in 0..count {
              fds.push(std::ptr::read_unaligned(data.add(i)));
            }
          }
          c = libc::CMSG_NXTHDR(&mh, c);
        }
      }
      return Ok((n as usize, fds));
    }
  }
}

/// What the listener reports.
#[derive(Debug)]
pub enum Report {
  /// The restorer (root or the daemon's user) connected; `pid` is its pid from SO_PEERCRED.
  Connected { pid: i32 },
  /// A protocol step.
  Step(Step),
  /// A fatal protocol error (the listener stops reading).
  Error(HandoverError),
  /// A connection was closed unheard: a second restorer, or a peer that is neither root nor the
  /// daemon's user (the message names its pid and uid).
  Refused(String),
}

/// The bound socket plus the thread serving it.
pub struct Listener {
  path: PathBuf,
  stop: Arc<AtomicBool>,
  waker: Waker,
  thread: Option<JoinHandle<()>>,
}

fn sockaddr_for(path: &Path) -> Result<(libc::sockaddr_un, libc::socklen_t), HandoverError> {
  use std::os::unix::ffi::OsStrExt;
  // SAFETY: zero is a valid sockaddr_un.
  let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
  addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
  let bytes = path.as_os_str().as_bytes();
  if bytes.len() >= addr.sun_path.len() {
    return Err(HandoverError::PathTooLong(path.to_path_buf()));
  }
  for (d, s) in addr.sun_path.iter_mut().zip(bytes) {
    *d = *s as libc::c_char;
  }
  let len = (std::mem::size_of::<libc::sa_family_t>() + bytes.len() + 1) as libc::socklen_t;
  Ok((addr, len))
}

/// Removes a stale socket at `path`; anything else that is not a socket is an error.
fn unlink_stale(path: &Path) -> Result<(), HandoverError> {
  match std::fs::symlink_metadata(path) {
    Ok(m) if m.file_type().is_socket() => {
      std::fs::remove_file(path).map_err(|e| HandoverError::Bind(path.parent().unwrap_or(path).to_path_buf(), e))
    }
    Ok(_) => Err(HandoverError::NotASocket(path.to_path_buf())),
    Err(_) => Ok(()),
  }
}

/// Mode of `lazy-pages.socket`: only its owner (and root) may connect, as connect(2) needs write access.
pub const SOCKET_MODE: libc::mode_t = 0o600;

fn ensure_mode(path: &Path) -> io::Result<()> {
  use std::os::unix::fs::PermissionsExt;
  let m = std::fs::symlink_metadata(path)?;
  if !m.file_type().is_socket() {
    return Err(io::Error::other("the socket file was replaced right after bind"));
  }
  if m.permissions().mode() & 0o7777 != SOCKET_MODE {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(SOCKET_MODE))?;
  }
  Ok(())
}

/// Binds and listens at `<work_dir>/lazy-pages.socket`, mode 0600 whatever the umask.
pub fn bind(work_dir: &Path) -> Result<(OwnedFd, PathBuf), HandoverError> {
  let path = work_dir.join(SOCKET_NAME);
  let (addr, len) = sockaddr_for(&path)?;
  unlink_stale(&path)?;
  let bind_err = |e| HandoverError::Bind(work_dir.to_path_buf(), e);
  // SAFETY: plain socket(2); the result is checked.
  let raw = unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
  if raw < 0 {
    return Err(bind_err(io::Error::last_os_error()));
  }
  // SAFETY: fresh fd owned by nobody else.
  let fd = unsafe { OwnedFd::from_raw_fd(raw) };
  // bind(2) creates the socket file with the socket inode's mode minus the umask. Setting that mode to
  // 0600 first means the file never exists with a wider mode, whatever the umask (0777 by default: under
  // umask 000 anyone could connect). fchmod on our own fd, unlike umask(2), touches nothing process-wide,
  // so no other thread's files are affected.
  // SAFETY: fchmod on a socket fd we own.
  if unsafe { libc::fchmod(fd.as_raw_fd(), SOCKET_MODE) } != 0 {
    return Err(bind_err(io::Error::last_os_error()));
  }
  // SAFETY: `addr` is a valid sockaddr_un of `len` bytes.
  if unsafe { libc::bind(fd.as_raw_fd(), &addr as *const _ as *const libc::sockaddr, len) } != 0 {
    return Err(bind_err(io::Error::last_os_error()));
  }
  // A umask stricter than 0177 (e.g. 0277) leaves less than 0600 and the daemon's own user could not
  // connect: set exactly 0600. This only ever narrows or restores to 0600, never widens past it, and
  // the work dir was checked so that nobody else can have replaced the file meanwhile.
  if let Err(e) = ensure_mode(&path) {
    let _ = std::fs::remove_file(&path);
    return Err(bind_err(e));
  }
  // SAFETY: listen on a bound socket we own.
  if unsafe { libc::listen(fd.as_raw_fd(), 4) } != 0 {
    let e = io::Error::last_os_error();
    let _ = std::fs::remove_file(&path);
    return Err(bind_err(e));
  }
  Ok((fd, path))
}

/// Tokens of what the hand-over thread waits for.
const TOK_WAKE: u64 = 0;
const TOK_LISTEN: u64 = 1;
const TOK_CONN: u64 = 2;

/// The listening socket and the waker, watched; `close` wakes the thread through the waker.
fn watch(sock: RawFd, waker: &Waker) -> io::Result<Poller> {
  let poller = Poller::new()?;
  poller.add(waker.fd(), libc::EPOLLIN as u32, TOK_WAKE)?;
  poller.add(sock, libc::EPOLLIN as u32, TOK_LISTEN)?;
  Ok(poller)
}

fn accept(listen: RawFd) -> io::Result<OwnedFd> {
  // SAFETY: accept4 on our listening socket with null address out-params.
  let c = unsafe { libc::accept4(listen, std::ptr::null_mut(), std::ptr::null_mut(), libc::SOCK_CLOEXEC) };
  if c < 0 {
    return Err(io::Error::last_os_error());
  }
  // SAFETY: fresh fd owned by nobody else.
  let fd = unsafe { OwnedFd::from_raw_fd(c) };
  // A step is read whole once poll says it started; a peer that stalls in the middle of one must
  // not block this thread (and `close`, which joins it) for ever: give up after STEP_TIMEOUT.
  let tv = libc::timeval { tv_sec: STEP_TIMEOUT_SECS.into(), tv_usec: 0 };
  // SAFETY: setsockopt on our own socket with a properly sized timeval.
  unsafe {
    libc::setsockopt(
      fd.as_raw_fd(),
      libc::SOL_SOCKET,
      libc::SO_RCVTIMEO,
      &tv as *const _ as *const libc::c_void,
      std::mem::size_of::<libc::timeval>() as libc::socklen_t,
    )
  };
  Ok(fd)
}

/// Seconds a restorer may pause in the middle of one hand-over step (between the bytes of a pid, or
/// between a pid and its fd message). CRIU sends each step in one go.
const STEP_TIMEOUT_SECS: u32 = 5;

/// The connected peer's credentials (SO_PEERCRED: pid, effective uid and gid at connect time, as the
/// kernel recorded them; the peer cannot forge them). The pid lets the daemon kill only processes that
/// descend from the restorer when a hand-over fails; the uid decides whether the peer is heard at all.
fn peer_cred(fd: RawFd) -> Option<libc::ucred> {
  let mut cred = libc::ucred { pid: 0, uid: 0, gid: 0 };
  let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
  // SAFETY: getsockopt writes at most `len` bytes into `cred`, a properly sized ucred on our stack.
  let r = unsafe {
    libc::getsockopt(fd, libc::SOL_SOCKET, libc::SO_PEERCRED, &mut cred as *mut _ as *mut libc::c_void, &mut len)
  };
  (r == 0 && len as usize == std::mem::size_of::<libc::ucred>()).then_some(cred)
}

/// May a peer with effective uid `peer` hand over a restore to a daemon running as `me`? Only root
/// and the daemon's own user: anyone else handing over "restored tasks" would be served the
/// checkpoint's memory (into a userfaultfd of its own), or would take the one restorer slot.
pub fn trusted_peer(peer: libc::uid_t, me: libc::uid_t) -> bool {
  peer == 0 || peer == me
}

/// Why a peer is not heard, or None if it may hand over a restore.
fn untrusted_reason(path: &Path, cred: Option<libc::ucred>) -> Option<String> {
  // SAFETY: geteuid cannot fail and has no side effects.
  let me = unsafe { libc::geteuid() };
  match cred {
    Some(c) if trusted_peer(c.uid, me) => None,
    Some(c) => Some(format!(
      "{}: refused a connection from pid {} (uid {}): only root and the daemon's user (uid {me}) may hand over a restore; \
       nothing it sent was read",
      path.display(),
      c.pid,
      c.uid
    )),
    None => Some(format!(
      "{}: refused a connection whose credentials (SO_PEERCRED) could not be read; nothing it sent was read",
      path.display()
    )),
  }
}

impl Listener {
  /// Binds the socket and starts the thread; `report` is called on that thread for every event.
  pub fn start<F: FnMut(Report) + Send + 'static>(work_dir: &Path, mut report: F) -> Result<Listener, HandoverError> {
    let (sock, path) = bind(work_dir)?;
    let waker = Waker::new().and_then(|w| Ok((watch(sock.as_raw_fd(), &w)?, w)));
    let (poller, waker) = waker.map_err(|e| {
      let _ = std::fs::remove_file(&path);
      HandoverError::Bind(work_dir.to_path_buf(), e)
    })?;
    let stop = Arc::new(AtomicBool::new(false));
    let stop2 = stop.clone();
    let thread = std::thread::Builder::new()
      .name("lazy-pages-handover".into())
      .spawn({
        let path = path.clone();
        // The guardian keeps a copy of the listening socket from before anyone can connect until the
        // thread ends, so a restorer's uffds queued there are not dropped should this process die.
        let guardian_copy = crate::guardian::listening(sock.as_raw_fd());
        move || {
          let _guardian_copy = guardian_copy;
          serve(sock, &poller, &path, &stop2, &mut report)
        }
      })
      .map_err(|e| HandoverError::Bind(work_dir.to_path_buf(), e))?;
    Ok(Listener { path, stop, waker, thread: Some(thread) })
  }

  /// Socket path.
  pub fn path(&self) -> &Path {
    &self.path
  }

  /// Stops the thread, unlinks the socket. Idempotent.
  pub fn close(&mut self) {
    self.stop.store(true, Ordering::SeqCst);
    self.waker.wake();
    if let Some(t) = self.thread.take() {
      let _ = t.join();
      let _ = std::fs::remove_file(&self.path);
    }
  }
}

impl Drop for Listener {
  fn drop(&mut self) {
    self.close();
  }
}

/// The thread body: accept one restorer, read its steps, refuse any other connection, until stopped,
/// finished or failed. After "finished" the thread exits (so that Node can exit); the socket file
/// stays until `close`. A peer that is neither root nor the daemon's user is closed at once, before a
/// byte of it is read, and does not take the restorer's place: the real restorer may still connect.
fn serve(sock: OwnedFd, poller: &Poller, path: &Path, stop: &AtomicBool, report: &mut dyn FnMut(Report)) {
  let mut conn: Option<SocketSource> = None;
  // The guardian keeps a copy of the accepted socket while it is served (see guardian.rs).
  let mut _guardian_copy = None;
  loop {
    if stop.load(Ordering::SeqCst) {
      return;
    }
    let mut evs = [EMPTY; 3];
    let ready = match poller.wait(&mut evs, -1) {
      Ok(r) => r,
      Err(e) => {
        report(Report::Error(HandoverError::Io(e)));
        return;
      }
    };
    let is = |tok: u64| ready.iter().any(|e| e.u64 == tok);
    let (woken, listening, readable) = (is(TOK_WAKE), is(TOK_LISTEN), is(TOK_CONN));
    if woken || stop.load(Ordering::SeqCst) {
      return;
    }
    if listening {
      match accept(sock.as_raw_fd()) {
        Ok(c) => {
          let cred = peer_cred(c.as_raw_fd());
          if let Some(why) = untrusted_reason(path, cred) {
            drop(c);
            report(Report::Refused(why));
          } else if conn.is_none() {
            if let Err(e) = poller.add(c.as_raw_fd(), libc::EPOLLIN as u32, TOK_CONN) {
              report(Report::Error(HandoverError::Io(e)));
              return;
            }
            _guardian_copy = Some(crate::guardian::connection(c.as_raw_fd(), cred.map_or(0, |c| c.pid)));
            conn = Some(SocketSource(c));
            report(Report::Connected { pid: cred.map_or(0, |c| c.pid) });
          } else {
            drop(c);
            report(Report::Refused(
              "a second restorer connected to lazy-pages.socket; only one is served, it was closed".into(),
            ));
          }
        }
        Err(e) => report(Report::Refused(format!("accept failed: {e}"))),
      }
    }
    if readable {
      let Some(c) = conn.as_mut() else { continue };
      match next_step(c, &proc_is_uffd) {
        Ok(Step::Finished) => {
          report(Report::Step(Step::Finished));
          return;
        }
        Ok(s) => report(Report::Step(s)),
        // The stream is still in step after these (the pid and its 1-byte message were read whole):
        // keep reading, so the daemon learns every task that is handed over after the bad one and can
        // kill it too, instead of its uffd vanishing unread with the connection.
        Err(e @ (HandoverError::NoFd(_) | HandoverError::NotUffd(..))) => report(Report::Error(e)),
        Err(e) => {
          report(Report::Error(e));
          return;
        }
      }
    }
  }
}

#[cfg(test)]
mod tests {
  use super::*;
  use std::collections::VecDeque;

  /// Scripted source: each chunk is delivered by one read_some (split further if the buffer is smaller).
  struct Script(VecDeque<(Vec<u8>, Vec<RawFd>)>);
  impl Source for Script {
    fn read_some(&mut self, buf: &mut [u8]) -> io::Result<(usize, Vec<RawFd>)> {
      let Some((mut data, fds)) = self.0.pop_front() else { return Ok((0, vec![])) };
      let n = data.len().min(buf.len());
      buf[..n].copy_from_slice(&data[..n]);
      if n < data.len() {
        data.drain(..n);
        self.0.push_front((data, vec![]));
      }
      Ok((n, fds))
    }
  }

  fn ok_uffd(_: RawFd) -> Result<(), String> {
    Ok(())
  }

  fn fake_fd() -> RawFd {
    use std::os::fd::IntoRawFd;
    std::fs::File::open("/dev/null").unwrap().into_raw_fd()
  }

  #[test]
  fn parses_tasks_zombies_and_finished() {
    let fd = fake_fd();
    let mut s = Script(VecDeque::from(vec![
      (42i32.to_ne_bytes()[..2].to_vec(), vec![]),
      (42i32.to_ne_bytes()[2..].to_vec(), vec![]),
      (vec![0], vec![fd]),
      ((-7i32).to_ne_bytes().to_vec(), vec![]),
      (RESTORE_FINISHED.to_ne_bytes().to_vec(), vec![]),
    ]));
    assert_eq!(next_step(&mut s, &ok_uffd).unwrap(), Step::Task { pid: 42, fd });
    assert_eq!(next_step(&mut s, &ok_uffd).unwrap(), Step::Zombie { pid: 7 });
    assert_eq!(next_step(&mut s, &ok_uffd).unwrap(), Step::Finished);
    close_fds(vec![fd]);
  }

  #[test]
  fn protocol_errors_are_typed() {
    let mut trunc = Script(VecDeque::from(vec![(vec![1, 2], vec![])]));
    assert!(matches!(next_step(&mut trunc, &ok_uffd), Err(HandoverError::Truncated(2))));
    let mut hup = Script(VecDeque::new());
    assert!(matches!(next_step(&mut hup, &ok_uffd), Err(HandoverError::HangUp)));
    let mut zero = Script(VecDeque::from(vec![(0i32.to_ne_bytes().to_vec(), vec![])]));
    assert!(matches!(next_step(&mut zero, &ok_uffd), Err(HandoverError::PidZero)));
    let mut nofd = Script(VecDeque::from(vec![(5i32.to_ne_bytes().to_vec(), vec![]), (vec![0], vec![])]));
    assert!(matches!(next_step(&mut nofd, &ok_uffd), Err(HandoverError::NoFd(5))));
    let mut hup_after_pid = Script(VecDeque::from(vec![(5i32.to_ne_bytes().to_vec(), vec![])]));
    assert!(matches!(next_step(&mut hup_after_pid, &ok_uffd), Err(HandoverError::HangUp)));
    let fd = fake_fd();
    let mut notu = Script(VecDeque::from(vec![(5i32.to_ne_bytes().to_vec(), vec![]), (vec![0], vec![fd])]));
    let e = next_step(&mut notu, &proc_is_uffd).unwrap_err();
    assert_eq!(e.code(), "ENOTUFFD");
    assert!(e.to_string().contains("/dev/null"));
    // the non-uffd fd was closed
    assert!(fd_kind(fd).is_none() || fd_kind(fd).as_deref() != Some("/dev/null"));
  }

  #[test]
  fn socket_path_errors() {
    let long = PathBuf::from(format!("/tmp/{}", "x".repeat(120)));
    assert!(matches!(bind(&long), Err(HandoverError::PathTooLong(_))));
    let dir = std::env::temp_dir().join(format!("uffd-native-hs-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(SOCKET_NAME), b"not a socket").unwrap();
    let e = bind(&dir).unwrap_err();
    assert_eq!(e.code(), "ESOCKET");
    assert!(e.to_string().contains("not a socket"));
    std::fs::remove_file(dir.join(SOCKET_NAME)).unwrap();
    let (fd, path) = bind(&dir).unwrap();
    drop(fd);
    // a stale socket is replaced
    let (_fd2, _) = bind(&dir).unwrap();
    std::fs::remove_file(path).unwrap();
    let e = bind(Path::new("/nonexistent-dir-xyz")).unwrap_err();
    assert!(e.to_string().contains("/nonexistent-dir-xyz"));
  }

  #[test]
  fn socket_is_0600_whatever_the_umask() {
    use std::os::unix::fs::PermissionsExt;
    // The test process's umask (022 usually) would leave 0755 without the fchmod before bind; umask
    // itself is not changed here, as it is process-wide and other tests create files meanwhile.
    let dir = std::env::temp_dir().join(format!("uffd-native-mode-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (_fd, path) = bind(&dir).unwrap();
    let mode = std::fs::symlink_metadata(&path).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode, 0o600, "socket mode {mode:o}");
    std::fs::remove_dir_all(&dir).unwrap();
  }

  #[test]
  fn only_root_and_our_user_are_trusted() {
    assert!(trusted_peer(0, 1000));
    assert!(trusted_peer(1000, 1000));
    assert!(!trusted_peer(65534, 1000));
    assert!(trusted_peer(0, 0));
    assert!(!trusted_peer(65534, 0));
    let why =
      untrusted_reason(Path::new("/w/lazy-pages.socket"), Some(libc::ucred { pid: 77, uid: 65534, gid: 65534 }));
    // SAFETY: geteuid has no side effects.
    if unsafe { libc::geteuid() } != 65534 {
      let why = why.unwrap();
      assert!(why.contains("pid 77") && why.contains("uid 65534") && why.contains("/w/lazy-pages.socket"), "{why}");
    }
    assert!(untrusted_reason(Path::new("/w/s"), None).is_some());
  }
}
