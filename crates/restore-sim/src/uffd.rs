//! The userfaultfd calls CRIU's restorer (and the mini-daemon) make, with errno returned as values; the
//! uAPI itself (numbers, structs, messages) is the uffd-sys crate's.
use std::os::fd::{FromRawFd, OwnedFd, RawFd};

use uffd_sys::{
  msg, UffdioApi, UffdioCopy, UffdioRange, UffdioRegister, UffdioZeropage, REGISTER_MODE_MISSING, UFFDIO_API,
  UFFDIO_COPY, UFFDIO_REGISTER, UFFDIO_UNREGISTER, UFFDIO_ZEROPAGE, UFFD_API,
};

/// EVENT_FORK | EVENT_REMAP | EVENT_REMOVE | EVENT_UNMAP: what CRIU's restorer asks for (spec §2).
pub const CRIU_FEATURES: u64 = uffd_sys::LAZY_PAGES_FEATURES;

fn errno() -> i32 {
  std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

/// `userfaultfd(O_CLOEXEC|O_NONBLOCK)`, as CRIU's restorer creates it.
pub fn create() -> Result<OwnedFd, String> {
  // SAFETY: plain syscall with integer flags; the result is checked before use.
  let fd = unsafe { libc::syscall(libc::SYS_userfaultfd, libc::O_CLOEXEC | libc::O_NONBLOCK) };
  if fd < 0 {
    return Err(format!("userfaultfd() failed: {} (needs root or vm.unprivileged_userfaultfd=1)", crate::os_err()));
  }
  // SAFETY: fd is a fresh descriptor we own exclusively.
  Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// UFFDIO_API handshake; returns the features the kernel granted.
pub fn api(fd: RawFd, features: u64) -> Result<u64, String> {
  let mut a = UffdioApi { api: UFFD_API, features, ioctls: 0 };
  // SAFETY: `a` is a live, correctly laid out uffdio_api for the duration of the call.
  let r = unsafe { libc::ioctl(fd, UFFDIO_API as _, &mut a as *mut UffdioApi) };
  if r < 0 {
    return Err(format!("UFFDIO_API(features {features:#x}) failed: {}", crate::os_err()));
  }
  Ok(a.features)
}

/// The kernel's feature set, probed on a throw-away fd because UFFDIO_API cannot be repeated on one fd.
pub fn kernel_features() -> Result<u64, String> {
  let probe = create()?;
  use std::os::fd::AsRawFd;
  api(probe.as_raw_fd(), 0)
}

pub fn register_missing(fd: RawFd, start: u64, len: u64) -> Result<(), String> {
  let mut r = UffdioRegister { range: UffdioRange { start, len }, mode: REGISTER_MODE_MISSING, ioctls: 0 };
  // SAFETY: `r` is a live uffdio_register; the kernel only reads/writes inside it.
  let rc = unsafe { libc::ioctl(fd, UFFDIO_REGISTER as _, &mut r as *mut UffdioRegister) };
  if rc < 0 {
    return Err(format!("UFFDIO_REGISTER {start:#x}+{len:#x} failed: {}", crate::os_err()));
  }
  Ok(())
}

pub fn unregister(fd: RawFd, start: u64, len: u64) -> Result<(), i32> {
  let mut r = UffdioRange { start, len };
  // SAFETY: `r` is a live uffdio_range.
  let rc = unsafe { libc::ioctl(fd, UFFDIO_UNREGISTER as _, &mut r as *mut UffdioRange) };
  if rc < 0 {
    return Err(errno());
  }
  Ok(())
}

/// UFFDIO_COPY; Ok(bytes copied) or Err((errno, bytes copied before the error)).
pub fn copy(fd: RawFd, dst: u64, src: &[u8]) -> Result<i64, (i32, i64)> {
  let mut c = UffdioCopy { dst, src: src.as_ptr() as u64, len: src.len() as u64, mode: 0, copy: 0 };
  // SAFETY: `src` is a readable buffer of `len` bytes that outlives the call; `c` is a live uffdio_copy.
  let rc = unsafe { libc::ioctl(fd, UFFDIO_COPY as _, &mut c as *mut UffdioCopy) };
  if rc < 0 {
    return Err((errno(), c.copy.max(0)));
  }
  Ok(c.copy)
}

pub fn zeropage(fd: RawFd, start: u64, len: u64) -> Result<i64, (i32, i64)> {
  let mut z = UffdioZeropage { range: UffdioRange { start, len }, mode: 0, zeropage: 0 };
  // SAFETY: `z` is a live uffdio_zeropage.
  let rc = unsafe { libc::ioctl(fd, UFFDIO_ZEROPAGE as _, &mut z as *mut UffdioZeropage) };
  if rc < 0 {
    return Err((errno(), z.zeropage.max(0)));
  }
  Ok(z.zeropage)
}

/// Decodes one `struct uffd_msg` (uffd-sys's decoder).
pub fn parse_msg(b: &[u8; 32]) -> Result<msg::Event, msg::MsgError> {
  msg::decode(b)
}
