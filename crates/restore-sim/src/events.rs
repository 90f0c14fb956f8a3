//! `uffd-events`: CRIU's non-cooperative-events test (spec §8) on the first five lazy VMAs >= 256 KiB:
//! read VMA 0; fork; MADV_DONTNEED VMA 1; mremap-grow VMA 2; swap VMAs 3 and 4 through a scratch
//! address; parent and child each run the sequence on their own copy and verify everything mapped.
use serde_json::{json, Value};

use restore_sim::layout::{Proc, Vma};
use restore_sim::{hex, os_err};

use crate::spawn::{fork_workload_child, wait_exit};
use crate::verify::{lazy_regions, Checker, Outcome, Region};

const MIN_LEN: u64 = 256 * 1024;

pub fn run(p: &Proc, chk: &mut Checker, out: &mut Outcome) -> Result<(), String> {
  let big: Vec<Vma> = p.vmas.iter().filter(|v| v.lazy && v.end - v.start >= MIN_LEN).take(5).cloned().collect();
  if big.len() < 5 {
    return Err(format!("uffd-events needs five lazy VMAs of at least 256 KiB; pid {} has {}", p.pid, big.len()));
  }
  out.steps.push(json!({ "step": "vmas", "used": big.iter().map(|v| format!("{}-{}", hex(v.start), hex(v.end))).collect::<Vec<_>>() }));
  let mut regions = lazy_regions(p);

  // 1. read VMA 0: every page faults and must hold its image data.
  let r0 = Region { live: big[0].start, len: big[0].end - big[0].start, image: Some(big[0].start) };
  let bad = chk.check_region(&r0, out)?;
  out.touched += r0.len / restore_sim::PAGE;
  out.steps.push(json!({ "step": "read-vma0", "ok": bad == 0 }));

  // 2. fork: the child inherits the registered ranges (the daemon gets EVENT_FORK with a new uffd).
  let mut fds = [0; 2];
  // SAFETY: pipe(2) into a local array.
  if unsafe { libc::pipe(fds.as_mut_ptr()) } < 0 {
    return Err(format!("pipe failed: {}", os_err()));
  }
  let pid = fork_workload_child()?;
  if pid == 0 {
    // SAFETY: closing the read end we do not use in the child.
    unsafe { libc::close(fds[0]) };
    let mut mine = Outcome::default();
    let res = sequence(&big, &mut regions, chk, &mut mine);
    if let Err(e) = res {
      mine.error = Some(e);
    }
    let _ = crate::wire::write_all(fds[1], mine.to_json().to_string().as_bytes());
    // SAFETY: leave without running the parent's destructors a second time.
    unsafe { libc::_exit(0) };
  }
  // SAFETY: closing our copy of the write end so read_to_end sees EOF when the child exits.
  unsafe { libc::close(fds[1]) };
  out.steps.push(json!({ "step": "fork", "childPid": pid }));
  let mine = sequence(&big, &mut regions, chk, out);
  let child = read_child(fds[0]);
  let status = wait_exit(pid);
  let child_ok =
    child.get("badPages").and_then(Value::as_u64) == Some(0) && child.get("error").is_none() && status == Some(0);
  if !child_ok {
    out.bad_pages += child.get("badPages").and_then(Value::as_u64).unwrap_or(0);
    if out.error.is_none() {
      out.error = Some(format!("uffd-events child failed: {child}"));
    }
  }
  out.steps.push(json!({ "step": "child", "ok": child_ok, "exitStatus": status, "result": child }));
  mine
}

fn read_child(fd: i32) -> Value {
  use std::io::Read;
  use std::os::fd::FromRawFd;
  // SAFETY: fd is the read end of our pipe, owned from here on.
  let mut f = unsafe { std::fs::File::from_raw_fd(fd) };
  let mut s = String::new();
  let _ = f.read_to_string(&mut s);
  serde_json::from_str(&s).unwrap_or(json!({ "error": "child sent no result" }))
}

