//! TEST PEER ONLY — a minimal lazy-pages daemon stand-in for restore-sim's own tests, not the product.
//! It listens on `lazy-pages.socket` in the layout's work dir, checks that the hand-over bytes are
//! exactly CRIU's (spec §2), then serves every fault with one UFFDIO_COPY of the layout's expected page
//! (or a zero page outside the lazy ranges), tracking FORK/REMAP/REMOVE/UNMAP just enough for
//! `uffd-events`. No background transfer. Runs until killed.
//!
//! usage: mini-daemon --layout FILE [--corrupt 0xADDR]   (corrupt: flips byte 17 of that page when served)
//! stdout: JSON lines {"event":"listening"} and {"event":"handover","order":[...]}; errors on stderr, exit 3.
use std::collections::VecDeque;
use std::os::fd::RawFd;

use restore_sim::expect::Oracle;
use restore_sim::layout::{self, Layout};
use restore_sim::uffd;
use restore_sim::PAGE;
use uffd_sys::msg::Event as Msg;

/// One served address space: its uffd, the image pid whose data it gets, and live->image ranges.
struct Space {
  fd: RawFd,
  image_idx: usize,
  ranges: Vec<(u64, u64, u64)>,
  pending: VecDeque<u64>,
}

fn fail(msg: String) -> ! {
  eprintln!("mini-daemon: {msg}");
  std::process::exit(3);
}

fn main() {
  let args: Vec<String> = std::env::args().skip(1).collect();
  let mut layout_path = None;
  let mut corrupt = None;
  let mut i = 0;
  while i < args.len() {
    match args[i].as_str() {
      "--layout" => layout_path = args.get(i + 1).cloned(),
      "--corrupt" => {
        let v = args.get(i + 1).cloned().unwrap_or_default();
        corrupt = Some(
          u64::from_str_radix(v.trim_start_matches("0x"), 16)
            .unwrap_or_else(|_| fail(format!("--corrupt needs a hex address, got {v:?}"))),
        );
      }
      a => fail(format!("unknown option {a:?}")),
    }
    i += 2;
  }
  let path = layout_path.unwrap_or_else(|| fail("--layout FILE is required".into()));
  let layout = layout::load(std::path::Path::new(&path)).unwrap_or_else(|e| fail(e));
  let conn = listen_and_accept(&layout);
  let mut spaces = handover(&layout, conn);
  serve(&layout, &mut spaces, conn, corrupt);
}

fn listen_and_accept(layout: &Layout) -> RawFd {
  std::env::set_current_dir(&layout.work_dir)
    .unwrap_or_else(|e| fail(format!("chdir {}: {e}", layout.work_dir.display())));
  let _ = std::fs::remove_file("lazy-pages.socket");
  let l = std::os::unix::net::UnixListener::bind("lazy-pages.socket").unwrap_or_else(|e| fail(format!("bind: {e}")));
  println!("{{\"event\":\"listening\"}}");
  let (s, _) = l.accept().unwrap_or_else(|e| fail(format!("accept: {e}")));
  use std::os::fd::IntoRawFd;
  s.into_raw_fd()
}

fn read_exact(fd: RawFd, buf: &mut [u8]) -> bool {
  let mut got = 0;
  while got < buf.len() {
    // SAFETY: reading into the unfilled tail of a live buffer.
    let n = unsafe { libc::read(fd, buf[got..].as_mut_ptr().cast(), buf.len() - got) };
    if n <= 0 {
      return false;
    }
    got += n as usize;
  }
  true
}

