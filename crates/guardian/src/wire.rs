//! The daemon -> guardian messages.
//!
//! One SOCK_SEQPACKET message per fact, so a message is never split or merged and its fds
//! (SCM_RIGHTS) arrive with it: a fixed 32-byte record, native endianness (both ends are the same
//! machine, usually the same build), plus at most two fds. The socketpair is private to the daemon
//! and its guardian: there is no version negotiation, only a length check.

use std::io;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};

/// Bytes of one record.
pub const MSG_LEN: usize = 32;
/// Most fds one message carries.
pub const MAX_FDS: usize = 2;

/// What a message says. A task is named by `(loop_id, proc_id)`: the daemon's event loop and its
/// process id there (several loops may share one guardian).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum Kind {
  /// A userfaultfd just received from the restorer (`aux` = its fd number in the daemon, `pid` = the
  /// pid the restorer named, in the restored tree's namespace, `proc_id` = the restorer's pid):
  /// held until `Add` or `Forget` names the same fd number. fds: [uffd].
  Hold = 1,
  /// A task the daemon now serves: `pid` its real pid (verified by the daemon; 0 = not known yet),
  /// `aux` its uffd's fd number in the daemon (a `Hold` of it ends). fds: [uffd] or [uffd, pidfd].
  Add = 2,
  /// The real pid of a task added with pid 0 was found (a forked child). fds: [pidfd].
  Watch = 3,
  /// Task `proc_id` was forked by task `aux` of the same loop (for finding it if its pid never comes).
  Forked = 4,
  /// Nothing is owed to the task any more (done, exited, or already killed by the daemon): let go.
  Release = 5,
  /// A held uffd (fd number `aux`) was closed by the daemon without being added: let go.
  Forget = 6,
  /// The loop `loop_id` was closed; tasks it did not release stay owed.
  LoopClosed = 7,
  /// The daemon stops on purpose: act on what is still owed, let go of holds, exit.
  Bye = 8,
  /// Guardian -> daemon, once: running, in its own session, signals ignored.
  Ready = 9,
  /// The restorer's hand-over connection was accepted (`proc_id` = the restorer's pid, `aux` = its
  /// fd number in the daemon). fds: [the connected socket]. The guardian's copy keeps it open: uffds the restorer sent that the daemon
  /// had not read yet when it died stay queued there (closing the socket would drop them and their
  /// tasks would read zeros), so the guardian can take and act on them.
  Conn = 10,
  /// The daemon is done with hand-over connection `aux` (restore finished, or it gave up on it):
  /// the guardian lets go of its copy, so the restorer sees the connection closed as before.
  ConnDone = 11,
  /// The daemon's listening hand-over socket (`aux` = its fd number in the daemon). fds: [it]. A
  /// restorer may connect and send everything before the daemon accepts: those connections wait
  /// in this socket's queue, and the guardian's copy keeps them from being dropped with the daemon.
  Listen = 12,
  /// The daemon stopped listening on socket `aux`: let go of the copy.
  ListenDone = 13,
  /// Loop `loop_id` (closed already) ended with every process it served complete: what it did not
  /// release (a FORK read after its last process was done: a child of a complete parent) is not
  /// owed anything. Let go of it.
  LoopDone = 14,
}

impl Kind {
  fn from_u32(v: u32) -> Option<Kind> {
    Some(match v {
      1 => Kind::Hold,
      2 => Kind::Add,
      3 => Kind::Watch,
      4 => Kind::Forked,
      5 => Kind::Release,
      6 => Kind::Forget,
      7 => Kind::LoopClosed,
      8 => Kind::Bye,
      9 => Kind::Ready,
      10 => Kind::Conn,
      11 => Kind::ConnDone,
      12 => Kind::Listen,
      13 => Kind::ListenDone,
      14 => Kind::LoopDone,
      _ => return None,
    })
  }
}

