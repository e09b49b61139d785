//! Flow sync on the fleet rig (`lb_tests::fleet_rig`: ECMP router, two DSR balancers): the
//! connections a lost host carried keep their backend on the other host after a drain switch
//! (without sync they are re-hashed into the new pool and reset), a hard switch still moves
//! every flow, and hosts that disagree on the epoch never bring a flow back across a hard
//! switch.

use lb_tests::{
    fleet_rig::{FleetRig, vip_addr},
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
