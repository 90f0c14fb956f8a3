//! Command-line options. Hand-parsed (the sim keeps its dependencies small); every error names the option.
use std::path::PathBuf;

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum HandoverOrder {
  Shuffle,
  Pstree,
  Reverse,
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum TouchOrder {
  Seq,
  Rand,
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Workload {
  TouchAll,
  TouchRandom,
  VerifyAll,
  UffdEvents,
  ForkStorm,
  ExitAfter,
  Hold,
}

#[derive(Clone, Debug)]
pub struct Opts {
  pub layout: PathBuf,
  pub handover_order: HandoverOrder,
  pub touch_order: TouchOrder,
  pub seed: u64,
  pub any_pid: bool,
  pub workload: Workload,
  pub count: Option<u64>,
  pub then_verify_all: bool,
  /// With --then-verify-all: wait this long between the touches and the full verification, so the
  /// daemon's background transfer can install the rest first (then verification reads it).
  pub settle_ms: u64,
  pub procs_only: Option<Vec<i32>>,
  pub report: Option<PathBuf>,
  pub latencies: Option<PathBuf>,
  pub timeout_secs: f64,
  pub handover_only: bool,
  pub no_finish: bool,
  pub send_garbage: bool,
  pub send_bad_fd: bool,
}

pub const USAGE: &str = "usage: restore-sim --layout FILE [--workload touch-all|touch-random|verify-all|uffd-events|fork-storm|exit-after|hold]
  [--order shuffle|pstree|reverse] (hand-over order)  [--order seq|rand] (touch order)  [--seed N]
  [--count N] [--then-verify-all] [--settle-ms MS] [--procs-only PID,...] [--any-pid] [--report FILE] [--latencies FILE]
  [--timeout SECS] [--handover-only] [--no-finish] [--send-garbage] [--send-bad-fd]";

pub fn parse(args: &[String]) -> Result<Opts, String> {
  let mut o = Opts {
    layout: PathBuf::new(),
    handover_order: HandoverOrder::Shuffle,
    touch_order: TouchOrder::Seq,
    seed: default_seed(),
    any_pid: false,
    workload: Workload::TouchAll,
    count: None,
    then_verify_all: false,
    settle_ms: 0,
    procs_only: None,
    report: None,
    latencies: None,
    timeout_secs: 120.0,
    handover_only: false,
    no_finish: false,
    send_garbage: false,
    send_bad_fd: false,
  };
  let mut layout = None;
  let mut i = 0;
  while i < args.len() {
    let a = args[i].as_str();
    // `--opt=value` and `--opt value` are both accepted.
    let (name, inline) = match a.split_once('=') {
      Some((n, v)) if n.starts_with("--") => (n, Some(v.to_string())),
      _ => (a, None),
    };
    let value = |i: &mut usize| -> Result<String, String> {
      if let Some(v) = &inline {
        return Ok(v.clone());
      }
      *i += 1;
      args.get(*i).cloned().ok_or_else(|| format!("option {name} needs a value"))
    };
    match name {
      "--layout" => layout = Some(PathBuf::from(value(&mut i)?)),
      "--order" => {
        let v = value(&mut i)?;
        match v.as_str() {
          "shuffle" => o.handover_order = HandoverOrder::Shuffle,
          "pstree" => o.handover_order = HandoverOrder::Pstree,
          "reverse" => o.handover_order = HandoverOrder::Reverse,
          "seq" => o.touch_order = TouchOrder::Seq,
          "rand" => o.touch_order = TouchOrder::Rand,
          _ => {
            return Err(format!("--order must be shuffle|pstree|reverse (hand-over) or seq|rand (touch), got {v:?}"))
          }
        }
      }
      "--seed" => o.seed = num(name, &value(&mut i)?)?,
      "--any-pid" => o.any_pid = true,
      "--workload" => {
        let v = value(&mut i)?;
        o.workload = match v.as_str() {
          "touch-all" => Workload::TouchAll,
          "touch-random" => Workload::TouchRandom,
          "verify-all" => Workload::VerifyAll,
          "uffd-events" => Workload::UffdEvents,
          "fork-storm" => Workload::ForkStorm,
          "exit-after" => Workload::ExitAfter,
          "hold" => Workload::Hold,
          _ => return Err(format!("--workload: unknown workload {v:?}")),
        }
      }
      "--count" => o.count = Some(num(name, &value(&mut i)?)?),
      "--then-verify-all" => o.then_verify_all = true,
      "--settle-ms" => o.settle_ms = num(name, &value(&mut i)?)?,
      "--procs-only" => {
        let v = value(&mut i)?;
        let mut pids = Vec::new();
        for p in v.split(',').filter(|s| !s.is_empty()) {
          pids.push(p.trim().parse::<i32>().map_err(|_| format!("--procs-only: {p:?} is not a pid"))?);
        }
        o.procs_only = Some(pids);
      }
      "--report" => o.report = Some(PathBuf::from(value(&mut i)?)),
      "--latencies" => o.latencies = Some(PathBuf::from(value(&mut i)?)),
      "--timeout" => {
        let v = value(&mut i)?;
        o.timeout_secs = v
          .parse::<f64>()
          .ok()
          .filter(|t| *t > 0.0 && t.is_finite())
          .ok_or_else(|| format!("--timeout must be a positive number of seconds, got {v:?}"))?;
      }
      "--handover-only" => o.handover_only = true,
      "--no-finish" => o.no_finish = true,
      "--send-garbage" => o.send_garbage = true,
      "--send-bad-fd" => o.send_bad_fd = true,
      "-h" | "--help" => return Err(USAGE.to_string()),
      _ if !a.starts_with('-') && layout.is_none() => layout = Some(PathBuf::from(a)),
      _ => return Err(format!("unknown option {a:?}\n{USAGE}")),
    }
    i += 1;
  }
  o.layout = layout.ok_or_else(|| format!("--layout FILE is required\n{USAGE}"))?;
  let needs_count = matches!(o.workload, Workload::TouchRandom | Workload::ForkStorm | Workload::ExitAfter);
  if needs_count && o.count.is_none() {
    return Err("--count N is required by this workload".into());
  }
  Ok(o)
}

fn num(name: &str, v: &str) -> Result<u64, String> {
  let parsed = match v.strip_prefix("0x") {
    Some(h) => u64::from_str_radix(h, 16).ok(),
    None => v.parse::<u64>().ok(),
  };
  parsed.ok_or_else(|| format!("{name} must be a non-negative integer, got {v:?}"))
}

fn default_seed() -> u64 {
  let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
  t.as_nanos() as u64 ^ std::process::id() as u64
}
