//! The napi classes and functions (the JS boundary): argument conversion and error mapping only,
//! one file per exported class (functions with the class they belong to).

mod args;
mod batch_callback;
mod event_loop;
mod guardian;
mod handover_listener;
mod page_image;
mod page_server;
mod page_server_client;
mod tls_files;
mod uffd;

pub use event_loop::*;
pub use guardian::*;
pub use handover_listener::*;
pub use page_image::*;
pub use page_server::*;
pub use page_server_client::*;
pub use tls_files::*;
pub use uffd::*;

use napi_derive::napi;

use crate::errors::NapiErr;

/// Spelled `Result` so napi-derive recognises fallible exports; errors carry a string code.
type Result<T> = std::result::Result<T, NapiErr>;

/// The native core's version, for diagnostics.
#[napi]
pub fn native_version() -> String {
  env!("CARGO_PKG_VERSION").to_string()
}
