//! One client connection of the native page server: decodes 32-byte headers from arbitrary pieces, queues
//! them in order, and writes replies a bounded budget at a time so one busy connection cannot hold up the
//! others. Plain TCP: straight out of the mmapped pages files (sendmsg of header + mapping, no copy). TLS:
//! through rustls, the header and each piece of data as records of their own (see `write_tls`).

use std::collections::VecDeque;
use std::net::{IpAddr, Ipv4Addr, TcpStream};
use std::os::fd::AsRawFd;
use std::time::Instant;

use super::catalog::Catalog;
use super::request::{self, Ask, End, Reason};
use crate::image::PageImage;
use crate::pagewire::{Header, HDR, REPLY_CMD};
use crate::transport::{Got, Transport};

/// Requests queued beyond this stop reads from the socket: pipelining is bounded.
pub const MAX_QUEUED: usize = 1024;

/// Largest piece of reply data handed to rustls at once under TLS (four 16 KiB records): what waits for
/// the socket stays bounded, and the next piece is encrypted only once the socket has taken this one.
const TLS_PIECE: u64 = 64 << 10;

enum Item {
  Req(Header),
  End(End),
}

/// A reply being written: a header (or CLOSE status) then, for GET, page data out of an image.
struct Reply {
  head: [u8; HDR],
  head_len: usize,
  head_sent: usize,
  data: Option<(PageImage, u64)>,
  len: u64,
  sent: u64,
  pages: u64,
}

/// What a serving turn ended with.
#[derive(Debug, PartialEq, Eq)]
pub enum Turn {
  /// Everything queued is written: waiting for requests.
  Idle,
  /// The budget is used up with work left: the connection goes to the back of the line.
  Yield,
  /// The socket buffer is full.
  Blocked,
  /// The session is over.
  Ended(End),
}

/// What reading ended with.
#[derive(Debug, PartialEq, Eq)]
pub enum Read_ {
  /// Drained (or stopped at the queue bound / a bad header).
  More,
  /// The session is over (EOF or error with this reason).
  Ended(End),
}

pub struct Conn {
  pub stream: TcpStream,
  pub transport: Transport,
  /// The session number, once it is one (under TLS: once the handshake is done; 0 before).
  pub session: u32,
  /// TLS: the handshake must be done by then.
  pub handshake_until: Option<Instant>,
  /// Ended gracefully under TLS with output still waiting for the socket: FIN once it is out.
  pub fin_pending: bool,
  pub peer: String,
  /// The peer's (normalized) IP: what the per-peer cap counts.
  pub ip: IpAddr,
  /// Since when nothing is in progress and no request came: an idle connection is closed from here.
  pub idle_since: Instant,
  partial: [u8; HDR],
  have: usize,
  /// Bytes of complete headers consumed: error messages name the offset of the bad header.
  offset: u64,
  queue: VecDeque<Item>,
  reply: Option<Reply>,
  /// A bad header or CLOSE is queued: read nothing more.
  poisoned: bool,
  pub requests: u64,
  pub pages_sent: u64,
  /// Last time a write made progress (or a reply started): a blocked writer stalls from here.
  pub last_progress: Instant,
  pub blocked: bool,
  /// Queued in the server's round robin.
  pub in_ready: bool,
  /// epoll interest currently registered.
  pub interest: u32,
  /// Ended gracefully: shut down for writing, reading and discarding until the client closes or this time.
  pub linger_until: Option<Instant>,
  /// Detail of the CLOSE being answered.
  close_detail: Option<String>,
  /// TLS: the next piece of data, read from the pages file (see `write_tls`).
  scratch: Vec<u8>,
}

impl Conn {
  pub fn new(stream: TcpStream, transport: Transport, session: u32, peer: String) -> Conn {
    Conn {
      stream,
      transport,
      session,
      handshake_until: None,
      fin_pending: false,
      peer,
      ip: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
      idle_since: Instant::now(),
      partial: [0; HDR],
      have: 0,
      offset: 0,
      queue: VecDeque::new(),
      reply: None,
      poisoned: false,
      requests: 0,
      pages_sent: 0,
      last_progress: Instant::now(),
      blocked: false,
      in_ready: false,
      interest: 0,
      linger_until: None,
      close_detail: None,
      scratch: Vec::new(),
    }
  }

