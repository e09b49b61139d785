//! Path MTU discovery through a VIP (issue 9, item 12), end to end: the client sits behind a
//! router whose link toward it has a 1400-byte MTU (the client's own end keeps 1500, so its MSS
//! promises more than the path carries). The backend's full-size segments reach the router,
//! which answers the VIP with ICMP "fragmentation needed" / ICMPv6 "packet too big". Unless the
//! balancer sends that error on to the backend, the backend never learns the path MTU and the
//! client receives nothing of a response larger than the MTU. NAT and DSR, IPv4 and IPv6.

use lb_tests::e2e::{SetupOptions, in_pool_a, setup_with};
use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    time::{Duration, Instant},
};

/// Size of the response: many segments, each larger than the 1400-byte link.
const RESPONSE: usize = 300_000;
/// The small link's MTU.
const MTU: u32 = 1400;

/// Asks `vip` for `RESPONSE` bytes; returns how many arrived within `limit` and the backend
/// name line if the whole response arrived.
fn download(vip: SocketAddr, limit: Duration) -> (usize, Option<String>) {
    let deadline = Instant::now() + limit;
    let Ok(mut stream) = TcpStream::connect_timeout(&vip, Duration::from_secs(2)) else {
        return (0, None);
    };
    if stream.write_all(format!("bytes {RESPONSE}\n").as_bytes()).is_err() {
        return (0, None);
    }
    let mut got = Vec::with_capacity(RESPONSE + 64);
    let mut chunk = [0u8; 65536];
    loop {
        if got.len() > RESPONSE && got.ends_with(b"\n") {
            let name = String::from_utf8_lossy(&got[RESPONSE..got.len() - 1]).into_owned();
            return (RESPONSE, Some(name));
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() || stream.set_read_timeout(Some(left)).is_err() {
            break;
        }
        match stream.read(&mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => got.extend_from_slice(&chunk[..n]),
        }
    }
    (got.len().min(RESPONSE), None)
}

fn large_response_through_small_mtu(mode: &str, v6: bool) {
    let prefix = format!("pm{}{}", &mode[..1], if v6 { 6 } else { 4 });
    let mut opts = SetupOptions::new(mode).v6(v6);
    opts.client_link_mtu = Some(MTU);
    let s = setup_with(&prefix, &opts).expect("setup");
    let (received, name) = s.topo.client().run_in(|| download(s.vip, Duration::from_secs(10))).unwrap();
    assert_eq!(
        received,
        RESPONSE,
        "{mode} {}: {received} of {RESPONSE} bytes arrived through the {MTU}-byte link",
        if v6 { "IPv6" } else { "IPv4" }
    );
    let name = name.expect("the name line after the response");
    assert!(in_pool_a(&name), "answered by {name:?}");
}

#[test]
fn nat_large_response_through_a_smaller_mtu() {
    large_response_through_small_mtu("nat", false);
}

#[test]
fn dsr_large_response_through_a_smaller_mtu() {
    large_response_through_small_mtu("dsr", false);
}

#[test]
fn nat_large_response_through_a_smaller_mtu_ipv6() {
    large_response_through_small_mtu("nat", true);
}

#[test]
fn dsr_large_response_through_a_smaller_mtu_ipv6() {
    large_response_through_small_mtu("dsr", true);
}
