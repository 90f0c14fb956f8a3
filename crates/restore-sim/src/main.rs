//! restore-sim: plays the memory side of `criu restore --lazy-pages` against a lazy-pages daemon.
//! Exit codes: 0 all verified, 1 wrong byte / workload failure, 2 setup error, 3 a process was
//! killed by a signal, 4 timeout.
mod child;
mod cli;
mod events;
mod handover;
mod master;
mod memory;
mod reaper;
mod spawn;
mod verify;
mod wire;
mod workload;

fn main() {
  let args: Vec<String> = std::env::args().skip(1).collect();
  let opts = match cli::parse(&args) {
    Ok(o) => o,
    Err(e) => {
      eprintln!("restore-sim: {e}");
      std::process::exit(2);
    }
  };
  let code = master::run(&opts);
  std::process::exit(code);
}
