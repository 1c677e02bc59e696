//! Network rules both clients (oma-agent and omactl) apply the same way.

use std::net::IpAddr;

/// Whether `host`, as it appears in a URL (an IPv6 address possibly in
/// brackets), names this machine: `localhost` in any case, or a loopback
/// address, including an IPv4 loopback written as IPv6 (`::ffff:127.0.0.1`).
/// Plaintext `http://` is allowed to such a host only, unless the user says
/// the network is trusted.
pub fn is_loopback_host(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost") || host.parse::<IpAddr>().is_ok_and(|ip| ip.to_canonical().is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_hosts_are_this_machine_only() {
        for host in [
            "localhost",
            "LocalHost",
            "127.0.0.1",
            "127.1.2.3",
            "[::1]",
            "::1",
            "[::ffff:127.0.0.1]",
            "::ffff:127.0.0.1",
        ] {
            assert!(is_loopback_host(host), "{host}");
        }
        for host in [
            "",
            "example.com",
            "localhost.example.com",
            "10.0.0.1",
            "[::2]",
            "0.0.0.0",
            "[::ffff:10.0.0.1]",
            "[::]",
            "128.0.0.1",
        ] {
            assert!(!is_loopback_host(host), "{host}");
        }
    }
}
