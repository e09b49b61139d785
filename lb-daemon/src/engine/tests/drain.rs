//! Issue 9 item 11: `drain-status`, `--wait-drained` and `lb_pool_established_flows` count a
//! flow as established only when it saw a packet within `drain_idle_timeout`; dead flows (no
//! packet for longer, no FIN or RST) are not waited on.

use super::*;
use crate::engine::{drain::FlowCounts, metrics};
use lb_common::maps::{FLOW_ESTABLISHED, FLOW_FIN, FLOW_RST, FLOW_SYNCED, FlowKey, FlowValue, flow_ticks};

/// A connection whose handshake completed.
const E: u8 = FLOW_ESTABLISHED;
use std::time::Duration;

const S: u64 = 1_000_000_000;

/// Puts flows (backend, seconds since the last packet, flags) into the fake flow table, with the
/// data-plane clock at 10,000 s.
fn flows(r: &Rig, list: &[(u32, u64, u8)]) {
    let mut f = r.core.maps.flows.lock().unwrap();
    f.now_ns = 10_000 * S;
    f.flows = list
        .iter()
        .enumerate()
        .map(|(i, &(backend, idle_s, flags))| {
            let key = FlowKey { sport: i as u16, ..FlowKey::default() };
            let last_seen = flow_ticks(f.now_ns - idle_s * S);
            (key, FlowValue { backend: backend as u16, flags, last_seen, ..FlowValue::default() })
        })
        .collect();
}

fn drain(r: &Rig) -> crate::api::model::DrainView {
    let (source, timeouts) = r.core.flow_scan();
    let counts = FlowCounts::scan(source.as_ref(), timeouts).unwrap();
    r.core.drain_view(None, &counts).unwrap()
}

#[test]
fn flows_idle_past_the_configured_timeout_are_not_established() {
    let text = CONFIG.replace("ring_size = 401", "ring_size = 401\ndrain_idle_timeout = \"60s\"");
    let r = Rig::new(&text);
    flows(
        &r,
        &[
            (0, 1, E),                // busy
            (0, 59, E),               // idle, alive
            (1, 61, E),               // dead: its client or balancer host is gone
            (1, 3_000, E),            // long dead
            (1, 2, E | FLOW_FIN),     // closing
            (0, 5_000, E | FLOW_RST), // closed long ago: closing, not established
            (2, 10, E),               // pool-b
        ],
    );
    let d = drain(&r);
    assert_eq!(d.idle_timeout_s, 60);
    assert_eq!(d.flows_scanned, 7);
    let a = &d.pools[0];
    assert_eq!((a.pool.as_str(), a.established, a.closing), ("pool-a", 2, 2));
    let b = &d.pools[1];
    assert_eq!((b.pool.as_str(), b.established, b.closing), ("pool-b", 1, 0));
    // The metric counts the same way.
    let (source, timeouts) = r.core.flow_scan();
    let counts = FlowCounts::scan(source.as_ref(), timeouts).unwrap();
    let text = metrics::render(&r.core.layout, &r.core.state, &r.core.maps, &r.core.down, &counts);
    assert!(text.contains("lb_pool_established_flows{service=\"web\",pool=\"pool-a\"} 2\n"), "{text}");
    assert!(text.contains("lb_pool_established_flows{service=\"web\",pool=\"pool-b\"} 1\n"), "{text}");
}

#[test]
fn the_default_idle_timeout_is_five_minutes() {
    let r = Rig::new(CONFIG);
    assert_eq!(r.core.config.drain_idle_timeout, Duration::from_secs(300));
    flows(&r, &[(0, 299, E), (0, 301, E)]);
    let d = drain(&r);
    assert_eq!((d.idle_timeout_s, d.pools[0].established), (300, 1));
}

