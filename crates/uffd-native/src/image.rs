//! A read-only mapping of a raw pages file (`pages-<id>.img`), shared between JS and the event-loop thread.
//! COPY reads straight from the mapping, so serving a page costs no read() and no bounce buffer.

use std::fmt;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use crate::errors::Coded;

/// Errors opening or slicing an image.
#[derive(Debug)]
pub enum ImageError {
  /// the file could not be opened or stat'ed
  Open(PathBuf, std::io::Error),
  /// mmap failed
  Map(PathBuf, std::io::Error),
  /// pread failed at this offset
  Read(PathBuf, u64, std::io::Error),
  /// a slice outside the file
  Range { path: PathBuf, offset: u64, len: u64, size: u64 },
}

impl fmt::Display for ImageError {
  fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
    match self {
      ImageError::Open(p, e) => write!(f, "{}: cannot open pages image: {e}", p.display()),
      ImageError::Map(p, e) => write!(f, "{}: cannot mmap pages image: {e}", p.display()),
      ImageError::Read(p, off, e) => write!(f, "{}: cannot read the page at offset {off}: {e}", p.display()),
      ImageError::Range { path, offset, len, size } => {
        write!(f, "{}: read of {len} bytes at offset {offset} is outside the image (file size {size})", path.display())
      }
    }
  }
}

impl Coded for ImageError {
  fn code(&self) -> &'static str {
    // One code for every unusable image, as the TypeScript image parser gives (the message names the
    // file and the offset).
    "EBADIMAGE"
  }
}

/// The mapping itself; unmapped when the last `Arc` drops.
#[derive(Debug)]
pub struct Mapping {
  path: PathBuf,
  ptr: *const u8,
  len: u64,
  /// The open file, for `read_at` (None for an empty image).
  file: Option<File>,
  /// Bytes copied since the page tables were last dropped (see `piece_copied`).
  pieces: AtomicU32,
}

// SAFETY: `ptr` (the only field that is not Send) owns a PROT_READ mapping no thread writes; it is not tied
// to the thread that made it, and only `Drop` (which has the value to itself) unmaps it.
unsafe impl Send for Mapping {}
// SAFETY: through `&Mapping` the mapping is only read (it is PROT_READ, so no code can write it), and it
// stays mapped while any reference exists; the other fields (File, AtomicU32) are Sync themselves.
unsafe impl Sync for Mapping {}

impl Drop for Mapping {
  fn drop(&mut self) {
    if self.len > 0 {
      // SAFETY: `ptr/len` is exactly the mapping created in `open`, unmapped once here.
      unsafe { libc::munmap(self.ptr as *mut libc::c_void, self.len as usize) };
    }
  }
}

/// A shared read-only pages image.
pub type PageImage = Arc<Mapping>;

/// Maps `path` read-only (MAP_PRIVATE, PROT_READ). An empty file is valid and maps nothing.
pub fn open(path: &Path) -> Result<PageImage, ImageError> {
  let file = File::open(path).map_err(|e| ImageError::Open(path.to_path_buf(), e))?;
  let len = file.metadata().map_err(|e| ImageError::Open(path.to_path_buf(), e))?.len();
  if len == 0 {
    return Ok(Arc::new(Mapping {
      path: path.to_path_buf(),
      ptr: std::ptr::null(),
      len: 0,
      file: None,
      pieces: AtomicU32::new(0),
    }));
  }
  // SAFETY: a fresh read-only private mapping of an open file; the result is checked against MAP_FAILED.
  let ptr =
    unsafe { libc::mmap(std::ptr::null_mut(), len as usize, libc::PROT_READ, libc::MAP_PRIVATE, file.as_raw_fd(), 0) };
  if ptr == libc::MAP_FAILED {
    return Err(ImageError::Map(path.to_path_buf(), std::io::Error::last_os_error()));
  }
  Ok(Arc::new(Mapping {
    path: path.to_path_buf(),
    ptr: ptr as *const u8,
    len,
    file: Some(file),
    pieces: AtomicU32::new(0),
  }))
}

/// Bytes copied between two drops of an image's page tables (with up to a 2 MiB folio mapped around
/// each 64 KiB piece, at most 64 MiB of the image is mapped at once).
const RELEASE_EVERY: u32 = 2 << 20;

/// MADV_POPULATE_READ (Linux 5.14): fill in page tables from the page cache, reading the file as needed.
const MADV_POPULATE_READ: libc::c_int = 22;

impl Mapping {
  /// File size in bytes.
  pub fn len(&self) -> u64 {
    self.len
  }

  /// True for an empty image.
  pub fn is_empty(&self) -> bool {
    self.len == 0
  }

  /// The file path (for messages).
  pub fn path(&self) -> &Path {
    &self.path
  }

