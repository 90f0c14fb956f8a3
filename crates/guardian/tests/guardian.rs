//! The guardian binary against a stand-in daemon (this test process): what it kills when the daemon
//! goes away, and what it lets go. Real daemons and restores are tested in __test__/guardian.test.ts.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::ExitStatusExt;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use lazy_pages_guardian::procfs;
use lazy_pages_guardian::wire::{self, Kind, Msg};

/// The tests fork (raw fork, and spawns): run them one at a time, so that no test's forked process
/// inherits another test's socket end (the guardian would not see that "daemon" hang up).
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
  SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

fn guardian() -> (OwnedFd, Child) {
  let mut cmd = Command::new(env!("CARGO_BIN_EXE_lazy-pages-guardian"));
  cmd.args(["--daemon-pid", &std::process::id().to_string()]);
  lazy_pages_guardian::spawn(&mut cmd).expect("spawn the guardian")
}

/// A userfaultfd of this process: the guardian only holds it, so any will do.
fn uffd() -> OwnedFd {
  // SAFETY: userfaultfd(2) with flags; checked.
  let fd = unsafe { libc::syscall(libc::SYS_userfaultfd, libc::O_CLOEXEC | libc::O_NONBLOCK) };
  assert!(fd >= 0, "userfaultfd: {} (run as root)", std::io::Error::last_os_error());
  // SAFETY: a fresh fd owned by nobody else.
  unsafe { OwnedFd::from_raw_fd(fd as RawFd) }
}

fn victim(args: &[&str]) -> Child {
  Command::new(args[0]).args(&args[1..]).spawn().expect("spawn a victim")
}

fn add(sock: &OwnedFd, proc_id: u32, pid: i32, uffd: &OwnedFd) {
  let pidfd = (pid > 0).then(|| procfs::pidfd_open(pid).expect("pidfd"));
  let mut fds = vec![uffd.as_raw_fd()];
  if let Some(p) = &pidfd {
    fds.push(p.as_raw_fd());
  }
  let m = Msg { kind: Kind::Add, pid, proc_id, aux: uffd.as_raw_fd() as u32, loop_id: 1 };
  wire::send(sock.as_raw_fd(), &m, &fds).expect("send");
}

fn send(sock: &OwnedFd, kind: Kind, proc_id: u32, aux: u32) {
  wire::send(sock.as_raw_fd(), &Msg { kind, pid: 0, proc_id, aux, loop_id: 1 }, &[]).expect("send");
}

fn wait_for(c: &mut Child, limit: Duration) -> Option<std::process::ExitStatus> {
  let until = Instant::now() + limit;
  while Instant::now() < until {
    if let Some(s) = c.try_wait().unwrap() {
      return Some(s);
    }
    std::thread::sleep(Duration::from_millis(10));
  }
  None
}

fn kill(c: &mut Child) {
  let _ = c.kill();
  let _ = c.wait();
}

/// Waits up to `limit` for our child (or orphan, as subreaper) `pid` to end and reaps it; SIGKILLs
/// and reaps it if it did not. Returns what waitpid returned and the status.
fn reap_within(pid: i32, limit: Duration) -> (i32, i32) {
  let mut status = 0;
  let until = Instant::now() + limit;
  let mut reaped = 0;
  while Instant::now() < until && reaped != pid {
    // SAFETY: waitpid on a child of ours with a status out-param.
    reaped = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
    std::thread::sleep(Duration::from_millis(10));
  }
  if reaped != pid {
    let mut late = 0;
    // SAFETY: kill(2) by pid of our own unreaped child (the pid is still its), then reap it.
    unsafe {
      libc::kill(pid, libc::SIGKILL);
      libc::waitpid(pid, &mut late, 0);
    }
  }
  (reaped, status)
}

/// Waits until `task`'s uffd registration shows in its smaps.
fn wait_registered(task: i32) {
  let until = Instant::now() + Duration::from_secs(5);
  while !procfs::has_uffd_ranges(task) {
    assert!(Instant::now() < until, "the task did not register its page");
    std::thread::sleep(Duration::from_millis(5));
  }
}

/// CRIU's first write for a task on the hand-over connection: its pid.
fn write_pid(sock: RawFd, pid: i32) {
  // SAFETY: write(2) of 4 bytes from a local.
  assert_eq!(unsafe { libc::write(sock, pid.to_ne_bytes().as_ptr() as *const libc::c_void, 4) }, 4);
}

/// The guardian should exit by itself now (its daemon is gone); killed if not.
fn end(g: &mut Child) {
  if wait_for(g, Duration::from_secs(5)).is_none() {
    kill(g);
  }
}

