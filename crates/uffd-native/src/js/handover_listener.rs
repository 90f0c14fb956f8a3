//! The `HandoverListener` class (CRIU's lazy-pages.socket) and what it reports (`HandoverEvent`).

use std::path::Path;

use napi::bindgen_prelude::Function;
use napi::threadsafe_function::{ThreadsafeFunction, ThreadsafeFunctionCallMode};
use napi::Status;
use napi_derive::napi;

use super::event_loop::EventLoop;
use super::Result;
use crate::errors::{to_napi, ArgError};
use crate::event_loop::Cmd;
use crate::handover::{self, HandoverError, Report, Step};

/// One hand-over event, as a discriminated union on `type`, in the order the restorer produces them
/// (the TS facade documents each).
#[napi(discriminant_case = "kebab-case", object_from_js = false)]
pub enum HandoverEvent {
  /// `pid`: the restorer's (SO_PEERCRED), 0 when unknown.
  Connected {
    pid: i32,
  },
  /// `fd`: the received userfaultfd, which the receiver must adopt.
  Task {
    pid: i32,
    fd: i32,
  },
  Zombie {
    pid: i32,
  },
  Finished,
  /// `pid`: the task whose hand-over went wrong, so the daemon can kill it (its uffd is gone).
  Error {
    code: String,
    message: String,
    pid: Option<i32>,
  },
  Refused {
    message: String,
  },
}

fn handover_event(r: Report) -> HandoverEvent {
  match r {
    Report::Connected { pid } => HandoverEvent::Connected { pid },
    Report::Step(Step::Task { pid, fd }) => HandoverEvent::Task { pid, fd },
    Report::Step(Step::Zombie { pid }) => HandoverEvent::Zombie { pid },
    Report::Step(Step::Finished) => HandoverEvent::Finished,
    Report::Error(e) => {
      use crate::errors::Coded;
      let pid = match e {
        HandoverError::NoFd(p) | HandoverError::NotUffd(p, _) => Some(p),
        _ => None,
      };
      HandoverEvent::Error { code: e.code().into(), message: e.to_string(), pid }
    }
    Report::Refused(message) => HandoverEvent::Refused { message },
  }
}

type HandoverTsfn = ThreadsafeFunction<HandoverEvent, (), HandoverEvent, Status, false>;

/// The CRIU hand-over socket.
#[napi]
pub struct HandoverListener {
  inner: Option<handover::Listener>,
  path: String,
}

#[napi]
impl HandoverListener {
  /// Binds `<workDir>/lazy-pages.socket` and reports events to `callback` (never blocking the JS thread).
  /// With `unpark`, that event loop's parked background requests start the moment the restorer says
  /// "restore finished", on this thread: CRIU resumes the restored tasks right after saying it, and
  /// the JS thread may be busy (or starved of CPU) for tens of milliseconds before it sees the event.
  #[napi(factory, ts_args_type = "workDir: string, callback: (ev: HandoverEvent) => void, unpark?: EventLoop")]
  pub fn listen(
    work_dir: String,
    callback: Function<HandoverEvent, ()>,
    unpark: Option<&EventLoop>,
  ) -> Result<HandoverListener> {
    let unpark = unpark.map(|l| l.handle.shared.clone());
    let tsfn: HandoverTsfn = callback
      .build_threadsafe_function()
      .callee_handled::<false>()
      .build()
      .map_err(|e| to_napi(ArgError::Invalid(format!("callback: {e}"))))?;
    let mut restorer = 0;
    let listener = handover::Listener::start(Path::new(&work_dir), move |r| {
      // The guardian holds each received uffd from this moment (before JS even sees it): a daemon
      // dying before it serves the task cannot close its last copy.
      match &r {
        Report::Connected { pid } => restorer = *pid,
        Report::Step(Step::Task { pid, fd }) => {
          crate::guardian::hold(*fd, *pid, restorer);
          // The event loop copies the runs preloaded for this task now, with a duplicate of its uffd,
          // while JS has not even heard of it (see early.rs).
          if let Some(shared) = &unpark {
            // SAFETY: F_DUPFD_CLOEXEC on an fd we hold (the hand-over just received it) has no
            // memory effects; the new fd is owned by the Uffd below, or by nobody if it failed.
            let dup = unsafe { libc::fcntl(*fd, libc::F_DUPFD_CLOEXEC, 0) };
            if dup >= 0 {
              // SAFETY: `dup` is a fresh duplicate of a uffd the hand-over checked, owned by nobody else.
              let uffd = unsafe { crate::uffd::Uffd::from_raw_uffd(dup) };
              shared.send(Cmd::Early { pid: *pid, uffd });
            }
          }
        }
        Report::Step(Step::Finished) => {
          if let Some(shared) = &unpark {
            shared.send(Cmd::Unpark);
          }
        }
        _ => {}
      }
      tsfn.call(handover_event(r), ThreadsafeFunctionCallMode::NonBlocking);
    })
    .map_err(to_napi)?;
    let path = listener.path().to_string_lossy().into_owned();
    Ok(HandoverListener { inner: Some(listener), path })
  }

  /// Socket path.
  #[napi(getter)]
  pub fn path(&self) -> String {
    self.path.clone()
  }

  /// Stops listening and unlinks the socket. Idempotent.
  #[napi]
  pub fn close(&mut self) {
    if let Some(mut l) = self.inner.take() {
      l.close();
    }
  }
}
