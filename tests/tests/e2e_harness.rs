//! Tests of the end-to-end harness itself, without a balancer: the balancer namespace only
//! routes (kernel forwarding) between the client and the backends. Needs root.

use lb_tests::{
    load::{LoadHandle, LoadOptions, LongLived, expect_all, request},
    netns::ip,
    topology::{BackendSpec, Topology, TopologyOptions},
};
use std::{
    net::{Ipv4Addr, SocketAddr},
    path::PathBuf,
    time::Duration,
};

fn sa(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn two_backends() -> TopologyOptions {
    TopologyOptions::new(vec![
        BackendSpec::new("a1", Ipv4Addr::new(10, 77, 2, 11), 8080),
        BackendSpec::new("b1", Ipv4Addr::new(10, 77, 2, 21), 8080),
    ])
}

/// Names in `ip netns list` (lines are `name` or `name (id: N)`).
fn netns_list() -> Vec<String> {
    ip(&["netns", "list"])
        .unwrap()
        .lines()
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .collect()
}

#[test]
fn direct_requests_load_and_long_lived_connections() {
    // The test-backend binary found next to the test executable (as other harness users do).
    let mut topo = Topology::new("e2eh", two_backends()).unwrap();
    topo.start_backend("a1").unwrap();
    topo.start_backend("b1").unwrap();

    // TX checksum offload off on both ends of every veth; NAPI (GRO, XDP_PASS) on the balancer's
    // peer.
    let off = |ns: &lb_tests::netns::NetNs, dev: &str| {
        let k = ns.exec("ethtool", &["-k", dev]).unwrap();
        assert!(k.contains("tx-checksumming: off"), "{} {dev}: {k}", ns.name());
        k
    };
    for ns in [topo.client(), topo.balancer(), topo.backend("a1"), topo.backend("b1")] {
        off(ns, "eth0");
    }
    for port in ["p-c", "p-lb", "p-a1", "p-b1"] {
        off(topo.switch(), port);
    }
    assert!(off(topo.switch(), "p-lb").contains("generic-receive-offload: on"));
    assert!(off(topo.balancer(), "eth0").contains("generic-receive-offload: on"));
    assert!(topo.switch().ip(&["link", "show", "p-lb"]).unwrap().contains("prog/xdp"));

    // Straight to a backend, routed by the balancer namespace's kernel.
    assert_eq!(request(topo.client(), sa("10.77.2.11:8080")).unwrap(), "a1");

    let load = LoadHandle::start(
        topo.client(),
        LoadOptions {
            rate_per_s: 200,
            max_connections: 200,
            max_duration: Duration::from_secs(1),
            ..LoadOptions::new(sa("10.77.2.21:8080"))
        },
    )
    .unwrap();
    let report = load.wait();
    assert!(report.len() >= 150, "{}", report.summary());
    assert_eq!(report.failed(), 0, "{}", report.summary());
    assert_eq!(report.by_backend().keys().collect::<Vec<_>>(), ["b1"], "{}", report.summary());
    // Paced: 200/s for at most 1 s.
    assert!(report.results.last().unwrap().at < Duration::from_millis(1100), "{}", report.summary());

    let mut long = LongLived::open(topo.client(), sa("10.77.2.11:8080"), 3).unwrap();
    for _ in 0..2 {
        let answers = long.ask();
        assert_eq!(answers.len(), 3);
        expect_all(&answers, "a1").unwrap();
    }
}

#[test]
fn stopped_backend_fails_new_connections_and_restarts() {
    let mut opts = two_backends();
    opts.backend_bin = Some(PathBuf::from(env!("CARGO_BIN_EXE_test-backend")));
    opts.clients = 2;
    let mut topo = Topology::new("e2eh", opts).unwrap();
    topo.start_backend("a1").unwrap();
    topo.start_backend("b1").unwrap();
    assert_eq!(request(topo.client(), sa("10.77.2.11:8080")).unwrap(), "a1");
    let mut long = LongLived::open(topo.client(), sa("10.77.2.11:8080"), 2).unwrap();
    expect_all(&long.ask(), "a1").unwrap();

    topo.stop_backend("a1").unwrap();
    assert!(!topo.backend_running("a1"));
    let err = request(topo.client(), sa("10.77.2.11:8080")).unwrap_err();
    assert!(format!("{err:#}").contains("refused"), "{err:#}");
    // The load generator records failures instead of panicking.
    let report = LoadHandle::start(
        topo.client(),
        LoadOptions {
            rate_per_s: 100,
            max_connections: 20,
            max_duration: Duration::from_secs(1),
            ..LoadOptions::new(sa("10.77.2.11:8080"))
        },
    )
    .unwrap()
    .wait();
    assert_eq!(report.len(), 20, "{}", report.summary());
    assert_eq!(report.ok(), 0, "{}", report.summary());
    assert!(
        report.failures().all(|r| r.error.as_deref().unwrap().contains("connect")),
        "{}",
        report.summary()
    );
    // Connections to a killed backend are gone too.
    assert!(long.ask().iter().all(|a| a.is_err()));
    // The other backend is unaffected, from both client addresses.
    let report = LoadHandle::start(
        topo.client(),
        LoadOptions {
            rate_per_s: 0,
            max_connections: 100,
            max_duration: Duration::from_secs(2),
            source_addrs: topo.client_ips(false),
            ..LoadOptions::new(sa("10.77.2.21:8080"))
        },
    )
    .unwrap()
    .wait();
    assert_eq!(report.ok(), 100, "{}", report.summary());
    let sockets = topo.client().exec("ss", &["-tan"]).unwrap();
    assert!(sockets.contains("10.77.1.2:") && sockets.contains("10.77.1.3:"), "{sockets}");

    // And a1 comes back.
    topo.start_backend("a1").unwrap();
    assert_eq!(request(topo.client(), sa("10.77.2.11:8080")).unwrap(), "a1");
}

/// A tentative IPv6 address (link-local ones included) holds back the neighbour solicitations
/// that must come from it: right after the topology is built, the first IPv6 DSR SYN would be
/// dropped for want of a resolved next hop. No address of any namespace may be tentative, with
/// or without the router in front of the client.
#[test]
fn no_ipv6_address_is_tentative_once_built() {
    for client_link_mtu in [None, Some(1400)] {
        let mut opts = two_backends();
        opts.dsr_vips = vec![Ipv4Addr::new(10, 77, 100, 1)];
        opts.client_link_mtu = client_link_mtu;
        let topo = Topology::new("e2eh", opts).unwrap();
        for ns in topo.namespace_names() {
            let all = ip(&["-n", &ns, "-6", "addr", "show"]).unwrap();
            assert!(all.contains("scope link"), "{ns} has link-local addresses: {all}");
            let tentative = ip(&["-n", &ns, "-6", "addr", "show", "tentative"]).unwrap();
            assert!(tentative.trim().is_empty(), "tentative addresses in {ns}: {tentative}");
        }
    }
}

#[test]
fn everything_is_gone_after_drop_also_on_panic() {
    let mut opts = two_backends();
    opts.dsr_vips = vec![Ipv4Addr::new(10, 77, 100, 1)];
    let mut topo = Topology::new("e2eh", opts).unwrap();
    topo.start_backend("a1").unwrap();
    topo.start_backend("b1").unwrap();
    let names = topo.namespace_names();
    assert_eq!(names.len(), 5);
    let listed = netns_list();
    for n in &names {
        assert!(listed.contains(n), "{n} missing in {listed:?}");
    }
    // DSR VIP on the backends' lo.
    let addrs = topo.backend("b1").ip(&["-4", "addr", "show", "dev", "lo"]).unwrap();
    assert!(addrs.contains("10.77.100.1/32"), "{addrs}");
    // A tracked child process that is never waited for by the test.
    let child = topo.spawn_in(topo.balancer(), std::process::Command::new("sleep").arg("30")).unwrap();
    let pid = child.id();
    let ns_of =
        |path: &str| std::fs::metadata(path).map(|m| std::os::unix::fs::MetadataExt::ino(&m)).unwrap();
    assert_eq!(
        ns_of(&format!("/proc/{pid}/ns/net")),
        ns_of(&format!("/var/run/netns/{}", topo.balancer().name()))
    );
    let load = LoadHandle::start(
        topo.client(),
        LoadOptions {
            rate_per_s: 50,
            max_duration: Duration::from_secs(5),
            ..LoadOptions::new(sa("10.77.2.21:8080"))
        },
    )
    .unwrap();
    std::thread::sleep(Duration::from_millis(200));
    assert!(load.snapshot() > 0);
    drop(load);
    drop(topo);
    let listed = netns_list();
    for n in &names {
        assert!(!listed.contains(n), "{n} still in {listed:?}");
    }
    assert!(!std::path::Path::new(&format!("/proc/{pid}")).exists(), "tracked child {pid} still exists");
    drop(child);

    // The same when a test panics with the topology alive.
    let names = std::sync::Mutex::new(Vec::new());
    let outcome = std::panic::catch_unwind(|| {
        let mut topo = Topology::new("e2eh", two_backends()).unwrap();
        topo.start_backend("a1").unwrap();
        *names.lock().unwrap() = topo.namespace_names();
        panic!("test failure with the topology alive");
    });
    assert!(outcome.is_err());
    let names = names.into_inner().unwrap();
    assert_eq!(names.len(), 5);
    let listed = netns_list();
    for n in &names {
        assert!(!listed.contains(n), "{n} still in {listed:?} after a panic");
    }
}