#[test]
fn the_daemon_going_away_gets_every_owed_task_sigkilled_and_the_guardian_exits() {
  let _serial = serial();
  let (sock, mut g) = guardian();
  let mut a = victim(&["sleep", "60"]);
  let mut b = victim(&["sleep", "60"]);
  let (ua, ub) = (uffd(), uffd());
  add(&sock, 1, a.id() as i32, &ua);
  add(&sock, 2, b.id() as i32, &ub);
  // The daemon "dies": its end closes without a goodbye.
  drop(sock);
  for v in [&mut a, &mut b] {
    let s = wait_for(v, Duration::from_secs(5));
    if s.is_none() {
      kill(v);
    }
    assert_eq!(s.and_then(|s| s.signal()), Some(libc::SIGKILL), "an owed task must be SIGKILLed");
  }
  let gs = wait_for(&mut g, Duration::from_secs(5));
  if gs.is_none() {
    kill(&mut g);
  }
  assert_eq!(gs.and_then(|s| s.code()), Some(0));
}

#[test]
fn released_tasks_are_left_alone_and_a_clean_stop_exits_at_once() {
  let _serial = serial();
  let (sock, mut g) = guardian();
  let mut a = victim(&["sleep", "60"]);
  let u = uffd();
  add(&sock, 1, a.id() as i32, &u);
  send(&sock, Kind::Release, 1, 0);
  send(&sock, Kind::Bye, 0, 0);
  drop(sock);
  let gs = wait_for(&mut g, Duration::from_secs(5));
  if gs.is_none() {
    kill(&mut g);
  }
  assert_eq!(gs.and_then(|s| s.code()), Some(0));
  assert!(a.try_wait().unwrap().is_none(), "a released task must not be killed");
  kill(&mut a);
}

#[test]
fn signals_to_the_guardian_do_not_end_it_before_it_has_acted() {
  let _serial = serial();
  let (sock, mut g) = guardian();
  let mut a = victim(&["sleep", "60"]);
  let u = uffd();
  add(&sock, 1, a.id() as i32, &u);
  for sig in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP, libc::SIGQUIT, libc::SIGPIPE] {
    // SAFETY: kill(2) to our own child.
    unsafe { libc::kill(g.id() as i32, sig) };
  }
  std::thread::sleep(Duration::from_millis(100));
  assert!(g.try_wait().unwrap().is_none(), "the guardian must ignore SIGTERM/SIGINT/SIGHUP/SIGQUIT/SIGPIPE");
  // Its own session: a signal to our process group would not reach it.
  // SAFETY: getsid on a pid.
  assert_eq!(unsafe { libc::getsid(g.id() as i32) }, g.id() as i32);
  drop(sock);
  let s = wait_for(&mut a, Duration::from_secs(5));
  if s.is_none() {
    kill(&mut a);
  }
  assert_eq!(s.and_then(|s| s.signal()), Some(libc::SIGKILL));
  end(&mut g);
}

#[test]
fn a_forked_child_whose_pid_was_not_identified_yet_is_found_through_its_parent() {
  let _serial = serial();
  // Orphans of the killed parent come back to us, so we can see how they ended.
  // SAFETY: prctl with integer arguments.
  unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
  let (sock, mut g) = guardian();
  let mut parent = victim(&["sh", "-c", "sleep 60 & wait"]);
  // Let the shell fork its child.
  let until = Instant::now() + Duration::from_secs(5);
  let child = loop {
    if let Some(c) = procfs::children(parent.id() as i32).first() {
      break *c;
    }
    assert!(Instant::now() < until, "the shell did not fork");
    std::thread::sleep(Duration::from_millis(5));
  };
  let (up, uc) = (uffd(), uffd());
  add(&sock, 1, parent.id() as i32, &up);
  add(&sock, 2, 0, &uc); // the FORK event's uffd: pid not known yet
  send(&sock, Kind::Forked, 2, 1);
  drop(sock);
  let s = wait_for(&mut parent, Duration::from_secs(5));
  if s.is_none() {
    kill(&mut parent);
  }
  assert_eq!(s.and_then(|s| s.signal()), Some(libc::SIGKILL));
  let (reaped, status) = reap_within(child, Duration::from_secs(5));
  assert_eq!(reaped, child, "the unidentified child must have exited");
  assert!(libc::WIFSIGNALED(status) && libc::WTERMSIG(status) == libc::SIGKILL, "the child must be SIGKILLed");
  end(&mut g);
}

#[test]
fn a_second_daemon_end_error_is_a_send_error_not_a_sigpipe() {
  let _serial = serial();
  let (sock, mut g) = guardian();
  kill(&mut g);
  let r = wire::send(sock.as_raw_fd(), &Msg::new(Kind::Bye), &[]);
  assert!(r.is_err(), "sending to a dead guardian fails (and does not kill us with SIGPIPE)");
}

