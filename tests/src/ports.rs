//! Ports for node and metrics listeners, picked at run time.
//!
//! A port found by binding port 0 and closing the listener is free only for a moment: the
//! kernel may hand it to the next `bind` to port 0 (a test's proxy) or to an outgoing
//! connection before the node binds it, and that node then fails to start. With 20 proxies
//! started between picking and binding, a 5-node cluster lost a node this way about once in
//! a few hundred starts, which CI saw as a bootstrap that never completed. So ports are taken
//! below the kernel's ephemeral range (`ip_local_port_range`), which it never hands out on its
//! own, from a random start per process, never twice in one process, each checked free by
//! binding it.

use std::collections::hash_map::RandomState;
use std::collections::BTreeSet;
use std::hash::{BuildHasher, Hasher};
use std::net::TcpListener;
use std::sync::Mutex;

/// The lowest port considered.
const PORT_MIN: u16 = 10_000;

/// Ports already handed out by this process (a test binary runs its tests in parallel).
static HANDED_OUT: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());

/// The first port of the kernel's ephemeral range (32768 when it cannot be read).
fn ephemeral_port_min() -> u16 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse().ok())
        .unwrap_or(32_768)
}

/// `count` distinct ports on 127.0.0.1 that are free now and that the kernel will not give to
/// anyone who did not ask for them by number.
///
/// # Panics
/// When the range below the ephemeral ports holds fewer than `count` free ports.
pub fn free_ports(count: usize) -> Vec<u16> {
    let end = ephemeral_port_min().max(PORT_MIN + 1);
    let span = u64::from(end - PORT_MIN);
    let start = RandomState::new().build_hasher().finish() % span;
    let mut handed_out = HANDED_OUT.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let mut ports = Vec::with_capacity(count);
    for step in 0..span {
        if ports.len() == count {
            break;
        }
        let port = PORT_MIN + ((start + step) % span) as u16;
        if !handed_out.contains(&port) && TcpListener::bind(("127.0.0.1", port)).is_ok() {
            handed_out.insert(port);
            ports.push(port);
        }
    }
    assert_eq!(ports.len(), count, "no {count} free ports in {PORT_MIN}..{end}");
    ports
}

/// One port, as [`free_ports`].
pub fn free_port() -> u16 {
    free_ports(1)[0]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_distinct_free_and_below_the_ephemeral_range() {
        let ports = free_ports(50);
        let distinct: BTreeSet<u16> = ports.iter().copied().collect();
        assert_eq!(distinct.len(), 50);
        let again: BTreeSet<u16> = free_ports(50).into_iter().collect();
        assert!(distinct.is_disjoint(&again), "a port handed out twice");
        for port in ports {
            assert!(port >= PORT_MIN && port < ephemeral_port_min());
            assert!(TcpListener::bind(("127.0.0.1", port)).is_ok());
        }
    }
}
