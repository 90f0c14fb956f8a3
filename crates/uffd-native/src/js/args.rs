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
