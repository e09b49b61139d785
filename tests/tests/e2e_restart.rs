//! The daemon dies (kill -9) or restarts under load: forwarding never stops, the restarted
//! daemon adopts the pinned state, and the active pool is the last one switched to. Also 100
//! switches back and forth under load.

use lb_tests::{
    e2e::{in_pool_a, in_pool_b, setup, web_vip},
    load::{LoadHandle, LoadOptions, LongLived, request},
};
use std::time::Duration;

#[test]
fn kill_9_under_load_loses_nothing_and_restart_adopts() {
    let mut s = setup("k9", "nat").expect("setup");
    s.daemon.lbctl_ok(&["switch", "pool-b"]);
    let mut conns = LongLived::open(s.topo.client(), web_vip(), 6).unwrap();
    let first: Vec<String> = conns.ask().into_iter().map(|r| r.unwrap()).collect();
    assert!(first.iter().all(|b| in_pool_b(b)));
    let mut opts = LoadOptions::new(web_vip());
    opts.rate_per_s = 300;
    opts.max_connections = 3000;
    opts.max_duration = Duration::from_secs(8);
    opts.source_addrs = s.topo.client_ips(false);
    let load = LoadHandle::start(s.topo.client(), opts).unwrap();
    std::thread::sleep(Duration::from_millis(500));
    s.daemon.kill9().unwrap();
    let down_from = load.elapsed();
    std::thread::sleep(Duration::from_millis(1500));
    let down_until = load.elapsed();
    s.daemon.spawn(&s.topo).expect("restart");
    std::thread::sleep(Duration::from_millis(500));
    let report = load.stop();
    let while_down = report.since(down_from).until(down_until);
    assert!(while_down.len() > 200, "{}", while_down.summary());
    assert_eq!(report.failed(), 0, "{}", report.summary());
    assert!(report.results.iter().all(|r| r.backend.as_deref().is_some_and(in_pool_b)));

    let status = s.daemon.status().unwrap();
    assert!(status.adopted, "the restarted daemon adopted the pinned maps");
    let web = &status.services[0];
    assert_eq!(
        web.active,
        lb_daemon::api::model::Active::Pool("pool-b".into()),
        "last switch, not the config's pool-a"
    );
    assert_eq!(conns.ask().into_iter().map(|r| r.unwrap()).collect::<Vec<_>>(), first, "flows survived");
    // The next switch works, and rollback remembers what came before the restart.
    s.daemon.lbctl_ok(&["rollback"]);
    assert!(in_pool_a(&request(s.topo.client(), web_vip()).unwrap()));
    let history = s.daemon.lbctl_ok(&["history"]);
    assert!(history.contains("pool-a") && history.contains("pool-b"), "{history}");
}

#[test]
fn graceful_shutdown_keeps_forwarding_and_detach_stops_it() {
    let mut s = setup("shd", "nat").expect("setup");
    s.daemon.lbctl_ok(&["shutdown"]);
    assert!(s.daemon.wait_exit(Duration::from_secs(10)).unwrap().success());
    assert!(in_pool_a(
        &request(s.topo.client(), web_vip()).expect("forwarding continues after the daemon exits")
    ));
    s.daemon.spawn(&s.topo).unwrap();
    assert!(s.daemon.status().unwrap().adopted);
    // The backends' next hops are managed neighbour entries (one per backend here).
    let managed = || s.topo.balancer().ip(&["neigh", "show", "proto", "248"]).unwrap();
    assert_eq!(managed().lines().filter(|l| l.contains("managed")).count(), 4, "{}", managed());
    s.daemon.lbctl_ok(&["shutdown", "--detach"]);
    assert!(s.daemon.wait_exit(Duration::from_secs(10)).unwrap().success());
    assert!(!s.daemon.pin_dir().exists(), "pins removed");
    assert!(managed().trim().is_empty(), "managed neighbour entries removed: {}", managed());
    assert!(request(s.topo.client(), web_vip()).is_err(), "nothing forwards the VIP any more");
}

#[test]
fn nat_hundred_switches_under_load_fail_nothing() {
    hundred_switches("nat");
}

#[test]
fn dsr_hundred_switches_under_load_fail_nothing() {
    hundred_switches("dsr");
}

fn hundred_switches(mode: &str) {
    let s = setup(&format!("hu{}", &mode[..1]), mode).expect("setup");
    let mut opts = LoadOptions::new(web_vip());
    opts.rate_per_s = 500;
    opts.max_connections = 20_000;
    opts.max_duration = Duration::from_secs(40);
    opts.source_addrs = s.topo.client_ips(false);
    let load = LoadHandle::start(s.topo.client(), opts).unwrap();
    for i in 0..100 {
        s.daemon.lbctl_ok(&["switch", if i % 2 == 0 { "pool-b" } else { "pool-a" }]);
        std::thread::sleep(Duration::from_millis(30));
    }
    let report = load.stop();
    assert!(report.len() > 1000, "{}", report.summary());
    assert_eq!(report.failed(), 0, "{}", report.summary());
    let history: Vec<serde_json::Value> = s.daemon.client().get("/v1/history?limit=1000").unwrap();
    assert_eq!(history.len(), 100);
}
