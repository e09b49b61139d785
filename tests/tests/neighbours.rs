//! The daemon's neighbour keeper on a real kernel: the next hop of every backend becomes a
//! managed entry that the kernel resolves by itself, hand-set entries are left alone, and the
//! keeper cleans up after itself.

use lb_daemon::neighbours::{NeighbourKeeper, PROTOCOL};
use lb_tests::netns::NetNs;
use std::{
    collections::BTreeSet,
    io::ErrorKind,
    net::{IpAddr, SocketAddr, TcpStream},
    time::{Duration, Instant},
};

/// Two namespaces on one veth: `lb` (10.66.0.1/24 and fd66::1/64, default route via
/// 10.66.0.254, which nobody answers) and `peer` (10.66.0.2/24, 10.66.0.3/24 and fd66::2/64).
struct Pair {
    lb: NetNs,
    _peer: NetNs,
}

fn pair() -> Pair {
    let lb = NetNs::new("nbl").unwrap();
    let peer = NetNs::new("nbp").unwrap();
    lb.ip(&["link", "add", "v0", "type", "veth", "peer", "name", "v1", "netns", peer.name()]).unwrap();
    lb.ip(&["addr", "add", "10.66.0.1/24", "dev", "v0"]).unwrap();
    lb.ip(&["addr", "add", "fd66::1/64", "dev", "v0", "nodad"]).unwrap();
    lb.ip(&["link", "set", "v0", "up"]).unwrap();
    lb.ip(&["route", "add", "default", "via", "10.66.0.254"]).unwrap();
    for a in ["10.66.0.2/24", "10.66.0.3/24"] {
        peer.ip(&["addr", "add", a, "dev", "v1"]).unwrap();
    }
    peer.ip(&["addr", "add", "fd66::2/64", "dev", "v1", "nodad"]).unwrap();
    peer.ip(&["link", "set", "v1", "up"]).unwrap();
    // A fresh link loses its first IPv6 neighbour solicitations (the entry then takes ~2 s):
    // wait until the peer answers over IPv6 (a refused connection is an answer), then forget
    // what that taught the kernel.
    let peer6: SocketAddr = "[fd66::2]:9".parse().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while lb
        .run_in(|| TcpStream::connect_timeout(&peer6, Duration::from_millis(500)))
        .unwrap()
        .err()
        .map(|e| e.kind())
        != Some(ErrorKind::ConnectionRefused)
    {
        assert!(Instant::now() < deadline, "the peer never answered over IPv6");
        std::thread::sleep(Duration::from_millis(50));
    }
    lb.ip(&["neigh", "flush", "dev", "v0"]).unwrap();
    lb.ip(&["-6", "neigh", "flush", "dev", "v0"]).unwrap();
    Pair { lb, _peer: peer }
}

fn addrs(list: &[&str]) -> BTreeSet<IpAddr> {
    list.iter().map(|a| a.parse().unwrap()).collect()
}

/// `ip [-6] neigh show proto 248` in the namespace, one line per entry.
fn ours(ns: &NetNs, family: &str) -> Vec<String> {
    ns.ip(&[family, "neigh", "show", "proto", &PROTOCOL.to_string()])
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect()
}

