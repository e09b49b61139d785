//! A fleet with shared desired state in etcd (`lb_tests::fleet_rig` with etcd): two balancer
//! hosts behind the ECMP router, one switch for all. A switch and a rollback under load with
//! `--wait-fleet`; a flow moved by ECMP keeping its backend; etcd lost and back; two lbctl
//! racing with `--expect-active` against two hosts; an auto-rollback executed by the host that
//! did not hold the watch.

use lb_tests::{
    fleet_ctl::{
        active, assert_clean, describe, fleet_view, lbctl, lbctl_ok, lbctl_spawn, load, new_flows,
        wait_active, wait_in_sync,
    },
    fleet_rig::{FleetOptions, FleetRig, vip_addr},
    load::{LoadReport, LongLived},
};
use std::time::Duration;

/// Longest wait for the fleet to settle (every host in sync) after a start or a reconnect.
const SETTLE: Duration = Duration::from_secs(30);

fn rig(prefix: &str) -> FleetRig {
    FleetRig::with(prefix, FleetOptions { hosts: 2, etcd: true }).expect("fleet rig with etcd")
}

fn established(rig: &FleetRig) -> Vec<u64> {
    rig.balancers
        .iter()
        .map(|b| {
            let host: serde_json::Value = b.client().get("/v1/host").expect("GET /v1/host");
            host["flows_established"].as_u64().unwrap_or(0)
        })
        .collect()
}

/// Backends that answered connections of `report`, as a sorted list of names.
fn backends(report: &LoadReport) -> Vec<String> {
    report.by_backend().into_keys().collect()
}