/// A forked process with one page registered with a userfaultfd (missing mode), then paused: what
/// a restored task looks like in /proc. Only system calls between fork and pause.
fn registered_task() -> i32 {
  // SAFETY: fork in a test process; the child makes only async-signal-safe system calls, then
  // sleeps until killed (it never returns into the test harness).
  let pid = unsafe { libc::fork() };
  assert!(pid >= 0);
  if pid == 0 {
    // SAFETY: plain system calls on memory and fds this child owns, with the uAPI's ioctl structs.
    unsafe {
      // Not our copies of the test's sockets: the guardian must see the "daemon" hang up.
      libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32);
      let uffd = libc::syscall(libc::SYS_userfaultfd, libc::O_CLOEXEC) as RawFd;
      let mut api = uffd_sys::UffdioApi { api: uffd_sys::UFFD_API, ..Default::default() };
      libc::ioctl(uffd, uffd_sys::UFFDIO_API as _, &mut api as *mut uffd_sys::UffdioApi);
      let page = libc::mmap(
        std::ptr::null_mut(),
        4096,
        libc::PROT_READ | libc::PROT_WRITE,
        libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
        -1,
        0,
      );
      let mut reg = uffd_sys::UffdioRegister {
        range: uffd_sys::UffdioRange { start: page as u64, len: 4096 },
        mode: uffd_sys::REGISTER_MODE_MISSING,
        ioctls: 0,
      };
      libc::ioctl(uffd, uffd_sys::UFFDIO_REGISTER as _, &mut reg as *mut uffd_sys::UffdioRegister);
      loop {
        libc::pause();
      }
    }
  }
  pid
}

#[test]
fn a_task_received_but_not_yet_served_is_found_among_the_restorers_descendants() {
  let _serial = serial();
  handed_over_task_is_killed(false);
}

#[test]
fn a_task_served_but_not_identified_yet_is_found_among_the_restorers_descendants() {
  // CRIU hands a uffd over before the task's VMAs are in place: the daemon serves it with pid 0 and
  // identifies it at "restore finished". Dying in between must not leave it unkillable.
  let _serial = serial();
  handed_over_task_is_killed(true);
}

fn handed_over_task_is_killed(then_served: bool) {
  let (sock, mut g) = guardian();
  std::thread::sleep(Duration::from_millis(20)); // the task must be younger than the guardian
  let task = registered_task();
  // Wait until its registration shows in smaps.
  wait_registered(task);
  let u = uffd();
  // As the hand-over listener does: the restorer (us) named `task`, and nothing served it yet.
  let m = Msg { kind: Kind::Hold, pid: task, proc_id: std::process::id(), aux: u.as_raw_fd() as u32, loop_id: 0 };
  wire::send(sock.as_raw_fd(), &m, &[u.as_raw_fd()]).unwrap();
  if then_served {
    add(&sock, 1, 0, &u);
  }
  drop(sock);
  let (reaped, status) = reap_within(task, Duration::from_secs(5));
  assert!(
    reaped == task && libc::WIFSIGNALED(status) && libc::WTERMSIG(status) == libc::SIGKILL,
    "the held task must be SIGKILLed (reaped {reaped}, status {status:#x})"
  );
  end(&mut g);
}

/// The restorer sent a task's pid and uffd on the hand-over connection, and the daemon died before
/// reading them (`pid_read`: it had read the pid, not the uffd). The kernel would drop the uffd with
/// the connection; the guardian's copy of the connection keeps it, and the task is killed.
fn in_flight_uffd_is_taken_and_its_task_killed(pid_read: bool) {
  let (sock, mut g) = guardian();
  std::thread::sleep(Duration::from_millis(20)); // the task must be younger than the guardian
  let task = registered_task();
  wait_registered(task);
  // The hand-over connection: `restorer` is CRIU's end, `daemon` the daemon's accepted socket.
  let mut sv = [-1 as RawFd; 2];
  // SAFETY: socketpair writes two fds into `sv`.
  assert_eq!(unsafe { libc::socketpair(libc::AF_UNIX, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0, sv.as_mut_ptr()) }, 0);
  // SAFETY: two fresh fds owned by nobody else.
  let (restorer, daemon) = unsafe { (OwnedFd::from_raw_fd(sv[0]), OwnedFd::from_raw_fd(sv[1])) };
  let m = Msg { kind: Kind::Conn, pid: 0, proc_id: std::process::id(), aux: daemon.as_raw_fd() as u32, loop_id: 0 };
  wire::send(sock.as_raw_fd(), &m, &[daemon.as_raw_fd()]).unwrap();
  // CRIU's two writes for a task: its pid, then one byte carrying its uffd.
  let u = uffd();
  write_pid(restorer.as_raw_fd(), task);
  send_fd_byte(restorer.as_raw_fd(), u.as_raw_fd());
  drop(u); // as the restorer does: its own copy is closed after the hand-over
  if pid_read {
    let mut b = [0u8; 4];
    // SAFETY: read(2) of 4 bytes into a local.
    assert_eq!(unsafe { libc::read(daemon.as_raw_fd(), b.as_mut_ptr() as *mut libc::c_void, 4) }, 4);
  }
  // The daemon dies: its socketpair end and its copy of the connection close.
  drop(daemon);
  drop(sock);
  let (reaped, status) = reap_within(task, Duration::from_secs(5));
  assert!(
    reaped == task && libc::WIFSIGNALED(status) && libc::WTERMSIG(status) == libc::SIGKILL,
    "the task whose uffd was in flight must be SIGKILLed (reaped {reaped}, status {status:#x})"
  );
  // The restorer's next write fails: the guardian shut the connection down.
  let one = [0u8; 4];
  // SAFETY: send(2) of 4 bytes from a local, MSG_NOSIGNAL so a broken pipe is an error, not a signal.
  let r = unsafe { libc::send(restorer.as_raw_fd(), one.as_ptr() as *const libc::c_void, 4, libc::MSG_NOSIGNAL) };
  assert!(r < 0, "the restorer could still write to the hand-over connection");
  end(&mut g);
}

