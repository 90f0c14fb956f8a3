//! The body of one restored process: fork its pstree children, set up memory, hand over its uffd when
//! the master says so, run the workload, report, then wait for the master's EXIT (or its death).
use std::os::fd::{AsRawFd, OwnedFd, RawFd};

use restore_sim::expect::Oracle;
use restore_sim::layout::Layout;

use crate::cli::{Opts, Workload};
use crate::verify::{Checker, Outcome};
use crate::wire::{cmd, read_cmd, send};
use crate::{handover, memory, spawn, workload};

/// One pipe pair per pstree entry: ctl (master -> process) and res (process -> master).
#[derive(Clone, Copy)]
pub struct Pipes {
  pub ctl_r: RawFd,
  pub ctl_w: RawFd,
  pub res_r: RawFd,
  pub res_w: RawFd,
}

pub struct Ctx<'a> {
  pub layout: &'a Layout,
  pub opts: &'a Opts,
  pub pipes: &'a [Pipes],
  pub sock: RawFd,
  pub master_pid: i32,
}

fn close(fd: RawFd) {
  // SAFETY: closing a descriptor this process owns (inherited pipe end); double closes are avoided by design.
  unsafe { libc::close(fd) };
}

/// Forks pstree entry `idx` from the current process; in the child this never returns.
pub fn spawn_entry(ctx: &Ctx, idx: usize) -> Result<i32, String> {
  let p = &ctx.layout.processes[idx];
  let want = if ctx.opts.any_pid { None } else { Some(p.pid) };
  let pid = spawn::fork_with_pid(want)?;
  if pid == 0 {
    child_main(ctx, idx);
  }
  Ok(pid)
}

fn child_main(ctx: &Ctx, idx: usize) -> ! {
  let p = &ctx.layout.processes[idx];
  // The master's handlers (kill the whole tree) must not run in a restored process.
  for sig in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP] {
    // SAFETY: restoring the default disposition has no preconditions.
    unsafe { libc::signal(sig, libc::SIG_DFL) };
  }
  if p.ppid == 0 {
    // Its own process group, so the master can SIGKILL the whole tree at once.
    // SAFETY: setpgid on ourselves.
    unsafe { libc::setpgid(0, 0) };
    // Only the root's parent is the master: if the master dies, the root dies; other processes
    // notice the master's death by EOF on their ctl pipe (see module docs in master.rs).
    spawn::die_with_parent();
    // SAFETY: getppid has no preconditions.
    if unsafe { libc::getppid() } != ctx.master_pid {
      // SAFETY: the master is already gone; leave quietly.
      unsafe { libc::_exit(2) };
    }
  }
  for pp in ctx.pipes {
    close(pp.ctl_w);
    close(pp.res_r);
  }
  if p.zombie {
    // A pstree zombie: exists, then dies at once; its parent never reaps it (the master does at the end).
    // SAFETY: immediate exit of a forked child.
    unsafe { libc::_exit(0) };
  }
  // Children first, before our own VMAs exist, so they do not inherit (and collide with) our mappings.
  for (j, q) in ctx.layout.processes.iter().enumerate() {
    if q.ppid == p.pid {
      match spawn_entry(ctx, j) {
        Ok(pid) => {
          let _ = send(ctx.pipes[j].res_w, b'F', &pid.to_ne_bytes());
        }
        Err(e) => {
          let _ = send(ctx.pipes[j].res_w, b'E', e.as_bytes());
        }
      }
    }
  }
  for (j, pp) in ctx.pipes.iter().enumerate() {
    if j != idx {
      close(pp.ctl_r);
      close(pp.res_w);
    }
  }
  let me = ctx.pipes[idx];
  let code = match run(ctx, idx, me) {
    Ok(()) => 0,
    Err(e) => {
      let _ = send(me.res_w, b'E', e.as_bytes());
      // Wait for the master to act on the error (it kills the tree); exit if it is gone.
      while read_cmd(me.ctl_r).is_some() {}
      2
    }
  };
  // SAFETY: end of a forked process; skip destructors that belong to the master's image.
  unsafe { libc::_exit(code) };
}

fn run(ctx: &Ctx, idx: usize, me: Pipes) -> Result<(), String> {
  let p = &ctx.layout.processes[idx];
  memory::map_vmas(p)?;
  memory::copy_eager(p)?;
  let (uffd, _features) = memory::make_uffd(p)?;
  let mut uffd: Option<OwnedFd> = Some(uffd);
  send(me.res_w, b'R', &[])?;
  let mut chk = Checker::new(Oracle::new(p.expect.clone()));
  loop {
    let Some(c) = read_cmd(me.ctl_r) else { return Ok(()) };
    match c {
      cmd::HANDOVER | cmd::HANDOVER_BAD_FD => {
        let fd = uffd.take().ok_or("hand-over requested twice")?;
        handover::send_pid(ctx.sock, p.pid)?;
        if c == cmd::HANDOVER_BAD_FD {
          let null = std::fs::File::open("/dev/null").map_err(|e| format!("/dev/null: {e}"))?;
          handover::send_fd(ctx.sock, null.as_raw_fd())?;
        } else {
          handover::send_fd(ctx.sock, fd.as_raw_fd())?;
        }
        // Like CRIU's restorer: our copy of the uffd and of the socket are closed after hand-over.
        drop(fd);
        close(ctx.sock);
        send(me.res_w, b'H', &[])?;
      }
      cmd::WORK => {
        let selected = ctx.opts.procs_only.as_ref().is_none_or(|l| l.contains(&p.pid));
        let mut out = Outcome::default();
        if selected {
          if ctx.opts.workload == Workload::Hold {
            hold(me.ctl_r);
          } else if let Err(e) = workload::run(ctx.opts.workload, p, ctx.opts, &mut chk, &mut out) {
            out.error = Some(e);
          }
        }
        if ctx.opts.latencies.is_some() && !out.latencies.is_empty() {
          let raw: Vec<u8> = out.latencies.iter().flat_map(|l| l.to_le_bytes()).collect();
          send(me.res_w, b'L', &raw)?;
        }
        send(me.res_w, b'S', out.to_json().to_string().as_bytes())?;
        if selected && ctx.opts.workload == Workload::ExitAfter {
          // Leave mid-transfer on purpose: the daemon must cope with a process that exits.
          return Ok(());
        }
      }
      cmd::EXIT => return Ok(()),
      _ => return Err(format!("unknown command byte {c:#x} from the master")),
    }
  }
}

/// `hold`: touch nothing until SIGTERM (or until the master goes away).
fn hold(ctl_r: RawFd) {
  // SAFETY: sigset manipulation on a local set, then blocking SIGTERM so signalfd receives it.
  let sfd = unsafe {
    let mut set: libc::sigset_t = std::mem::zeroed();
    libc::sigemptyset(&mut set);
    libc::sigaddset(&mut set, libc::SIGTERM);
    libc::sigprocmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
    libc::signalfd(-1, &set, libc::SFD_CLOEXEC)
  };
  let mut pfd = [
    libc::pollfd { fd: sfd, events: libc::POLLIN, revents: 0 },
    libc::pollfd { fd: ctl_r, events: libc::POLLIN, revents: 0 },
  ];
  loop {
    // SAFETY: pfd is a valid array of two pollfds.
    let n = unsafe { libc::poll(pfd.as_mut_ptr(), 2, -1) };
    if n < 0 && std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
      continue;
    }
    if n < 0 || pfd[0].revents != 0 || pfd[1].revents != 0 {
      break;
    }
  }
  close(sfd);
}
