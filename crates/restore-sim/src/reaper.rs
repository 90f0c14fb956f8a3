//! Never leave processes behind: the master is a child subreaper, knows every process group it created,
//! and SIGKILLs them on any exit path (errors, timeout, SIGTERM/SIGINT to the master itself).
use std::sync::atomic::{AtomicI32, Ordering};

const MAX_GROUPS: usize = 64;
static GROUPS: [AtomicI32; MAX_GROUPS] = [const { AtomicI32::new(0) }; MAX_GROUPS];

pub fn become_subreaper() {
  // SAFETY: prctl with integer arguments.
  unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1) };
}

/// Remembers a process group (= a root's pid) to kill on exit.
pub fn add_group(pgid: i32) {
  for g in &GROUPS {
    if g.compare_exchange(0, pgid, Ordering::SeqCst, Ordering::SeqCst).is_ok() {
      return;
    }
  }
}

/// SIGKILLs every group and the given pids. Async-signal-safe (atomics + kill only).
pub fn kill_all(pids: &[i32]) {
  for g in &GROUPS {
    let pg = g.load(Ordering::SeqCst);
    if pg > 0 {
      // SAFETY: kill(2) on a process group the master created.
      unsafe { libc::kill(-pg, libc::SIGKILL) };
    }
  }
  for &p in pids {
    if p > 0 {
      // SAFETY: kill(2) on a pid the master created.
      unsafe { libc::kill(p, libc::SIGKILL) };
    }
  }
}

extern "C" fn on_signal(sig: libc::c_int) {
  kill_all(&[]);
  // SAFETY: _exit is async-signal-safe.
  unsafe { libc::_exit(128 + sig) };
}

/// If the master itself is asked to stop, the tree goes with it.
pub fn install_signal_handlers() {
  for sig in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP] {
    // SAFETY: installs a handler that only calls async-signal-safe functions.
    unsafe { libc::signal(sig, on_signal as *const () as libc::sighandler_t) };
  }
  // Writes to a daemon that hung up must come back as EPIPE errors, not kill the master silently.
  // SAFETY: ignoring SIGPIPE has no preconditions.
  unsafe { libc::signal(libc::SIGPIPE, libc::SIG_IGN) };
}

/// Reaps everything reapable now; returns (pid, wait status) pairs.
pub fn reap_now() -> Vec<(i32, i32)> {
  let mut v = Vec::new();
  loop {
    let mut st = 0;
    // SAFETY: waitpid into a local status.
    let r = unsafe { libc::waitpid(-1, &mut st, libc::WNOHANG) };
    if r <= 0 {
      return v;
    }
    v.push((r, st));
  }
}

/// The wait status of a zombie that is not our child (its pstree parent has not reaped it), from
/// field 52 (`exit_code`) of /proc/PID/stat; None while it is still running.
pub fn zombie_status(pid: i32) -> Option<i32> {
  let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
  let rest = &s[s.rfind(')')? + 2..];
  let f: Vec<&str> = rest.split_whitespace().collect();
  if f.first() != Some(&"Z") {
    return None;
  }
  f.get(52 - 3)?.parse().ok()
}

/// Reaps until no child is left (ECHILD) or `bound` passes. As a subreaper the master inherits every
/// orphaned process of its tree, so this leaves no zombies behind for a possibly non-reaping init.
pub fn reap_all(bound: std::time::Duration) {
  let until = std::time::Instant::now() + bound;
  loop {
    let mut st = 0;
    // SAFETY: waitpid into a local status.
    let r = unsafe { libc::waitpid(-1, &mut st, libc::WNOHANG) };
    if r < 0 || std::time::Instant::now() > until {
      return; // ECHILD: nothing left
    }
    if r == 0 {
      std::thread::sleep(std::time::Duration::from_millis(5));
    }
  }
}