  /// Pointer to `offset` after checking that `offset..offset+len` is inside the file.
  pub fn ptr_at(&self, offset: u64, len: u64) -> Result<*const u8, ImageError> {
    match offset.checked_add(len) {
      Some(end) if end <= self.len => {
        if len == 0 {
          return Ok(std::ptr::NonNull::<u8>::dangling().as_ptr());
        }
        // SAFETY: offset < len of the mapping (checked above), so the pointer stays inside it.
        Ok(unsafe { self.ptr.add(offset as usize) })
      }
      _ => Err(ImageError::Range { path: self.path.clone(), offset, len, size: self.len }),
    }
  }

  /// Maps `offset..offset+len` before a copy reads it (clamped to the file; advice only, errors ignored).
  ///
  /// Why: UFFDIO_COPY reads its source with copy_from_user, and every source page not yet mapped costs a
  /// minor fault inside the copy (measured: a drain 2-3x slower than the floor, whose image is mapped with
  /// MAP_POPULATE). Populating the piece about to be copied in one call avoids that without mapping (and
  /// reading from disk) the whole file up front, which made the daemon's RSS the size of the image.
  pub fn populate(&self, offset: u64, len: u64) {
    self.advise(offset, len, MADV_POPULATE_READ);
  }

  /// Counts a piece copied out of the mapping; every RELEASE_EVERY bytes drops all of the mapping's
  /// page-table entries, so the daemon's RSS stays bounded by what is being copied now, not by what was
  /// copied (the data stays in the page cache; the next piece maps its range again).
  ///
  /// Why not release each piece's own range: the kernel maps more than the populated range (fault-around,
  /// whole large folios of the page cache), so releasing exactly the piece left the rest mapped: a 512 MiB
  /// restore held ~100 MiB of the image. One DONTNEED over the whole file now and then catches it all.
  pub fn piece_copied(&self, len: u64) {
    let len = len.min(RELEASE_EVERY as u64) as u32;
    if self.pieces.fetch_add(len, Ordering::Relaxed) + len >= RELEASE_EVERY {
      self.pieces.store(0, Ordering::Relaxed);
      self.advise(0, self.len, libc::MADV_DONTNEED);
    }
  }

  /// Reads `buf.len()` bytes at `offset` with pread (bounds-checked like `ptr_at`).
  pub fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), ImageError> {
    use std::os::unix::fs::FileExt;
    self.ptr_at(offset, buf.len() as u64)?;
    match &self.file {
      Some(f) => f.read_exact_at(buf, offset).map_err(|e| ImageError::Read(self.path.clone(), offset, e)),
      None => Ok(()),
    }
  }

  fn advise(&self, offset: u64, len: u64, advice: libc::c_int) {
    let page = crate::table::PAGE;
    let start = offset / page * page;
    let end = offset.saturating_add(len).min(self.len);
    if self.len == 0 || start >= end {
      return;
    }
    // SAFETY: advice over a page-aligned range inside our own live read-only private mapping; neither
    // POPULATE_READ nor DONTNEED changes what a read of the mapping returns (a private mapping that was
    // never written reads the file again after DONTNEED).
    unsafe { libc::madvise(self.ptr.add(start as usize) as *mut libc::c_void, (end - start) as usize, advice) };
  }

  /// Bounds-checked view of `offset..offset+len`.
  pub fn slice(&self, offset: u64, len: u64) -> Result<&[u8], ImageError> {
    let p = self.ptr_at(offset, len)?;
    // SAFETY: `ptr_at` checked the range lies in the live read-only mapping owned by `self`.
    Ok(unsafe { std::slice::from_raw_parts(p, len as usize) })
  }
}

#[cfg(test)]
mod tests {
  use super::*;

  fn tmp(name: &str, data: &[u8]) -> PathBuf {
    let p = std::env::temp_dir().join(format!("uffd-native-{}-{name}", std::process::id()));
    std::fs::write(&p, data).unwrap();
    p
  }

  #[test]
  fn slices_inside_and_rejects_outside() {
    let data: Vec<u8> = (0..8192u32).map(|i| (i % 251) as u8).collect();
    let p = tmp("img", &data);
    let img = open(&p).unwrap();
    assert_eq!(img.len(), 8192);
    assert_eq!(img.slice(4096, 4096).unwrap(), &data[4096..]);
    let err = img.slice(8000, 4096).unwrap_err();
    assert_eq!(err.code(), "EBADIMAGE");
    let m = err.to_string();
    assert!(m.contains("offset 8000") && m.contains("4096 bytes") && m.contains("8192") && m.contains("img"));
    assert!(img.slice(u64::MAX, 2).is_err());
    std::fs::remove_file(p).unwrap();
  }

  #[test]
  fn empty_file_maps_nothing() {
    let p = tmp("empty", &[]);
    let img = open(&p).unwrap();
    assert!(img.is_empty());
    assert_eq!(img.slice(0, 0).unwrap().len(), 0);
    assert!(img.slice(0, 1).is_err());
    std::fs::remove_file(p).unwrap();
  }

  #[test]
  fn missing_file_names_path() {
    let e = open(Path::new("/nonexistent/pages-1.img")).unwrap_err();
    assert!(e.to_string().contains("/nonexistent/pages-1.img"));
  }
}