/// Receives exactly one 1-byte message carrying exactly one SCM_RIGHTS fd.
fn recv_fd(sock: RawFd, pid: i32) -> RawFd {
  let mut payload = [0xFFu8; 2];
  let mut iov = libc::iovec { iov_base: payload.as_mut_ptr().cast(), iov_len: 1 };
  let mut cbuf = [0u64; 8];
  // SAFETY: msghdr is plain data; zero is a valid empty value.
  let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
  msg.msg_iov = &mut iov;
  msg.msg_iovlen = 1;
  msg.msg_control = cbuf.as_mut_ptr().cast();
  msg.msg_controllen = std::mem::size_of_val(&cbuf) as _;
  // SAFETY: msg points at live local buffers.
  let n = unsafe { libc::recvmsg(sock, &mut msg, libc::MSG_CMSG_CLOEXEC) };
  if n != 1 {
    fail(format!("pid {pid}: expected a 1-byte message with the uffd, recvmsg returned {n}"));
  }
  if payload[0] != 0 {
    fail(format!("pid {pid}: hand-over payload byte is {:#x}, CRIU sends 0x00", payload[0]));
  }
  let mut fds = Vec::new();
  // SAFETY: walking the control messages the kernel wrote into cbuf, within msg_controllen.
  unsafe {
    let mut c = libc::CMSG_FIRSTHDR(&msg);
    while !c.is_null() {
      if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_RIGHTS {
        let n = ((*c).cmsg_len as usize - libc::CMSG_LEN(0) as usize) / std::mem::size_of::<RawFd>();
        for k in 0..n {
          fds.push(std::ptr::read_unaligned((libc::CMSG_DATA(c) as *const RawFd).add(k)));
        }
      }
      c = libc::CMSG_NXTHDR(&msg, c);
    }
  }
  if fds.len() != 1 {
    fail(format!("pid {pid}: expected exactly one SCM_RIGHTS fd, got {}", fds.len()));
  }
  let fd = fds[0];
  let link = std::fs::read_link(format!("/proc/self/fd/{fd}")).map(|p| p.display().to_string()).unwrap_or_default();
  if link != uffd_sys::UFFD_LINK {
    fail(format!("pid {pid}: the received fd is {link:?}, not a userfaultfd"));
  }
  // The restorer already did UFFDIO_API; a second one must fail with EINVAL (spec §2).
  if uffd::api(fd, 0).is_ok() {
    fail(format!("pid {pid}: UFFDIO_API had not been done on the received uffd"));
  }
  fd
}

fn handover(layout: &Layout, sock: RawFd) -> Vec<Space> {
  let mut spaces = Vec::new();
  let mut order = Vec::new();
  let mut seen = std::collections::HashSet::new();
  for k in 0..layout.processes.len() {
    let mut b = [0u8; 4];
    if !read_exact(sock, &mut b) {
      fail(format!("restorer hung up after {k} of {} pids", layout.processes.len()));
    }
    let pid = i32::from_ne_bytes(b);
    let idx = layout.index_of(pid.abs()).unwrap_or_else(|| fail(format!("pid {pid} ({b:02x?}) is not in the pstree")));
    if !seen.insert(pid.abs()) {
      fail(format!("pid {} handed over twice", pid.abs()));
    }
    order.push(pid);
    if pid < 0 {
      if !layout.processes[idx].zombie {
        fail(format!("got -{} but that process is not a zombie", pid.abs()));
      }
      continue;
    }
    if layout.processes[idx].zombie {
      fail(format!("zombie {pid} must be sent as -{pid}"));
    }
    let fd = recv_fd(sock, pid);
    let ranges = layout.processes[idx].vmas.iter().filter(|v| v.lazy).map(|v| (v.start, v.end, v.start)).collect();
    spaces.push(Space { fd, image_idx: idx, ranges, pending: VecDeque::new() });
  }
  let mut b = [0u8; 4];
  if !read_exact(sock, &mut b) {
    fail("restorer hung up before \"restore finished\"".into());
  }
  if u32::from_ne_bytes(b) != 0x5253_5446 {
    fail(format!("expected u32 0x52535446 (restore finished), got {b:02x?}"));
  }
  println!("{}", serde_json::json!({ "event": "handover", "order": order }));
  spaces
}

fn split(ranges: &mut Vec<(u64, u64, u64)>, at: u64) {
  if let Some(i) = ranges.iter().position(|r| r.0 < at && at < r.1) {
    let r = ranges[i];
    ranges[i] = (r.0, at, r.2);
    ranges.push((at, r.1, r.2 + (at - r.0)));
  }
}

