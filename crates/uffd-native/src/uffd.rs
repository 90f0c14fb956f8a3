//! An owned userfaultfd and its ioctls (REGISTER, UNREGISTER, WAKE, COPY, ZEROPAGE).
//!
//! The ioctl numbers and structs are the uffd-sys crate's (one definition, shared with the simulator).

use std::fmt;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use crate::errors::Coded;

/// Features every lazy-pages uffd must have: EVENT_FORK | EVENT_REMAP | EVENT_REMOVE | EVENT_UNMAP.
pub const REQUIRED_FEATURES: u64 = uffd_sys::LAZY_PAGES_FEATURES;
use uffd_sys::{
  UffdioApi, UffdioCopy, UffdioRange, UffdioRegister, UffdioZeropage, FEATURE_NAMES, REGISTER_MODE_MISSING, UFFD_API,
};
pub use uffd_sys::{MODE_DONTWAKE, UFFD_LINK};

/// An ioctl request number as this target's libc takes it (see uffd_sys on why the numbers are u32).
const fn req(n: u32) -> libc::Ioctl {
  n as libc::Ioctl
}
const UFFDIO_API: libc::Ioctl = req(uffd_sys::UFFDIO_API);
const UFFDIO_REGISTER: libc::Ioctl = req(uffd_sys::UFFDIO_REGISTER);
const UFFDIO_UNREGISTER: libc::Ioctl = req(uffd_sys::UFFDIO_UNREGISTER);
const UFFDIO_WAKE: libc::Ioctl = req(uffd_sys::UFFDIO_WAKE);
const UFFDIO_COPY: libc::Ioctl = req(uffd_sys::UFFDIO_COPY);
const UFFDIO_ZEROPAGE: libc::Ioctl = req(uffd_sys::UFFDIO_ZEROPAGE);

/// Outcome of a COPY or ZEROPAGE, keeping the kernel's signed result meaningful.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CopyResult {
  /// Everything requested was placed (bytes).
  Copied(u64),
  /// Partial copy, or a non-cooperative event is pending (EAGAIN): `copied` bytes were placed; retry the rest.
  Again { copied: u64 },
  /// The (first) page is already present (EEXIST).
  Exists,
  /// The layout changed under the copy (ENOENT).
  NoEnt,
  /// The process is gone (ESRCH; ENOSPC on older kernels).
  ProcessGone,
  /// Any other errno (EINVAL for unregistered/misaligned ranges, EFAULT, …).
  Other(i32),
}

impl CopyResult {
  /// Maps the kernel's return value + the signed `copy`/`zeropage` field into a result.
  pub fn from_kernel(ret: libc::c_int, errno: i32, field: i64, requested: u64) -> CopyResult {
    if ret == 0 {
      // Success: the field holds the bytes placed (== requested).
      return CopyResult::Copied(if field > 0 { field as u64 } else { requested });
    }
    match errno {
      libc::EAGAIN => CopyResult::Again { copied: if field > 0 { field as u64 } else { 0 } },
      libc::EEXIST => CopyResult::Exists,
      libc::ENOENT => CopyResult::NoEnt,
      libc::ESRCH | libc::ENOSPC => CopyResult::ProcessGone,
      e => CopyResult::Other(e),
    }
  }
}

/// Errors creating a userfaultfd.
#[derive(Debug)]
pub enum CreateError {
  /// userfaultfd: permission denied (EPERM)
  PermissionDenied,
  /// userfaultfd() failed with errno
  Syscall(i32),
  /// UFFDIO_API failed with errno
  Api(i32),
  /// the kernel lacks required features (bit mask of the missing ones)
  MissingFeatures(u64),
}

impl fmt::Display for CreateError {
  fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
    match self {
      CreateError::PermissionDenied => write!(
        f,
        "userfaultfd: permission denied: run as root (CAP_SYS_PTRACE), or allow unprivileged use with `sysctl -w vm.unprivileged_userfaultfd=1`"
      ),
      CreateError::Syscall(e) => write!(f, "userfaultfd() failed: {}", errno_text(*e)),
      CreateError::Api(e) => write!(f, "UFFDIO_API failed: {}", errno_text(*e)),
      CreateError::MissingFeatures(m) => {
        let names: Vec<&str> = FEATURE_NAMES.iter().filter(|(b, _)| m & b != 0).map(|(_, n)| *n).collect();
        write!(
          f,
          "userfaultfd: the kernel does not support {} (needed for lazy pages); a newer kernel is needed",
          names.join(", ")
        )
      }
    }
  }
}

