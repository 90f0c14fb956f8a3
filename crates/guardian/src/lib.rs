//! The guardian: a small process that outlives the lazy-pages daemon.
//!
//! Why it exists: a restored task reads its lazy pages through the userfaultfd the daemon holds. If
//! the daemon dies (SIGKILL, the OOM killer, a panic, an uncaught exception) the kernel closes that
//! uffd, unregisters its ranges, and the task reads ZEROS where its data was: silent corruption.
//! The daemon's own "kill before close" rule cannot run when the daemon is dead, so this process
//! runs it instead.
//!
//! How: the daemon starts it with one end of a SOCK_SEQPACKET socketpair (fd 3) and a pidfd of the
//! daemon (fd 4), and sends it a duplicate of every owed task's uffd and a pidfd of the task (see
//! [`wire`]). While a duplicate is open here the uffd stays open, so a task faulting after the
//! daemon's death stays blocked in the kernel instead of reading zeros. When the daemon is gone
//! (its pidfd becomes readable, or the socket reaches end of file) with tasks still owed, each is
//! SIGKILLed through its pidfd (never a bare pid, which could have been reused), the guardian waits
//! until they have exited, and only then are the duplicates closed (by exiting). When the daemon
//! says a task is complete, its duplicate is closed at once. A clean stop (`Bye`, or end of file
//! with nothing owed) exits quietly.
//!
//! It must not die before the daemon does: it runs in its own session (Ctrl-C and signals to the
//! daemon's process group do not reach it), ignores the catchable terminating signals, asks not to
//! be chosen by the OOM killer, and writes its log with plain write(2), so a closed stderr cannot
//! end it either.

#![deny(clippy::undocumented_unsafe_blocks)]

pub mod wire;

use std::collections::{HashMap, HashSet};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::{Duration, Instant};

use wire::{Kind, Msg, Recv};

/// The fd the daemon passes the socketpair end on.
pub const SOCK_FD: RawFd = 3;
/// The fd the daemon passes its own pidfd on.
pub const DAEMON_PIDFD: RawFd = 4;

/// How long killed tasks are given to exit before the duplicates are closed anyway.
const KILL_WAIT: Duration = Duration::from_secs(10);
/// How long uffds of tasks that could not be identified (so not killed) are still held after the
/// daemon died: they stay blocked meanwhile rather than read zeros, and an operator who saw the
/// daemon die can kill them. Not forever: nothing tells the guardian when such a task has gone.
const UNKNOWN_HOLD: Duration = Duration::from_secs(10);

/// Writes one line to stderr with write(2): never panics (eprintln! would on EPIPE or EBADF).
fn log(msg: &str) {
  // SAFETY: getpid has no preconditions.
  let me = unsafe { libc::getpid() };
  let line = format!("lazy-pages guardian (pid {me}): {msg}\n");
  // SAFETY: writes our own buffer to fd 2; errors (closed or broken stderr) are ignored on purpose.
  unsafe { libc::write(2, line.as_ptr() as *const libc::c_void, line.len()) };
}

/// Makes this process hard to end by accident. Called first thing (the spawner's pre-exec hook
/// already did the session and signals; this repeats it for a guardian started another way, e.g.
/// by `node`, which resets signal dispositions at start-up).
pub fn harden() {
  // SAFETY: setsid has no memory-safety preconditions; EPERM (already a session leader) is fine.
  unsafe { libc::setsid() };
  // Signals sent to the daemon's process group (Ctrl-C, a service manager's SIGTERM, SIGHUP from a
  // closing terminal) must not end the guardian before it has done its job; SIGPIPE must not
  // either (stderr may be a pipe whose reader is gone).
  for sig in [
    libc::SIGHUP,
    libc::SIGINT,
    libc::SIGTERM,
    libc::SIGQUIT,
    libc::SIGPIPE,
    libc::SIGTSTP,
    libc::SIGTTIN,
    libc::SIGTTOU,
    libc::SIGUSR1,
    libc::SIGUSR2,
  ] {
    // SAFETY: installing SIG_IGN has no preconditions.
    unsafe { libc::signal(sig, libc::SIG_IGN) };
  }
  // SAFETY: prctl with integer arguments; no pointers.
  unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, 0, 0, 0, 0) };
  let name = b"lazy-pages-guar\0";
  // SAFETY: PR_SET_NAME reads a NUL-terminated string of at most 16 bytes from `name`.
  unsafe { libc::prctl(libc::PR_SET_NAME, name.as_ptr() as libc::c_ulong, 0, 0, 0) };
  // Two fds per owed task are held here: the default soft limit (1024) must not be what makes a
  // message's fds be dropped (recvmsg then truncates them). Raise it to the hard limit.
  let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
  // SAFETY: getrlimit/setrlimit read and write one rlimit we own.
  unsafe {
    if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
      lim.rlim_cur = lim.rlim_max;
      libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
    }
  }
  // When memory runs out the daemon (large) is the likely victim; the guardian (small) must still
  // be there to act. Needs CAP_SYS_RESOURCE: best effort.
  let _ = std::fs::write("/proc/self/oom_score_adj", "-1000");
}

fn fd_target(fd: RawFd) -> Option<String> {
  std::fs::read_link(format!("/proc/self/fd/{fd}")).ok().map(|p| p.to_string_lossy().into_owned())
}

