//! The one way our native threads wait: an epoll instance plus an eventfd that other threads write
//! to wake it (new commands, close). Shared by the fault event loop and the page server.
use std::os::fd::{FromRawFd, OwnedFd, RawFd};

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

/// `epoll_ctl(ep, op, fd)` with `events` and the token `tok` (DEL ignores both).
pub fn epoll_ctl(ep: RawFd, op: libc::c_int, fd: RawFd, events: u32, tok: u64) -> std::io::Result<()> {
  let mut ev = libc::epoll_event { events, u64: tok };
  // SAFETY: `ev` is valid for the call; a closed or foreign fd only makes the call fail.
  if unsafe { libc::epoll_ctl(ep, op, fd, &mut ev) } != 0 {
    return Err(std::io::Error::last_os_error());
  }
  Ok(())
}

/// Wakes the thread polling the eventfd `wake` (one write of 8 bytes; EAGAIN, the counter at its
/// maximum, means it is awake anyway).
pub fn wake(wake: RawFd) {
  let one: u64 = 1;
  // SAFETY: writes 8 bytes from a live u64 to an eventfd.
  unsafe { libc::write(wake, &one as *const u64 as *const libc::c_void, 8) };
}