impl Coded for CreateError {
  fn code(&self) -> &'static str {
    match self {
      CreateError::PermissionDenied => "EPERM_UFFD",
      CreateError::MissingFeatures(_) => "EUFFD_FEATURES",
      _ => "EUFFD",
    }
  }
}

/// Errors adopting an fd received from another process.
#[derive(Debug)]
pub enum AdoptError {
  /// the fd is not open
  BadFd(i32),
  /// the fd is open but is not a userfaultfd (what it is instead)
  NotUffd(i32, String),
}

impl fmt::Display for AdoptError {
  fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
    match self {
      AdoptError::BadFd(fd) => write!(f, "fd {fd} is not an open file descriptor"),
      AdoptError::NotUffd(fd, what) => write!(f, "fd {fd} is not a userfaultfd: it is {what}"),
    }
  }
}

impl Coded for AdoptError {
  fn code(&self) -> &'static str {
    match self {
      AdoptError::BadFd(_) => "EBADF",
      AdoptError::NotUffd(..) => "ENOTUFFD",
    }
  }
}

/// Errors of REGISTER/UNREGISTER/WAKE on a range.
#[derive(Debug)]
pub struct RangeError {
  /// Which ioctl failed.
  pub op: &'static str,
  /// Range start.
  pub start: u64,
  /// Range length.
  pub len: u64,
  /// errno.
  pub errno: i32,
}

impl fmt::Display for RangeError {
  fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
    write!(f, "{} of range 0x{:x}+0x{:x} failed: {}", self.op, self.start, self.len, errno_text(self.errno))
  }
}

impl Coded for RangeError {
  fn code(&self) -> &'static str {
    if self.errno == libc::ESRCH {
      "EGONE"
    } else {
      "EUFFD_RANGE"
    }
  }
}

/// Text for an errno (e.g. "EINVAL (Invalid argument)").
pub fn errno_text(e: i32) -> String {
  format!("{} (errno {e})", std::io::Error::from_raw_os_error(e))
}

