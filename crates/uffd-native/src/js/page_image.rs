//! The `PageImage` class: a read-only mapped pages file.

use std::path::Path;

use napi::bindgen_prelude::Buffer;
use napi_derive::napi;

use super::args::num_u64;
use super::Result;
use crate::errors::{to_napi, ArgError};
use crate::image;

/// A read-only mapped pages image.
#[napi]
pub struct PageImage {
  inner: Option<image::PageImage>,
}

impl PageImage {
  pub(super) fn get(&self) -> Result<&image::PageImage> {
    self.inner.as_ref().ok_or_else(|| to_napi(ArgError::Invalid("PageImage: already closed".into())))
  }
}

#[napi]
impl PageImage {
  /// Maps `path` read-only.
  #[napi(factory)]
  pub fn open(path: String) -> Result<PageImage> {
    Ok(PageImage { inner: Some(image::open(Path::new(&path)).map_err(to_napi)?) })
  }

  /// File size in bytes.
  #[napi(getter)]
  pub fn length(&self) -> Result<f64> {
    Ok(self.get()?.len() as f64)
  }

  /// A copy of `len` bytes at `offset` (bounds-checked).
  #[napi]
  pub fn read(&self, offset: f64, len: f64) -> Result<Buffer> {
    let (off, len) = (num_u64(offset, "offset")?, num_u64(len, "len")?);
    Ok(Buffer::from(self.get()?.slice(off, len).map_err(to_napi)?.to_vec()))
  }

  /// Drops this handle's reference (the mapping lives on while an EventLoop still uses it).
  #[napi]
  pub fn close(&mut self) {
    self.inner = None;
  }
}
