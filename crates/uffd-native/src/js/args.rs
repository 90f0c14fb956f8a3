//! Checks of plain-number arguments at the boundary (bigints: `errors::big_u64`).

use super::Result;
use crate::errors::{to_napi, ArgError};
use crate::table::PAGE;

/// A JS number as a byte count or offset: a non-negative integer no bigger than 2^53 - 1.
pub(super) fn num_u64(v: f64, what: &'static str) -> Result<u64> {
  if !(v >= 0.0 && v.fract() == 0.0 && v <= 9_007_199_254_740_991.0) {
    return Err(to_napi(ArgError::Invalid(format!("{what}: expected a non-negative integer, got {v}"))));
  }
  Ok(v as u64)
}

/// `v`, if it is a whole number of pages.
pub(super) fn page_multiple(v: u64, what: &'static str) -> Result<u64> {
  if !v.is_multiple_of(PAGE) {
    return Err(to_napi(ArgError::Invalid(format!("{what}: must be a multiple of 4096, got {v}"))));
  }
  Ok(v)
}

/// A page server's port (1-65535) and a positive timeout in ms, as both native clients take them.
pub(super) fn server_port_and_timeout(port: u32, timeout_ms: u32) -> Result<(u16, u32)> {
  let port = u16::try_from(port)
    .ok()
    .filter(|p| *p > 0)
    .ok_or_else(|| to_napi(ArgError::Invalid(format!("port: expected 1-65535, got {port}"))))?;
  if timeout_ms == 0 {
    return Err(to_napi(ArgError::Invalid("timeoutMs: must be positive".into())));
  }
  Ok((port, timeout_ms))
}
