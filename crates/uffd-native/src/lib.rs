//! napi exports only: the kernel side of lazy-pages. Each export is a thin shell over a module with one job.
#![deny(clippy::undocumented_unsafe_blocks)]

pub mod early;
pub mod errors;
pub mod event_loop;
pub mod guardian;
pub mod handover;
pub mod hostport;
pub mod image;
pub mod outbox;
pub mod pagebuf;
pub mod pageclient;
pub mod pagefetch;
pub mod pageserver;
pub mod pagewire;
pub use lazy_pages_poller as poller;
pub mod table;
pub mod tls;
pub mod transport;
pub mod uffd;

// The napi layer needs Node's symbols at link time, so unit tests (a plain executable) leave it out.
#[cfg(not(test))]
mod js;

#[cfg(not(test))]
pub use js::*;

#[cfg(test)]
mod test_stubs;