/// One record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Msg {
  pub kind: Kind,
  pub pid: i32,
  pub proc_id: u32,
  pub aux: u32,
  pub loop_id: u64,
}

impl Msg {
  /// A record of `kind` with every other field zero.
  pub fn new(kind: Kind) -> Msg {
    Msg { kind, pid: 0, proc_id: 0, aux: 0, loop_id: 0 }
  }

  pub fn encode(&self) -> [u8; MSG_LEN] {
    let mut b = [0u8; MSG_LEN];
    b[0..4].copy_from_slice(&(self.kind as u32).to_ne_bytes());
    b[4..8].copy_from_slice(&self.pid.to_ne_bytes());
    b[8..12].copy_from_slice(&self.proc_id.to_ne_bytes());
    b[12..16].copy_from_slice(&self.aux.to_ne_bytes());
    b[16..24].copy_from_slice(&self.loop_id.to_ne_bytes());
    b
  }

  pub fn decode(b: &[u8]) -> Option<Msg> {
    if b.len() != MSG_LEN {
      return None;
    }
    let u32_at = |i: usize| u32::from_ne_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
    let mut l = [0u8; 8];
    l.copy_from_slice(&b[16..24]);
    Some(Msg {
      kind: Kind::from_u32(u32_at(0))?,
      pid: u32_at(4) as i32,
      proc_id: u32_at(8),
      aux: u32_at(12),
      loop_id: u64::from_ne_bytes(l),
    })
  }
}

/// Control buffer big enough for MAX_FDS fds (u64-aligned, as cmsghdr needs).
type Cbuf = [u64; 8];

/// Sends one record with `fds` attached (the fds stay open here; the receiver gets its own copies).
/// MSG_NOSIGNAL: a dead peer is an EPIPE error, not a SIGPIPE that would end the daemon.
pub fn send(sock: RawFd, m: &Msg, fds: &[RawFd]) -> io::Result<()> {
  assert!(fds.len() <= MAX_FDS, "at most {MAX_FDS} fds per message");
  let mut data = m.encode();
  let mut iov = libc::iovec { iov_base: data.as_mut_ptr() as *mut libc::c_void, iov_len: data.len() };
  let mut cbuf: Cbuf = [0; 8];
  // SAFETY: zero is a valid msghdr (null pointers, zero lengths).
  let mut mh: libc::msghdr = unsafe { std::mem::zeroed() };
  mh.msg_iov = &mut iov;
  mh.msg_iovlen = 1;
  if !fds.is_empty() {
    let bytes = std::mem::size_of_val(fds) as u32;
    mh.msg_control = cbuf.as_mut_ptr() as *mut libc::c_void;
    // SAFETY: CMSG_SPACE is a pure size computation.
    mh.msg_controllen = unsafe { libc::CMSG_SPACE(bytes) } as _;
    // SAFETY: msg_control points at `cbuf` (64 bytes >= CMSG_SPACE of 2 fds), so the first header and
    // its data fit; we write exactly `fds.len()` ints into CMSG_DATA.
    unsafe {
      let c = libc::CMSG_FIRSTHDR(&mh);
      (*c).cmsg_level = libc::SOL_SOCKET;
      (*c).cmsg_type = libc::SCM_RIGHTS;
      (*c).cmsg_len = libc::CMSG_LEN(bytes) as _;
      let d = libc::CMSG_DATA(c) as *mut RawFd;
      for (i, fd) in fds.iter().enumerate() {
        std::ptr::write_unaligned(d.add(i), *fd);
      }
    }
  }
  loop {
    // SAFETY: `mh` points at `iov`/`data`/`cbuf`, all alive for the call.
    let n = unsafe { libc::sendmsg(sock, &mh, libc::MSG_NOSIGNAL) };
    if n >= 0 {
      return Ok(());
    }
    let e = io::Error::last_os_error();
    if e.kind() != io::ErrorKind::Interrupted {
      return Err(e);
    }
  }
}

