//! Fleet by BGP: two balancer hosts announcing the VIP through BIRD to an ECMP router
//! (`lb_tests::fleet_rig`). Announce, spread, drain, undrain, a failed pool, `kill -9`,
//! `shutdown --detach`, and a host lost by BFD with flows keeping their backend.

use lb_tests::{
    fleet_ctl::{assert_clean, load, new_flows},
    fleet_rig::{FleetRig, VIP, vip_addr},
    load::{LoadOptions, LongLived},
};
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

/// `lbctl <args>` against balancer `i`, which must exit 0; its stdout.
fn lbctl(rig: &FleetRig, i: usize, args: &[&str]) -> String {
    let out = rig.balancers[i].lbctl(args).expect("running lbctl");
    assert!(
        out.status.success(),
        "lbctl {args:?} on lb{}: {}\nstdout: {}\nstderr: {}",
        i + 1,
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The `bgp` member of a balancer's status.
fn bgp(rig: &FleetRig, i: usize) -> serde_json::Value {
    rig.balancers[i].status_json().expect("status")["bgp"].clone()
}

/// Watches the router's route for `window` and fails if its next hops ever differ from `want`.
fn route_stays(rig: &FleetRig, want: &[Ipv4Addr], window: Duration, what: &str) {
    let mut want = want.to_vec();
    want.sort();
    let end = Instant::now() + window;
    while Instant::now() < end {
        let mut got = rig.next_hops().unwrap();
        got.sort();
        assert_eq!(got, want, "{what}: the router's route to {VIP} changed");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn announce_drain_undrain_pool_failure_kill9_detach() {
    let mut rig = FleetRig::new("fb").expect("fleet rig");
    let both = rig.balancer_addrs();
    let (lb1, lb2) = (both[0], both[1]);

    // Both announce; the router holds one route with two next hops.
    assert_eq!(rig.next_hops().unwrap().len(), 2);
    for i in 0..2 {
        let b = bgp(&rig, i);
        assert_eq!(b["announced"], serde_json::json!([VIP.to_string()]), "lb{}: {b:#}", i + 1);
        assert_eq!(b["in_sync"], true, "{b:#}");
        assert_eq!(b["drained"], false);
    }

    // Both hosts carry traffic.
    let before = new_flows(&rig);
    let report = load(&rig, 200, 2).wait();
    assert_clean(&report, "spread");
    let after = new_flows(&rig);
    let per_host: Vec<u64> = after.iter().zip(&before).map(|(a, b)| a - b).collect();
    eprintln!("spread over {} connections: lb1 {} lb2 {} new flows", report.len(), per_host[0], per_host[1]);
    assert!(per_host.iter().all(|&n| n > 0), "each host forwarded new flows: {per_host:?}");
    assert_eq!(per_host.iter().sum::<u64>(), report.len() as u64, "every connection crossed one host once");

    // Drain lb1 under load: withdrawn from the router, 0 failed connections.
    let running = load(&rig, 100, 4);
    std::thread::sleep(Duration::from_millis(800));
    let t0 = Instant::now();
    let answer: serde_json::Value =
        serde_json::from_str(&lbctl(&rig, 0, &["-o", "json", "host", "drain"])).expect("host drain JSON");
    let api_ms = t0.elapsed();
    rig.wait_next_hops(&[lb2], Duration::from_secs(5)).expect("lb1 withdrawn");
    let withdraw = t0.elapsed();
    eprintln!(
        "drain: lbctl host drain returned in {api_ms:?}, router down to 1 next hop {withdraw:?} after the request"
    );
    assert_eq!(answer["drained"], true, "{answer:#}");
    assert_eq!(answer["announced"], serde_json::json!([]), "{answer:#}");
    assert_eq!(answer["in_sync"], true, "{answer:#}");
    let why = answer["vips"][0]["why_not"].as_str().unwrap_or_default().to_owned();
    assert!(why.contains("drained"), "{answer:#}");
    let report = running.wait();
    assert_clean(&report, "drain under load");
    // Maintenance keeps forwarding what still arrives, and says what is left.
    let host: serde_json::Value = rig.balancers[0].client().get("/v1/host").unwrap();
    assert!(host["flows_established"].is_u64(), "{host:#}");
    let text = lbctl(&rig, 0, &["host", "status"]);
    assert!(text.starts_with("bgp: DRAINED for maintenance since "), "{text}");
    assert!(text.contains(&format!("{VIP}  web       no ")), "{text}");
    assert!(text.contains("flows left: "), "{text}");
    // The drained host empties: its flows end (the load stopped) and drain --wait returns.
    let text = lbctl(&rig, 0, &["host", "drain", "--wait", "30s"]);
    assert!(text.contains("no established flow left"), "{text}");
    let text = lbctl(&rig, 1, &["status"]);
    assert!(text.contains(&format!("bgp: announcing {VIP} (1 of 1 VIP(s))")), "{text}");
    // A drained host gets no new flows.
    let before = new_flows(&rig);
    assert_clean(&load(&rig, 200, 1).wait(), "after drain");
    let after = new_flows(&rig);
    assert_eq!(after[0], before[0], "a drained host gets no new flows");
    // The drain survives a daemon restart (persisted), and the restart withdraws nothing more.
    let watch = rig.watch_routes().unwrap();
    rig.balancers[0].kill9_daemon().unwrap();
    rig.balancers[0].start_daemon().unwrap();
    route_stays(&rig, &[lb2], Duration::from_secs(2), "restart of a drained host");
    let changes = watch.vip_changes().unwrap();
    assert!(changes.is_empty(), "a drained host's restart announced: {changes:?}");
    assert_eq!(bgp(&rig, 0)["drained"], true);

    // Undrain: back to two next hops, lb1 takes new flows again.
    let t0 = Instant::now();
    let answer: serde_json::Value =
        serde_json::from_str(&lbctl(&rig, 0, &["-o", "json", "host", "undrain"])).expect("host undrain JSON");
    assert_eq!(answer["drained"], false, "{answer:#}");
    rig.wait_next_hops(&both, Duration::from_secs(5)).expect("lb1 announced again");
    eprintln!("undrain: router back to 2 next hops {:?} after the request", t0.elapsed());
    let before = new_flows(&rig);
    assert_clean(&load(&rig, 200, 1).wait(), "after undrain");
    let after = new_flows(&rig);
    assert!(after[0] > before[0] && after[1] > before[1], "both hosts again: {before:?} {after:?}");

    // A reload whose [bgp] BIRD does not take is refused (exit 5) with nothing changed.
    let path = rig.balancers[0].config_path();
    let good = std::fs::read_to_string(&path).unwrap();
    let socket = rig.balancers[0].bird.socket().display().to_string();
    std::fs::write(&path, good.replace(&socket, "/nonexistent/bird.ctl")).unwrap();
    let out = rig.balancers[0].lbctl(&["reload"]).unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(5), "{stderr}");
    assert!(stderr.contains("nothing changed: BIRD did not take the new [bgp] settings"), "{stderr}");
    std::fs::write(&path, good).unwrap();
    assert_eq!(lbctl(&rig, 0, &["reload"]), "config reloaded: nothing changed\n");
    assert_eq!(bgp(&rig, 0)["in_sync"], true);
    rig.wait_next_hops(&both, Duration::from_secs(1)).expect("both still announcing");

    // The active pool fails (both pool-a backends die): both hosts withdraw, saying why.
    rig.backend("a1").stop().unwrap();
    rig.backend("a2").stop().unwrap();
    rig.wait_next_hops(&[], Duration::from_secs(10)).expect("withdrawn when pool-a fails");
    let b = bgp(&rig, 1);
    let why = b["vips"][0]["why_not"].as_str().unwrap_or_default().to_owned();
    assert!(why.contains("pool pool-a has 0 healthy"), "{b:#}");
    rig.backend("a1").start().unwrap();
    rig.wait_next_hops(&both, Duration::from_secs(10)).expect("announced again when pool-a is back");
    rig.backend("a2").start().unwrap();

    // kill -9 does not withdraw: the route never changes (not even for a moment: every route
    // change on the router is recorded) and both hosts keep forwarding (from the pins).
    let watch = rig.watch_routes().unwrap();
    rig.balancers[1].kill9_daemon().unwrap();
    let running = load(&rig, 100, 2);
    route_stays(&rig, &both, Duration::from_secs(2), "kill -9 of lb2's daemon");
    let report = running.wait();
    assert_clean(&report, "with lb2's daemon killed");
    // The restarted daemon adopts the pins and keeps announcing.
    rig.balancers[1].start_daemon().unwrap();
    route_stays(&rig, &both, Duration::from_secs(2), "restart of lb2's daemon");
    assert_eq!(bgp(&rig, 1)["announced"], serde_json::json!([VIP.to_string()]));
    let changes = watch.vip_changes().unwrap();
    assert!(
        changes.is_empty(),
        "the router's route to {VIP} changed across kill -9 and restart: {changes:?}"
    );

    // shutdown --detach withdraws before forwarding stops: the route is gone once it exits,
    // and traffic goes on through lb1 alone.
    let running = load(&rig, 100, 3);
    std::thread::sleep(Duration::from_millis(500));
    rig.balancers[1].shutdown_daemon(true).unwrap();
    rig.wait_next_hops(&[lb1], Duration::from_secs(1)).expect("lb2 withdrawn by its detach");
    assert_clean(&running.wait(), "load across lb2's shutdown --detach");
    assert_clean(&load(&rig, 200, 1).wait(), "after lb2 detached");
    let include = std::fs::read_to_string(rig.balancers[1].include_file()).unwrap();
    assert!(!include.contains("route"), "{include}");
}

#[test]
fn a_host_lost_by_bfd_its_flows_keep_their_backend_on_the_other() {
    let mut rig = FleetRig::new("fl").expect("fleet rig");
    let both = rig.balancer_addrs();
    let lb1 = both[0];

    // Long-lived connections over both hosts, and which backend each talks to.
    let mut conns = LongLived::open(&rig.client, vip_addr(), 40).expect("long-lived connections");
    let first: Vec<String> = conns.ask().into_iter().map(|r| r.expect("answer")).collect();
    let on_lb2: u64 = {
        let host: serde_json::Value = rig.balancers[1].client().get("/v1/host").unwrap();
        host["flows_established"].as_u64().unwrap()
    };
    eprintln!("{} long-lived connections, {on_lb2} recorded by lb2 (those move)", first.len());
    assert!(on_lb2 > 0, "some connections go through lb2");

    // Freeze lb2's BIRD (a hung host: its TCP session stays open, only BFD notices).
    let running = load(&rig, 100, 3);
    std::thread::sleep(Duration::from_millis(500));
    rig.balancers[1].bird.process().signal(libc::SIGSTOP).unwrap();
    let took = rig.wait_next_hops(&[lb1], Duration::from_secs(5)).expect("BFD removes lb2");
    eprintln!("BFD failover: router path through lb2 gone {took:?} after SIGSTOP of its BIRD");
    let report = running.wait();
    assert_clean(&report, "load across the failover");

    // Traffic continues on lb1 alone, and every moved connection kept its backend (no switch
    // happened: both hosts' Maglev tables are identical).
    let before = new_flows(&rig);
    assert_clean(&load(&rig, 200, 1).wait(), "after the failover");
    let after = new_flows(&rig);
    assert!(after[0] > before[0], "lb1 takes the new flows");
    assert_eq!(after[1], before[1], "lb2 gets nothing any more");
    let again: Vec<String> = conns.ask().into_iter().map(|r| r.expect("answer after failover")).collect();
    assert_eq!(again, first, "40/40 long-lived connections kept their backend");

    // lb2 comes back: its hung BIRD is restarted (as an operator would; a BIRD merely resumed
    // after SIGSTOP keeps sending BFD packets of its old session, "mismatched remote id" on the
    // router, and its path flaps for seconds). The new BIRD reads the include file the daemon
    // left, both paths return, and the flows that had moved go back to lb2, which still holds
    // their entries.
    let lb2 = &mut rig.balancers[1];
    lb2.bird.restart(&lb2.ns).unwrap();
    let took = rig.wait_next_hops(&both, Duration::from_secs(20)).expect("lb2 back");
    eprintln!("lb2 announced again {took:?} after its BIRD restarted");
    rig.wait_bfd_up(both[1], Duration::from_secs(10)).expect("BFD with lb2 up again");
    route_stays(&rig, &both, Duration::from_secs(1), "lb2 back and settled");
    let again: Vec<String> = conns.ask().into_iter().map(|r| r.expect("answer after lb2 is back")).collect();
    assert_eq!(again, first, "40/40 kept their backend when lb2 came back");

    // lb1's link goes down under load (lb1, whose BIRD was never frozen: a BIRD resumed after
    // SIGSTOP keeps sending BFD packets of its old session for a while, which the router logs as
    // "mismatched remote id", so lb2's path would not measure BFD alone). BFD removes its path.
    // Only connections that started while the router still sent to lb1 (within one connect
    // timeout before the removal) may fail; the long-lived ones retransmit through lb2 and keep
    // their backend.
    let running = load(&rig, 100, 3);
    std::thread::sleep(Duration::from_millis(500));
    let down_at = running.elapsed();
    rig.balancers[0].ns.ip(&["link", "set", "eth0", "down"]).unwrap();
    let took = rig.wait_next_hops(&[both[1]], Duration::from_secs(5)).expect("BFD removes lb1 on link down");
    let removed_at = down_at + took;
    eprintln!("link down: router path through lb1 gone {took:?} after its link went down");
    let report = running.wait();
    let timeout = LoadOptions::new(vip_addr()).timeout;
    let in_window = report.results.iter().filter(|r| r.at + timeout >= down_at && r.at <= removed_at).count();
    let outside: Vec<_> =
        report.failures().filter(|r| r.at + timeout < down_at || r.at > removed_at).cloned().collect();
    eprintln!(
        "link down under load: {} of {} connections failed ({in_window} started while the router \
         could still send them to lb1's dead link)",
        report.failed(),
        report.len()
    );
    assert!(outside.is_empty(), "failures outside the detection window: {outside:?}\n{}", report.summary());
    let again: Vec<String> = conns.ask().into_iter().map(|r| r.expect("answer after link down")).collect();
    assert_eq!(again, first, "40/40 long-lived connections kept their backend through the link loss");
}
