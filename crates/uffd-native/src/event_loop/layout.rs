//! Layout events (fork, mremap, madvise(DONTNEED), munmap): the process pauses until JS has applied them.

use std::os::fd::RawFd;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::commands::Cmd;
use super::report::Out;
use super::stats::Counters;
use super::Loop;
use crate::uffd::Uffd;
use uffd_sys::msg::Event;

impl Loop {
  pub(super) fn on_layout_event(&mut self, proc_id: u32, ev: Event) {
    let p = self.procs.get_mut(&proc_id).expect("proc present");
    p.paused = true;
    p.events_read = p.events_read.wrapping_add(1);
    p.counters.paused.store(true, Ordering::Relaxed);
    match ev {
      Event::Fork { ufd } => {
        // SAFETY: the kernel installed `ufd` in our fd table for the child; nobody else owns it.
        let uffd = unsafe { Uffd::from_raw_uffd(ufd as RawFd) };
        let child = self.shared.next_proc.fetch_add(1, Ordering::SeqCst);
        let counters = Arc::new(Counters::default());
        self.shared.counters.lock().unwrap_or_else(|p| p.into_inner()).insert(child, counters.clone());
        self.on_command(Cmd::AddProcess { proc_id: child, uffd, pid: 0, counters });
        self.guardian(crate::guardian::forked(crate::guardian::loop_id(&self.shared), proc_id, child));
        self.out.push(Out::Fork { proc_id, child_proc_id: child });
      }
      Event::Remap { from, to, len } => self.out.push(Out::Remap { proc_id, from, to, len }),
      Event::Remove { start, end } => self.out.push(Out::Remove { proc_id, start, end }),
      Event::Unmap { start, end } => self.out.push(Out::Unmap { proc_id, start, end }),
      Event::PageFault { .. } => {}
    }
  }
}
