//! The restorer -> daemon hand-over bytes (spec §2), byte for byte:
//! i32 pid (native endian), then sendmsg{1 byte 0x00, SCM_RIGHTS [uffd]}; zombies: i32 -pid only;
//! at the end u32 0x52535446 ("restore finished").
use std::os::fd::RawFd;

use crate::wire::write_all;

pub const RESTORE_FINISHED: u32 = 0x5253_5446;

pub fn send_pid(sock: RawFd, pid: i32) -> Result<(), String> {
  write_all(sock, &pid.to_ne_bytes()).map_err(|e| format!("sending pid {pid} to the daemon failed: {e}"))
}

pub fn send_fd(sock: RawFd, fd: RawFd) -> Result<(), String> {
  let mut payload = [0u8; 1];
  let mut iov = libc::iovec { iov_base: payload.as_mut_ptr().cast(), iov_len: 1 };
  // u64-aligned control buffer big enough for one fd.
  let mut cbuf = [0u64; 4];
  // SAFETY: CMSG_SPACE is a pure size computation.
  let space = unsafe { libc::CMSG_SPACE(std::mem::size_of::<RawFd>() as u32) } as usize;
  // SAFETY: msghdr is plain data; all-zero is a valid empty header.
  let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
  msg.msg_iov = &mut iov;
  msg.msg_iovlen = 1;
  msg.msg_control = cbuf.as_mut_ptr().cast();
  msg.msg_controllen = space as _;
  // SAFETY: msg_control points at `cbuf` (32 bytes >= space), so the first cmsg header and its data fit.
  unsafe {
    let c = libc::CMSG_FIRSTHDR(&msg);
    (*c).cmsg_level = libc::SOL_SOCKET;
    (*c).cmsg_type = libc::SCM_RIGHTS;
    (*c).cmsg_len = libc::CMSG_LEN(std::mem::size_of::<RawFd>() as u32) as _;
    std::ptr::write_unaligned(libc::CMSG_DATA(c) as *mut RawFd, fd);
  }
  loop {
    // SAFETY: msg references live buffers (payload, iov, cbuf) for the call.
    let n = unsafe { libc::sendmsg(sock, &msg, libc::MSG_NOSIGNAL) };
    if n == 1 {
      return Ok(());
    }
    let e = std::io::Error::last_os_error();
    if n < 0 && e.kind() == std::io::ErrorKind::Interrupted {
      continue;
    }
    return Err(format!("sendmsg of the uffd to the daemon failed: {e}"));
  }
}

/// Connects to `lazy-pages.socket` relative to `dir` after chdir-ing there, as CRIU does.
pub fn connect(dir: &std::path::Path) -> Result<RawFd, String> {
  std::env::set_current_dir(dir).map_err(|e| format!("cannot chdir to work dir {}: {e}", dir.display()))?;
  // SAFETY: plain socket(2) call.
  let s = unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
  if s < 0 {
    return Err(format!("socket(AF_UNIX) failed: {}", restore_sim::os_err()));
  }
  // SAFETY: sockaddr_un is plain data.
  let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
  addr.sun_family = libc::AF_UNIX as _;
  for (i, b) in b"lazy-pages.socket".iter().enumerate() {
    addr.sun_path[i] = *b as _;
  }
  let len = std::mem::size_of::<libc::sa_family_t>() + "lazy-pages.socket".len() + 1;
  // SAFETY: addr is a valid sockaddr_un and len does not exceed its size.
  let r = unsafe { libc::connect(s, &addr as *const libc::sockaddr_un as *const libc::sockaddr, len as u32) };
  if r < 0 {
    let e = std::io::Error::last_os_error();
    // SAFETY: s is our own fd.
    unsafe { libc::close(s) };
    return Err(format!("connect to lazy-pages.socket in {} failed: {e}", dir.display()));
  }
  Ok(s)
}
