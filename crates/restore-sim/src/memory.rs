//! A process's memory setup before hand-over, as CRIU's restorer does it: map every VMA at its image
//! address, copy the eager pages in, create the userfaultfd and register the lazy VMAs.
use std::fs::File;
use std::os::fd::{AsRawFd, OwnedFd};

use restore_sim::expect::read_exact_at;
use restore_sim::layout::Proc;
use restore_sim::{os_err, uffd};

pub fn map_vmas(p: &Proc) -> Result<(), String> {
  for v in &p.vmas {
    let len = (v.end - v.start) as usize;
    // SAFETY: MAP_FIXED_NOREPLACE never replaces an existing mapping, so no live memory is clobbered.
    let r = unsafe {
      libc::mmap(
        v.start as *mut libc::c_void,
        len,
        v.prot,
        libc::MAP_FIXED_NOREPLACE | libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
        -1,
        0,
      )
    };
    if r == libc::MAP_FAILED {
      let e = std::io::Error::last_os_error();
      if e.raw_os_error() == Some(libc::EEXIST) {
        return Err(format!(
          "pid {}: VMA {:#x}-{:#x} collides with an existing mapping: {}",
          p.pid,
          v.start,
          v.end,
          what_is_mapped(v.start, v.end)
        ));
      }
      return Err(format!("pid {}: mmap of VMA {:#x}-{:#x} failed: {e}", p.pid, v.start, v.end));
    }
    if r as u64 != v.start {
      // Kernels before 4.17 treat MAP_FIXED_NOREPLACE as a hint; undo and report.
      // SAFETY: r..r+len is the mapping we just created.
      unsafe { libc::munmap(r, len) };
      return Err(format!(
        "pid {}: VMA {:#x}-{:#x} could not be placed at its address (kernel put it at {:#x})",
        p.pid, v.start, v.end, r as u64
      ));
    }
  }
  Ok(())
}

/// The /proc/self/maps lines overlapping [start, end), for collision messages.
fn what_is_mapped(start: u64, end: u64) -> String {
  let maps = std::fs::read_to_string("/proc/self/maps").unwrap_or_default();
  let hits: Vec<&str> = maps
    .lines()
    .filter(|l| {
      let range = l.split_whitespace().next().unwrap_or("");
      let Some((a, b)) = range.split_once('-') else { return false };
      let (Ok(a), Ok(b)) = (u64::from_str_radix(a, 16), u64::from_str_radix(b, 16)) else { return false };
      a < end && start < b
    })
    .collect();
  if hits.is_empty() {
    "unknown (not in /proc/self/maps)".into()
  } else {
    hits.join("; ")
  }
}

pub fn copy_eager(p: &Proc) -> Result<(), String> {
  for e in &p.eager {
    let vma = p.vmas.iter().find(|v| v.start <= e.start && e.end <= v.end).expect("layout checked");
    let len = (e.end - e.start) as usize;
    let writable = vma.prot & libc::PROT_WRITE != 0;
    if !writable {
      protect(e.start, len, vma.prot | libc::PROT_WRITE)?;
    }
    let f = File::open(&e.file).map_err(|err| format!("pid {}: eager data {}: {err}", p.pid, e.file.display()))?;
    // SAFETY: [e.start, e.end) lies inside a VMA we mapped and just made writable.
    let dst = unsafe { std::slice::from_raw_parts_mut(e.start as *mut u8, len) };
    read_exact_at(&f, dst, e.offset)
      .map_err(|err| format!("pid {}: eager data {} at offset {}: {err}", p.pid, e.file.display(), e.offset))?;
    if !writable {
      protect(e.start, len, vma.prot)?;
    }
  }
  Ok(())
}

fn protect(addr: u64, len: usize, prot: i32) -> Result<(), String> {
  // SAFETY: changes protection of memory the sim mapped itself; no Rust references point into it.
  let r = unsafe { libc::mprotect(addr as *mut libc::c_void, len, prot) };
  if r < 0 {
    return Err(format!("mprotect {addr:#x}+{len:#x} failed: {}", os_err()));
  }
  Ok(())
}

/// Creates the uffd with CRIU's features ∩ the kernel's and registers every lazy VMA (MODE_MISSING).
pub fn make_uffd(p: &Proc) -> Result<(OwnedFd, u64), String> {
  let want = uffd::CRIU_FEATURES & uffd::kernel_features()?;
  let fd = uffd::create()?;
  let got = uffd::api(fd.as_raw_fd(), want)?;
  for v in p.vmas.iter().filter(|v| v.lazy) {
    uffd::register_missing(fd.as_raw_fd(), v.start, v.end - v.start)
      .map_err(|e| format!("pid {}: VMA {:#x}-{:#x}: {e}", p.pid, v.start, v.end))?;
  }
  Ok((fd, got))
}
