//! Touching and checking live memory against the oracle. A "region" maps live addresses to the image
//! address whose data must be there (or to zeros), because mremap moves data away from its image address.
use serde_json::{json, Value};
use std::time::Instant;

use restore_sim::expect::Oracle;
use restore_sim::layout::Proc;
use restore_sim::{hex, PAGE};

#[derive(Clone, Copy, Debug)]
pub struct Region {
  pub live: u64,
  pub len: u64,
  /// Image address of the data expected at `live`; None = must read zeros.
  pub image: Option<u64>,
}

/// Identity regions (live = image) for every lazy VMA: where each page must hold its image data
/// until an event moves it.
pub fn lazy_regions(p: &Proc) -> Vec<Region> {
  p.vmas
    .iter()
    .filter(|v| v.lazy)
    .map(|v| Region { live: v.start, len: v.end - v.start, image: Some(v.start) })
    .collect()
}

/// What one process measured and found; sent to the master as JSON (latencies separately).
#[derive(Default)]
pub struct Outcome {
  pub touched: u64,
  pub verified_pages: u64,
  pub bad_pages: u64,
  pub first_bad: Option<(u64, u8, u8)>,
  pub latencies: Vec<u64>,
  /// Touches of pages that were already resident (not timed).
  pub present_touches: u64,
  pub steps: Vec<Value>,
  pub error: Option<String>,
}

impl Outcome {
  pub fn to_json(&self) -> Value {
    let mut v = json!({
        "touched": self.touched,
        "verifiedPages": self.verified_pages,
        "badPages": self.bad_pages,
    });
    if let Some((a, e, g)) = self.first_bad {
      v["firstBad"] = json!({ "addr": hex(a), "expected": format!("{e:#04x}"), "got": format!("{g:#04x}") });
    }
    if !self.latencies.is_empty() {
      v["latencyNs"] = latency_stats(&self.latencies);
    }
    if self.present_touches > 0 {
      v["presentTouches"] = self.present_touches.into();
    }
    if !self.steps.is_empty() {
      v["steps"] = Value::Array(self.steps.clone());
    }
    if let Some(e) = &self.error {
      v["error"] = json!(e);
    }
    v
  }
}

pub fn latency_stats(l: &[u64]) -> Value {
  let mut s = l.to_vec();
  s.sort_unstable();
  let pick = |q: f64| s[(((s.len() as f64) * q).ceil() as usize).clamp(1, s.len()) - 1];
  let mean = s.iter().map(|&x| x as f64).sum::<f64>() / s.len() as f64;
  json!({ "count": s.len(), "min": s[0], "p50": pick(0.5), "p90": pick(0.9), "p99": pick(0.99),
            "p999": pick(0.999), "max": s[s.len() - 1], "mean": mean.round() as u64 })
}

pub struct Checker {
  pub oracle: Oracle,
  buf: Vec<u8>,
}

impl Checker {
  pub fn new(oracle: Oracle) -> Self {
    Checker { oracle, buf: vec![0; PAGE as usize] }
  }

  /// Verifies the page at `live` (reading it, so it faults in if needed). Returns false if bad.
  pub fn check_page(&mut self, live: u64, image: Option<u64>, out: &mut Outcome) -> Result<bool, String> {
    match image {
      Some(a) => self.oracle.fill(a, &mut self.buf)?,
      None => self.buf.fill(0),
    }
    // SAFETY: callers only pass pages of regions that are mapped readable in this process.
    let got = unsafe { std::slice::from_raw_parts(live as *const u8, PAGE as usize) };
    out.verified_pages += 1;
    if got == &self.buf[..] {
      return Ok(true);
    }
    out.bad_pages += 1;
    if out.first_bad.is_none() {
      let i = got.iter().zip(&self.buf).position(|(g, e)| g != e).unwrap_or(0);
      out.first_bad = Some((live + i as u64, self.buf[i], got[i]));
    }
    Ok(false)
  }

  pub fn check_region(&mut self, r: &Region, out: &mut Outcome) -> Result<u64, String> {
    let mut bad = 0;
    for off in (0..r.len).step_by(PAGE as usize) {
      if !self.check_page(r.live + off, r.image.map(|a| a + off), out)? {
        bad += 1;
      }
    }
    Ok(bad)
  }
}

/// Is the page at `addr` already in the page tables (installed by the daemon's background transfer)?
fn resident(addr: u64) -> bool {
  let mut v = 0u8;
  // SAFETY: mincore on one page of our own mapping, writing one byte into `v`.
  let r = unsafe { libc::mincore(addr as *mut libc::c_void, PAGE as usize, &mut v) };
  r == 0 && v & 1 == 1
}

/// First touch of one page (a one-byte read), timed with the monotonic clock. Only touches that
/// really fault are timed: a page the background transfer already installed costs a plain load,
/// and counting those would hide the fault latency (they are counted in `present_touches`).
pub fn timed_touch(addr: u64, out: &mut Outcome) {
  let was_resident = resident(addr);
  let t = Instant::now();
  // SAFETY: addr is inside a mapped, readable lazy VMA; a volatile read forces the fault.
  unsafe { std::ptr::read_volatile(addr as *const u8) };
  let ns = t.elapsed().as_nanos() as u64;
  if was_resident {
    out.present_touches += 1;
  } else {
    out.latencies.push(ns);
  }
  out.touched += 1;
}
