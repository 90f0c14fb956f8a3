//! Forking and reaping processes: a restored process with a chosen pid (`clone3` with `set_tid`, root
//! may pick pids in its pid namespace), and the workload helpers that die with their parent.
use restore_sim::os_err;

#[repr(C)]
#[derive(Default)]
struct CloneArgs {
  flags: u64,
  pidfd: u64,
  child_tid: u64,
  parent_tid: u64,
  exit_signal: u64,
  stack: u64,
  stack_size: u64,
  tls: u64,
  set_tid: u64,
  set_tid_size: u64,
  cgroup: u64,
}

/// Forks like fork(2). With `pid = Some(p)` the child gets exactly pid `p` or this fails naming it.
/// Returns 0 in the child, the child's pid in the parent.
pub fn fork_with_pid(pid: Option<i32>) -> Result<i32, String> {
  let Some(p) = pid else {
    // SAFETY: the sim is single-threaded, so the child's copy of the address space is consistent.
    let r = unsafe { libc::fork() };
    if r < 0 {
      return Err(format!("fork failed: {}", os_err()));
    }
    return Ok(r);
  };
  let tids = [p as libc::pid_t];
  let mut args = CloneArgs {
    exit_signal: libc::SIGCHLD as u64,
    set_tid: tids.as_ptr() as u64,
    set_tid_size: 1,
    ..Default::default()
  };
  // SAFETY: clone3 without CLONE_VM and without a new stack behaves like fork(2); the sim is
  // single-threaded, and `args`/`tids` stay alive for the call.
  let r = unsafe { libc::syscall(libc::SYS_clone3, &mut args as *mut CloneArgs, std::mem::size_of::<CloneArgs>()) };
  if r < 0 {
    let e = std::io::Error::last_os_error();
    return Err(match e.raw_os_error() {
            Some(libc::EEXIST) => format!("pid {p} is already in use (clone3 set_tid: EEXIST); free it or use --any-pid"),
            Some(libc::EPERM) => format!("cannot create pid {p}: clone3 set_tid needs CAP_SYS_ADMIN/CAP_CHECKPOINT_RESTORE (run as root or use --any-pid)"),
            Some(libc::EINVAL) => format!("cannot create pid {p}: out of range for this pid namespace (see /proc/sys/kernel/pid_max) or use --any-pid"),
            _ => format!("clone3 for pid {p} failed: {e}"),
        });
  }
  Ok(r as i32)
}

/// Asks the kernel to SIGKILL this process when its parent dies: no helper outlives the sim.
pub fn die_with_parent() {
  // SAFETY: prctl with integer arguments.
  unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) };
}

/// Forks a workload helper (fork-storm / uffd-events child): it dies with its parent.
pub fn fork_workload_child() -> Result<i32, String> {
  // SAFETY: single-threaded process, fork is safe; the child only runs plain code then _exits.
  let pid = unsafe { libc::fork() };
  if pid < 0 {
    return Err(format!("fork failed: {}", os_err()));
  }
  if pid == 0 {
    die_with_parent();
  }
  Ok(pid)
}

/// waitpid for one child; Some(exit code) or None if it was killed / could not be waited for.
pub fn wait_exit(pid: i32) -> Option<i32> {
  let mut st = 0;
  loop {
    // SAFETY: waitpid on our own child into a local status.
    let r = unsafe { libc::waitpid(pid, &mut st, 0) };
    if r == pid {
      return if libc::WIFEXITED(st) { Some(libc::WEXITSTATUS(st)) } else { None };
    }
    if r < 0 && std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
      continue;
    }
    return None;
  }
}