/// One fleet change under load through host `via`, with `--wait-fleet`: no failed connection,
/// and every connection started after lbctl returned lands in `pool` (its backends are
/// `expect`). Returns lbctl's output.
fn change_under_load(rig: &FleetRig, via: usize, args: &[&str], expect: &[&str]) -> String {
    let running = load(rig, 150, 3);
    std::thread::sleep(Duration::from_millis(700));
    let out = lbctl(&rig.balancers[via], args);
    let returned = running.elapsed();
    assert!(out.status.success(), "lbctl {args:?}: {}", describe(&out));
    let report = running.wait();
    assert_clean(&report, &format!("{args:?} under load"));
    let after = report.since(returned);
    assert!(after.len() > 50, "load went on after lbctl returned: {}", after.summary());
    assert_eq!(
        backends(&after),
        expect,
        "new connections after `lbctl {args:?}` returned: {}",
        after.summary()
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The newest switch to `pool` in `lbctl -o json history` on `b`, once every host's applied
/// mark is there (the marks are written right after applying; bounded wait).
fn fleet_switch_in_history(b: &lb_tests::fleet_rig::Balancer, pool: &str) -> serde_json::Value {
    let deadline = std::time::Instant::now() + SETTLE;
    loop {
        let raw = lbctl_ok(b, &["-o", "json", "history", "--limit", "5"]).unwrap();
        let history: serde_json::Value = serde_json::from_str(&raw).unwrap();
        let switch = history
            .as_array()
            .and_then(|h| h.iter().rev().find(|e| e["kind"] == "switch" && e["to"]["pool"] == pool))
            .cloned()
            .unwrap_or_default();
        let hosts: Vec<&str> = switch["fleet"]["applied"]
            .as_array()
            .map(|a| a.iter().filter_map(|m| m["host"].as_str()).collect())
            .unwrap_or_default();
        if hosts == ["lb1", "lb2"] {
            return switch;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "switch to {pool} not applied by both in history: {history:#}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn fleet_switch_and_rollback_under_load_with_wait_fleet() {
    let mut rig = rig("fe");
    let rev0 = wait_in_sync(&rig, SETTLE).expect("fleet in sync after start");

    // Both hosts carry traffic.
    let before = new_flows(&rig);
    let report = load(&rig, 200, 2).wait();
    assert_clean(&report, "spread");
    let per_host: Vec<u64> = new_flows(&rig).iter().zip(&before).map(|(a, b)| a - b).collect();
    eprintln!("spread over {} connections: {per_host:?} new flows per host", report.len());
    assert!(per_host.iter().all(|&n| n > 0), "each host forwarded new flows: {per_host:?}");
    assert_eq!(backends(&report), ["a1", "a2"]);

    // Long-lived connections over both hosts, on pool-a.
    let mut conns = LongLived::open(&rig.client, vip_addr(), 40).expect("long-lived connections");
    let first: Vec<String> = conns.ask().into_iter().map(|r| r.expect("answer")).collect();
    let est = established(&rig);
    assert!(est.iter().all(|&n| n > 0), "long-lived connections go through every host: {est:?}");

    // The switch through lb1, under load; lbctl returns once both hosts applied it.
    let text = change_under_load(&rig, 0, &["switch", "pool-b", "--wait-fleet", "20s"], &["b1", "b2"]);
    eprintln!("{text}");
    assert!(text.contains("applied on every live host (lb1, lb2)"), "{text}");
    for b in &rig.balancers {
        assert_eq!(active(b).unwrap(), "pool-b", "{}", b.host);
    }
    let rev1 = wait_in_sync(&rig, SETTLE).unwrap();
    assert!(rev1 > rev0, "the switch is a new revision: {rev0} -> {rev1}");
    // Long-lived connections kept their pool-a backend on both hosts (a drain switch).
    let again: Vec<String> = conns.ask().into_iter().map(|r| r.expect("answer after the switch")).collect();
    assert_eq!(again, first, "40/40 long-lived connections kept their backend across the switch");

    // `lbctl status` on lb2 shows the fleet: both hosts, their applied revision, in sync.
    let status = lbctl_ok(&rig.balancers[1], &["status"]).unwrap();
    assert!(status.contains(&format!("applied {rev1}")), "{status}");
    for h in ["lb1", "lb2"] {
        assert!(status.lines().any(|l| l.trim_start().starts_with(h) && l.contains("in sync")), "{status}");
    }
    let json: serde_json::Value =
        serde_json::from_str(&lbctl_ok(&rig.balancers[1], &["-o", "json", "status"]).unwrap()).unwrap();
    assert_eq!(json["fleet"]["hosts"].as_array().map(Vec::len), Some(2), "{json:#}");
    // Both hosts run the same service config: no mismatch flagged.
    assert_eq!(json["fleet"]["config_mismatch"], serde_json::json!([]), "{json:#}");
    assert!(json["fleet"]["config_digest"].as_str().is_some_and(|d| d.starts_with("sha256:")), "{json:#}");

    // The fleet's history on lb2 shows the switch made through lb1, applied by both hosts.
    let switch = fleet_switch_in_history(&rig.balancers[1], "pool-b");
    assert_eq!(switch["fleet"]["via"], "lb1", "{switch:#}");
    let text = lbctl_ok(&rig.balancers[1], &["history"]).unwrap();
    assert!(text.contains("via lb1, applied on: lb1, lb2"), "{text}");

    // The rollback through lb2, the same way.
    let text = change_under_load(&rig, 1, &["rollback", "--wait-fleet", "20s"], &["a1", "a2"]);
    assert!(text.contains("applied on every live host"), "{text}");
    for b in &rig.balancers {
        assert_eq!(active(b).unwrap(), "pool-a", "{}", b.host);
    }
    let again: Vec<String> = conns.ask().into_iter().map(|r| r.expect("answer after the rollback")).collect();
    assert_eq!(again, first, "40/40 long-lived connections kept their backend across the rollback");

    // JSON output of a change with --wait-fleet carries the wait.
    let out = lbctl_ok(&rig.balancers[0], &["-o", "json", "switch", "pool-b", "--wait-fleet"]).unwrap();
    let doc: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(doc["fleet_wait"]["applied"], true, "{doc:#}");
    assert_eq!(doc["fleet_wait"]["hosts"].as_array().map(Vec::len), Some(2), "{doc:#}");
    assert_eq!(doc["revision"], doc["fleet_wait"]["revision"], "{doc:#}");

    // A flow that ECMP moves to another host keeps its backend when no switch happened since it
    // started (every host builds its Maglev table from the same desired state): long-lived
    // connections opened now, then lb2 frozen (its BIRD stopped, BFD withdraws its path).
    let mut fresh = LongLived::open(&rig.client, vip_addr(), 40).expect("long-lived connections");
    let before: Vec<String> = fresh.ask().into_iter().map(|r| r.expect("answer")).collect();
    assert!(established(&rig)[1] > 0, "some connections go through lb2");
    let lb1 = rig.balancers[0].addr;
    rig.balancers[1].bird.process().signal(libc::SIGSTOP).unwrap();
    rig.wait_next_hops(&[lb1], Duration::from_secs(5)).expect("BFD removes lb2");
    let after: Vec<String> = fresh.ask().into_iter().map(|r| r.expect("answer after lb2 is lost")).collect();
    assert_eq!(after, before, "40/40 connections moved to lb1 kept their backend");
}

#[test]
fn etcd_lost_refuses_changes_everywhere_then_resyncs_and_one_racer_wins() {
    let mut rig = rig("fx");
    wait_in_sync(&rig, SETTLE).expect("fleet in sync after start");

    // etcd lost: forwarding goes on, every change is refused with exit 3, nothing applied.
    rig.etcd.as_mut().unwrap().stop();
    let running = load(&rig, 100, 2);
    let out = lbctl(&rig.balancers[0], &["switch", "pool-b"]);
    assert_eq!(out.status.code(), Some(3), "switch with etcd lost: {}", describe(&out));
    let err = String::from_utf8_lossy(&out.stderr).to_lowercase();
    assert!(err.contains("etcd"), "the error says etcd is unreachable: {err}");
    let out = lbctl(&rig.balancers[1], &["rollback"]);
    assert_eq!(out.status.code(), Some(3), "rollback with etcd lost: {}", describe(&out));
    let report = running.wait();
    assert_clean(&report, "forwarding with etcd lost");
    assert_eq!(backends(&report), ["a1", "a2"], "nothing applied anywhere");
    for b in &rig.balancers {
        assert_eq!(active(b).unwrap(), "pool-a", "{}: nothing applied", b.host);
        let v = fleet_view(b).unwrap();
        assert_eq!(v["connected"], false, "{}: {v:#}", b.host);
    }

    // etcd back: every host reconnects and is in sync again; a change works.
    rig.etcd.as_mut().unwrap().restart().expect("etcd back");
    let rev = wait_in_sync(&rig, SETTLE).expect("every host in sync after etcd is back");
    eprintln!("etcd back: every host in sync at revision {rev}");
    for b in &rig.balancers {
        assert_eq!(fleet_view(b).unwrap()["connected"], true, "{}", b.host);
    }

    // Two lbctl against two different hosts with --expect-active pool-a at once: exactly one
    // wins (exit 0), the other gets a conflict (exit 6), and the fleet agrees on the winner.
    for round in 0..3 {
        let (from, to) =
            if round % 2 == 0 { ("pool-a", ["pool-b", "pool-b"]) } else { ("pool-b", ["pool-a", "pool-a"]) };
        let a = lbctl_spawn(
            &rig.balancers[0],
            &["switch", to[0], "--expect-active", from, "--wait-fleet", "10s"],
        );
        let b = lbctl_spawn(
            &rig.balancers[1],
            &["switch", to[1], "--expect-active", from, "--wait-fleet", "10s"],
        );
        let (a, b) = (a.wait_with_output().unwrap(), b.wait_with_output().unwrap());
        let mut codes = [a.status.code(), b.status.code()];
        codes.sort();
        assert_eq!(codes, [Some(0), Some(6)], "round {round}:\nlb1: {}\nlb2: {}", describe(&a), describe(&b));
        wait_in_sync(&rig, SETTLE).unwrap();
        for b in &rig.balancers {
            assert_eq!(active(b).unwrap(), to[0], "round {round}: {}", b.host);
        }
    }
}

#[test]
fn auto_rollback_by_the_other_host_when_the_watching_host_dies() {
    let mut rig = rig("fw");
    wait_in_sync(&rig, SETTLE).expect("fleet in sync after start");

    // lb1 switches to pool-b with a watch; lbctl follows it.
    let follower =
        lbctl_spawn(&rig.balancers[0], &["switch", "pool-b", "--watch", "60s", "--wait-fleet", "10s"]);
    for b in &rig.balancers {
        wait_active(b, "pool-b", Duration::from_secs(10)).unwrap();
    }
    // lb1's daemon dies (its lbctl with it), then pool-b fails.
    rig.balancers[0].kill9_daemon().unwrap();
    let out = follower.wait_with_output().unwrap();
    assert_ne!(out.status.code(), Some(0), "lbctl following the watch lost its daemon: {}", describe(&out));
    rig.backend("b1").stop().unwrap();
    rig.backend("b2").stop().unwrap();

    // lb2 rolls the fleet back.
    let took = wait_active(&rig.balancers[1], "pool-a", Duration::from_secs(20)).expect("lb2 rolls back");
    eprintln!("auto-rollback by lb2 {took:?} after pool-b was killed");
    let running = load(&rig, 100, 1);
    let report = running.wait();
    // lb1's data plane still holds pool-b until its daemon is back: only lb2's share is checked.
    let on_a =
        report.results.iter().filter(|r| r.backend.as_deref().is_some_and(|b| b.starts_with('a'))).count();
    assert!(on_a > 0, "lb2 sends new flows to pool-a: {}", report.summary());

    // lb1's daemon back: it applies the rollback and the fleet is in sync, on pool-a, once.
    rig.balancers[0].start_daemon().unwrap();
    wait_in_sync(&rig, SETTLE).expect("lb1 resyncs");
    for b in &rig.balancers {
        assert_eq!(active(b).unwrap(), "pool-a", "{}", b.host);
    }
    let report = load(&rig, 100, 1).wait();
    assert_clean(&report, "after the rollback");
    assert_eq!(backends(&report), ["a1", "a2"]);
    let history = lbctl_ok(&rig.balancers[1], &["-o", "json", "history"]).unwrap();
    let rollbacks = history.matches("\"rollback").count().max(history.matches("auto").count());
    assert!(rollbacks >= 1, "the history records the automatic rollback: {history}");
}

#[test]
fn the_rig_s_etcd_stops_and_comes_back_on_its_data() {
    use lb_tests::{etcd::Etcd, netns::NetNs};
    let ns = NetNs::new("fe-etcd").expect("namespace");
    ns.ip(&["addr", "add", "10.77.9.5/32", "dev", "lo"]).unwrap();
    let mut etcd = Etcd::start(&ns, "10.77.9.5".parse().unwrap()).expect("etcd starts");
    assert!(etcd.healthy(), "{}", etcd.log());
    assert_eq!(etcd.endpoint(), "http://10.77.9.5:2379");
    etcd.stop();
    assert!(!etcd.running() && !etcd.healthy(), "stopped etcd does not answer");
    etcd.restart().expect("etcd back on the same data");
    assert!(etcd.healthy(), "{}", etcd.log());
}