fn last_errno() -> i32 {
  std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

/// An owned userfaultfd; closing it (Drop) unregisters its ranges (the kernel then serves zero pages).
#[derive(Debug)]
pub struct Uffd {
  fd: OwnedFd,
}

impl Uffd {
  /// `userfaultfd(O_CLOEXEC|O_NONBLOCK)` + `UFFDIO_API` with the lazy-pages features; fails naming what is missing.
  pub fn create() -> Result<Uffd, CreateError> {
    // SAFETY: plain syscall with flag arguments; the return value is checked before use.
    let raw = unsafe { libc::syscall(libc::SYS_userfaultfd, libc::O_CLOEXEC | libc::O_NONBLOCK) } as RawFd;
    if raw < 0 {
      let e = last_errno();
      return Err(if e == libc::EPERM { CreateError::PermissionDenied } else { CreateError::Syscall(e) });
    }
    // SAFETY: `raw` is a fresh fd returned by the kernel that nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    let mut api = UffdioApi { api: UFFD_API, features: REQUIRED_FEATURES, ioctls: 0 };
    // SAFETY: `api` is a properly laid out `struct uffdio_api` living for the duration of the call.
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), UFFDIO_API, &mut api as *mut UffdioApi) };
    if r != 0 {
      let e = last_errno();
      // The kernel answers EINVAL when requested features are unsupported; probe which, on a fresh fd
      // (UFFDIO_API cannot be repeated on one fd).
      if e == libc::EINVAL {
        if let Some(supported) = probe_features() {
          let missing = REQUIRED_FEATURES & !supported;
          if missing != 0 {
            return Err(CreateError::MissingFeatures(missing));
          }
        }
      }
      return Err(CreateError::Api(e));
    }
    let missing = REQUIRED_FEATURES & !api.features;
    if missing != 0 {
      return Err(CreateError::MissingFeatures(missing));
    }
    Ok(Uffd { fd })
  }

  /// Takes ownership of `fd` after checking that it is a userfaultfd. On error the fd is left open (the
  /// caller still owns it).
  pub fn adopt(fd: RawFd) -> Result<Uffd, AdoptError> {
    let what = fd_kind(fd).ok_or(AdoptError::BadFd(fd))?;
    if what != UFFD_LINK {
      return Err(AdoptError::NotUffd(fd, what));
    }
    // SAFETY: the fd is open (readlink succeeded) and the caller hands its ownership to us.
    Ok(Uffd { fd: unsafe { OwnedFd::from_raw_fd(fd) } })
  }

  /// Wraps an fd that is already known to be a userfaultfd (FORK events: the kernel installed it for us).
  ///
  /// # Safety
  /// `fd` must be an open userfaultfd owned by nobody else.
  pub unsafe fn from_raw_uffd(fd: RawFd) -> Uffd {
    // SAFETY: the caller guarantees (# Safety above) that `fd` is open and owned by nobody else, which is
    // all `from_raw_fd` needs: the fd is closed once, when the returned `Uffd` drops.
    Uffd { fd: unsafe { OwnedFd::from_raw_fd(fd) } }
  }

  /// The raw fd (still owned by `self`).
  pub fn raw(&self) -> RawFd {
    self.fd.as_raw_fd()
  }

  /// Gives up ownership of the fd (the caller must close it).
  pub fn into_raw(self) -> RawFd {
    use std::os::fd::IntoRawFd;
    self.fd.into_raw_fd()
  }

  /// `UFFDIO_REGISTER` MODE_MISSING; returns the ioctl mask the kernel allows on the range.
  pub fn register(&self, start: u64, len: u64) -> Result<u64, RangeError> {
    let mut reg = UffdioRegister { range: UffdioRange { start, len }, mode: REGISTER_MODE_MISSING, ioctls: 0 };
    // SAFETY: `reg` is a valid `struct uffdio_register` for the duration of the call.
    let r = unsafe { libc::ioctl(self.raw(), UFFDIO_REGISTER, &mut reg as *mut UffdioRegister) };
    if r != 0 {
      return Err(RangeError { op: "UFFDIO_REGISTER", start, len, errno: last_errno() });
    }
    Ok(reg.ioctls)
  }

  /// `UFFDIO_UNREGISTER`: later faults in the range are served by the kernel (zeros for anonymous memory).
  pub fn unregister(&self, start: u64, len: u64) -> Result<(), RangeError> {
    self.range_ioctl(UFFDIO_UNREGISTER, "UFFDIO_UNREGISTER", start, len)
  }

  /// `UFFDIO_WAKE`: wakes threads blocked on faults in the range (they re-fault if the page is still missing).
  pub fn wake(&self, start: u64, len: u64) -> Result<(), RangeError> {
    self.range_ioctl(UFFDIO_WAKE, "UFFDIO_WAKE", start, len)
  }

  fn range_ioctl(&self, req: libc::Ioctl, op: &'static str, start: u64, len: u64) -> Result<(), RangeError> {
    let mut range = UffdioRange { start, len };
    // SAFETY: `range` is a valid `struct uffdio_range` for the duration of the call.
    let r = unsafe { libc::ioctl(self.raw(), req, &mut range as *mut UffdioRange) };
    if r != 0 {
      return Err(RangeError { op, start, len, errno: last_errno() });
    }
    Ok(())
  }

  /// `UFFDIO_COPY` of `len` bytes from `src` (our address space) to `dst` (the served process).
  ///
  /// # Safety
  /// `src..src+len` must be readable memory of this process for the duration of the call.
  pub unsafe fn copy(&self, dst: u64, src: *const u8, len: u64, mode: u64) -> CopyResult {
    let mut c = UffdioCopy { dst, src: src as u64, len, mode, copy: 0 };
    // SAFETY: `c` is a valid `struct uffdio_copy`; the source range is readable per the caller's contract.
    let r = unsafe { libc::ioctl(self.raw(), UFFDIO_COPY, &mut c as *mut UffdioCopy) };
    let e = if r != 0 { last_errno() } else { 0 };
    CopyResult::from_kernel(r, e, c.copy, len)
  }

  /// `UFFDIO_ZEROPAGE` over `dst..dst+len`.
  pub fn zeropage(&self, dst: u64, len: u64, mode: u64) -> CopyResult {
    let mut z = UffdioZeropage { range: UffdioRange { start: dst, len }, mode, zeropage: 0 };
    // SAFETY: `z` is a valid `struct uffdio_zeropage` for the duration of the call.
    let r = unsafe { libc::ioctl(self.raw(), UFFDIO_ZEROPAGE, &mut z as *mut UffdioZeropage) };
    let e = if r != 0 { last_errno() } else { 0 };
    CopyResult::from_kernel(r, e, z.zeropage, len)
  }
}