/// The fds a guardian is started with: the socketpair end (fd 3) and the daemon's pidfd (fd 4, if
/// any). None when fd 3 is not a socket: this process was not started by a daemon.
pub fn inherited_fds() -> Option<(OwnedFd, Option<OwnedFd>)> {
  if !fd_target(SOCK_FD).is_some_and(|t| t.starts_with("socket:")) {
    return None;
  }
  // SAFETY: fd 3 was checked to be an open socket, passed to us for our exclusive use.
  let sock = unsafe { OwnedFd::from_raw_fd(SOCK_FD) };
  let daemon = fd_target(DAEMON_PIDFD).filter(|t| t == "anon_inode:[pidfd]").map(|_| {
    // SAFETY: fd 4 is an open pidfd passed to us for our exclusive use.
    unsafe { OwnedFd::from_raw_fd(DAEMON_PIDFD) }
  });
  Some((sock, daemon))
}

/// The binary's entry: fd 3 must be the socketpair end, fd 4 (optional) the daemon's pidfd.
pub fn main_with_inherited_fds() -> i32 {
  let Some((sock, daemon)) = inherited_fds() else {
    log("started without the daemon's socket on fd 3: the guardian is started by `lazy-pages daemon`, not by hand");
    return 2;
  };
  harden();
  run(sock, daemon)
}

/// Starts `cmd` as the guardian of the calling process: in a new session, with the terminating
/// signals ignored from the first instruction, with our end of a fresh socketpair on fd 3 and a
/// pidfd of us on fd 4, and nothing else of ours open (the uffds, the images, the sockets the
/// daemon has open must not live on in the guardian). stdin and stdout are /dev/null; stderr is
/// inherited so its messages reach the daemon's operator. Returns our end and the child.
pub fn spawn(cmd: &mut std::process::Command) -> io::Result<(OwnedFd, std::process::Child)> {
  use std::os::unix::process::CommandExt;
  let mut sv = [-1 as RawFd; 2];
  // SAFETY: socketpair writes two fds into `sv`; checked.
  if unsafe { libc::socketpair(libc::AF_UNIX, libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC, 0, sv.as_mut_ptr()) } != 0 {
    return Err(io::Error::last_os_error());
  }
  // SAFETY: two fresh fds owned by nobody else.
  let (ours, theirs) = unsafe { (OwnedFd::from_raw_fd(sv[0]), OwnedFd::from_raw_fd(sv[1])) };
  // SAFETY: getpid has no preconditions.
  let me = procfs::pidfd_open(unsafe { libc::getpid() });
  let (sock, pidfd) = (theirs.as_raw_fd(), me.as_ref().map_or(-1, |f| f.as_raw_fd()));
  cmd.stdin(std::process::Stdio::null()).stdout(std::process::Stdio::null()).stderr(std::process::Stdio::inherit());
  // SAFETY: the hook runs in the forked child before exec and only makes async-signal-safe system
  // calls (no allocation, no locks): setsid, signal, fcntl, dup2, close_range.
  unsafe { cmd.pre_exec(move || child_setup(sock, pidfd)) };
  let child = cmd.spawn()?;
  drop(theirs);
  drop(me);
  // A guardian that stops reading (SIGSTOPped, wedged) must not stall the daemon's event loop for
  // ever: a send waits at most 2 s, then fails and the daemon warns.
  let tv = libc::timeval { tv_sec: 2, tv_usec: 0 };
  // SAFETY: setsockopt on our own socket with a properly sized timeval.
  unsafe {
    libc::setsockopt(
      ours.as_raw_fd(),
      libc::SOL_SOCKET,
      libc::SO_SNDTIMEO,
      &tv as *const _ as *const libc::c_void,
      std::mem::size_of::<libc::timeval>() as libc::socklen_t,
    )
  };
  Ok((ours, child))
}

/// The pre-exec part of [`spawn`], in the forked child. Async-signal-safe system calls only.
fn child_setup(sock: RawFd, pidfd: RawFd) -> io::Result<()> {
  let fail = || Err(io::Error::last_os_error());
  // SAFETY: each call below is a plain system call on integers or fds of this (forked) process.
  unsafe {
    // Own session and process group: a signal to the daemon's group, or its terminal closing,
    // does not reach the guardian. A forked child is never a group leader, so this succeeds.
    if libc::setsid() < 0 {
      return fail();
    }
    // Ignored dispositions survive exec: the guardian ignores these from its first instruction.
    for sig in [libc::SIGHUP, libc::SIGINT, libc::SIGTERM, libc::SIGQUIT, libc::SIGPIPE] {
      libc::signal(sig, libc::SIG_IGN);
    }
    // Through fds >= 10 first, so that moving one onto 3 or 4 cannot clobber the other.
    let s = libc::fcntl(sock, libc::F_DUPFD_CLOEXEC, 10);
    if s < 0 || libc::dup2(s, SOCK_FD) < 0 {
      return fail();
    }
    let mut keep_from = DAEMON_PIDFD;
    if pidfd >= 0 {
      let p = libc::fcntl(pidfd, libc::F_DUPFD_CLOEXEC, 10);
      if p < 0 || libc::dup2(p, DAEMON_PIDFD) < 0 {
        return fail();
      }
      keep_from = DAEMON_PIDFD + 1;
    }
    // The daemon's stderr may be close-on-exec (node marks its stdio so); the guardian's messages
    // belong there (this only changes the child's own fd table).
    libc::fcntl(2, libc::F_SETFD, 0);
    // dup2 made 3 (and 4) inheritable; every other fd closes at exec (the std pipe that reports
    // exec errors is close-on-exec already, so marking rather than closing keeps it working).
    if libc::syscall(libc::SYS_close_range, keep_from as u32, u32::MAX, libc::CLOSE_RANGE_CLOEXEC) != 0 {
      for fd in keep_from..65_536 {
        libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC);
      }
    }
  }
  Ok(())
}