  /// True while a reply is being written, requests wait, or (TLS) written records wait for the socket.
  pub fn has_work(&self) -> bool {
    self.reply.is_some() || !self.queue.is_empty() || self.transport.pending_out()
  }

  /// The epoll interest this connection needs now.
  pub fn wanted_interest(&self) -> u32 {
    let mut i = 0u32;
    if self.linger_until.is_some() || (!self.poisoned && self.queue.len() < MAX_QUEUED) {
      i |= libc::EPOLLIN as u32;
    }
    if self.blocked || self.transport.pending_out() {
      i |= libc::EPOLLOUT as u32;
    }
    i
  }

  /// Reads what the socket holds (into `buf`), queueing decoded headers.
  pub fn read(&mut self, buf: &mut [u8]) -> Read_ {
    let fd = self.stream.as_raw_fd();
    while !self.poisoned && self.queue.len() < MAX_QUEUED {
      match self.transport.read(fd, buf) {
        Ok(Got::Eof) => return self.on_eof(),
        Ok(Got::Bytes(n)) => self.push(&buf[..n]),
        Ok(Got::Nothing) => return Read_::More,
        Err(_) => return Read_::Ended(self.gone()),
      }
    }
    Read_::More
  }

  /// TLS: requests wait decrypted inside rustls (epoll cannot see them) and the queue has room for them.
  pub fn input_buffered(&mut self) -> bool {
    !self.poisoned && self.queue.len() < MAX_QUEUED && self.linger_until.is_none() && self.transport.buffered()
  }

  /// Lingering after a graceful end: sends what waits (then FIN) and discards input; true once the
  /// client has closed (or failed).
  pub fn discard(&mut self, buf: &mut [u8]) -> bool {
    let fd = self.stream.as_raw_fd();
    if self.fin_pending {
      match self.transport.flush(fd) {
        Ok(true) => {
          self.fin_pending = false;
          let _ = self.stream.shutdown(std::net::Shutdown::Write);
        }
        Ok(false) => {}
        Err(_) => return true,
      }
    }
    loop {
      match self.transport.read(fd, buf) {
        Ok(Got::Eof) | Err(_) => return true,
        Ok(Got::Bytes(_)) => {}
        Ok(Got::Nothing) => return false,
      }
    }
  }

  /// Ends the writing side after a graceful end: replies already written still reach the client (TLS:
  /// close_notify after them), then FIN, never a reset.
  pub fn finish_writing(&mut self) {
    let fd = self.stream.as_raw_fd();
    self.transport.close_notify(fd);
    if self.transport.pending_out() {
      self.fin_pending = true;
    } else {
      let _ = self.stream.shutdown(std::net::Shutdown::Write);
    }
  }

  fn on_eof(&mut self) -> Read_ {
    if self.have > 0 {
      // Requests before the cut header are still answered, then the session ends.
      let d =
        format!("connection ended inside a header: {} of {HDR} bytes at stream offset {}", self.have, self.offset);
      self.queue.push_back(Item::End(End::new(Reason::MalformedHeader, d)));
      self.poisoned = true;
      return Read_::More;
    }
    Read_::Ended(self.gone())
  }

  /// The end when the client went away (EOF or a socket error).
  pub fn gone(&self) -> End {
    if self.has_work() {
      End::new(Reason::ClientDisconnectedMidReply, "the client went away before its replies were sent")
    } else {
      End::new(Reason::ClientDisconnected, "the client disconnected without CLOSE")
    }
  }

  fn push(&mut self, mut b: &[u8]) {
    while !b.is_empty() && !self.poisoned {
      let take = (HDR - self.have).min(b.len());
      self.partial[self.have..self.have + take].copy_from_slice(&b[..take]);
      self.have += take;
      b = &b[take..];
      if self.have < HDR {
        return;
      }
      self.have = 0;
      let h = Header::decode(&self.partial);
      self.idle_since = Instant::now();
      let at = self.offset;
      self.offset += HDR as u64;
      match request::check_header(&h, at) {
        Ok(()) => {
          // Nothing after a CLOSE is answered, so nothing after it is read (its EOF is not a disconnect).
          if matches!(h.cmd & 0xffff, crate::pagewire::CLOSE | request::FORCE_CLOSE) {
            self.poisoned = true;
          }
          self.queue.push_back(Item::Req(h));
        }
        Err(e) => {
          self.queue.push_back(Item::End(e));
          self.poisoned = true;
        }
      }
    }
  }

