//! The userfaultfd uAPI (`linux/userfaultfd.h`, spec §5) as lazy-pages uses it: ioctl numbers, the
//! structs they take, feature and event bits, and `struct uffd_msg` decoding.
//!
//! One definition for every crate that talks to the kernel's userfaultfd: the daemon's native core
//! (uffd-native) and the simulator that plays CRIU's restorer (restore-sim). Written out here from
//! the uAPI rather than taken from libc so that the exact layouts the kernel expects are visible in
//! one place. Numbers and layouts only: no syscalls, no unsafe.

pub mod msg;

/// The API version UFFDIO_API asks for.
pub const UFFD_API: u64 = 0xAA;

// The kernel reads an ioctl request as an unsigned int (glibc declares `unsigned long`, musl `int`):
// the numbers are u32 here, and callers cast them to their libc's request type, keeping the bits.
pub const UFFDIO_API: u32 = 0xc018_aa3f;
pub const UFFDIO_REGISTER: u32 = 0xc020_aa00;
pub const UFFDIO_UNREGISTER: u32 = 0x8010_aa01;
pub const UFFDIO_WAKE: u32 = 0x8010_aa02;
pub const UFFDIO_COPY: u32 = 0xc028_aa03;
pub const UFFDIO_ZEROPAGE: u32 = 0xc020_aa04;

/// UFFDIO_REGISTER mode: report faults on missing pages.
pub const REGISTER_MODE_MISSING: u64 = 1;
/// `mode` bit of COPY/ZEROPAGE: do not wake the faulting thread (a later WAKE covers a whole range).
pub const MODE_DONTWAKE: u64 = 1;

pub const FEATURE_EVENT_FORK: u64 = 0x02;
pub const FEATURE_EVENT_REMAP: u64 = 0x04;
pub const FEATURE_EVENT_REMOVE: u64 = 0x08;
pub const FEATURE_EVENT_UNMAP: u64 = 0x40;
/// What CRIU's restorer asks for, and what a lazy-pages uffd must have: every non-cooperative
/// event (spec §2), so the daemon hears of each change of the layout.
pub const LAZY_PAGES_FEATURES: u64 =
  FEATURE_EVENT_FORK | FEATURE_EVENT_REMAP | FEATURE_EVENT_REMOVE | FEATURE_EVENT_UNMAP;
/// The names of those feature bits, for messages.
pub const FEATURE_NAMES: [(u64, &str); 4] = [
  (FEATURE_EVENT_FORK, "EVENT_FORK"),
  (FEATURE_EVENT_REMAP, "EVENT_REMAP"),
  (FEATURE_EVENT_REMOVE, "EVENT_REMOVE"),
  (FEATURE_EVENT_UNMAP, "EVENT_UNMAP"),
];

/// `uffd_msg.event` values.
pub const EVENT_PAGEFAULT: u8 = 0x12;
pub const EVENT_FORK: u8 = 0x13;
pub const EVENT_REMAP: u8 = 0x14;
pub const EVENT_REMOVE: u8 = 0x15;
pub const EVENT_UNMAP: u8 = 0x16;

/// What `/proc/PID/fd/N` links to for a userfaultfd.
pub const UFFD_LINK: &str = "anon_inode:[userfaultfd]";

#[repr(C)]
#[derive(Debug, Default)]
pub struct UffdioApi {
  pub api: u64,
  pub features: u64,
  pub ioctls: u64,
}

#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub struct UffdioRange {
  pub start: u64,
  pub len: u64,
}

#[repr(C)]
#[derive(Debug, Default)]
pub struct UffdioRegister {
  pub range: UffdioRange,
  pub mode: u64,
  pub ioctls: u64,
}

#[repr(C)]
#[derive(Debug, Default)]
pub struct UffdioCopy {
  pub dst: u64,
  pub src: u64,
  pub len: u64,
  pub mode: u64,
  /// Bytes copied, or a negative errno: signed, as the kernel writes it.
  pub copy: i64,
}

#[repr(C)]
#[derive(Debug, Default)]
pub struct UffdioZeropage {
  pub range: UffdioRange,
  pub mode: u64,
  /// Bytes zeroed, or a negative errno.
  pub zeropage: i64,
}

#[cfg(test)]
mod tests {
  use super::*;

  /// The ioctl numbers encode the struct sizes (_IOWR/_IOR with the size in bits 16..30).
  #[test]
  fn ioctl_numbers_match_the_struct_sizes() {
    let size = |n: u32| ((n >> 16) & 0x3fff) as usize;
    assert_eq!(size(UFFDIO_API), std::mem::size_of::<UffdioApi>());
    assert_eq!(size(UFFDIO_REGISTER), std::mem::size_of::<UffdioRegister>());
    assert_eq!(size(UFFDIO_UNREGISTER), std::mem::size_of::<UffdioRange>());
    assert_eq!(size(UFFDIO_WAKE), std::mem::size_of::<UffdioRange>());
    assert_eq!(size(UFFDIO_COPY), std::mem::size_of::<UffdioCopy>());
    assert_eq!(size(UFFDIO_ZEROPAGE), std::mem::size_of::<UffdioZeropage>());
    assert_eq!(LAZY_PAGES_FEATURES, 0x4E);
  }
}