/// A task is named by (loop id, process id in that loop).
type Key = (u64, u32);

struct Task {
  /// Our duplicate of its userfaultfd: while open, the uffd is.
  _uffd: OwnedFd,
  pidfd: Option<OwnedFd>,
  /// Real pid (0: not identified yet).
  pid: i32,
  /// When we learnt of it (clock ticks since boot, as /proc/PID/stat's start time).
  added: u64,
  /// How the restorer named it, if it was handed over (kept for finding it should its pid never come).
  handed: Option<Handed>,
}

/// A task as the restorer named it at the hand-over.
#[derive(Clone, Copy)]
struct Handed {
  /// Its pid in the restored tree's pid namespace.
  ns_pid: i32,
  /// The restorer's pid (SO_PEERCRED, in our namespace), 0 if unknown.
  restorer: i32,
}

struct Hold {
  _uffd: OwnedFd,
  who: Handed,
}

#[derive(Default)]
struct State {
  tasks: HashMap<Key, Task>,
  /// Every task ever added (released ones too): its real pid (0 = unknown) and the task it was
  /// forked from. Used to find a forked child whose pid the daemon had not identified yet.
  lineage: HashMap<Key, (i32, Option<Key>)>,
  /// Start times (clock ticks since boot) of the pids we were given (tasks, restorers), read when we
  /// were given them: a pid whose process has since exited and been reused is never acted upon.
  starts: HashMap<i32, u64>,
  holds: HashMap<u32, Hold>,
  /// The restorer's hand-over connections: our copy, the restorer's pid, the daemon's fd number.
  conns: Vec<(OwnedFd, i32, u32)>,
  /// The daemon's listening hand-over sockets, with the daemon's fd number.
  listeners: Vec<(OwnedFd, u32)>,
  /// Uffds taken from a hand-over connection after the daemon was gone: held until we exit.
  taken: Vec<OwnedFd>,
  /// Our own start time (clock ticks since boot): the tasks of a restore we serve are younger.
  born: u64,
  closed_loops: u64,
  /// The id a closed loop's leftovers were moved to, by the loop's own id.
  closed_ids: HashMap<u64, u64>,
  bye: bool,
  bad: u64,
}

enum Drained {
  More,
  Eof,
  Bye,
}

impl State {
  fn apply(&mut self, m: Msg, fds: Vec<OwnedFd>) {
    let key = (m.loop_id, m.proc_id);
    let mut fds = fds.into_iter();
    match m.kind {
      Kind::Hold => {
        if let Some(uffd) = fds.next() {
          // A previous hold under the same fd number was closed by the daemon without our hearing
          // (its number was reused since): it is replaced.
          self.note_start(m.proc_id as i32);
          self.holds.insert(m.aux, Hold { _uffd: uffd, who: Handed { ns_pid: m.pid, restorer: m.proc_id as i32 } });
        }
      }
      Kind::Add => {
        let handed = self.holds.remove(&m.aux).map(|h| h.who);
        let Some(uffd) = fds.next() else { return };
        let pidfd = fds.next();
        self.note_start(m.pid);
        let l = self.lineage.entry(key).or_insert((0, None));
        l.0 = m.pid;
        self.tasks.insert(key, Task { _uffd: uffd, pidfd, pid: m.pid, added: procfs::now_ticks(), handed });
      }
      Kind::Watch => {
        self.note_start(m.pid);
        if let Some(t) = self.tasks.get_mut(&key) {
          if t.pidfd.is_none() {
            t.pidfd = fds.next();
            t.pid = m.pid;
          }
        }
        if let Some(l) = self.lineage.get_mut(&key) {
          l.0 = m.pid;
        }
      }
      Kind::Forked => {
        self.lineage.entry(key).or_insert((0, None)).1 = Some((m.loop_id, m.aux));
      }
      Kind::Release => {
        self.tasks.remove(&key);
      }
      Kind::Forget => {
        self.holds.remove(&m.aux);
      }
      Kind::LoopClosed => self.loop_closed(m.loop_id),
      Kind::Bye => self.bye = true,
      Kind::Ready => {}
      Kind::Conn => {
        self.note_start(m.proc_id as i32);
        if let Some(c) = fds.next() {
          self.conns.push((c, m.proc_id as i32, m.aux));
        }
      }
      Kind::ConnDone => self.conns.retain(|c| c.2 != m.aux),
      Kind::Listen => {
        if let Some(l) = fds.next() {
          self.listeners.push((l, m.aux));
        }
      }
      Kind::ListenDone => self.listeners.retain(|l| l.1 != m.aux),
      Kind::LoopDone => {
        let id = self.closed_ids.get(&m.loop_id).copied().unwrap_or(m.loop_id);
        self.tasks.retain(|k, _| k.0 != id);
      }
    }
  }

