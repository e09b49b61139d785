//! Switch and rollback through the real daemon and lbctl, with real TCP load from the client
//! namespace, in NAT and DSR mode, over IPv4 and IPv6.

use lb_tests::{
    e2e::{SetupOptions, in_pool_a, in_pool_b, setup_with},
    load::{LoadHandle, LoadOptions, request},
};
use std::time::Duration;

fn switch_and_rollback_under_load(mode: &str, v6: bool) {
    let prefix = format!("sw{}{}", &mode[..1], if v6 { 6 } else { 4 });
    let s = setup_with(&prefix, &SetupOptions::new(mode).v6(v6)).expect("setup");
    let vip = s.vip;
    let first = request(s.topo.client(), vip)
        .unwrap_or_else(|e| panic!("first request: {e:#}\ndaemon log:\n{}", s.daemon.log()));
    assert!(in_pool_a(&first), "pool-a serves first");
    let mut opts = LoadOptions::new(vip);
    opts.rate_per_s = 400;
    opts.max_connections = 6000;
    opts.max_duration = Duration::from_secs(12);
    opts.source_addrs = s.sources();
    let load = LoadHandle::start(s.topo.client(), opts).expect("load");
    // Times are on the load's own clock, read right after each command returns.
    std::thread::sleep(Duration::from_millis(700));
    s.daemon.lbctl_ok(&["switch", "pool-b"]);
    let switched = load.elapsed();
    std::thread::sleep(Duration::from_millis(700));
    let rollback_started = load.elapsed();
    s.daemon.lbctl_ok(&["rollback"]);
    let rolled_back = load.elapsed();
    std::thread::sleep(Duration::from_millis(700));
    let report = load.stop();
    // Connections that started after a command returned (and before the next one started) must
    // all follow it.
    let after_switch = report.since(switched).until(rollback_started);
    let after_rollback = report.since(rolled_back);
    assert!(after_switch.len() > 50 && after_rollback.len() > 50, "{}", report.summary());
    for r in &after_switch.results {
        assert!(r.backend.as_deref().is_some_and(in_pool_b), "after switch: {r:?}");
    }
    for r in &after_rollback.results {
        assert!(r.backend.as_deref().is_some_and(in_pool_a), "after rollback: {r:?}");
    }
    assert_eq!(report.failed(), 0, "failed connections: {}", report.summary());
    let by = report.by_backend();
    assert!(["a1", "a2", "b1", "b2"].iter().all(|b| by.get(*b).copied().unwrap_or(0) > 0), "{by:?}");
}

#[test]
fn nat_switch_and_rollback_under_load() {
    switch_and_rollback_under_load("nat", false);
}

#[test]
fn dsr_switch_and_rollback_under_load() {
    switch_and_rollback_under_load("dsr", false);
}

#[test]
fn nat_switch_and_rollback_under_load_ipv6() {
    switch_and_rollback_under_load("nat", true);
}

#[test]
fn dsr_switch_and_rollback_under_load_ipv6() {
    switch_and_rollback_under_load("dsr", true);
}
