//! Error plumbing shared by every operation: each operation has its own error enum (in its module) whose
//! `Display` is the user-facing message; this module turns any of them into a napi error whose JS `code`
//! is a short, stable string the TS facade maps onto `NativeError`.

use std::fmt::Display;

/// An error that knows its stable machine-readable code (e.g. `ENOTUFFD`).
pub trait Coded: Display {
  /// Stable code surfaced to JS as `err.code`.
  fn code(&self) -> &'static str;
}

/// napi error with a string status: napi-rs v3 puts the status into the JS error's `code`.
pub type NapiErr = napi::Error<String>;
/// Result type of every exported function that can fail with a coded error.
pub type NapiResult<T> = std::result::Result<T, NapiErr>;

/// Converts a coded error into the napi error thrown to JS.
pub fn to_napi<E: Coded>(e: E) -> NapiErr {
  napi::Error::new(e.code().to_string(), e.to_string())
}

/// Errors of argument checking at the JS boundary (negative lengths, unknown ids, non-u64 bigints).
#[derive(Debug)]
pub enum ArgError {
  /// `{0}`: expected an unsigned 64-bit bigint
  NotU64(&'static str),
  /// `{0}`: no such id {1}
  UnknownId(&'static str, i64),
  /// other invalid argument
  Invalid(String),
}

impl Display for ArgError {
  fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
    match self {
      ArgError::NotU64(what) => write!(f, "{what}: expected a non-negative bigint below 2^64"),
      ArgError::UnknownId(what, id) => write!(f, "{what}: no such id {id}"),
      ArgError::Invalid(m) => write!(f, "{m}"),
    }
  }
}

impl Coded for ArgError {
  fn code(&self) -> &'static str {
    match self {
      ArgError::NotU64(_) | ArgError::Invalid(_) => "EINVALARG",
      ArgError::UnknownId(..) => "ENOID",
    }
  }
}

/// Reads a JS bigint as u64, rejecting negatives and values that do not fit (lossless).
pub fn big_u64(b: &napi::bindgen_prelude::BigInt, what: &'static str) -> NapiResult<u64> {
  let (signed, v, lossless) = b.get_u64();
  if signed || !lossless {
    return Err(to_napi(ArgError::NotU64(what)));
  }
  Ok(v)
}

#[cfg(test)]
mod tests {
  use super::*;

  #[test]
  fn arg_error_codes_and_messages() {
    let e = ArgError::UnknownId("procId", 7);
    assert_eq!(e.code(), "ENOID");
    assert_eq!(e.to_string(), "procId: no such id 7");
    let n = to_napi(ArgError::NotU64("dst"));
    assert_eq!(n.status, "EINVALARG");
    assert!(n.reason.contains("dst"));
  }
}
