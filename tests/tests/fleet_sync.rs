//! Flow sync on the fleet rig (`lb_tests::fleet_rig`: ECMP router, two DSR balancers): the
//! connections a lost host carried keep their backend on the other host after a drain switch
//! (without sync they are re-hashed into the new pool and reset), a hard switch still moves
//! every flow, and hosts that disagree on the epoch never bring a flow back across a hard
//! switch. With etcd and a third host: a host that joins after a drain switch gets its peers'
//! flows by bulk transfer before it announces the VIP, and the connections ECMP then moves onto
//! it keep their backend.

use lb_tests::{
    fleet_ctl::{lbctl_ok, wait_active},
    fleet_rig::{Balancer, CONVERGE_TIMEOUT, FleetOptions, FleetRig, vip_addr},
    load::LongLived,
};
use std::time::Duration;

/// Send interval of the rig's flow sync.
const INTERVAL: Duration = Duration::from_millis(100);

fn counter(rig: &FleetRig, i: usize, name: &str) -> u64 {
    rig.balancers[i].sync_view().expect("status")[name].as_u64().unwrap_or(0)
}

fn pool_of(backend: &str) -> char {
    backend.chars().next().unwrap_or('?')
}

#[test]
fn drained_connections_survive_the_loss_of_their_host() {
    let mut rig = FleetRig::new("fs").expect("fleet rig");
    rig.enable_sync(INTERVAL).expect("flow sync on");
    let both = rig.balancer_addrs();
    // The restarts of enable_sync withdraw and re-announce: wait until the router has both paths.
    rig.wait_next_hops(&both, Duration::from_secs(10)).expect("both hosts announce");

    // Long-lived connections through both hosts, all on pool-a, older than the sync interval.
    let mut conns = LongLived::open(&rig.client, vip_addr(), 200).expect("long-lived connections");
    let first: Vec<String> = conns.ask().into_iter().map(|r| r.expect("answer")).collect();
    assert!(first.iter().all(|b| pool_of(b) == 'a'), "{first:?}");
    std::thread::sleep(10 * INTERVAL);
    let reported: Vec<u64> = (0..2).map(|i| counter(&rig, i, "reported")).collect();
    let inserted: Vec<u64> = (0..2).map(|i| counter(&rig, i, "inserted")).collect();
    eprintln!("reported by lb1, lb2: {reported:?}; inserted by lb1, lb2: {inserted:?}");
    assert!(reported[0] > 0 && reported[1] > 0, "connections through both hosts: {reported:?}");
    assert!(inserted[1] >= reported[0] && inserted[0] >= reported[1], "each host has the other's flows");
    let bytes: u64 = (0..2).map(|i| counter(&rig, i, "bytes_sent")).sum();
    eprintln!(
        "sync traffic: {bytes} bytes sent for {} records over {:?} (pings included)",
        reported[0] + reported[1],
        10 * INTERVAL
    );

    // Drain switch of the fleet (each host, as the rig has no etcd).
    for b in &rig.balancers {
        b.switch("pool-b", false).expect("drain switch");
    }
    let still: Vec<String> = conns.ask().into_iter().map(|r| r.expect("answer after the drain")).collect();
    assert_eq!(still, first, "drain keeps every connection on its backend");

    // lb1 is lost (link down): ECMP moves its connections to lb2.
    rig.balancers[0].ns.ip(&["link", "set", "eth0", "down"]).unwrap();
    rig.wait_next_hops(&[both[1]], Duration::from_secs(5)).expect("BFD removes lb1");
    let after = conns.ask();
    let kept = after.iter().zip(&first).filter(|(a, f)| a.as_ref().ok() == Some(*f)).count();
    eprintln!(
        "host lost after a drain switch: {kept} of {} long-lived connections kept their backend ({:.1}%); \
         {} had gone through lb1",
        first.len(),
        100.0 * kept as f64 / first.len() as f64,
        reported[0]
    );
    assert!(kept * 100 >= first.len() * 99, "at least 99% survive: {kept}/{}", first.len());
    assert!(counter(&rig, 1, "refused_stale_epoch") == 0);

    // A hard switch still moves every flow: pool-a backends never answer a connection again.
    rig.balancers[1].switch("pool-a", true).expect("hard switch to pool-a");
    rig.balancers[1].switch("pool-b", true).expect("hard switch to pool-b");
    let hard = conns.ask();
    let on_a = hard.iter().filter(|r| r.as_ref().is_ok_and(|b| pool_of(b) == 'a')).count();
    eprintln!("after a hard switch: {on_a} of {} connections still answered by pool-a", hard.len());
    assert_eq!(on_a, 0, "a hard switch moves every flow: {hard:?}");
}