  fn note_start(&mut self, pid: i32) {
    if pid > 0 {
      if let Some(t) = procfs::start_ticks(pid) {
        self.starts.insert(pid, t);
      }
    }
  }

  /// Is `pid` still the process it was when we were given it (not exited, its pid not reused)?
  fn same(&self, pid: i32) -> bool {
    pid > 0 && self.starts.get(&pid).is_some_and(|s| procfs::start_ticks(pid) == Some(*s))
  }

  /// The daemon may reuse a closed loop's id for a new loop: what the old one left owed moves to an
  /// id of our own, so the two never mix.
  fn loop_closed(&mut self, id: u64) {
    self.closed_loops += 1;
    let new = u64::MAX - self.closed_loops;
    self.closed_ids.insert(id, new);
    let rekey = |k: Key| if k.0 == id { (new, k.1) } else { k };
    self.tasks = std::mem::take(&mut self.tasks).into_iter().map(|(k, t)| (rekey(k), t)).collect();
    self.lineage =
      std::mem::take(&mut self.lineage).into_iter().map(|(k, (pid, p))| (rekey(k), (pid, p.map(rekey)))).collect();
  }

  /// Reads every queued message (non-blocking).
  fn drain(&mut self, sock: RawFd) -> Drained {
    loop {
      match wire::recv(sock) {
        Ok(Recv::Msg(m, fds)) => {
          self.apply(m, fds);
          if self.bye {
            return Drained::Bye;
          }
        }
        Ok(Recv::Bad) => {
          self.bad += 1;
          if self.bad == 1 {
            log("ignored a malformed or truncated message from the daemon (out of fds?)");
          }
        }
        Ok(Recv::Eof) => return Drained::Eof,
        // The daemon closed its end with our `Ready` unread: reported once, before what it had sent
        // us (which is still queued, and must be read: end of file follows it).
        Err(e) if e.raw_os_error() == Some(libc::ECONNRESET) => continue,
        Ok(Recv::Empty) => return Drained::More,
        Err(e) => {
          // Not end of file: the daemon may well be alive. Try again later rather than act.
          log(&format!("reading from the daemon failed: {e}"));
          std::thread::sleep(Duration::from_millis(10));
          return Drained::More;
        }
      }
    }
  }

  /// Forked children that are owed pages but whose pid the daemon had not identified yet: among the
  /// descendants of the nearest ancestor whose pid is known, those no task has as its pid, that
  /// already existed when we heard of the child. Looked for before anything is killed: a killed
  /// parent's children are reparented out of reach.
  fn find_unidentified(&self, key: Key, added: u64, known: &HashSet<i32>) -> Vec<(i32, OwnedFd)> {
    let mut depth = 1;
    let mut cur = self.lineage.get(&key).and_then(|l| l.1);
    let ancestor = loop {
      let Some(k) = cur else { return Vec::new() };
      let Some(&(pid, parent)) = self.lineage.get(&k) else { return Vec::new() };
      if pid > 0 {
        if !self.same(pid) {
          return Vec::new();
        }
        break pid;
      }
      depth += 1;
      cur = parent;
      if depth > 64 {
        return Vec::new();
      }
    };
    let mut found = Vec::new();
    let mut level = vec![ancestor];
    for _ in 0..depth {
      let mut next = Vec::new();
      for p in &level {
        for c in procfs::children(*p) {
          next.push(c);
          if known.contains(&c) {
            continue;
          }
          let Some(start) = procfs::start_ticks(c) else { continue };
          // One tick of slack: both clocks are read in ticks.
          if start > added + 1 {
            continue;
          }
          // Take a pidfd, then check the start time again: from here on the pidfd names this very
          // process, even if the pid were reused.
          if let Some(fd) = procfs::pidfd_open(c) {
            if procfs::start_ticks(c) == Some(start) {
              found.push((c, fd));
            }
          }
        }
      }
      level = next;
    }
    found
  }

  /// A task handed over but not identified by the daemon when it died: the descendant of the
  /// restorer whose innermost pid is the one the restorer named, younger than us. The same trust as
  /// the daemon gives the tasks of a failed hand-over (a descendant of the restorer, younger than the
  /// daemon); not its registered memory, as CRIU hands a uffd over before it registers the VMAs.
  fn find_handed(&self, h: Handed) -> Option<(i32, OwnedFd)> {
    if !self.same(h.restorer) {
      return None;
    }
    let mut queue = std::collections::VecDeque::from([h.restorer]);
    let mut seen = 0;
    while let Some(p) = queue.pop_front() {
      seen += 1;
      if seen > 4096 {
        return None;
      }
      for c in procfs::children(p) {
        queue.push_back(c);
        if procfs::innermost_pid(c) != Some(h.ns_pid) {
          continue;
        }
        let Some(start) = procfs::start_ticks(c) else { continue };
        if start + 1 < self.born {
          continue;
        }
        let fd = procfs::pidfd_open(c)?;
        return (procfs::start_ticks(c) == Some(start)).then_some((c, fd));
      }
    }
    None
  }

