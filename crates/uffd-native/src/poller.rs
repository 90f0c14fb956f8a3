//! The one way our native threads wait: an epoll instance plus an eventfd that other threads write
//! to wake it (new commands, close). Shared by the fault event loop and the page server.
use std::os::fd::{FromRawFd, OwnedFd};

/// A fresh CLOEXEC epoll fd and a CLOEXEC, non-blocking eventfd (not yet added to the epoll set:
/// each user registers it with its own token).
pub fn epoll_and_wake() -> std::io::Result<(OwnedFd, OwnedFd)> {
  // SAFETY: epoll_create1 with CLOEXEC; the result is checked before use.
  let ep = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
  if ep < 0 {
    return Err(std::io::Error::last_os_error());
  }
  // SAFETY: a fresh fd nobody else owns.
  let ep = unsafe { OwnedFd::from_raw_fd(ep) };
  // SAFETY: eventfd with flags; the result is checked before use.
  let w = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
  if w < 0 {
    return Err(std::io::Error::last_os_error());
  }
  // SAFETY: a fresh fd nobody else owns.
  let wake = unsafe { OwnedFd::from_raw_fd(w) };
  Ok((ep, wake))
}