  /// Serves queued requests in order, writing at most about `budget` bytes.
  pub fn serve(&mut self, cat: &Catalog, budget: u64, max_reply_pages: u64) -> Turn {
    let mut left = budget;
    // TLS: records written before wait for the socket first.
    match self.transport.flush(self.stream.as_raw_fd()) {
      Ok(true) => {}
      Ok(false) => {
        self.blocked = true;
        return Turn::Blocked;
      }
      Err(_) => return Turn::Ended(self.gone()),
    }
    loop {
      if self.reply.is_none() {
        match self.queue.pop_front() {
          // TLS: the last records may still wait for the socket (rustls took them, the socket only part):
          // that is a blocked writer, subject to the stall timeout, not an idle connection.
          None if self.transport.pending_out() => {
            self.blocked = true;
            return Turn::Blocked;
          }
          None => return Turn::Idle,
          Some(Item::End(e)) => return Turn::Ended(e),
          Some(Item::Req(h)) => {
            self.requests += 1;
            match self.start(cat, &h, max_reply_pages) {
              Ok(r) => {
                self.reply = Some(r);
                self.last_progress = Instant::now();
              }
              Err(e) => return Turn::Ended(e),
            }
          }
        }
      }
      if left == 0 {
        return Turn::Yield;
      }
      match self.write_some(left) {
        Ok(n) => {
          left = left.saturating_sub(n);
          let r = self.reply.as_ref().expect("a reply is being written");
          if r.head_sent == r.head_len && r.sent == r.len {
            self.pages_sent += r.pages;
            let close = r.data.is_none();
            self.reply = None;
            self.idle_since = Instant::now();
            if close {
              return Turn::Ended(End::new(Reason::Close, self.close_detail.take().unwrap_or_default()));
            }
          }
        }
        Err(WriteErr::Again) => {
          self.blocked = true;
          return Turn::Blocked;
        }
        Err(WriteErr::Gone) => {
          return Turn::Ended(End::new(
            Reason::ClientDisconnectedMidReply,
            "the client went away before its replies were sent",
          ))
        }
        Err(WriteErr::Image(m)) => return Turn::Ended(End::new(Reason::ImageError, m)),
      }
    }
  }

  fn start(&mut self, cat: &Catalog, h: &Header, max_reply_pages: u64) -> Result<Reply, End> {
    match request::classify(h)? {
      Ask::Close(detail) => {
        self.close_detail = Some(detail);
        self.queue.clear();
        Ok(Reply { head: [0; HDR], head_len: 4, head_sent: 0, data: None, len: 0, sent: 0, pages: 0 })
      }
      Ask::Get { pid, vaddr, pages } => {
        if !cat.has_pid(pid) {
          return Err(End::new(Reason::UnknownPid, format!("GET for pid {pid}, which is not in this checkpoint")));
        }
        let Some(run) = cat.find(pid, vaddr) else {
          return Err(End::new(
            Reason::NoSuchPages,
            format!("GET for pid {pid} at 0x{vaddr:x}: no lazy page with data here"),
          ));
        };
        // Clamp at the end of the contiguous run: the client asks again for the rest (CRIU does the same).
        let n = pages.min((run.end - vaddr) / 4096).min(max_reply_pages.max(1));
        let img = cat.image(run.image);
        let off = run.offset + (vaddr - run.start);
        let len = n * 4096;
        if let Err(e) = img.ptr_at(off, len) {
          return Err(End::new(
            Reason::ImageError,
            format!(
              "{}: offset 0x{off:x}: file ends before the page data the pagemap promises ({e})",
              img.path().display()
            ),
          ));
        }
        let head = Header { cmd: REPLY_CMD, nr_pages: n, vaddr, dst_id: pid as u64 }.encode();
        Ok(Reply { head, head_len: HDR, head_sent: 0, data: Some((img.clone(), off)), len, sent: 0, pages: n })
      }
    }
  }

  /// Writes the next part of the reply: at most `limit` bytes of data.
  fn write_some(&mut self, limit: u64) -> Result<u64, WriteErr> {
    if self.transport.is_tls() {
      return self.write_tls(limit);
    }
    self.write_plain(limit)
  }