#[test]
fn backends_next_hops_become_managed_and_resolve() {
    let p = pair();
    let keeper = NeighbourKeeper::new();
    let (report, pending) =
        p.lb.run_in(|| {
            let report = keeper.keep(&addrs(&["10.66.0.2", "10.66.0.3", "10.66.0.1", "fd66::2"])).unwrap();
            (report, keeper.wait_resolved(Duration::from_secs(3)).unwrap())
        })
        .unwrap();
    assert_eq!(report.created, 3, "{report:?}");
    assert_eq!(report.problems.len(), 1, "the local address has no neighbour: {report:?}");
    assert!(pending.is_empty(), "the peer answers ARP and neighbour discovery: {pending:?}");
    let v4 = ours(&p.lb, "-4");
    assert_eq!(v4.len(), 2, "{v4:?}");
    let v6 = ours(&p.lb, "-6");
    assert_eq!(v6.len(), 1, "{v6:?}");
    assert!(v4.iter().chain(&v6).all(|l| l.contains("managed") && l.contains("lladdr")), "{v4:?} {v6:?}");

    // Idempotent: a second pass changes nothing.
    let again = p.lb.run_in(|| keeper.keep(&addrs(&["10.66.0.2", "10.66.0.3", "fd66::2"])).unwrap()).unwrap();
    assert_eq!((again.created, again.removed), (0, 0), "{again:?}");

    // An operator's flush is repaired by the next pass.
    p.lb.ip(&["-4", "neigh", "flush", "dev", "v0"]).unwrap();
    let repaired =
        p.lb.run_in(|| keeper.keep(&addrs(&["10.66.0.2", "10.66.0.3", "fd66::2"])).unwrap()).unwrap();
    assert_eq!(repaired.created, 2, "{repaired:?}");

    // Backends leaving the config take their entries with them.
    let shrunk = p.lb.run_in(|| keeper.keep(&addrs(&["10.66.0.2"])).unwrap()).unwrap();
    assert_eq!(shrunk.removed, 2, "{shrunk:?}");
    let v4 = ours(&p.lb, "-4");
    assert_eq!(v4.len(), 1, "{v4:?}");
    assert!(v4[0].starts_with("10.66.0.2 "), "{v4:?}");
    assert!(ours(&p.lb, "-6").is_empty());

    // Detaching removes the rest.
    assert_eq!(p.lb.run_in(|| keeper.release().unwrap()).unwrap(), 1);
    assert!(ours(&p.lb, "-4").is_empty());
}

#[test]
fn routed_backends_keep_their_gateway_and_hand_set_entries_stay() {
    let p = pair();
    // The operator pinned 10.66.0.2 by hand.
    p.lb.ip(&[
        "neigh",
        "replace",
        "10.66.0.2",
        "lladdr",
        "02:00:00:00:00:02",
        "dev",
        "v0",
        "nud",
        "permanent",
    ])
    .unwrap();
    let keeper = NeighbourKeeper::new();
    let (report, pending) =
        p.lb.run_in(|| {
            let report = keeper.keep(&addrs(&["10.66.0.2", "192.0.2.10", "192.0.2.11"])).unwrap();
            (report, keeper.wait_resolved(Duration::from_millis(300)).unwrap())
        })
        .unwrap();
    assert!(report.problems.is_empty(), "{report:?}");
    assert_eq!(
        report.created, 1,
        "one gateway for both routed backends, the static entry untouched: {report:?}"
    );
    let gateway: IpAddr = "10.66.0.254".parse().unwrap();
    assert_eq!(
        pending.iter().map(|h| h.addr).collect::<Vec<_>>(),
        vec![gateway],
        "nobody answers for the gateway"
    );
    let all = p.lb.ip(&["neigh", "show", "dev", "v0"]).unwrap();
    assert!(all.contains("10.66.0.2 lladdr 02:00:00:00:00:02 PERMANENT"), "{all}");
    let v4 = ours(&p.lb, "-4");
    assert_eq!(v4.len(), 1, "{v4:?}");
    assert!(v4[0].starts_with("10.66.0.254 "), "{v4:?}");
    // The route going away for a while (a flapping uplink) keeps the gateway's entry.
    p.lb.ip(&["route", "del", "default"]).unwrap();
    let routeless =
        p.lb.run_in(|| keeper.keep(&addrs(&["10.66.0.2", "192.0.2.10", "192.0.2.11"])).unwrap()).unwrap();
    assert_eq!(routeless.problems.len(), 2, "{routeless:?}");
    assert_eq!(routeless.removed, 0, "{routeless:?}");
    assert_eq!(ours(&p.lb, "-4").len(), 1);
    // Releasing leaves the hand-set entry alone.
    assert_eq!(p.lb.run_in(|| keeper.release().unwrap()).unwrap(), 1);
    assert!(p.lb.ip(&["neigh", "show", "dev", "v0"]).unwrap().contains("PERMANENT"));
}