#[test]
fn a_drained_pool_is_drained_when_only_dead_flows_are_left() {
    // After a drain switch to pool-b, pool-a keeps 3 flows whose host died: --wait-drained
    // (which waits for established == 0 on the pools without share) must not wait on them.
    let text = CONFIG.replace("ring_size = 401", "ring_size = 401\ndrain_idle_timeout = \"30s\"");
    let mut r = Rig::new(&text);
    r.core.switch(None, &to("pool-b"), "ci").unwrap();
    flows(&r, &[(0, 31, E), (1, 120, E), (1, 45, E), (2, 0, E)]);
    let d = drain(&r);
    let left: u64 = d.pools.iter().filter(|p| p.share == 0).map(|p| p.established).sum();
    assert_eq!(left, 0, "{d:?}");
}

#[test]
fn a_failed_scan_is_an_error_not_a_zero() {
    let r = Rig::new(CONFIG);
    r.core.maps.flows.lock().unwrap().fail = true;
    let (source, timeouts) = r.core.flow_scan();
    assert!(FlowCounts::scan(source.as_ref(), timeouts).is_err());
}

#[test]
fn a_handshake_that_never_completed_stops_counting_after_the_handshake_timeout() {
    let r =
        Rig::new(&CONFIG.replace("ring_size = 401", "ring_size = 401\n[flows]\nhandshake_timeout = \"5s\""));
    // SYN seen 2 s ago (handshake in progress), SYN seen 10 s ago and never ACKed (the data
    // plane ignores that entry now), an established flow idle for 10 s.
    flows(&r, &[(0, 2, 0), (0, 10, 0), (1, 10, E)]);
    let a = &drain(&r).pools[0];
    assert_eq!((a.established, a.closing), (2, 0));
}

#[test]
fn flows_received_from_peers_are_counted_apart() {
    // Issue 12: entries the flow sync wrote (FLOW_SYNCED) are copies of the peers' connections:
    // drain-status, --wait-drained, `host drain --wait` and lb_pool_established_flows count this
    // host's own flows; the copies have their own count, by the same idle rules.
    let text = CONFIG.replace("ring_size = 401", "ring_size = 401\ndrain_idle_timeout = \"60s\"");
    let mut r = Rig::new(&text);
    r.core.switch(None, &to("pool-b"), "ci").unwrap();
    const SY: u8 = FLOW_SYNCED;
    flows(
        &r,
        &[
            (0, 1, E),                 // pool-a, this host's own
            (0, 2, E | SY),            // pool-a, a peer's connection
            (1, 30, E | SY),           // pool-a, a peer's connection
            (1, 61, E | SY),           // a peer's copy idle past the timeout: not counted
            (1, 1, E | SY | FLOW_FIN), // a peer's connection closing: not counted here
            (2, 5, E | SY),            // pool-b, a peer's
            (2, 5, E),                 // pool-b, own
            (3, 5, E | FLOW_FIN),      // pool-b, own, closing
        ],
    );
    let d = drain(&r);
    let a = &d.pools[0];
    assert_eq!((a.pool.as_str(), a.established, a.closing, a.synced), ("pool-a", 1, 0, 2), "{d:?}");
    let b = &d.pools[1];
    assert_eq!((b.pool.as_str(), b.established, b.closing, b.synced), ("pool-b", 1, 1, 1), "{d:?}");
    assert_eq!(d.flows_scanned, 8);

    let (source, timeouts) = r.core.flow_scan();
    let counts = FlowCounts::scan(source.as_ref(), timeouts).unwrap();
    let total = counts.total();
    assert_eq!((total.established, total.closing, total.synced), (2, 1, 3));
    let text = metrics::render(&r.core.layout, &r.core.state, &r.core.maps, &r.core.down, &counts);
    for line in [
        "lb_pool_established_flows{service=\"web\",pool=\"pool-a\"} 1",
        "lb_pool_synced_flows{service=\"web\",pool=\"pool-a\"} 2",
        "lb_pool_established_flows{service=\"web\",pool=\"pool-b\"} 1",
        "lb_pool_synced_flows{service=\"web\",pool=\"pool-b\"} 1",
    ] {
        assert!(text.lines().any(|l| l == line), "{line} not in\n{text}");
    }
}
