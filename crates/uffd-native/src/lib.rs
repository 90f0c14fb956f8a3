//! napi exports only: the kernel side of lazy-pages.
use napi_derive::napi;

/// The native core's version, for diagnostics.
#[napi]
pub fn native_version() -> String {
    env!("CARGO_PKG_VERSION").to_string()
}