/// What one receive gave.
pub enum Recv {
  Msg(Msg, Vec<OwnedFd>),
  /// A record of the wrong size or kind (its fds, if any, are closed).
  Bad,
  /// The peer closed its end and every message before that was read.
  Eof,
  /// Nothing queued (non-blocking receive).
  Empty,
}

/// One non-blocking `recvmsg` into `data`, with the fds that came along (SCM_RIGHTS, taken CLOEXEC and
/// owned by the caller). `Ok(None)` when nothing is queued; otherwise the bytes read, the fds, and
/// whether the control data was truncated (fds lost).
pub fn recv_with_fds(fd: RawFd, data: &mut [u8], cbuf: &mut [u64]) -> io::Result<Option<(usize, Vec<OwnedFd>, bool)>> {
  let mut iov = libc::iovec { iov_base: data.as_mut_ptr() as *mut libc::c_void, iov_len: data.len() };
  // SAFETY: zero is a valid msghdr.
  let mut mh: libc::msghdr = unsafe { std::mem::zeroed() };
  mh.msg_iov = &mut iov;
  mh.msg_iovlen = 1;
  mh.msg_control = cbuf.as_mut_ptr() as *mut libc::c_void;
  mh.msg_controllen = std::mem::size_of_val(cbuf) as _;
  let n = loop {
    // SAFETY: `mh` points at live buffers for the duration of the call.
    let n = unsafe { libc::recvmsg(fd, &mut mh, libc::MSG_DONTWAIT | libc::MSG_CMSG_CLOEXEC) };
    if n >= 0 {
      break n as usize;
    }
    let e = io::Error::last_os_error();
    match e.kind() {
      io::ErrorKind::Interrupted => continue,
      io::ErrorKind::WouldBlock => return Ok(None),
      _ => return Err(e),
    }
  };
  let mut fds = Vec::new();
  // SAFETY: CMSG_* walk the control buffer the kernel just filled, bounded by msg_controllen; every
  // fd found there was installed in our table by this recvmsg and is owned by nobody else.
  unsafe {
    let mut c = libc::CMSG_FIRSTHDR(&mh);
    while !c.is_null() {
      if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_RIGHTS {
        let d = libc::CMSG_DATA(c) as *const RawFd;
        let count = ((*c).cmsg_len as usize - libc::CMSG_LEN(0) as usize) / std::mem::size_of::<RawFd>();
        for i in 0..count {
          fds.push(OwnedFd::from_raw_fd(std::ptr::read_unaligned(d.add(i))));
        }
      }
      c = libc::CMSG_NXTHDR(&mh, c);
    }
  }
  Ok(Some((n, fds, mh.msg_flags & libc::MSG_CTRUNC != 0)))
}

/// Receives one record without blocking. Received fds are CLOEXEC and owned by the caller.
pub fn recv(sock: RawFd) -> io::Result<Recv> {
  let mut data = [0u8; MSG_LEN + 1];
  let mut cbuf: Cbuf = [0; 8];
  let Some((n, fds, truncated)) = recv_with_fds(sock, &mut data, &mut cbuf)? else { return Ok(Recv::Empty) };
  if n == 0 && fds.is_empty() {
    // SEQPACKET: a zero-length read is end of file (we never send empty records).
    return Ok(Recv::Eof);
  }
  match Msg::decode(&data[..n]) {
    Some(m) if !truncated => Ok(Recv::Msg(m, fds)),
    _ => Ok(Recv::Bad),
  }
}

#[cfg(test)]
mod tests {
  use super::*;

  #[test]
  fn records_round_trip() {
    let m = Msg { kind: Kind::Add, pid: 4242, proc_id: 7, aux: 19, loop_id: 0xdead_beef_0000_0001 };
    assert_eq!(Msg::decode(&m.encode()), Some(m));
    assert_eq!(Msg::decode(&[0u8; MSG_LEN]), None, "kind 0 is not a message");
    assert_eq!(Msg::decode(&[1u8; 31]), None, "short record");
  }
}