#[test]
fn hosts_that_disagree_on_the_epoch_never_resurrect_a_flow() {
    let mut rig = FleetRig::new("fe").expect("fleet rig");
    rig.enable_sync(INTERVAL).expect("flow sync on");
    let both = rig.balancer_addrs();

    // A hard switch applied on lb1 only: lb1 serves pool-b under a new epoch, lb2 pool-a under
    // the old one.
    rig.balancers[0].switch("pool-b", true).expect("hard switch on lb1");
    rig.wait_next_hops(&both, Duration::from_secs(10)).expect("both hosts announce");
    let mut conns = LongLived::open(&rig.client, vip_addr(), 100).expect("long-lived connections");
    let first: Vec<String> = conns.ask().into_iter().map(|r| r.expect("answer")).collect();
    let via_lb2 = first.iter().filter(|b| pool_of(b) == 'a').count();
    eprintln!(
        "{via_lb2} of {} connections through lb2 (pool-a); router next hops {:?}",
        first.len(),
        rig.next_hops()
    );
    assert!(via_lb2 > 0 && via_lb2 < first.len(), "connections through both hosts: {first:?}");
    std::thread::sleep(10 * INTERVAL);
    let refused: Vec<u64> = (0..2).map(|i| counter(&rig, i, "refused_stale_epoch")).collect();
    let inserted: Vec<u64> = (0..2).map(|i| counter(&rig, i, "inserted")).collect();
    eprintln!("epochs differ: refused as stale by lb1, lb2: {refused:?}; inserted: {inserted:?}");
    assert!(refused[0] > 0 && refused[1] > 0, "each host refuses the other's records: {refused:?}");
    assert_eq!(inserted, vec![0, 0], "nothing from another epoch is kept");

    // lb2 is lost: its pool-a connections reach lb1, which must not send them to pool-a (a
    // decision from before lb1's hard switch).
    rig.balancers[1].ns.ip(&["link", "set", "eth0", "down"]).unwrap();
    rig.wait_next_hops(&[both[0]], Duration::from_secs(5)).expect("BFD removes lb2");
    let after = conns.ask();
    let resurrected = after.iter().filter(|r| r.as_ref().is_ok_and(|b| pool_of(b) == 'a')).count();
    eprintln!("lb2 lost: {resurrected} of {via_lb2} old-epoch connections answered by pool-a on lb1");
    assert_eq!(resurrected, 0, "{after:?}");
}

/// Packets host `b` forwarded to the backends of `pool` (its status counters).
fn pool_packets(b: &Balancer, pool: &str) -> u64 {
    let s = b.status().expect("status");
    s.services.iter().flat_map(|s| &s.pools).filter(|p| p.name == pool).map(|p| p.traffic.packets).sum()
}

/// `text` without ANSI colour sequences (tracing colours its fields on a terminal).
fn plain(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// The value of field `name` in a tracing log line (`name=value`).
fn field<'a>(line: &'a str, name: &str) -> Option<&'a str> {
    line.split_whitespace().find_map(|w| w.strip_prefix(name)?.strip_prefix('='))
}