fn apply(sp: &mut Space, m: Msg, spaces_new: &mut Vec<Space>) {
  match m {
    Msg::PageFault { address, .. } => sp.pending.push_back(address & !(PAGE - 1)),
    Msg::Fork { ufd } => spaces_new.push(Space {
      fd: ufd as RawFd,
      image_idx: sp.image_idx,
      ranges: sp.ranges.clone(),
      pending: VecDeque::new(),
    }),
    Msg::Remap { from, to, len } => {
      split(&mut sp.ranges, from);
      split(&mut sp.ranges, from + len);
      for r in sp.ranges.iter_mut().filter(|r| from <= r.0 && r.1 <= from + len) {
        r.0 = r.0 - from + to;
        r.1 = r.1 - from + to;
      }
    }
    Msg::Remove { start, end } | Msg::Unmap { start, end } => {
      if matches!(m, Msg::Remove { .. }) {
        let _ = uffd::unregister(sp.fd, start, end - start);
      }
      split(&mut sp.ranges, start);
      split(&mut sp.ranges, end);
      sp.ranges.retain(|r| r.1 <= start || end <= r.0);
    }
  }
}

fn serve(layout: &Layout, spaces: &mut Vec<Space>, sock: RawFd, corrupt: Option<u64>) {
  let mut oracles: Vec<Oracle> = layout.processes.iter().map(|p| Oracle::new(p.expect.clone())).collect();
  let mut page = vec![0u8; PAGE as usize];
  let mut sock_open = true;
  loop {
    let mut pfds: Vec<libc::pollfd> =
      spaces.iter().map(|s| libc::pollfd { fd: s.fd, events: libc::POLLIN, revents: 0 }).collect();
    if sock_open {
      pfds.push(libc::pollfd { fd: sock, events: libc::POLLIN, revents: 0 });
    }
    // SAFETY: pfds is a valid pollfd array.
    unsafe { libc::poll(pfds.as_mut_ptr(), pfds.len() as _, 10) };
    if sock_open && pfds.last().unwrap().revents != 0 {
      let mut b = [0u8; 64];
      // SAFETY: read into a local buffer.
      let n = unsafe { libc::read(sock, b.as_mut_ptr().cast(), b.len()) };
      if n > 0 {
        fail(format!("unexpected bytes after \"restore finished\": {:02x?}", &b[..n as usize]));
      }
      sock_open = false;
    }
    let mut born = Vec::new();
    for sp in spaces.iter_mut() {
      loop {
        let mut m = [0u8; 32];
        // SAFETY: the uffd is non-blocking; read one uffd_msg into a local buffer.
        let n = unsafe { libc::read(sp.fd, m.as_mut_ptr().cast(), 32) };
        if n != 32 {
          break;
        }
        match uffd::parse_msg(&m) {
          Ok(ev) => apply(sp, ev, &mut born),
          Err(e) => eprintln!("mini-daemon: ignoring {e}"),
        }
      }
    }
    spaces.extend(born);
    for sp in spaces.iter_mut() {
      let mut keep = VecDeque::new();
      while let Some(addr) = sp.pending.pop_front() {
        let hit = sp.ranges.iter().find(|r| r.0 <= addr && addr < r.1).copied();
        let res = match hit {
          Some(r) => {
            if let Err(e) = oracles[sp.image_idx].fill(r.2 + (addr - r.0), &mut page) {
              fail(e);
            }
            if corrupt.map(|c| c & !(PAGE - 1)) == Some(addr) {
              page[17] ^= 0xFF;
            }
            uffd::copy(sp.fd, addr, &page)
          }
          None => uffd::zeropage(sp.fd, addr, PAGE),
        };
        match res {
          Err((libc::EAGAIN, _)) => keep.push_back(addr),
          Err((libc::ESRCH, _)) => break,
          _ => {} // copied, EEXIST (already there) or ENOENT (layout changed; it will fault again)
        }
      }
      sp.pending = keep;
    }
  }
}