  /// Tasks of a uffd taken from the hand-over connection whose pid the daemon had read before it died:
  /// every descendant of the restorer younger than us with memory registered with a userfaultfd
  /// that no task we know of has as its pid (a task whose pages were all delivered had its uffd
  /// closed, so it has none registered any more).
  fn sweep(&self, restorer: i32, known: &HashSet<i32>) -> Vec<(i32, OwnedFd)> {
    let mut out = Vec::new();
    if !self.same(restorer) {
      return out;
    }
    let mut queue = std::collections::VecDeque::from([restorer]);
    let mut seen = 0;
    while let Some(p) = queue.pop_front() {
      seen += 1;
      if seen > 4096 {
        break;
      }
      for c in procfs::children(p) {
        queue.push_back(c);
        if known.contains(&c) || !procfs::has_uffd_ranges(c) {
          continue;
        }
        let Some(start) = procfs::start_ticks(c) else { continue };
        if start + 1 < self.born {
          continue;
        }
        if let Some(fd) = procfs::pidfd_open(c) {
          if procfs::start_ticks(c) == Some(start) {
            out.push((c, fd));
          }
        }
      }
    }
    out
  }

  /// Takes what is still queued on the hand-over connections: uffds the restorer sent that the
  /// daemon never read. Each is held (so its task blocks rather than reads zeros) and returned with
  /// the pid the restorer named it by, when that was not consumed by the daemon already. The
  /// connection is shut down first, so the restorer cannot add more behind our back: its next send
  /// fails, and it abandons the restore.
  fn take_in_flight(&mut self) -> Vec<(Option<i32>, i32)> {
    // Restorers that connected (and maybe sent everything) before the daemon accepted them: no new
    // connection from now on (shutdown makes connect fail), then take every one still queued.
    for (l, _) in std::mem::take(&mut self.listeners) {
      let fd = l.as_raw_fd();
      // SAFETY: shutdown(2) on a listening socket we own: later connects are refused.
      unsafe { libc::shutdown(fd, libc::SHUT_RDWR) };
      loop {
        let mut p = libc::pollfd { fd, events: libc::POLLIN, revents: 0 };
        // SAFETY: one valid pollfd, no wait.
        if unsafe { libc::poll(&mut p, 1, 0) } <= 0 {
          break;
        }
        // SAFETY: accept4 on our listening socket, with null address out-params.
        let c = unsafe { libc::accept4(fd, std::ptr::null_mut(), std::ptr::null_mut(), libc::SOCK_CLOEXEC) };
        if c < 0 {
          break;
        }
        // SAFETY: a fresh fd owned by nobody else.
        let c = unsafe { OwnedFd::from_raw_fd(c) };
        // Only a restorer the daemon would have heard (root or its user): another peer's "tasks"
        // are nothing to act on.
        match procfs::peer_cred(c.as_raw_fd()) {
          // SAFETY: geteuid has no preconditions.
          Some(cr) if cr.uid == 0 || cr.uid == unsafe { libc::geteuid() } => {
            self.note_start(cr.pid);
            self.conns.push((c, cr.pid, u32::MAX));
          }
          _ => {}
        }
      }
    }
    let mut found = Vec::new();
    for (c, restorer, _) in std::mem::take(&mut self.conns) {
      let fd = c.as_raw_fd();
      // SAFETY: shutdown(2) on a socket we own.
      unsafe { libc::shutdown(fd, libc::SHUT_RDWR) };
      let mut bytes: Vec<u8> = Vec::new();
      loop {
        let (n, fds) = match procfs::recv_stream(fd) {
          Ok(Some(r)) => r,
          Ok(None) | Err(_) => break,
        };
        bytes.extend_from_slice(&n);
        for u in fds {
          // The protocol: a 4-byte pid, then a 1-byte message carrying the uffd. If the daemon had
          // read the pid, only the message is left and the pid is unknown here.
          let ns = (bytes.len() >= 5).then(|| {
            let b = &bytes[bytes.len() - 5..bytes.len() - 1];
            i32::from_ne_bytes([b[0], b[1], b[2], b[3]])
          });
          found.push((ns.filter(|p| *p > 0), restorer));
          self.taken.push(u);
        }
      }
    }
    found
  }