fn send_fd_byte(sock: RawFd, fd: RawFd) {
  let mut byte = [0u8; 1];
  let mut iov = libc::iovec { iov_base: byte.as_mut_ptr() as *mut libc::c_void, iov_len: 1 };
  let mut cbuf = [0u64; 4];
  // SAFETY: zero is a valid msghdr; the control buffer holds one SCM_RIGHTS header with one fd.
  unsafe {
    let mut mh: libc::msghdr = std::mem::zeroed();
    mh.msg_iov = &mut iov;
    mh.msg_iovlen = 1;
    mh.msg_control = cbuf.as_mut_ptr() as *mut libc::c_void;
    mh.msg_controllen = libc::CMSG_SPACE(4) as _;
    let c = libc::CMSG_FIRSTHDR(&mh);
    (*c).cmsg_level = libc::SOL_SOCKET;
    (*c).cmsg_type = libc::SCM_RIGHTS;
    (*c).cmsg_len = libc::CMSG_LEN(4) as _;
    std::ptr::write_unaligned(libc::CMSG_DATA(c) as *mut RawFd, fd);
    assert_eq!(libc::sendmsg(sock, &mh, 0), 1);
  }
}

#[test]
fn a_uffd_still_in_flight_on_the_handover_connection_is_taken_and_its_task_killed() {
  let _serial = serial();
  in_flight_uffd_is_taken_and_its_task_killed(false);
}

#[test]
fn a_uffd_in_flight_whose_pid_the_daemon_had_read_is_taken_and_its_task_found_by_its_registered_memory() {
  let _serial = serial();
  in_flight_uffd_is_taken_and_its_task_killed(true);
}

#[test]
fn a_restorer_that_sent_everything_before_the_daemon_accepted_it_gets_its_tasks_killed() {
  let _serial = serial();
  let (sock, mut g) = guardian();
  std::thread::sleep(Duration::from_millis(20)); // the task must be younger than the guardian
  let task = registered_task();
  wait_registered(task);
  // The daemon's listening socket; the guardian gets a copy, as the hand-over listener sends it.
  let dir = std::env::temp_dir().join(format!("guardian-listen-{}", std::process::id()));
  let _ = std::fs::create_dir_all(&dir);
  let path = dir.join("lazy-pages.socket");
  let _ = std::fs::remove_file(&path);
  let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
  let m = Msg { kind: Kind::Listen, pid: 0, proc_id: 0, aux: listener.as_raw_fd() as u32, loop_id: 0 };
  wire::send(sock.as_raw_fd(), &m, &[listener.as_raw_fd()]).unwrap();
  // The restorer connects and sends its task (pid, then the uffd) before the daemon accepts.
  let restorer = std::os::unix::net::UnixStream::connect(&path).unwrap();
  let u = uffd();
  write_pid(restorer.as_raw_fd(), task);
  send_fd_byte(restorer.as_raw_fd(), u.as_raw_fd());
  drop(u);
  // The daemon dies without having accepted.
  drop(listener);
  drop(sock);
  let (reaped, status) = reap_within(task, Duration::from_secs(5));
  let _ = std::fs::remove_dir_all(&dir);
  assert!(
    reaped == task && libc::WIFSIGNALED(status) && libc::WTERMSIG(status) == libc::SIGKILL,
    "the task must be SIGKILLed (reaped {reaped}, status {status:#x})"
  );
  // No one else can connect now: the guardian shut the listening socket down, then closed it.
  end(&mut g);
}
