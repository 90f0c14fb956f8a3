//! Reading a uffd and serving its faults from the process's table (or by the background copy that
//! holds the page, or from the page server).

use std::sync::atomic::Ordering;
use std::time::Instant;

use super::report::{How, Out};
use super::{Loop, BATCH};
use crate::pageclient::UrgentReq;
use crate::table::{Entry, Source, PAGE};
use crate::uffd::CopyResult;
use uffd_sys::msg::{self, Event, MSG_SIZE};

impl Loop {
  /// Reads and handles every message the uffd has (batches of 64).
  pub(super) fn on_uffd(&mut self, proc_id: u32, ep_flags: u32) {
    let mut buf = [0u8; BATCH * MSG_SIZE];
    loop {
      let Some(p) = self.procs.get(&proc_id) else { return };
      let fd = p.uffd.raw();
      // SAFETY: reads into our stack buffer of the given size.
      let n = unsafe { libc::read(fd, buf.as_mut_ptr() as *mut libc::c_void, buf.len()) };
      if n < 0 {
        let e = std::io::Error::last_os_error();
        match e.raw_os_error() {
          Some(libc::EAGAIN) => {
            if ep_flags & (libc::EPOLLHUP | libc::EPOLLERR) as u32 != 0 {
              self.mark_gone(proc_id, "the userfaultfd hung up (process exited)".into());
            }
          }
          Some(libc::EINTR) => continue,
          // The process is still there (EMFILE/ENFILE/ENOMEM: the kernel could not install a
          // FORK's new uffd, and keeps the event queued): it must be killed, not treated as gone.
          _ => {
            self.mark_dead(proc_id);
            self
              .out
              .push(Out::Error { proc_id: Some(proc_id), message: format!("read from its userfaultfd failed: {e}") });
          }
        }
        return;
      }
      let n = n as usize;
      if n == 0 {
        self.mark_gone(proc_id, "the userfaultfd reached end of file".into());
        return;
      }
      let count = n / MSG_SIZE;
      // Index of the first layout-change event in this batch (faults before it are only woken).
      let first_event = (0..count).find(|&i| buf[i * MSG_SIZE] != uffd_sys::EVENT_PAGEFAULT);
      for i in 0..count {
        let m = &buf[i * MSG_SIZE..(i + 1) * MSG_SIZE];
        match msg::decode(m) {
          Ok(Event::PageFault { flags, address, .. }) => {
            self.last_fault = Some(Instant::now());
            let addr = address & !(PAGE - 1);
            let p = self.procs.get_mut(&proc_id).expect("proc present");
            p.counters.faults.fetch_add(1, Ordering::Relaxed);
            if first_event.is_some_and(|k| i < k) {
              // The layout may already differ from the table: let the thread re-fault after TS catches up.
              let _ = p.uffd.wake(addr, PAGE);
            } else if p.paused {
              p.queued.push((addr, flags));
            } else {
              self.serve(proc_id, addr, flags);
            }
          }
          Ok(ev) => self.on_layout_event(proc_id, ev),
          Err(e) => self.out.push(Out::Error { proc_id: Some(proc_id), message: e.to_string() }),
        }
      }
      if n < buf.len() {
        return;
      }
    }
  }

  /// A fault inside a queued background copy of the same process is served by that copy: the copy
  /// jumps to the faulting page (what it jumped over is done afterwards) and copies one piece from
  /// there at once, which wakes the thread. True if the page went in that way.
  ///
  /// Why: a program that reads its memory in order catches up with the background copy and then
  /// faulted on nearly every page at the copy's front, page by page (each a round trip through this
  /// thread); served by a whole piece, it finds the next pages in and the copy stays ahead. Nothing
  /// is copied twice and no other work is added: the piece was going to be copied anyway.
  pub(super) fn join_fault(&mut self, proc_id: u32, addr: u64) -> bool {
    let gen = match self.procs.get(&proc_id) {
      Some(p) if !p.paused && !p.dead => p.gen,
      _ => return false,
    };
    let found = self
      .background
      .iter()
      .position(|j| j.proc_id == proc_id && j.gen == gen && addr >= j.dst && addr - j.dst < j.len);
    let Some(i) = found else { return false };
    let mut job = self.background.remove(i).expect("index from position");
    if !job.jump_to(addr - job.dst) {
      // Copied already by this job: the page is in (or being re-faulted after a layout change).
      self.background.insert(i, job);
      return false;
    }
    // The piece is reported as served (the fault's process counts these pages as on demand, at once)
    // rather than in the copy's completion, which can come after the process has read them all and exited.
    let before = job.joined;
    job.for_fault = true;
    let out = self.step(&mut job);
    job.for_fault = false;
    let n = job.joined - before;
    match out {
      Some(done) => self.out.push(done),
      None => self.background.push_front(job),
    }
    if n == 0 {
      return false;
    }
    let image = self.procs.get(&proc_id).and_then(|p| {
      p.counters.joined.fetch_add(1, Ordering::Relaxed);
      p.table.lookup(addr).map(|e| e.image_addr(addr))
    });
    if let Some(image) = image {
      self.record_served_run(proc_id, addr, image, n, How::Copy);
    }
    true
  }

