//! Raw userfaultfd uAPI (spec §5): the ioctl numbers and structs, with errno returned as values.
use std::os::fd::{FromRawFd, OwnedFd, RawFd};

pub const UFFDIO_API: u64 = 0xc018_aa3f;
pub const UFFDIO_REGISTER: u64 = 0xc020_aa00;
pub const UFFDIO_UNREGISTER: u64 = 0x8010_aa01;
pub const UFFDIO_COPY: u64 = 0xc028_aa03;
pub const UFFDIO_ZEROPAGE: u64 = 0xc020_aa04;
pub const UFFD_API: u64 = 0xAA;
pub const REGISTER_MODE_MISSING: u64 = 1;

/// EVENT_FORK | EVENT_REMAP | EVENT_REMOVE | EVENT_UNMAP: what CRIU's restorer asks for (spec §2).
pub const CRIU_FEATURES: u64 = 0x4E;

pub const EVENT_PAGEFAULT: u8 = 0x12;
pub const EVENT_FORK: u8 = 0x13;
pub const EVENT_REMAP: u8 = 0x14;
pub const EVENT_REMOVE: u8 = 0x15;
pub const EVENT_UNMAP: u8 = 0x16;

#[repr(C)]
struct Api {
  api: u64,
  features: u64,
  ioctls: u64,
}

#[repr(C)]
struct Register {
  start: u64,
  len: u64,
  mode: u64,
  ioctls: u64,
}

#[repr(C)]
struct Range {
  start: u64,
  len: u64,
}

#[repr(C)]
struct Copy {
  dst: u64,
  src: u64,
  len: u64,
  mode: u64,
  copy: i64,
}

#[repr(C)]
struct Zero {
  start: u64,
  len: u64,
  mode: u64,
  zeropage: i64,
}

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
  let mut a = Api { api: UFFD_API, features, ioctls: 0 };
  // SAFETY: `a` is a live, correctly laid out uffdio_api for the duration of the call.
  let r = unsafe { libc::ioctl(fd, UFFDIO_API as _, &mut a as *mut Api) };
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
  let mut r = Register { start, len, mode: REGISTER_MODE_MISSING, ioctls: 0 };
  // SAFETY: `r` is a live uffdio_register; the kernel only reads/writes inside it.
  let rc = unsafe { libc::ioctl(fd, UFFDIO_REGISTER as _, &mut r as *mut Register) };
  if rc < 0 {
    return Err(format!("UFFDIO_REGISTER {start:#x}+{len:#x} failed: {}", crate::os_err()));
  }
  Ok(())
}

pub fn unregister(fd: RawFd, start: u64, len: u64) -> Result<(), i32> {
  let mut r = Range { start, len };
  // SAFETY: `r` is a live uffdio_range.
  let rc = unsafe { libc::ioctl(fd, UFFDIO_UNREGISTER as _, &mut r as *mut Range) };
  if rc < 0 {
    return Err(errno());
  }
  Ok(())
}

/// UFFDIO_COPY; Ok(bytes copied) or Err((errno, bytes copied before the error)).
pub fn copy(fd: RawFd, dst: u64, src: &[u8]) -> Result<i64, (i32, i64)> {
  let mut c = Copy { dst, src: src.as_ptr() as u64, len: src.len() as u64, mode: 0, copy: 0 };
  // SAFETY: `src` is a readable buffer of `len` bytes that outlives the call; `c` is a live uffdio_copy.
  let rc = unsafe { libc::ioctl(fd, UFFDIO_COPY as _, &mut c as *mut Copy) };
  if rc < 0 {
    return Err((errno(), c.copy.max(0)));
  }
  Ok(c.copy)
}

pub fn zeropage(fd: RawFd, start: u64, len: u64) -> Result<i64, (i32, i64)> {
  let mut z = Zero { start, len, mode: 0, zeropage: 0 };
  // SAFETY: `z` is a live uffdio_zeropage.
  let rc = unsafe { libc::ioctl(fd, UFFDIO_ZEROPAGE as _, &mut z as *mut Zero) };
  if rc < 0 {
    return Err((errno(), z.zeropage.max(0)));
  }
  Ok(z.zeropage)
}

/// A decoded `struct uffd_msg` (32 bytes: event at 0, union at 8).
#[derive(Debug, Clone, Copy)]
pub enum Msg {
  PageFault { address: u64 },
  Fork { ufd: RawFd },
  Remap { from: u64, to: u64, len: u64 },
  Remove { start: u64, end: u64 },
  Unmap { start: u64, end: u64 },
  Other(u8),
}

pub fn parse_msg(b: &[u8; 32]) -> Msg {
  let u64_at = |o: usize| u64::from_ne_bytes(b[o..o + 8].try_into().unwrap());
  match b[0] {
    EVENT_PAGEFAULT => Msg::PageFault { address: u64_at(16) },
    EVENT_FORK => Msg::Fork { ufd: u32::from_ne_bytes(b[8..12].try_into().unwrap()) as RawFd },
    EVENT_REMAP => Msg::Remap { from: u64_at(8), to: u64_at(16), len: u64_at(24) },
    EVENT_REMOVE => Msg::Remove { start: u64_at(8), end: u64_at(16) },
    EVENT_UNMAP => Msg::Unmap { start: u64_at(8), end: u64_at(16) },
    e => Msg::Other(e),
  }
}