#[test]
fn a_joining_host_gets_the_flows_before_it_announces_and_keeps_moved_connections() {
    let mut rig = FleetRig::with("fj", FleetOptions { hosts: 3, etcd: true }).expect("fleet rig with etcd");
    // Peers from etcd's live hosts; a joining host waits up to a minute for its peers' flows, so
    // only the bulk transfers can make it announce in this test.
    rig.enable_fleet_sync(INTERVAL, Duration::from_secs(60)).expect("flow sync on");
    let all = rig.balancer_addrs();
    rig.wait_next_hops(&all, CONVERGE_TIMEOUT).expect("three hosts announce");

    // lb3 leaves (switched off: withdrawn, detached, its BIRD stopped).
    rig.balancers[2].leave().expect("lb3 leaves");
    rig.wait_next_hops(&all[..2], Duration::from_secs(10)).expect("lb3 withdrawn");

    // Long-lived connections through lb1 and lb2, older than the sync interval, on pool-a.
    let mut conns = LongLived::open(&rig.client, vip_addr(), 300).expect("long-lived connections");
    let first: Vec<String> = conns.ask().into_iter().map(|r| r.expect("answer")).collect();
    assert!(first.iter().all(|b| pool_of(b) == 'a'), "{first:?}");
    std::thread::sleep(10 * INTERVAL);
    let reported: Vec<u64> = (0..2).map(|i| counter(&rig, i, "reported")).collect();
    assert!(reported[0] > 0 && reported[1] > 0, "connections through both hosts: {reported:?}");

    // Drain switch of the fleet: one etcd transaction through lb1, applied by lb1 and lb2.
    lbctl_ok(&rig.balancers[0], &["switch", "pool-b"]).expect("drain switch");
    for b in &rig.balancers[..2] {
        wait_active(b, "pool-b", Duration::from_secs(20)).expect("the switch applied");
    }
    let still: Vec<String> = conns.ask().into_iter().map(|r| r.expect("answer after the drain")).collect();
    assert_eq!(still, first, "drain keeps every connection on its backend");

    // lb3 joins: BIRD and daemon start from nothing (no pins, no flows).
    let log_from = rig.balancers[2].daemon_log().len();
    rig.balancers[2].join().expect("lb3 joins");
    rig.wait_next_hops(&all, CONVERGE_TIMEOUT).expect("lb3 announces");
    wait_active(&rig.balancers[2], "pool-b", Duration::from_secs(20)).expect("lb3 serves the fleet's pool");

    // It announced only after both peers' bulk transfers: in its log the line of each
    // transfer (written before the transfer counts for readiness) precedes the announcement.
    let log = plain(&rig.balancers[2].daemon_log()[log_from..]);
    let lines: Vec<&str> = log.lines().collect();
    let announced = lines
        .iter()
        .position(|l| l.contains("BGP: BIRD reconfigured") && l.contains("added=[10.77.100.1"))
        .unwrap_or_else(|| panic!("no announcement in lb3's log:\n{log}"));
    let mut bulk_flows = 0;
    for peer in &rig.balancers[..2] {
        let addr = peer.sync_addr().to_string();
        let at = lines
            .iter()
            .position(|l| l.contains("bulk transfer from peer received") && field(l, "peer") == Some(&addr))
            .unwrap_or_else(|| panic!("no bulk transfer from {addr} in lb3's log:\n{log}"));
        let flows: u64 = field(lines[at], "flows").and_then(|f| f.parse().ok()).unwrap_or(0);
        eprintln!(
            "lb3: bulk transfer from {addr}: {flows} flows (log line {at}); announced at line {announced}"
        );
        assert!(at < announced, "lb3 announced before the bulk transfer of {addr}:\n{log}");
        bulk_flows += flows;
    }
    let ready = lines.iter().find(|l| l.contains("flow sync ready")).expect("a ready line");
    assert_eq!(field(ready, "timed_out"), Some("false"), "ready by the transfers, not the timeout: {ready}");
    // Each peer holds every connection (its own and the other's, synced).
    assert!(bulk_flows >= first.len() as u64, "{bulk_flows} flows in bulk for {} connections", first.len());

    // ECMP now spreads over three hosts: the connections it moved onto lb3 keep their backend.
    let pool_a_before = pool_packets(&rig.balancers[2], "pool-a");
    let after = conns.ask();
    let kept = after.iter().zip(&first).filter(|(a, f)| a.as_ref().ok() == Some(*f)).count();
    let moved_packets = pool_packets(&rig.balancers[2], "pool-a") - pool_a_before;
    let view = rig.balancers[2].sync_view().expect("lb3 sync view");
    eprintln!(
        "host joined after a drain switch: {kept} of {} long-lived connections kept their backend ({:.1}%); \
         lb3 forwarded {moved_packets} packets of them to pool-a; lb3 sync: inserted {}, refused stale epoch {}, \
         flows {}",
        first.len(),
        100.0 * kept as f64 / first.len() as f64,
        view["inserted"],
        view["refused_stale_epoch"],
        view["flows"]
    );
    assert!(moved_packets > 0, "ECMP moved no connection onto lb3");
    assert!(kept * 100 >= first.len() * 99, "at least 99% survive: {kept}/{}: {after:?}", first.len());
}
