//! `host:port` as messages and peers are named: an IPv6 host (it has a colon) in brackets, so the
//! port stays readable (`[::1]:27`, `10.0.0.1:27`).

/// `host:port`, or `[host]:port` when `host` is an IPv6 address.
pub fn host_port(host: &str, port: u16) -> String {
  if host.contains(':') {
    format!("[{host}]:{port}")
  } else {
    format!("{host}:{port}")
  }
}

#[cfg(test)]
mod tests {
  use super::host_port;

  #[test]
  fn brackets_ipv6_only() {
    assert_eq!(host_port("10.0.0.1", 27), "10.0.0.1:27");
    assert_eq!(host_port("localhost", 8080), "localhost:8080");
    assert_eq!(host_port("::1", 27), "[::1]:27");
    assert_eq!(host_port("fe80::1%eth0", 1), "[fe80::1%eth0]:1");
  }
}