/// Replaces the regions overlapping [live, live+len) by `new` (whole-VMA granularity is all we need).
fn replace(regions: &mut Vec<Region>, live: u64, len: u64, new: &[Region]) {
  regions.retain(|r| !(r.live < live + len && live < r.live + r.len));
  regions.extend_from_slice(new);
}

fn mremap(old: u64, old_len: u64, new_len: u64, flags: i32, to: u64) -> Result<u64, String> {
  // SAFETY: remaps only the sim's own lazy VMAs; no Rust references point into them.
  let r = unsafe {
    libc::mremap(old as *mut libc::c_void, old_len as usize, new_len as usize, flags, to as *mut libc::c_void)
  };
  if r == libc::MAP_FAILED {
    return Err(format!("mremap {old:#x}+{old_len:#x} -> {new_len:#x} failed: {}", os_err()));
  }
  Ok(r as u64)
}

fn sequence(big: &[Vma], regions: &mut Vec<Region>, chk: &mut Checker, out: &mut Outcome) -> Result<(), String> {
  // 3. MADV_DONTNEED on VMA 1: the daemon gets REMOVE; the range must read zeros from now on.
  let (s1, l1) = (big[1].start, big[1].end - big[1].start);
  // SAFETY: drops pages of our own private anonymous mapping.
  if unsafe { libc::madvise(s1 as *mut libc::c_void, l1 as usize, libc::MADV_DONTNEED) } < 0 {
    return Err(format!("madvise(DONTNEED) {s1:#x} failed: {}", os_err()));
  }
  replace(regions, s1, l1, &[Region { live: s1, len: l1, image: None }]);
  out.steps.push(json!({ "step": "madvise-dontneed-vma1", "addr": hex(s1) }));

  // 4. mremap VMA 2 to twice its size: old part keeps its data (maybe at a new address), new half zero.
  let (s2, l2) = (big[2].start, big[2].end - big[2].start);
  let n2 = mremap(s2, l2, 2 * l2, libc::MREMAP_MAYMOVE, 0)?;
  replace(
    regions,
    s2,
    l2,
    &[Region { live: n2, len: l2, image: Some(s2) }, Region { live: n2 + l2, len: l2, image: None }],
  );
  out.steps.push(json!({ "step": "mremap-grow-vma2", "from": hex(s2), "to": hex(n2), "moved": n2 != s2 }));

  // 5. swap VMAs 3 and 4 (their common length) through a scratch address: data follows the maps.
  let (s3, s4) = (big[3].start, big[4].start);
  let len = (big[3].end - s3).min(big[4].end - s4);
  // SAFETY: reserves fresh address space for the scratch step; MREMAP_FIXED replaces it below.
  let scratch = unsafe {
    libc::mmap(std::ptr::null_mut(), len as usize, libc::PROT_NONE, libc::MAP_PRIVATE | libc::MAP_ANONYMOUS, -1, 0)
  };
  if scratch == libc::MAP_FAILED {
    return Err(format!("mmap scratch failed: {}", os_err()));
  }
  let fixed = libc::MREMAP_MAYMOVE | libc::MREMAP_FIXED;
  mremap(s3, len, len, fixed, scratch as u64)?;
  mremap(s4, len, len, fixed, s3)?;
  mremap(scratch as u64, len, len, fixed, s4)?;
  replace(regions, s3, len, &[Region { live: s3, len, image: Some(s4) }]);
  replace(regions, s4, len, &[Region { live: s4, len, image: Some(s3) }]);
  // Tails beyond the common length (unequal sizes) stay where they were, with their own data.
  for v in &big[3..5] {
    if v.end - v.start > len {
      regions.push(Region { live: v.start + len, len: v.end - v.start - len, image: Some(v.start + len) });
    }
  }
  out.steps.push(json!({ "step": "swap-vma3-vma4", "a": hex(s3), "b": hex(s4), "len": hex(len) }));

  // 6. everything still mapped must hold what the sequence says.
  let before = out.bad_pages;
  regions.sort_by_key(|r| r.live);
  for r in regions.iter() {
    chk.check_region(r, out)?;
  }
  out.steps.push(json!({ "step": "verify-all", "ok": out.bad_pages == before }));
  Ok(())
}