  /// The daemon is gone (or said goodbye): kill whatever is still owed, wait for it to exit, let go.
  fn settle(mut self, why: &str) -> i32 {
    if self.bye {
      // A deliberate stop: uffds the daemon received but never served were closed by it on purpose.
      self.holds.clear();
    }
    let in_flight = self.take_in_flight();
    if self.tasks.is_empty() && self.holds.is_empty() && in_flight.is_empty() {
      return 0;
    }
    let known: HashSet<i32> = self.lineage.values().map(|l| l.0).filter(|p| *p > 0).collect();
    let mut extra: Vec<(i32, OwnedFd)> = Vec::new();
    let mut seen = HashSet::new();
    let mut unknown = 0;
    for (key, t) in &self.tasks {
      if t.pidfd.is_some() || t.pid > 0 {
        // pid > 0 without a pidfd: it had already exited when the daemon added it.
        continue;
      }
      // Served but not identified yet: a forked child (found through its parent), or a task CRIU
      // handed over before its VMAs were in place (found through the restorer, as a hold is).
      let mut found = self.find_unidentified(*key, t.added, &known);
      if found.is_empty() {
        found.extend(t.handed.and_then(|h| self.find_handed(h)));
      }
      if found.is_empty() {
        unknown += 1;
      }
      for (pid, fd) in found {
        if seen.insert(pid) {
          extra.push((pid, fd));
        }
      }
    }
    let mut handed = 0;
    for h in self.holds.values() {
      match self.find_handed(h.who) {
        Some((pid, fd)) if seen.insert(pid) => {
          handed += 1;
          extra.push((pid, fd));
        }
        Some(_) => handed += 1,
        None => unknown += 1,
      }
    }
    for (ns, restorer) in &in_flight {
      let found: Vec<(i32, OwnedFd)> = match ns {
        Some(p) => self.find_handed(Handed { ns_pid: *p, restorer: *restorer }).into_iter().collect(),
        None => self.sweep(*restorer, &known),
      };
      if found.is_empty() {
        unknown += 1;
      }
      handed += 1;
      for (pid, fd) in found {
        if seen.insert(pid) {
          extra.push((pid, fd));
        }
      }
    }
    let mut killed: Vec<(i32, RawFd)> = Vec::new();
    let mut targets: Vec<(i32, RawFd)> =
      self.tasks.values().filter_map(|t| t.pidfd.as_ref().map(|f| (t.pid, f.as_raw_fd()))).collect();
    targets.extend(extra.iter().map(|(p, f)| (*p, f.as_raw_fd())));
    for (pid, fd) in targets {
      match procfs::pidfd_kill(fd) {
        Ok(()) => killed.push((pid, fd)),
        Err(e) if e.raw_os_error() == Some(libc::ESRCH) => {} // exited already
        Err(e) => log(&format!("could not SIGKILL pid {pid}: {e}")),
      }
    }
    let owed = self.tasks.len() + handed;
    let pids: Vec<String> = killed.iter().map(|(p, _)| p.to_string()).collect();
    log(&format!(
      "{why} with {owed} process(es) still owed pages: SIGKILLed {} so none reads zeros where its pages were{}",
      if pids.is_empty() { "none (all had exited)".to_string() } else { format!("pid {}", pids.join(", ")) },
      if extra.is_empty() {
        String::new()
      } else {
        format!(" ({} of them found by their parent or the restorer: not identified by the daemon yet)", extra.len())
      }
    ));
    // The duplicates are closed only once the killed tasks have exited: a task still in a system
    // call could otherwise read zeros from its memory before the SIGKILL takes effect.
    let fds: Vec<RawFd> = killed.iter().map(|k| k.1).collect();
    if !procfs::wait_exited(&fds, KILL_WAIT) {
      log(&format!(
        "killed processes had not all exited after {} s; letting go of their userfaultfds",
        KILL_WAIT.as_secs()
      ));
    }
    if unknown > 0 {
      log(&format!(
        "{unknown} process(es) could not be identified, so not killed: their userfaultfds are held {} s more so that \
         they block instead of reading zeros; kill them",
        UNKNOWN_HOLD.as_secs()
      ));
      std::thread::sleep(UNKNOWN_HOLD);
    }
    0
  }
}

/// Serves the daemon on `sock` until it is gone; `daemon` is its pidfd (None: end of file on the
/// socket is the only sign). Returns the exit code.
pub fn run(sock: OwnedFd, daemon: Option<OwnedFd>) -> i32 {
  // Tell the daemon we are up (it waits for this before it serves anything).
  if let Err(e) = wire::send(sock.as_raw_fd(), &Msg::new(Kind::Ready), &[]) {
    log(&format!("cannot reach the daemon: {e}"));
  }
  let poller = match lazy_pages_poller::Poller::new() {
    Ok(p) => p,
    Err(e) => {
      log(&format!("epoll_create1 failed: {e}"));
      // Without a poller, block on the socket alone: end of file still means the daemon is gone.
      return run_blocking(sock);
    }
  };
  let s = sock.as_raw_fd();
  if let Err(e) = poller.add(s, (libc::EPOLLIN | libc::EPOLLRDHUP) as u32, 0) {
    log(&format!("cannot watch the daemon's socket: {e}"));
    return run_blocking(sock);
  }
  let mut daemon_pid = None;
  if let Some(d) = &daemon {
    daemon_pid = procfs::pidfd_pid(d.as_raw_fd());
    if let Err(e) = poller.add(d.as_raw_fd(), libc::EPOLLIN as u32, 1) {
      log(&format!("cannot watch the daemon's pidfd ({e}); watching its socket only"));
    }
  }
  let who = daemon_pid.map_or_else(|| "the daemon".to_string(), |p| format!("the daemon (pid {p})"));
  let mut st = State { born: procfs::self_start_ticks(), ..State::default() };
  let mut evs = [lazy_pages_poller::EMPTY; 4];
  loop {
    let died = match poller.wait(&mut evs, -1) {
      Ok(ready) => ready.iter().any(|e| e.u64 == 1),
      Err(e) => {
        log(&format!("epoll_wait failed: {e}"));
        return run_blocking_state(sock, st, &who);
      }
    };
    // Whatever woke us, every message queued before it counts: read them all first. When the
    // daemon's pidfd is readable its fds are already closed (exit_files precedes the exit
    // notification), so the queue is complete.
    match st.drain(s) {
      Drained::Bye => return st.settle(&format!("{who} stopped")),
      Drained::Eof => return st.settle(&format!("{who} is gone")),
      Drained::More if died => return st.settle(&format!("{who} died")),
      Drained::More => {}
    }
  }
}

