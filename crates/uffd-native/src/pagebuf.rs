//! Page-aligned receive buffers for page-server replies, and a small pool that reuses them.
//!
//! Replies are read from the socket straight into these buffers and UFFDIO_COPY reads from them, so page
//! alignment keeps every copy a whole-page copy and reuse keeps a GiB-scale transfer from allocating (and
//! page-faulting in) fresh memory for every reply.

use std::alloc::{self, Layout};

use crate::table::PAGE;

/// A zero-initialised, page-aligned heap buffer of a fixed size (a multiple of 4096, at least one page).
pub struct PageBuf {
  ptr: *mut u8,
  len: usize,
}

// SAFETY: the buffer is plain owned memory with no thread affinity; `&mut` access is required to write it.
unsafe impl Send for PageBuf {}

impl PageBuf {
  /// A buffer of `len` bytes rounded up to whole pages (at least one page).
  pub fn new(len: usize) -> PageBuf {
    let len = len.max(PAGE as usize).div_ceil(PAGE as usize) * PAGE as usize;
    let layout = Self::layout(len);
    // SAFETY: `layout` has a non-zero size (at least one page).
    let ptr = unsafe { alloc::alloc_zeroed(layout) };
    if ptr.is_null() {
      alloc::handle_alloc_error(layout);
    }
    PageBuf { ptr, len }
  }

  fn layout(len: usize) -> Layout {
    // A page-multiple size with page alignment is always a valid layout below isize::MAX.
    Layout::from_size_align(len, PAGE as usize).expect("page-aligned layout")
  }

  /// Capacity in bytes.
  pub fn len(&self) -> usize {
    self.len
  }

  /// Never empty (at least one page); present for API symmetry.
  pub fn is_empty(&self) -> bool {
    self.len == 0
  }

  /// Start of the buffer.
  pub fn as_ptr(&self) -> *const u8 {
    self.ptr
  }

  /// Writable view of `off..off+len` (panics only on a caller bug: callers bound-check against `len()`).
  pub fn slice_mut(&mut self, off: usize, len: usize) -> &mut [u8] {
    assert!(off.checked_add(len).is_some_and(|e| e <= self.len), "PageBuf slice out of bounds");
    // SAFETY: the range lies inside our allocation (checked above) and `&mut self` gives exclusive access.
    unsafe { std::slice::from_raw_parts_mut(self.ptr.add(off), len) }
  }
}

impl Drop for PageBuf {
  fn drop(&mut self) {
    // SAFETY: `ptr` was allocated in `new` with exactly this layout and is freed once.
    unsafe { alloc::dealloc(self.ptr, Self::layout(self.len)) };
  }
}

/// Buffers returned after their copy completed, handed out again to later fetches.
#[derive(Default)]
pub struct Pool {
  free: Vec<PageBuf>,
  /// Bytes held in `free`; bounded so a burst of huge fetches does not pin memory forever.
  held: usize,
  limit: usize,
}

impl Pool {
  /// A pool keeping at most `limit` bytes of idle buffers.
  pub fn new(limit: usize) -> Pool {
    Pool { free: Vec::new(), held: 0, limit }
  }

  /// Changes the idle limit (buffers above it are freed on the next `put`).
  pub fn set_limit(&mut self, limit: usize) {
    self.limit = limit;
  }

  /// A buffer of at least `len` bytes: the smallest idle one that fits, else a new one.
  pub fn get(&mut self, len: usize) -> PageBuf {
    let best = (0..self.free.len()).filter(|&i| self.free[i].len() >= len).min_by_key(|&i| self.free[i].len());
    match best {
      Some(i) => {
        let b = self.free.swap_remove(i);
        self.held -= b.len();
        b
      }
      None => PageBuf::new(len),
    }
  }

  /// Returns a buffer for reuse (freed instead when the pool is full).
  pub fn put(&mut self, b: PageBuf) {
    if self.held + b.len() <= self.limit {
      self.held += b.len();
      self.free.push(b);
    }
  }
}

#[cfg(test)]
mod tests {
  use super::*;

  #[test]
  fn aligned_rounded_and_reused() {
    let mut b = PageBuf::new(5000);
    assert_eq!(b.len(), 8192);
    assert_eq!(b.as_ptr() as usize % 4096, 0);
    b.slice_mut(4096, 4096).fill(7);
    let mut pool = Pool::new(16384);
    let p = b.as_ptr();
    pool.put(b);
    let again = pool.get(4096);
    assert_eq!(again.as_ptr(), p, "the idle buffer is reused");
    let big = pool.get(1 << 20);
    assert_eq!(big.len(), 1 << 20);
    pool.put(big); // over the limit: freed
    assert!(pool.free.is_empty());
  }
}
