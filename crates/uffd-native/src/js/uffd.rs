//! The `Uffd` class (an owned userfaultfd, for tests and tools: the daemon hands its uffds to the
//! event loop) and `uffdProbe` (what `lazy-pages check` asks of the kernel).

use napi::bindgen_prelude::{BigInt, Buffer};
use napi_derive::napi;

use super::args::num_u64;
use super::page_image::PageImage;
use super::Result;
use crate::errors::{big_u64, to_napi, ArgError};
use crate::uffd::{self, CopyResult, MODE_DONTWAKE};

/// What userfaultfd offers this process (for `lazy-pages check`).
#[napi(object, object_from_js = false)]
pub struct UffdProbe {
  /// The UFFD_FEATURE_* bits the kernel offers, when a userfaultfd could be made.
  pub features: Option<BigInt>,
  /// Else the errno of userfaultfd(2) or UFFDIO_API (EPERM: not allowed to this user).
  pub errno: Option<i32>,
  /// The features a lazy-pages uffd needs (EVENT_FORK | EVENT_REMAP | EVENT_REMOVE | EVENT_UNMAP).
  pub required: BigInt,
}

/// Makes a userfaultfd (closed at once) and asks the kernel what it offers.
#[napi]
pub fn uffd_probe() -> UffdProbe {
  let required = BigInt::from(uffd::REQUIRED_FEATURES);
  match uffd::probe() {
    Ok(f) => UffdProbe { features: Some(BigInt::from(f)), errno: None, required },
    Err(e) => UffdProbe { features: None, errno: Some(e), required },
  }
}

/// Outcome of a COPY/ZEROPAGE as seen by JS: a union on `status` (`again` carries the bytes placed
/// before the kernel asked to retry; `error` any other errno, with its text).
#[napi(discriminant = "status", discriminant_case = "lowercase", object_from_js = false)]
pub enum CopyOutcome {
  Ok { bytes: f64 },
  Again { bytes: f64 },
  Exists,
  NoEnt,
  Gone,
  Error { errno: i32, message: String },
}

fn outcome(r: CopyResult) -> CopyOutcome {
  match r {
    CopyResult::Copied(n) => CopyOutcome::Ok { bytes: n as f64 },
    CopyResult::Again { copied } => CopyOutcome::Again { bytes: copied as f64 },
    CopyResult::Exists => CopyOutcome::Exists,
    CopyResult::NoEnt => CopyOutcome::NoEnt,
    CopyResult::ProcessGone => CopyOutcome::Gone,
    CopyResult::Other(e) => CopyOutcome::Error { errno: e, message: uffd::errno_text(e) },
  }
}

/// An owned userfaultfd.
#[napi]
pub struct Uffd {
  pub(super) inner: Option<uffd::Uffd>,
}

impl Uffd {
  pub(super) fn get(&self) -> Result<&uffd::Uffd> {
    self.inner.as_ref().ok_or_else(|| to_napi(ArgError::Invalid("Uffd: closed or handed to an EventLoop".into())))
  }
}

#[napi]
impl Uffd {
  /// A new userfaultfd with the lazy-pages features (EVENT_FORK|REMAP|REMOVE|UNMAP).
  #[napi(factory)]
  pub fn create() -> Result<Uffd> {
    Ok(Uffd { inner: Some(uffd::Uffd::create().map_err(to_napi)?) })
  }

  /// Takes ownership of `fd` after checking it is a userfaultfd.
  #[napi(factory)]
  pub fn adopt(fd: i32) -> Result<Uffd> {
    Ok(Uffd { inner: Some(uffd::Uffd::adopt(fd).map_err(to_napi)?) })
  }

  /// The fd number, or -1 once closed.
  #[napi(getter)]
  pub fn fd(&self) -> i32 {
    self.inner.as_ref().map(|u| u.raw()).unwrap_or(-1)
  }

  /// UFFDIO_REGISTER (MODE_MISSING); returns the allowed ioctl mask.
  #[napi]
  pub fn register(&self, start: BigInt, len: BigInt) -> Result<BigInt> {
    let r = self.get()?.register(big_u64(&start, "start")?, big_u64(&len, "len")?).map_err(to_napi)?;
    Ok(BigInt::from(r))
  }

  /// UFFDIO_UNREGISTER.
  #[napi]
  pub fn unregister(&self, start: BigInt, len: BigInt) -> Result<()> {
    self.get()?.unregister(big_u64(&start, "start")?, big_u64(&len, "len")?).map_err(to_napi)
  }

  /// UFFDIO_WAKE.
  #[napi]
  pub fn wake(&self, start: BigInt, len: BigInt) -> Result<()> {
    self.get()?.wake(big_u64(&start, "start")?, big_u64(&len, "len")?).map_err(to_napi)
  }

  /// UFFDIO_COPY `len` bytes from `image` at `file_offset` to `dst` (bounds-checked against the image).
  #[napi]
  pub fn copy_from_image(
    &self,
    image: &PageImage,
    file_offset: f64,
    dst: BigInt,
    len: f64,
    dontwake: Option<bool>,
  ) -> Result<CopyOutcome> {
    let (off, len) = (num_u64(file_offset, "fileOffset")?, num_u64(len, "len")?);
    let dst = big_u64(&dst, "dst")?;
    let img = image.get()?;
    let src = img.ptr_at(off, len).map_err(to_napi)?;
    let mode = if dontwake.unwrap_or(false) { MODE_DONTWAKE } else { 0 };
    // SAFETY: `src..src+len` was bounds-checked and `img` keeps the mapping alive during the call.
    Ok(outcome(unsafe { self.get()?.copy(dst, src, len, mode) }))
  }

  /// UFFDIO_COPY of `buf` to `dst`.
  #[napi]
  pub fn copy_from_buffer(&self, buf: Buffer, dst: BigInt, dontwake: Option<bool>) -> Result<CopyOutcome> {
    let dst = big_u64(&dst, "dst")?;
    let mode = if dontwake.unwrap_or(false) { MODE_DONTWAKE } else { 0 };
    // SAFETY: `buf` is borrowed for the whole call; pointer and length come from the same slice.
    Ok(outcome(unsafe { self.get()?.copy(dst, buf.as_ptr(), buf.len() as u64, mode) }))
  }

  /// UFFDIO_ZEROPAGE.
  #[napi]
  pub fn zeropage(&self, dst: BigInt, len: f64, dontwake: Option<bool>) -> Result<CopyOutcome> {
    let mode = if dontwake.unwrap_or(false) { MODE_DONTWAKE } else { 0 };
    Ok(outcome(self.get()?.zeropage(big_u64(&dst, "dst")?, num_u64(len, "len")?, mode)))
  }

  /// Closes the fd (its ranges are unregistered: later faults read zeros).
  #[napi]
  pub fn close(&mut self) {
    if let Some(u) = self.inner.take() {
      // A received uffd the daemon closes unserved: the guardian lets go of it too (before the close,
      // while the fd number still names it).
      crate::guardian::forget(u.raw());
    }
  }
}