  /// Serves one fault of a running process from its table.
  pub(super) fn serve(&mut self, proc_id: u32, addr: u64, flags: u64) {
    if self.join_fault(proc_id, addr) {
      return;
    }
    let Some(p) = self.procs.get(&proc_id) else { return };
    let entry = p.table.lookup(addr).copied();
    let (res, how, image) = match entry {
      Some(e @ Entry { source: Source::File { image, offset }, .. }) => {
        let (image_addr, off) = (e.image_addr(addr), e.file_offset(offset, addr));
        // A fault's page is read with pread into one reused buffer, not copied from the mapping: a copy from
        // the mapping maps the source page in the daemon, and the kernel maps its neighbours with it
        // (fault-around, whole large folios), so random faults grew the daemon's RSS by hundreds of MiB.
        let read = match self.images.get(&image) {
          Some(img) => img.read_at(off, self.fault_buf.slice_mut(0, PAGE as usize)).map_err(|e| e.to_string()),
          None => Err(format!("image {image} missing for 0x{addr:x}")),
        };
        if let Err(message) = read {
          self.out.push(Out::Error { proc_id: Some(proc_id), message });
          let _ = p.uffd.wake(addr, PAGE);
          return;
        }
        // SAFETY: the buffer holds PAGE bytes just read and is not touched until the call returns.
        let res = unsafe { p.uffd.copy(addr, self.fault_buf.as_ptr(), PAGE, 0) };
        (res, How::Copy, image_addr)
      }
      // A remote range with a connected page server: the loop thread fetches the page itself.
      Some(e @ Entry { source: Source::Remote { pid: Some(pid) }, .. }) if self.client.is_some() => {
        let req = UrgentReq { proc_id, gen: p.gen, live: addr, image: e.image_addr(addr), pid };
        let client = self.client.as_mut().expect("checked above");
        if let Err(m) = client.request_page(req, &self.shared.source) {
          self.source_failed(m);
        }
        return;
      }
      Some(_) => {
        p.counters.forwarded.fetch_add(1, Ordering::Relaxed);
        self.out.push(Out::PageFault { proc_id, address: addr, flags, gen: p.gen });
        return;
      }
      None => (p.uffd.zeropage(addr, PAGE, 0), How::Zero, addr),
    };
    self.fault_result(proc_id, addr, image, how, res);
  }

  /// Accounts and reports the outcome of serving one fault (local or remote).
  pub(super) fn fault_result(&mut self, proc_id: u32, addr: u64, image: u64, how: How, res: CopyResult) {
    let Some(p) = self.procs.get(&proc_id) else { return };
    match res {
      CopyResult::Copied(_) => {
        let c = &p.counters;
        match how {
          How::Copy => c.copy_pages.fetch_add(1, Ordering::Relaxed),
          How::Zero => c.zero_pages.fetch_add(1, Ordering::Relaxed),
        };
        c.bytes.fetch_add(PAGE, Ordering::Relaxed);
        self.record_served(proc_id, addr, image, how);
      }
      // Already there, or a layout change is in flight: wake so the thread proceeds or re-faults.
      CopyResult::Exists | CopyResult::Again { .. } | CopyResult::NoEnt => {
        let _ = p.uffd.wake(addr, PAGE);
      }
      CopyResult::ProcessGone => self.mark_gone(proc_id, "the process is gone (ESRCH)".into()),
      CopyResult::Other(e) => {
        let _ = p.uffd.wake(addr, PAGE);
        self.out.push(Out::Error {
          proc_id: Some(proc_id),
          message: format!("serving fault at 0x{addr:x} failed: {}", crate::uffd::errno_text(e)),
        });
      }
    }
  }
}
