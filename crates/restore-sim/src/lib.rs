//! Shared pieces of the restore simulator and its test peer (`mini-daemon`):
//! the layout schema, the expected-bytes oracle, raw userfaultfd ioctls and a seeded RNG.
pub mod expect;
pub mod layout;
pub mod rng;
pub mod uffd;

/// Page size assumed by the layout (CRIU images are written with 4 KiB pages on x86_64/aarch64).
pub const PAGE: u64 = 4096;

/// `0x…` formatting used in every message and report (addresses exceed 2^53, so JSON carries them as strings).
pub fn hex(v: u64) -> String {
  format!("{v:#x}")
}

/// The last OS error as a readable string (`strerror` text plus errno name is enough for users).
pub fn os_err() -> String {
  std::io::Error::last_os_error().to_string()
}
