//! Per-process counters the JS thread reads (`stats`) while the loop thread updates them.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64};

/// Per-process counters, readable from JS without touching the loop thread.
#[derive(Debug, Default)]
pub struct Counters {
  pub faults: AtomicU64,
  pub copy_pages: AtomicU64,
  pub zero_pages: AtomicU64,
  pub forwarded: AtomicU64,
  /// Faults served by the background copy that held their page (see `Loop::join_fault`).
  pub joined: AtomicU64,
  pub bytes: AtomicU64,
  pub paused: AtomicBool,
  pub gen: AtomicU32,
}