/// What `/proc/self/fd/N` points to, or None if the fd is not open.
pub fn fd_kind(fd: RawFd) -> Option<String> {
  if fd < 0 {
    return None;
  }
  std::fs::read_link(format!("/proc/self/fd/{fd}")).ok().map(|p| p.to_string_lossy().into_owned())
}

/// Features the kernel supports, learned on a throw-away fd (API with features = 0).
fn probe_features() -> Option<u64> {
  probe().ok()
}

/// What this process may do with userfaultfd: the features the kernel offers it (UFFDIO_API asked for
/// none), or the errno of `userfaultfd(2)` / `UFFDIO_API` (EPERM: not allowed to this user).
pub fn probe() -> Result<u64, i32> {
  // SAFETY: userfaultfd(2) takes only flags (no pointers); a negative result is returned as an error below,
  // never used as an fd.
  let raw = unsafe { libc::syscall(libc::SYS_userfaultfd, libc::O_CLOEXEC | libc::O_NONBLOCK) } as RawFd;
  if raw < 0 {
    return Err(last_errno());
  }
  // SAFETY: fresh fd owned by nobody else; closed when `fd` drops.
  let fd = unsafe { OwnedFd::from_raw_fd(raw) };
  let mut api = UffdioApi { api: UFFD_API, features: 0, ioctls: 0 };
  // SAFETY: `api` is a valid `struct uffdio_api` for the call.
  let r = unsafe { libc::ioctl(fd.as_raw_fd(), UFFDIO_API, &mut api as *mut UffdioApi) };
  if r != 0 {
    return Err(last_errno());
  }
  Ok(api.features)
}

#[cfg(test)]
mod tests {
  use super::*;

  #[test]
  fn copy_result_keeps_partial_counts() {
    assert_eq!(CopyResult::from_kernel(0, 0, 8192, 8192), CopyResult::Copied(8192));
    assert_eq!(CopyResult::from_kernel(-1, libc::EAGAIN, 4096, 8192), CopyResult::Again { copied: 4096 });
    assert_eq!(CopyResult::from_kernel(-1, libc::EAGAIN, -11, 8192), CopyResult::Again { copied: 0 });
    assert_eq!(CopyResult::from_kernel(-1, libc::EEXIST, -17, 4096), CopyResult::Exists);
    assert_eq!(CopyResult::from_kernel(-1, libc::ENOENT, -2, 4096), CopyResult::NoEnt);
    assert_eq!(CopyResult::from_kernel(-1, libc::ESRCH, -3, 4096), CopyResult::ProcessGone);
    assert_eq!(CopyResult::from_kernel(-1, libc::EINVAL, -22, 4096), CopyResult::Other(libc::EINVAL));
  }

  #[test]
  fn create_error_messages_name_the_fix() {
    let m = CreateError::PermissionDenied.to_string();
    assert!(m.contains("vm.unprivileged_userfaultfd=1"));
    assert_eq!(CreateError::PermissionDenied.code(), "EPERM_UFFD");
    let f = CreateError::MissingFeatures(0x02 | 0x40).to_string();
    assert!(f.contains("EVENT_FORK") && f.contains("EVENT_UNMAP") && !f.contains("EVENT_REMAP"));
    assert!(f.contains("newer kernel"));
  }

  #[test]
  fn adopt_rejects_non_uffd() {
    let file = std::fs::File::open("/dev/null").unwrap();
    let err = Uffd::adopt(file.as_raw_fd()).unwrap_err();
    assert_eq!(err.code(), "ENOTUFFD");
    assert!(err.to_string().contains("/dev/null"));
    assert_eq!(Uffd::adopt(-1).unwrap_err().code(), "EBADF");
  }

  #[test]
  fn create_and_adopt_a_real_uffd() {
    let u = Uffd::create().expect("uffd (tests run as root)");
    let raw = u.into_raw();
    let back = Uffd::adopt(raw).unwrap();
    assert_eq!(back.raw(), raw);
  }
}
