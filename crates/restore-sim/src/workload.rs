//! The workloads run by each restored process after "restore finished" (except `hold`, see child.rs,
//! and `uffd-events`, see events.rs).
use restore_sim::layout::Proc;
use restore_sim::rng::Rng;
use restore_sim::PAGE;

use crate::cli::{Opts, TouchOrder, Workload};
use crate::spawn::{fork_workload_child, wait_exit};
use crate::verify::{lazy_regions, timed_touch, Checker, Outcome};

fn lazy_pages(p: &Proc) -> Vec<u64> {
  p.vmas.iter().filter(|v| v.lazy).flat_map(|v| (v.start..v.end).step_by(PAGE as usize)).collect()
}

fn verify_all(p: &Proc, chk: &mut Checker, out: &mut Outcome) -> Result<(), String> {
  for r in lazy_regions(p) {
    chk.check_region(&r, out)?;
  }
  Ok(())
}

fn ordered(mut pages: Vec<u64>, opts: &Opts, rng: &mut Rng) -> Vec<u64> {
  if opts.touch_order == TouchOrder::Rand {
    rng.shuffle(&mut pages);
  }
  pages
}

/// `count` distinct random pages (partial Fisher-Yates, so huge layouts stay cheap).
fn random_subset(mut pages: Vec<u64>, count: u64, rng: &mut Rng) -> Vec<u64> {
  let n = (count as usize).min(pages.len());
  for i in 0..n {
    let j = i + rng.below((pages.len() - i) as u64) as usize;
    pages.swap(i, j);
  }
  pages.truncate(n);
  pages
}

fn touch_then_verify(pages: &[u64], chk: &mut Checker, out: &mut Outcome) -> Result<(), String> {
  for &a in pages {
    timed_touch(a, out);
  }
  for &a in pages {
    chk.check_page(a, Some(a), out)?;
  }
  Ok(())
}

/// Runs a finite workload; Err is a setup-type failure inside the workload (reported, exit 1).
pub fn run(w: Workload, p: &Proc, opts: &Opts, chk: &mut Checker, out: &mut Outcome) -> Result<(), String> {
  let mut rng = Rng::new(opts.seed ^ (p.pid as u64).wrapping_mul(0x100_0000_01B3));
  let count = opts.count.unwrap_or(0);
  match w {
    Workload::TouchAll => {
      let pages = ordered(lazy_pages(p), opts, &mut rng);
      for &a in &pages {
        timed_touch(a, out);
      }
      verify_all(p, chk, out)
    }
    Workload::TouchRandom => {
      let pages = random_subset(lazy_pages(p), count, &mut rng);
      touch_then_verify(&pages, chk, out)?;
      if opts.then_verify_all {
        std::thread::sleep(std::time::Duration::from_millis(opts.settle_ms));
        verify_all(p, chk, out)?;
      }
      Ok(())
    }
    Workload::VerifyAll => {
      verify_all(p, chk, out)?;
      out.touched = out.verified_pages;
      Ok(())
    }
    Workload::ExitAfter => {
      let mut pages = ordered(lazy_pages(p), opts, &mut rng);
      pages.truncate(count as usize);
      touch_then_verify(&pages, chk, out)
    }
    Workload::ForkStorm => fork_storm(p, count, &mut rng, chk, out),
    Workload::UffdEvents => crate::events::run(p, chk, out),
    Workload::Hold => Ok(()),
  }
}

fn fork_storm(p: &Proc, n: u64, rng: &mut Rng, chk: &mut Checker, out: &mut Outcome) -> Result<(), String> {
  let all = lazy_pages(p);
  let mut kids = Vec::new();
  for k in 0..n {
    let subset = random_subset(all.clone(), 64, rng);
    let pid = fork_workload_child()?;
    if pid == 0 {
      let mut mine = Outcome::default();
      let ok = touch_then_verify(&subset, chk, &mut mine).is_ok() && mine.bad_pages == 0;
      // SAFETY: _exit in a forked child skips the parent's atexit/destructors, which must not run twice.
      unsafe { libc::_exit(if ok { 0 } else { 1 }) };
    }
    kids.push((k, pid));
  }
  let mut failed = 0;
  for (_, pid) in &kids {
    if wait_exit(*pid) != Some(0) {
      failed += 1;
    }
  }
  out.steps.push(serde_json::json!({ "step": "fork-storm", "children": n, "failed": failed }));
  if failed > 0 {
    out.error = Some(format!("{failed} of {n} fork-storm children saw wrong bytes or died"));
  }
  verify_all(p, chk, out)
}
