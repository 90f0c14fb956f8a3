//! A JS callback fed batches of events by a native thread (the event loop, the page server).

use std::sync::Arc;

use napi::bindgen_prelude::Function;
use napi::threadsafe_function::{ThreadsafeFunction, ThreadsafeFunctionCallMode};
use napi::Status;

use super::Result;
use crate::errors::{to_napi, ArgError};

/// The threadsafe function of a [`BatchCallback`]: called with nothing, it builds its batch in JS.
type BatchTsfn<R> = ThreadsafeFunction<(), (), Vec<R>, Status, false>;

/// A JS callback that receives events in batches from a native thread, for the event loop and the
/// page server alike.
///
/// `notify` (called on the native thread) schedules one non-blocking call; on the JS thread the
/// call drains `take(shared)`, maps it and hands the array over. `shared` exists only once the
/// thread has started, so it is set into `slot` afterwards. Emptying `tsfn` (on close) releases the
/// threadsafe function, so Node can exit, and breaks the cycle callback -> shared -> notify.
pub(super) struct BatchCallback<S, R: napi::bindgen_prelude::ToNapiValue + 'static> {
  slot: Arc<std::sync::OnceLock<Arc<S>>>,
  tsfn: Arc<std::sync::Mutex<Option<BatchTsfn<R>>>>,
}

impl<S: Send + Sync + 'static, R: napi::bindgen_prelude::ToNapiValue + 'static> BatchCallback<S, R> {
  pub(super) fn new<E: 'static>(
    callback: Function<Vec<R>, ()>,
    take: fn(&S) -> Vec<E>,
    map: fn(E) -> R,
  ) -> Result<Self> {
    let slot: Arc<std::sync::OnceLock<Arc<S>>> = Arc::new(std::sync::OnceLock::new());
    let slot_js = slot.clone();
    let tsfn = callback
      .build_threadsafe_function::<()>()
      .callee_handled::<false>()
      .build_callback(move |_ctx| {
        let batch = slot_js.get().map(|s| take(s)).unwrap_or_default();
        Ok(batch.into_iter().map(map).collect::<Vec<_>>())
      })
      .map_err(|e| to_napi(ArgError::Invalid(format!("callback: {e}"))))?;
    Ok(BatchCallback { slot, tsfn: Arc::new(std::sync::Mutex::new(Some(tsfn))) })
  }

  /// What the native thread calls when a batch is ready.
  pub(super) fn notify(&self) -> Box<dyn Fn() + Send + Sync> {
    let t = self.tsfn.clone();
    Box::new(move || {
      if let Some(f) = t.lock().unwrap_or_else(|p| p.into_inner()).as_ref() {
        f.call((), ThreadsafeFunctionCallMode::NonBlocking);
      }
    })
  }

  /// Connects the callback to the started thread's shared state.
  pub(super) fn started(&self, shared: Arc<S>) {
    let _ = self.slot.set(shared);
  }

  /// Releases the threadsafe function (Node may exit; no more calls).
  pub(super) fn release(&self) {
    self.tsfn.lock().unwrap_or_else(|p| p.into_inner()).take();
  }
}
