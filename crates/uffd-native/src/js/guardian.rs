//! The guardian's napi functions: start it, stop it, and its body when it runs as `node -e`.

use napi_derive::napi;

use super::Result;
use crate::errors::to_napi;

/// Starts the guardian process (or shares the running one) and returns its pid: from now on, if
/// this process dies with tasks still owed pages, the guardian SIGKILLs them before their uffds
/// close. Throws `EGUARDIAN` when it cannot be started.
#[napi]
pub fn guardian_start() -> Result<u32> {
  crate::guardian::acquire().map_err(to_napi)
}

/// One user of the guardian `pid` (what `guardianStart` returned) is done; the last one stops it
/// (it kills whatever is still owed first).
#[napi]
pub fn guardian_stop(pid: u32) {
  crate::guardian::release(pid);
}

/// Internal: the body of a guardian started as `node -e` (when no `lazy-pages-guardian` binary sits
/// next to the addon). Never returns in a guardian; anywhere else it throws `EGUARDIAN`.
#[napi]
pub fn run_guardian() -> Result<()> {
  let Some((sock, daemon)) = lazy_pages_guardian::inherited_fds() else {
    return Err(to_napi(crate::guardian::GuardianError(
      "runGuardian is internal: it runs only in a process the daemon started".into(),
    )));
  };
  lazy_pages_guardian::harden();
  std::process::exit(lazy_pages_guardian::run(sock, daemon));
}