  /// TLS: the header, or the next piece of data, as TLS records of their own, and only once everything
  /// written before has left for the socket.
  ///
  /// Why records of their own: CRIU's lazy-pages daemon waits on epoll for its page-server socket and then
  /// makes ONE gnutls_record_recv per wake-up (criu/page-xfer.c, page_server_async_read → page_server_read
  /// with MSG_DONTWAIT): first for exactly the 32-byte header, on a later wake-up for the data. GnuTLS
  /// pulls whole records off the socket and keeps what the caller did not ask for in its own buffer, which
  /// epoll cannot see: a record holding header + data would leave the data stranded there, the socket
  /// would never turn readable again, and CRIU would wait forever. rustls makes each write records of
  /// its own, never shared with the next write.
  fn write_tls(&mut self, limit: u64) -> Result<u64, WriteErr> {
    let fd = self.stream.as_raw_fd();
    match self.transport.flush(fd) {
      Ok(true) => {}
      Ok(false) => return Err(WriteErr::Again),
      Err(_) => return Err(WriteErr::Gone),
    }
    let r = self.reply.as_mut().expect("a reply is being written");
    let n = if r.head_sent < r.head_len {
      let head = &r.head[r.head_sent..r.head_len];
      self.transport.write(fd, head).map_err(|_| WriteErr::Gone)?;
      r.head_sent = r.head_len;
      head.len() as u64
    } else if let Some((img, off)) = &r.data {
      let n = (r.len - r.sent).min(limit).min(TLS_PIECE);
      // Read, not sliced out of the mapping: rustls reads its input in user space, where a pages file
      // truncated or failing under us would be SIGBUS for the whole daemon (the plain path's sendmsg
      // gets EFAULT instead, an error of this session). TLS copies the data once more anyway.
      self.scratch.resize(n as usize, 0);
      img.read_at(off + r.sent, &mut self.scratch).map_err(|e| WriteErr::Image(e.to_string()))?;
      self.transport.write(fd, &self.scratch).map_err(|_| WriteErr::Gone)?;
      r.sent += n;
      n
    } else {
      0
    };
    // The previous records were all out, so the socket took something since the last call.
    self.last_progress = Instant::now();
    self.blocked = false;
    Ok(n)
  }

  /// One sendmsg of what is left of the header and up to `limit` bytes of data, straight from the mapping.
  fn write_plain(&mut self, limit: u64) -> Result<u64, WriteErr> {
    let r = self.reply.as_mut().expect("a reply is being written");
    let mut iov = [libc::iovec { iov_base: std::ptr::null_mut(), iov_len: 0 }; 2];
    let mut cnt = 0;
    if r.head_sent < r.head_len {
      iov[0] = libc::iovec {
        iov_base: r.head[r.head_sent..].as_ptr() as *mut libc::c_void,
        iov_len: r.head_len - r.head_sent,
      };
      cnt = 1;
    }
    if let Some((img, off)) = &r.data {
      let n = (r.len - r.sent).min(limit);
      if n > 0 {
        let p = img.ptr_at(off + r.sent, n).map_err(|e| WriteErr::Image(e.to_string()))?;
        iov[cnt] = libc::iovec { iov_base: p as *mut libc::c_void, iov_len: n as usize };
        cnt += 1;
      }
    }
    // SAFETY: zeroed msghdr is valid; we then point it at `iov`, which lives across the call.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = iov.as_mut_ptr();
    // `as _`: the field is a usize with glibc and a c_int with musl; cnt is at most IOV_MAX.
    msg.msg_iovlen = cnt as _;
    // SAFETY: every iovec points into memory that stays valid for the call: `r.head` (owned by the reply) or
    // a bounds-checked range of a read-only mapping kept alive by the reply's `PageImage`. MSG_NOSIGNAL: a
    // closed peer is an EPIPE error for this session, never a SIGPIPE for the process.
    let w = unsafe { libc::sendmsg(self.stream.as_raw_fd(), &msg, libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT) };
    if w < 0 {
      let e = std::io::Error::last_os_error();
      return match e.kind() {
        std::io::ErrorKind::WouldBlock => Err(WriteErr::Again),
        std::io::ErrorKind::Interrupted => Ok(0),
        _ => Err(WriteErr::Gone),
      };
    }
    let mut w = w as usize;
    self.last_progress = Instant::now();
    self.blocked = false;
    let h = (r.head_len - r.head_sent).min(w);
    r.head_sent += h;
    w -= h;
    r.sent += w as u64;
    Ok(h as u64 + w as u64)
  }
}

enum WriteErr {
  Again,
  Gone,
  Image(String),
}
