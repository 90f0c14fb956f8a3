//! The one way our native threads wait: a [`Poller`] (an epoll instance) that reports the fds a thread
//! watches by token, and a [`Waker`] (an eventfd) that other threads write to wake it (new commands,
//! close). Used by every native thread that waits on several fds: the fault event loop and its
//! page-server client, the hand-over listener and the page server (uffd-native), and the guardian
//! process (crates/guardian). A crate of its own so that both can use it.
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::Arc;

/// An empty slot for [`Poller::wait`]'s buffer (`[EMPTY; N]`).
pub const EMPTY: libc::epoll_event = libc::epoll_event { events: 0, u64: 0 };

/// An epoll instance. Clones share it: the event loop's page-server client keeps one to change its
/// socket's interest while the loop owns the wait.
#[derive(Clone)]
pub struct Poller {
  ep: Arc<OwnedFd>,
}

impl Poller {
  /// A fresh CLOEXEC epoll instance.
  pub fn new() -> io::Result<Poller> {
    // SAFETY: epoll_create1 with CLOEXEC; the result is checked before use.
    let ep = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
    if ep < 0 {
      return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh fd nobody else owns.
    Ok(Poller { ep: Arc::new(unsafe { OwnedFd::from_raw_fd(ep) }) })
  }

  fn ctl(&self, op: libc::c_int, fd: RawFd, events: u32, token: u64) -> io::Result<()> {
    let mut ev = libc::epoll_event { events, u64: token };
    // SAFETY: `ev` is valid for the call; a closed or foreign fd only makes the call fail.
    if unsafe { libc::epoll_ctl(self.ep.as_raw_fd(), op, fd, &mut ev) } != 0 {
      return Err(io::Error::last_os_error());
    }
    Ok(())
  }

  /// Watches `fd` for `events` (level-triggered), reported with `token`.
  pub fn add(&self, fd: RawFd, events: u32, token: u64) -> io::Result<()> {
    self.ctl(libc::EPOLL_CTL_ADD, fd, events, token)
  }

  /// Changes what `fd` is watched for (and its token).
  pub fn modify(&self, fd: RawFd, events: u32, token: u64) -> io::Result<()> {
    self.ctl(libc::EPOLL_CTL_MOD, fd, events, token)
  }

  /// Stops watching `fd`. Nothing is returned: the only failure (not watched, or closed already, which
  /// removed it) leaves the fd unwatched, which is what every caller wants.
  pub fn remove(&self, fd: RawFd) {
    let _ = self.ctl(libc::EPOLL_CTL_DEL, fd, 0, 0);
  }

  /// Waits at most `timeout_ms` (-1: until something is ready) and returns the ready slots of `events`.
  /// A signal interrupting the wait is no error: it returns no event, and the caller's loop goes on.
  pub fn wait<'a>(&self, events: &'a mut [libc::epoll_event], timeout_ms: i32) -> io::Result<&'a [libc::epoll_event]> {
    let max = events.len().min(i32::MAX as usize) as i32;
    // SAFETY: `events` is a valid, writable buffer of `max` epoll_event slots for the call.
    let n = unsafe { libc::epoll_wait(self.ep.as_raw_fd(), events.as_mut_ptr(), max, timeout_ms) };
    if n < 0 {
      let e = io::Error::last_os_error();
      return if e.kind() == io::ErrorKind::Interrupted { Ok(&events[..0]) } else { Err(e) };
    }
    Ok(&events[..n as usize])
  }
}

/// Waits (poll(2)) until `fd` is readable, or writable too when `writable`, for at most `timeout`
/// (at least 1 ms): true if it is (or a signal came), false when the time ran out first. For a thread
/// that waits on one fd only, where an epoll instance would be more than the wait.
pub fn wait_fd(fd: RawFd, writable: bool, timeout: std::time::Duration) -> bool {
  let events = libc::POLLIN | if writable { libc::POLLOUT } else { 0 };
  let mut pfd = libc::pollfd { fd, events, revents: 0 };
  // SAFETY: one valid pollfd for the duration of the call.
  let n = unsafe { libc::poll(&mut pfd, 1, timeout.as_millis().clamp(1, i32::MAX as u128) as i32) };
  n > 0 || (n < 0 && io::Error::last_os_error().kind() == io::ErrorKind::Interrupted)
}

/// An eventfd another thread writes to wake the thread polling it (watch [`Waker::fd`] with a token).
pub struct Waker {
  fd: OwnedFd,
}

impl Waker {
  /// A CLOEXEC, non-blocking eventfd.
  pub fn new() -> io::Result<Waker> {
    // SAFETY: eventfd with flags; the result is checked before use.
    let w = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
    if w < 0 {
      return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh fd nobody else owns.
    Ok(Waker { fd: unsafe { OwnedFd::from_raw_fd(w) } })
  }

  /// The fd to watch (readable once woken, until [`Waker::drain`]).
  pub fn fd(&self) -> RawFd {
    self.fd.as_raw_fd()
  }

  /// Wakes the polling thread. One write of 8 bytes; EAGAIN (the counter at its maximum) means it is
  /// awake anyway, so nothing can fail that matters.
  pub fn wake(&self) {
    let one: u64 = 1;
    // SAFETY: writes 8 bytes from a live u64 to an eventfd we own.
    unsafe { libc::write(self.fd.as_raw_fd(), &one as *const u64 as *const libc::c_void, 8) };
  }

  /// Resets the counter, so the fd is no longer readable (EAGAIN, when already drained, is fine).
  pub fn drain(&self) {
    let mut buf = [0u8; 8];
    // SAFETY: reads the eventfd counter into an 8-byte buffer we own.
    unsafe { libc::read(self.fd.as_raw_fd(), buf.as_mut_ptr() as *mut libc::c_void, 8) };
  }
}

#[cfg(test)]
mod tests {
  use super::*;

  #[test]
  fn a_wake_is_reported_with_its_token_until_drained() {
    let (p, w) = (Poller::new().unwrap(), Waker::new().unwrap());
    p.add(w.fd(), libc::EPOLLIN as u32, 7).unwrap();
    let mut evs = [EMPTY; 4];
    assert!(p.wait(&mut evs, 0).unwrap().is_empty());
    w.wake();
    w.wake();
    let ready = p.wait(&mut evs, 1000).unwrap();
    assert_eq!(ready.len(), 1);
    assert_eq!({ ready[0].u64 }, 7);
    w.drain();
    assert!(p.wait(&mut evs, 0).unwrap().is_empty());
    p.remove(w.fd());
    p.remove(w.fd()); // not watched any more: no error to handle
    w.wake();
    assert!(p.wait(&mut evs, 0).unwrap().is_empty());
  }
}
