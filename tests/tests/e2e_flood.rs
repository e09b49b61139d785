//! A spoofed SYN flood right after a drain switch, through the real daemon: the long-lived
//! connections still on the old pool keep their backends (flood mode keeps the flood out of the
//! flow table), real new connections keep succeeding, and `/metrics` shows the flood.

use lb_tests::{
    e2e::{SetupOptions, in_pool_a, setup_edited, web_vip},
    flood::{FloodOptions, syn_flood},
    load::{LoadHandle, LoadOptions, LongLived},
};
use std::{
    net::{Ipv4Addr, SocketAddr},
    time::Duration,
};

/// Entries of the flow table in this test (the smallest the config accepts).
const FLOW_TABLE: u32 = 1024;
/// Flood mode engages above this many new connections per second and CPU.
const NEW_FLOW_LIMIT: u32 = 50;
/// Spoofed SYNs: 20 times the flow table.
const FLOOD_SYNS: u32 = 20 * FLOW_TABLE;

#[test]
fn nat_syn_flood_after_a_drain_switch_moves_no_connection() {
    flood_after_drain("nat");
}

#[test]
fn dsr_syn_flood_after_a_drain_switch_moves_no_connection() {
    flood_after_drain("dsr");
}

fn metric(text: &str, name: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|rest| rest.trim().parse::<f64>().ok()))
        .unwrap_or_else(|| panic!("{name} missing from /metrics:\n{text}")) as u64
}

fn flood_after_drain(mode: &str) {
    let s = setup_edited(&format!("fl{}", &mode[..1]), &SetupOptions::new(mode), None, |config| {
        config.replace("flow_table_size = 65536", &format!("flow_table_size = {FLOW_TABLE}"))
            + &format!("\n[flows]\nnew_flow_limit = {NEW_FLOW_LIMIT}\n")
    })
    .expect("setup");
    let client = s.topo.client();
    let mut conns = LongLived::open(client, web_vip(), 6).expect("long-lived connections");
    let first: Vec<String> = conns.ask().into_iter().map(|r| r.expect("answer")).collect();
    assert!(first.iter().all(|b| in_pool_a(b)), "{first:?}");

    // Drain switch: from now on an evicted pool-a flow would be re-hashed into pool-b and reset.
    s.daemon.lbctl_ok(&["switch", "pool-b"]);

    let mut opts = LoadOptions::new(web_vip());
    opts.rate_per_s = 50;
    opts.max_connections = 250;
    opts.max_duration = Duration::from_secs(6);
    opts.source_addrs = s.sources();
    let load = LoadHandle::start(client, opts).expect("real connections");
    std::thread::sleep(Duration::from_millis(500));
    let SocketAddr::V4(target) = web_vip() else { unreachable!() };
    let sent = syn_flood(
        client,
        &FloodOptions {
            target,
            // Inside the test's client subnet, away from the real clients (10.77.1.2..).
            source_base: Ipv4Addr::new(10, 77, 1, 0),
            source_hosts: 100..=250,
            count: FLOOD_SYNS,
            rate_per_s: 8_000,
            seed: 0x5eed_f100d,
        },
    )
    .expect("flood");
    let during = s.daemon.client().get_text("/metrics").unwrap();
    let report = load.wait();
    let after: Vec<Result<String, String>> = conns.ask();
    let text = s.daemon.client().get_text("/metrics").unwrap();
    let not_recorded = metric(&text, "lb_flow_events_total{event=\"flood_not_recorded\"}");
    let flood_mode = metric(&during, "lb_flood_mode");
    eprintln!(
        "{mode}: {sent} spoofed SYNs into a {FLOW_TABLE}-entry table; flood_not_recorded {not_recorded}; \
         lb_flood_mode right after the flood {flood_mode}; real connections {}; long-lived {after:?}",
        report.summary()
    );

    assert!(sent >= 10 * FLOW_TABLE, "the flood was sent: {sent}");
    assert_eq!(
        after.iter().map(|a| a.as_ref().map(String::as_str)).collect::<Vec<_>>(),
        first.iter().map(|b| Ok(b.as_str())).collect::<Vec<_>>(),
        "6/6 long-lived connections neither reset nor moved"
    );
    assert!(
        report.ok() * 100 >= report.len() * 99 && report.len() >= 200,
        "at least 99% of real connections succeed: {}",
        report.summary()
    );
    // All but the few SYNs let through before flood mode engages were not recorded.
    assert!(not_recorded >= u64::from(sent) * 9 / 10, "flood counter {not_recorded} for {sent} SYNs");
    assert!(flood_mode >= 1, "lb_flood_mode while flooded");
}
