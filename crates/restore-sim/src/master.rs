//! The master (what `criu restore` is): connects to the daemon, forks the pstree, orders the
//! hand-over, sends "restore finished", starts the workloads, collects results and exit statuses.
//!
//! Lifetime rules: the root has PDEATHSIG (the master is its parent); other processes are blocked on
//! their ctl pipe whenever idle and exit on its EOF; the master SIGKILLs every process group it made
//! on every exit path, and is a child subreaper so orphans come back to it to be reaped.
use serde_json::{json, Value};
use std::os::fd::RawFd;
use std::time::{Duration, Instant};

use restore_sim::layout::{self, Layout};
use restore_sim::rng::Rng;

use crate::child::{spawn_entry, Ctx, Pipes};
use crate::cli::{HandoverOrder, Opts};
use crate::wire::{cmd, write_all, Reader};
use crate::{handover, reaper};

#[derive(Default)]
struct Entry {
  real_pid: Option<i32>,
  reader: Reader,
  forked: bool,
  ready: bool,
  handed: bool,
  error: Option<String>,
  result: Option<Value>,
  latencies: Vec<u8>,
  status: Option<i32>,
}

pub enum Fail {
  Setup(String),
  Timeout(String),
}

struct Master<'a> {
  layout: &'a Layout,
  opts: &'a Opts,
  pipes: Vec<Pipes>,
  st: Vec<Entry>,
  deadline: Instant,
  order: Vec<i32>,
}

pub fn run(opts: &Opts) -> i32 {
  let started = Instant::now();
  let layout = match layout::load(&opts.layout) {
    Ok(l) => l,
    Err(e) => return setup_error(&e),
  };
  reaper::install_signal_handlers();
  reaper::become_subreaper();
  let sock = match handover::connect(&layout.work_dir) {
    Ok(s) => s,
    Err(e) => return setup_error(&e),
  };
  let mut m = Master {
    layout: &layout,
    opts,
    pipes: Vec::new(),
    st: Vec::new(),
    deadline: started + Duration::from_secs_f64(opts.timeout_secs),
    order: Vec::new(),
  };
  let outcome = m.drive(sock);
  let pids: Vec<i32> = m.st.iter().filter_map(|e| e.real_pid).collect();
  match outcome {
    Ok(()) => {
      m.finish_processes();
      reaper::kill_all(&pids);
      reaper::reap_all(Duration::from_secs(2));
      m.report(started, None)
    }
    Err(Fail::Setup(e)) => {
      reaper::kill_all(&pids);
      reaper::reap_all(Duration::from_secs(2));
      setup_error(&e)
    }
    Err(Fail::Timeout(e)) => {
      reaper::kill_all(&pids);
      reaper::reap_all(Duration::from_secs(2));
      eprintln!("restore-sim: timeout after {}s {e}; killed every process", opts.timeout_secs);
      m.report(started, Some(4));
      4
    }
  }
}

fn setup_error(e: &str) -> i32 {
  eprintln!("restore-sim: {e}");
  2
}