fn run_blocking(sock: OwnedFd) -> i32 {
  run_blocking_state(sock, State { born: procfs::self_start_ticks(), ..State::default() }, "the daemon")
}

/// Fallback without epoll: poll(2) the socket alone.
fn run_blocking_state(sock: OwnedFd, mut st: State, who: &str) -> i32 {
  loop {
    let mut p = libc::pollfd { fd: sock.as_raw_fd(), events: libc::POLLIN | libc::POLLRDHUP, revents: 0 };
    // SAFETY: one valid pollfd.
    unsafe { libc::poll(&mut p, 1, -1) };
    match st.drain(sock.as_raw_fd()) {
      Drained::Bye => return st.settle(&format!("{who} stopped")),
      Drained::Eof => return st.settle(&format!("{who} is gone")),
      Drained::More => {}
    }
  }
}

/// The little /proc and pidfd plumbing the guardian needs.
pub mod procfs {
  use super::*;

  pub fn pidfd_open(pid: i32) -> Option<OwnedFd> {
    // SAFETY: plain syscall with integer arguments; checked.
    let r = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    // SAFETY: a fresh fd (CLOEXEC, as pidfd_open makes them) owned by nobody else when r >= 0.
    (r >= 0).then(|| unsafe { OwnedFd::from_raw_fd(r as RawFd) })
  }

  /// SIGKILL through a pidfd: reaches the very process the pidfd was opened for, or nobody.
  pub fn pidfd_kill(fd: RawFd) -> io::Result<()> {
    // SAFETY: pidfd_send_signal with a null siginfo (the kernel fills in a SI_USER one).
    let r =
      unsafe { libc::syscall(libc::SYS_pidfd_send_signal, fd, libc::SIGKILL, std::ptr::null::<libc::siginfo_t>(), 0) };
    if r == 0 {
      Ok(())
    } else {
      Err(io::Error::last_os_error())
    }
  }

  /// The pid a pidfd refers to (its `Pid:` line in fdinfo), for messages.
  pub fn pidfd_pid(fd: RawFd) -> Option<i32> {
    let s = std::fs::read_to_string(format!("/proc/self/fdinfo/{fd}")).ok()?;
    s.lines().find_map(|l| l.strip_prefix("Pid:")).and_then(|v| v.trim().parse().ok()).filter(|p: &i32| *p > 0)
  }

  /// Waits until every pidfd is readable (its process exited), at most `limit`. True if all did.
  pub fn wait_exited(fds: &[RawFd], limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    let mut p: Vec<libc::pollfd> =
      fds.iter().map(|&fd| libc::pollfd { fd, events: libc::POLLIN, revents: 0 }).collect();
    loop {
      p.retain(|x| x.revents == 0);
      if p.is_empty() {
        return true;
      }
      let left = deadline.saturating_duration_since(Instant::now());
      if left.is_zero() {
        return false;
      }
      // SAFETY: `p` is a valid array of pollfd of the given length.
      let r = unsafe { libc::poll(p.as_mut_ptr(), p.len() as libc::nfds_t, left.as_millis().clamp(1, 1000) as i32) };
      if r < 0 && io::Error::last_os_error().kind() != io::ErrorKind::Interrupted {
        return false;
      }
    }
  }

  /// Clock ticks since boot, the unit and clock of /proc/PID/stat's start time.
  pub fn now_ticks() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes one timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) };
    let hz = ticks_per_sec();
    ts.tv_sec as u64 * hz + ts.tv_nsec as u64 * hz / 1_000_000_000
  }

  fn ticks_per_sec() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
      t as u64
    } else {
      100
    }
  }

  /// Start time of `pid` (field 22 of /proc/PID/stat, after the command name in parentheses).
  pub fn start_ticks(pid: i32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &s[s.rfind(')')? + 2..];
    rest.split(' ').nth(19)?.parse().ok()
  }

  pub fn self_start_ticks() -> u64 {
    // SAFETY: getpid has no preconditions.
    start_ticks(unsafe { libc::getpid() }).unwrap_or(0)
  }

  /// The innermost pid of `pid` (last field of NSpid in /proc/PID/status: its pid in its own namespace).
  pub fn innermost_pid(pid: i32) -> Option<i32> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines().find_map(|l| l.strip_prefix("NSpid:")).and_then(|v| v.split_whitespace().last()?.parse().ok())
  }

  /// Has `pid` memory registered with a userfaultfd (`um`, missing-page mode, in smaps' VmFlags)?
  pub fn has_uffd_ranges(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/smaps"))
      .is_ok_and(|s| s.lines().any(|l| l.starts_with("VmFlags:") && l.split_whitespace().any(|f| f == "um")))
  }

  /// One non-blocking read of a stream socket with the fds that came with it (SCM_RIGHTS, taken
  /// CLOEXEC). None at end of file or when nothing is queued.
  pub fn recv_stream(fd: RawFd) -> io::Result<Option<(Vec<u8>, Vec<OwnedFd>)>> {
    let mut data = [0u8; 4096];
    let mut cbuf = [0u64; 32];
    let Some((n, fds, _)) = super::wire::recv_with_fds(fd, &mut data, &mut cbuf)? else { return Ok(None) };
    if n == 0 && fds.is_empty() {
      return Ok(None);
    }
    Ok(Some((data[..n].to_vec(), fds)))
  }

  /// The credentials of a unix socket's peer (SO_PEERCRED), as the kernel recorded them.
  pub fn peer_cred(fd: RawFd) -> Option<libc::ucred> {
    let mut cred = libc::ucred { pid: 0, uid: 0, gid: 0 };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `cred`, a properly sized ucred we own.
    let r = unsafe {
      libc::getsockopt(fd, libc::SOL_SOCKET, libc::SO_PEERCRED, &mut cred as *mut _ as *mut libc::c_void, &mut len)
    };
    (r == 0 && len as usize == std::mem::size_of::<libc::ucred>()).then_some(cred)
  }

  /// Children of every thread of `pid`.
  pub fn children(pid: i32) -> Vec<i32> {
    let mut out = Vec::new();
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else { return out };
    for t in tasks.flatten() {
      let Ok(s) = std::fs::read_to_string(t.path().join("children")) else { continue };
      out.extend(s.split_whitespace().filter_map(|w| w.parse::<i32>().ok()));
    }
    out
  }
}

