//! Coalescing hand-off of reports from a native thread to JS: reports are appended to one shared Vec and JS
//! is notified only when it has taken the previous batch, so a fault storm costs one JS callback per batch
//! instead of one per fault.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

/// Shared queue + "a notification is in flight" flag.
pub struct Outbox<T> {
  queue: Mutex<Vec<T>>,
  pending: AtomicBool,
  notify: Box<dyn Fn() + Send + Sync>,
}

impl<T> Outbox<T> {
  /// `notify` schedules a JS callback (it must not block).
  pub fn new(notify: Box<dyn Fn() + Send + Sync>) -> Outbox<T> {
    Outbox { queue: Mutex::new(Vec::new()), pending: AtomicBool::new(false), notify }
  }

  /// Appends reports; notifies JS if no batch is waiting for it.
  pub fn push_all(&self, items: &mut Vec<T>) {
    if items.is_empty() {
      return;
    }
    {
      let mut q = self.queue.lock().unwrap_or_else(|p| p.into_inner());
      q.append(items);
    }
    if !self.pending.swap(true, Ordering::AcqRel) {
      (self.notify)();
    }
  }

  /// Called on the JS thread: clears the flag first (so a push racing with us notifies again), then takes all.
  pub fn take(&self) -> Vec<T> {
    self.pending.store(false, Ordering::Release);
    let mut q = self.queue.lock().unwrap_or_else(|p| p.into_inner());
    std::mem::take(&mut *q)
  }
}

#[cfg(test)]
mod tests {
  use super::*;
  use std::sync::atomic::AtomicUsize;
  use std::sync::Arc;

  #[test]
  fn coalesces_until_taken() {
    let calls = Arc::new(AtomicUsize::new(0));
    let c = calls.clone();
    let ob: Outbox<u32> = Outbox::new(Box::new(move || {
      c.fetch_add(1, Ordering::SeqCst);
    }));
    ob.push_all(&mut vec![1, 2]);
    ob.push_all(&mut vec![3]);
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    assert_eq!(ob.take(), vec![1, 2, 3]);
    ob.push_all(&mut vec![4]);
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    ob.push_all(&mut vec![]);
    assert_eq!(calls.load(Ordering::SeqCst), 2);
  }
}