impl Master<'_> {
  fn drive(&mut self, sock: RawFd) -> Result<(), Fail> {
    let n = self.layout.processes.len();
    for _ in 0..n {
      let (c, r) = (pipe()?, pipe()?);
      set_nonblock(r.0);
      self.pipes.push(Pipes { ctl_r: c.0, ctl_w: c.1, res_r: r.0, res_w: r.1 });
      self.st.push(Entry::default());
    }
    {
      let ctx =
        Ctx { layout: self.layout, opts: self.opts, pipes: &self.pipes, sock, master_pid: std::process::id() as i32 };
      for (i, _) in self.layout.processes.iter().enumerate().filter(|(_, p)| p.ppid == 0) {
        let pid = spawn_entry(&ctx, i).map_err(Fail::Setup)?;
        // SAFETY: setpgid on our own fresh child (the child does the same, whichever runs first wins).
        unsafe { libc::setpgid(pid, pid) };
        reaper::add_group(pid);
        self.st[i].real_pid = Some(pid);
        self.st[i].forked = true;
      }
    }
    for p in &self.pipes {
      // SAFETY: the master's copies of the process-side ends; the processes hold their own.
      unsafe {
        libc::close(p.ctl_r);
        libc::close(p.res_w);
      }
    }
    // Setup: every process forked, and every live one mapped, eagerly filled and registered.
    let procs = &self.layout.processes;
    self.wait_for("setup", |st| st.iter().zip(procs).all(|(e, p)| e.forked && (p.zombie || e.ready)))?;

    if self.opts.send_garbage {
      write_all(sock, b"\xde\xad\xbe\xefGARBAGE!\x00\x01\x02\x03")
        .map_err(|e| Fail::Setup(format!("sending garbage: {e}")))?;
    }
    let mut idx: Vec<usize> = (0..n).collect();
    match self.opts.handover_order {
      HandoverOrder::Pstree => {}
      HandoverOrder::Reverse => idx.reverse(),
      HandoverOrder::Shuffle => Rng::new(self.opts.seed).shuffle(&mut idx),
    }
    let mut bad_fd_pending = self.opts.send_bad_fd;
    for i in idx {
      let p = &self.layout.processes[i];
      if p.zombie {
        handover::send_pid(sock, -p.pid).map_err(Fail::Setup)?;
        self.order.push(-p.pid);
        continue;
      }
      let c = if bad_fd_pending { cmd::HANDOVER_BAD_FD } else { cmd::HANDOVER };
      bad_fd_pending = false;
      write_all(self.pipes[i].ctl_w, &[c]).map_err(|e| Fail::Setup(format!("pid {}: control pipe: {e}", p.pid)))?;
      self.wait_for(&format!("hand-over of pid {}", p.pid), |st| st[i].handed)?;
      self.order.push(p.pid);
    }
    if !self.opts.no_finish {
      write_all(sock, &handover::RESTORE_FINISHED.to_ne_bytes())
        .map_err(|e| Fail::Setup(format!("sending \"restore finished\" to the daemon failed: {e}")))?;
    }
    // SAFETY: the master's socket; every process closed its copy after its hand-over.
    unsafe { libc::close(sock) };
    if self.opts.handover_only {
      return Ok(());
    }
    for (i, _) in procs.iter().enumerate().filter(|(_, p)| !p.zombie) {
      // A process that already died (e.g. killed by the daemon) just has a closed pipe: ignore EPIPE.
      let _ = write_all(self.pipes[i].ctl_w, &[cmd::WORK]);
    }
    self.wait_for("workload", |st| {
      st.iter().zip(procs).all(|(e, p)| p.zombie || e.result.is_some() || e.status.is_some())
    })
  }

  /// Pumps pipes and statuses until `done` holds; fails on a process error, an unexpected death
  /// during setup/hand-over, or the deadline.
  fn wait_for(&mut self, what: &str, done: impl Fn(&[Entry]) -> bool) -> Result<(), Fail> {
    let setup_phase = what != "workload";
    loop {
      self.pump();
      for (e, p) in self.st.iter().zip(&self.layout.processes) {
        if let Some(err) = &e.error {
          return Err(Fail::Setup(err.clone()));
        }
        if setup_phase && !p.zombie && e.forked && !e.ready && e.reader.eof {
          return Err(Fail::Setup(format!("pid {} died during setup ({})", p.pid, describe(e.status))));
        }
        if setup_phase && !p.zombie && e.ready && e.status.is_some() {
          return Err(Fail::Setup(format!(
            "pid {} died before the end of the hand-over ({})",
            p.pid,
            describe(e.status)
          )));
        }
      }
      if done(&self.st) {
        return Ok(());
      }
      if Instant::now() >= self.deadline {
        return Err(Fail::Timeout(format!("waiting for {what}")));
      }
    }
  }

  fn pump(&mut self) {
    let mut pfds: Vec<libc::pollfd> = Vec::new();
    let mut who = Vec::new();
    for (i, e) in self.st.iter().enumerate() {
      if !e.reader.eof {
        pfds.push(libc::pollfd { fd: self.pipes[i].res_r, events: libc::POLLIN, revents: 0 });
        who.push(i);
      }
    }
    // SAFETY: pfds is a valid array of pollfds for the call.
    unsafe { libc::poll(pfds.as_mut_ptr(), pfds.len() as libc::nfds_t, 20) };
    for (k, pfd) in pfds.iter().enumerate() {
      if pfd.revents == 0 {
        continue;
      }
      let i = who[k];
      self.st[i].reader.pump(self.pipes[i].res_r);
      while let Some((tag, payload)) = self.st[i].reader.next_frame() {
        let pid = self.layout.processes[i].pid;
        let e = &mut self.st[i];
        match tag {
          b'F' => {
            e.forked = true;
            e.real_pid = Some(i32::from_ne_bytes(payload[..4].try_into().unwrap_or([0; 4])));
          }
          b'R' => e.ready = true,
          b'H' => e.handed = true,
          b'E' => e.error = Some(String::from_utf8_lossy(&payload).into_owned()),
          b'L' => e.latencies.extend_from_slice(&payload),
          b'S' => e.result = serde_json::from_slice(&payload).ok(),
          _ => e.error = Some(format!("pid {pid}: garbled message on the result pipe")),
        }
      }
    }
    self.update_statuses();
  }

  fn update_statuses(&mut self) {
    for (pid, status) in reaper::reap_now() {
      if let Some(e) = self.st.iter_mut().find(|e| e.real_pid == Some(pid)) {
        e.status.get_or_insert(status);
      }
    }
    for (e, p) in self.st.iter_mut().zip(&self.layout.processes) {
      if p.zombie || e.status.is_some() {
        continue;
      }
      if let Some(pid) = e.real_pid {
        if let Some(s) = reaper::zombie_status(pid) {
          e.status = Some(s);
        }
      }
    }
  }

  /// Normal end: tell everyone to exit, then reap the whole tree (bounded by the deadline).
  fn finish_processes(&mut self) {
    for p in &self.pipes {
      let _ = write_all(p.ctl_w, &[cmd::EXIT]);
      // SAFETY: our end of the ctl pipe; EOF also means "exit" to the process.
      unsafe { libc::close(p.ctl_w) };
    }
    reaper::reap_all(Duration::from_secs(5));
  }

  fn report(&self, started: Instant, forced: Option<i32>) -> i32 {
    let mut procs = Vec::new();
    let (mut any_bad, mut any_killed, mut any_err) = (false, false, false);
    let mut first_bad_msg = None;
    for (e, p) in self.st.iter().zip(&self.layout.processes) {
      if p.zombie {
        procs.push(json!({ "pid": p.pid, "zombie": true, "ok": true }));
        continue;
      }
      let mut v = e.result.clone().unwrap_or_else(|| json!({ "touched": 0, "verifiedPages": 0, "badPages": 0 }));
      v["pid"] = json!(p.pid);
      if e.real_pid != Some(p.pid) {
        v["realPid"] = json!(e.real_pid);
      }
      let bad = v["badPages"].as_u64().unwrap_or(0) > 0;
      let mut ok = !bad && v.get("error").is_none();
      if let Some(s) = e.status {
        if libc::WIFSIGNALED(s) {
          v["killedBySignal"] = json!(libc::WTERMSIG(s));
          any_killed = true;
          ok = false;
        } else if libc::WIFEXITED(s) && libc::WEXITSTATUS(s) != 0 {
          v["exitCode"] = json!(libc::WEXITSTATUS(s));
          any_err = true;
          ok = false;
        }
      }
      if e.result.is_none() && forced.is_none() && !self.opts.handover_only && e.status.is_none() {
        ok = false;
      }
      if bad {
        any_bad = true;
        if first_bad_msg.is_none() {
          let fb = &v["firstBad"];
          first_bad_msg = Some(format!(
            "pid {}: wrong byte at {}: expected {}, got {}",
            p.pid,
            fb["addr"].as_str().unwrap_or("?"),
            fb["expected"].as_str().unwrap_or("?"),
            fb["got"].as_str().unwrap_or("?")
          ));
        }
      }
      if let Some(err) = v.get("error").and_then(Value::as_str) {
        eprintln!("restore-sim: pid {}: {err}", p.pid);
        any_err = true;
      }
      v["ok"] = json!(ok);
      procs.push(v);
    }
    if let Some(m) = &first_bad_msg {
      eprintln!("restore-sim: {m}");
    }
    let code = forced.unwrap_or(if any_bad || any_err {
      1
    } else if any_killed {
      3
    } else {
      0
    });
    let mut rep = json!({
        "ok": code == 0,
        "seed": self.opts.seed,
        "processes": procs,
        "handoverOrder": self.order,
        "elapsedMs": started.elapsed().as_millis() as u64,
    });
    if forced == Some(4) {
      rep["timedOut"] = json!(true);
    }
    let text = format!("{rep}\n");
    match &self.opts.report {
      Some(f) => {
        if let Err(e) = std::fs::write(f, &text) {
          eprintln!("restore-sim: cannot write report {}: {e}", f.display());
          return 2;
        }
      }
      None => print!("{text}"),
    }
    if let Some(f) = &self.opts.latencies {
      let all: Vec<u8> = self.st.iter().flat_map(|e| e.latencies.iter().copied()).collect();
      if let Err(e) = std::fs::write(f, all) {
        eprintln!("restore-sim: cannot write latencies {}: {e}", f.display());
        return 2;
      }
    }
    code
  }
}

fn describe(status: Option<i32>) -> String {
  match status {
    Some(s) if libc::WIFSIGNALED(s) => format!("killed by signal {}", libc::WTERMSIG(s)),
    Some(s) if libc::WIFEXITED(s) => format!("exit status {}", libc::WEXITSTATUS(s)),
    _ => "no exit status".into(),
  }
}

fn pipe() -> Result<(RawFd, RawFd), Fail> {
  let mut fds = [0; 2];
  // SAFETY: pipe2 into a local array.
  if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } < 0 {
    return Err(Fail::Setup(format!("pipe failed: {}", restore_sim::os_err())));
  }
  Ok((fds[0], fds[1]))
}

fn set_nonblock(fd: RawFd) {
  // SAFETY: fcntl flag update on our own pipe end.
  unsafe {
    let fl = libc::fcntl(fd, libc::F_GETFL);
    libc::fcntl(fd, libc::F_SETFL, fl | libc::O_NONBLOCK);
  }
}