#[cfg(test)]
mod tests {
  use super::*;

  #[test]
  fn start_ticks_of_self_is_not_in_the_future() {
    // SAFETY: getpid has no preconditions.
    let me = unsafe { libc::getpid() };
    let s = procfs::start_ticks(me).expect("own stat");
    assert!(s <= procfs::now_ticks() + 1);
  }

  #[test]
  fn loop_closed_rekeys_owed_tasks_and_lineage() {
    let mut st = State::default();
    // SAFETY: eventfd with flags; stands in for a uffd (the state never looks at what it holds).
    let fd = || unsafe { OwnedFd::from_raw_fd(libc::eventfd(0, libc::EFD_CLOEXEC)) };
    st.apply(Msg { kind: Kind::Add, pid: 0, proc_id: 1, aux: 0, loop_id: 5 }, vec![fd()]);
    st.apply(Msg { kind: Kind::Add, pid: 0, proc_id: 2, aux: 0, loop_id: 5 }, vec![fd()]);
    st.apply(Msg { kind: Kind::Forked, pid: 0, proc_id: 2, aux: 1, loop_id: 5 }, vec![]);
    st.apply(Msg { kind: Kind::LoopClosed, pid: 0, proc_id: 0, aux: 0, loop_id: 5 }, vec![]);
    // A new loop with the same id: its task 1 must not release the old one.
    st.apply(Msg { kind: Kind::Add, pid: 0, proc_id: 1, aux: 0, loop_id: 5 }, vec![fd()]);
    st.apply(Msg { kind: Kind::Release, pid: 0, proc_id: 1, aux: 0, loop_id: 5 }, vec![]);
    assert_eq!(st.tasks.len(), 2, "the closed loop's two tasks are still owed");
    let moved = (u64::MAX - 1, 2);
    assert_eq!(st.lineage.get(&moved).map(|l| l.1), Some(Some((u64::MAX - 1, 1))));
  }

  #[test]
  fn loop_done_after_loop_closed_lets_go_of_that_loops_leftovers_only() {
    let mut st = State::default();
    // SAFETY: as above.
    let fd = || unsafe { OwnedFd::from_raw_fd(libc::eventfd(0, libc::EFD_CLOEXEC)) };
    st.apply(Msg { kind: Kind::Add, pid: 0, proc_id: 3, aux: 0, loop_id: 5 }, vec![fd()]);
    st.apply(Msg { kind: Kind::Add, pid: 0, proc_id: 3, aux: 0, loop_id: 6 }, vec![fd()]);
    st.apply(Msg { kind: Kind::LoopClosed, pid: 0, proc_id: 0, aux: 0, loop_id: 5 }, vec![]);
    st.apply(Msg { kind: Kind::LoopDone, pid: 0, proc_id: 0, aux: 0, loop_id: 5 }, vec![]);
    assert_eq!(st.tasks.keys().copied().collect::<Vec<_>>(), vec![(6, 3)]);
  }

  #[test]
  fn add_ends_a_hold_of_the_same_fd_number_and_forget_drops_one() {
    let mut st = State::default();
    // SAFETY: as above.
    let fd = || unsafe { OwnedFd::from_raw_fd(libc::eventfd(0, libc::EFD_CLOEXEC)) };
    st.apply(Msg { kind: Kind::Hold, pid: 40, proc_id: 0, aux: 17, loop_id: 0 }, vec![fd()]);
    st.apply(Msg { kind: Kind::Hold, pid: 41, proc_id: 0, aux: 18, loop_id: 0 }, vec![fd()]);
    st.apply(Msg { kind: Kind::Add, pid: 1234, proc_id: 1, aux: 17, loop_id: 9 }, vec![fd()]);
    assert_eq!(st.holds.len(), 1);
    st.apply(Msg { kind: Kind::Forget, pid: 0, proc_id: 0, aux: 18, loop_id: 0 }, vec![]);
    assert!(st.holds.is_empty());
    assert_eq!(st.tasks.get(&(9, 1)).map(|t| t.pid), Some(1234));
  }
}
