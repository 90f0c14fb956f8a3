//! `lazy-pages-guardian`: started by the lazy-pages daemon (never by hand) with the daemon's
//! socketpair end on fd 3 and the daemon's pidfd on fd 4. See the library docs for what it does.
//! Its arguments (`--daemon-pid N`) are only there so that `ps` shows whose guardian it is.

fn main() {
  std::process::exit(lazy_pages_guardian::main_with_inherited_fds());
}
