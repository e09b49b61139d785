//! Drain and hard switches seen by long-lived connections (NAT and DSR, IPv4 and IPv6), and the
//! split, through the real daemon.

use lb_daemon::api::model::ServiceView;
use lb_tests::{
    e2e::{SetupOptions, in_pool_a, in_pool_b, setup, setup_with, web_vip},
    load::{LoadHandle, LoadOptions, LongLived},
};
use std::time::Duration;

fn pool_b_packets(view: &ServiceView) -> u64 {
    view.pools.iter().find(|p| p.name == "pool-b").map(|p| p.traffic.packets).unwrap()
}

#[test]
fn nat_drain_keeps_long_lived_connections_and_hard_moves_them() {
    drain_then_hard("nat", false);
}

#[test]
fn dsr_drain_keeps_long_lived_connections_and_hard_moves_them() {
    drain_then_hard("dsr", false);
}

#[test]
fn nat_drain_keeps_long_lived_connections_and_hard_moves_them_ipv6() {
    drain_then_hard("nat", true);
}

#[test]
fn dsr_drain_keeps_long_lived_connections_and_hard_moves_them_ipv6() {
    drain_then_hard("dsr", true);
}

fn drain_then_hard(mode: &str, v6: bool) {
    let prefix = format!("dr{}{}", &mode[..1], if v6 { 6 } else { 4 });
    let s = setup_with(&prefix, &SetupOptions::new(mode).v6(v6)).expect("setup");
    let mut conns = LongLived::open(s.topo.client(), s.vip, 6).expect("long-lived connections");
    let first: Vec<String> = conns.ask().into_iter().map(|r| r.expect("answer")).collect();
    assert!(first.iter().all(|b| in_pool_a(b)), "{first:?}");

    // Drain: every established connection keeps talking to its pool-a backend.
    s.daemon.lbctl_ok(&["switch", "pool-b"]);
    let after_drain: Vec<String> =
        conns.ask().into_iter().map(|r| r.expect("answer after drain switch")).collect();
    assert_eq!(after_drain, first, "6/6 long-lived connections kept their backend");

    // Back to pool-a (drain), then a hard switch to pool-b: the old connections' next packets go
    // to pool-b, whose servers know nothing of them and reset them.
    s.daemon.lbctl_ok(&["switch", "pool-a"]);
    assert_eq!(conns.ask().into_iter().map(|r| r.unwrap()).collect::<Vec<_>>(), first);
    let before: ServiceView = s.daemon.client().get("/v1/services/web").unwrap();
    let out = s.daemon.lbctl_ok(&["--output", "json", "switch", "pool-b", "--hard"]);
    let outcome: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(outcome["mode"], "hard");
    let answers = conns.ask();
    assert!(answers.iter().all(|a| a.is_err()), "pool-b resets the moved connections: {answers:?}");
    let after: ServiceView = s.daemon.client().get("/v1/services/web").unwrap();
    assert!(
        pool_b_packets(&after) >= pool_b_packets(&before) + 6,
        "their packets went to pool-b: {before:#?} {after:#?}"
    );
}

#[test]
fn split_90_10_over_2000_connections() {
    let s = setup("spl", "nat").expect("setup");
    let out = s.daemon.lbctl_ok(&["split", "pool-a=90", "pool-b=10"]);
    assert!(out.contains("pool-a=90"), "{out}");
    let mut opts = LoadOptions::new(web_vip());
    opts.rate_per_s = 0;
    opts.max_connections = 2000;
    opts.max_duration = Duration::from_secs(30);
    opts.source_addrs = s.topo.client_ips(false);
    let report = LoadHandle::start(s.topo.client(), opts).unwrap().wait();
    assert_eq!(report.failed(), 0, "{}", report.summary());
    assert_eq!(report.ok(), 2000);
    let on_a = report.results.iter().filter(|r| r.backend.as_deref().is_some_and(in_pool_a)).count();
    let on_b = report.results.iter().filter(|r| r.backend.as_deref().is_some_and(in_pool_b)).count();
    let pct_a = on_a as f64 * 100.0 / 2000.0;
    assert_eq!(on_a + on_b, 2000);
    assert!((85.0..=95.0).contains(&pct_a), "pool-a got {pct_a:.1}% (want 90 ± 5)");
    // A split keeps each flow on its backend: long-lived connections answer consistently.
    let mut conns = LongLived::open(s.topo.client(), web_vip(), 8).unwrap();
    let a = conns.ask();
    assert_eq!(conns.ask(), a);
    // Switching back to one pool ends the split.
    s.daemon.lbctl_ok(&["switch", "pool-a"]);
    let status: ServiceView = s.daemon.client().get("/v1/services/web").unwrap();
    assert_eq!(status.pools.iter().map(|p| p.share).collect::<Vec<_>>(), vec![100, 0]);
}
