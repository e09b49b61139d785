//! Deployment safety through the real daemon and lbctl: health checks take dead backends out,
//! switches to unhealthy pools are refused unless forced, the daemon rolls back by itself
//! during `--watch` (also when lbctl dies), `--wait-drained`, `--expect-active`, and the CI step
//! script the README shows.

use lb_daemon::api::model::{Active, HistoryKind, ServiceView};
use lb_tests::{
    e2e::{in_pool_a, setup, web_vip},
    load::{LoadHandle, LoadOptions, LongLived},
    topology::find_binary,
};
use std::{
    process::{Command, Stdio},
    time::{Duration, Instant},
};

fn web(s: &lb_tests::e2e::Setup) -> ServiceView {
    s.daemon.client().get("/v1/services/web").unwrap()
}

/// Waits until `cond` holds for the service view, at most `timeout`.
fn wait_for(s: &lb_tests::e2e::Setup, timeout: Duration, what: &str, cond: impl Fn(&ServiceView) -> bool) {
    let deadline = Instant::now() + timeout;
    loop {
        let v = web(s);
        if cond(&v) {
            return;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}: {v:#?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn healthy(v: &ServiceView, pool: &str) -> u32 {
    v.pools.iter().find(|p| p.name == pool).unwrap().healthy
}

#[test]
fn killed_backend_leaves_the_table_and_new_connections_stop_failing() {
    let mut s = setup("hck", "nat").expect("setup");
    let mut opts = LoadOptions::new(web_vip());
    opts.rate_per_s = 300;
    opts.max_connections = 5000;
    opts.max_duration = Duration::from_secs(8);
    opts.source_addrs = s.topo.client_ips(false);
    let load = LoadHandle::start(s.topo.client(), opts).unwrap();
    std::thread::sleep(Duration::from_millis(500));
    s.topo.stop_backend("a1").unwrap();
    let killed = load.elapsed();
    // fall (2) x interval (200 ms) plus one timeout: gone from the table by then.
    wait_for(&s, Duration::from_secs(3), "a1 marked down", |v| healthy(v, "pool-a") == 1);
    let detected = load.elapsed();
    std::thread::sleep(Duration::from_millis(1500));
    let report = load.stop();
    assert!(detected - killed < Duration::from_millis(1500), "detected after {:?}", detected - killed);
    let after = report.since(detected + Duration::from_millis(100));
    assert!(after.len() > 200, "{}", after.summary());
    assert_eq!(after.failed(), 0, "new connections after a1 left the table: {}", after.summary());
    assert!(after.results.iter().all(|r| r.backend.as_deref() == Some("a2")));
    let v = web(&s);
    let a1 = &v.pools[0].backends[0];
    assert!(!a1.up && a1.last_error.is_some(), "{a1:?}");
    // It comes back when it is healthy again (rise 2).
    s.topo.start_backend("a1").unwrap();
    wait_for(&s, Duration::from_secs(3), "a1 back up", |v| healthy(v, "pool-a") == 2);
}

#[test]
fn switch_to_a_dead_pool_is_refused_unless_forced() {
    let mut s = setup("ref", "nat").expect("setup");
    s.topo.stop_backend("b1").unwrap();
    s.topo.stop_backend("b2").unwrap();
    wait_for(&s, Duration::from_secs(3), "pool-b down", |v| healthy(v, "pool-b") == 0);
    let out = s.daemon.lbctl(&["switch", "pool-b"]);
    assert_eq!(out.status.code(), Some(5), "refused: exit 5");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("10.77.2.21:8080") && err.contains("10.77.2.22:8080") && err.contains("--force"),
        "{err}"
    );
    assert_eq!(web(&s).active, Active::Pool("pool-a".into()));
    // A dry run of a forced switch says what would happen and changes nothing.
    let out = s.daemon.lbctl_ok(&["--output", "json", "switch", "pool-b", "--force", "--dry-run"]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!((v["dry_run"].as_bool(), v["changed"].as_bool()), (Some(true), Some(true)));
    assert_eq!(web(&s).active, Active::Pool("pool-a".into()));
    assert!(s.daemon.client().get::<Vec<serde_json::Value>>("/v1/history").unwrap().is_empty());
    let out = s.daemon.lbctl_ok(&["--output", "json", "switch", "pool-b", "--force"]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert!(!v["warnings"].as_array().unwrap().is_empty());
    assert_eq!(web(&s).active, Active::Pool("pool-b".into()));
}

fn lbctl_bin() -> std::path::PathBuf {
    find_binary("lbctl", "LB_LBCTL_BIN").unwrap()
}

#[test]
fn watch_rolls_back_when_the_new_pool_dies() {
    let mut s = setup("wat", "nat").expect("setup");
    let mut child = Command::new(lbctl_bin())
        .arg("--socket")
        .arg(s.daemon.socket())
        .args(["switch", "pool-b", "--watch", "30s"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for(&s, Duration::from_secs(5), "pool-b active", |v| v.active == Active::Pool("pool-b".into()));
    s.topo.stop_backend("b1").unwrap();
    s.topo.stop_backend("b2").unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        assert!(Instant::now() < deadline, "lbctl --watch did not return");
        std::thread::sleep(Duration::from_millis(50));
    };
    let out = child.wait_with_output().unwrap();
    assert_eq!(
        status.code(),
        Some(9),
        "auto-rollback exit code; stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("pool-b"));
    assert_eq!(web(&s).active, Active::Pool("pool-a".into()));
    assert!(in_pool_a(&lb_tests::load::request(s.topo.client(), web_vip()).unwrap()));
    let history: Vec<lb_daemon::api::model::HistoryEntry> = s.daemon.client().get("/v1/history").unwrap();
    let last = history.last().unwrap();
    assert_eq!(last.kind, HistoryKind::AutoRollback);
    assert!(last.reason.as_deref().unwrap_or("").contains("min_healthy"), "{last:?}");
}

#[test]
fn watch_holds_when_lbctl_is_killed() {
    let mut s = setup("wak", "nat").expect("setup");
    let mut child = Command::new(lbctl_bin())
        .arg("--socket")
        .arg(s.daemon.socket())
        .args(["switch", "pool-b", "--watch", "30s"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for(&s, Duration::from_secs(5), "pool-b active", |v| v.active == Active::Pool("pool-b".into()));
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(web(&s).watch.is_some_and(|w| w.state == lb_daemon::api::model::WatchState::Watching));
    s.topo.stop_backend("b1").unwrap();
    s.topo.stop_backend("b2").unwrap();
    wait_for(&s, Duration::from_secs(5), "daemon rolled back by itself", |v| {
        v.active == Active::Pool("pool-a".into())
    });
    let w = web(&s).watch.unwrap();
    assert_eq!(w.state, lb_daemon::api::model::WatchState::RolledBack);
}

#[test]
fn wait_drained_returns_when_the_old_pool_empties() {
    let s = setup("wdr", "nat").expect("setup");
    let conns = LongLived::open(s.topo.client(), web_vip(), 4).unwrap();
    // Too short a wait fails with the count.
    let out = s.daemon.lbctl(&["switch", "pool-b", "--wait-drained", "1s"]);
    assert_eq!(out.status.code(), Some(8), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains('4'), "{}", String::from_utf8_lossy(&out.stderr));
    let drain: serde_json::Value = s.daemon.client().get("/v1/services/web/drain").unwrap();
    assert_eq!(drain["pools"][0]["established"], 4, "{drain}");
    // Now wait for real while the long-lived connections close.
    s.daemon.lbctl_ok(&["switch", "pool-a"]);
    let mut waiter = Command::new(lbctl_bin())
        .arg("--socket")
        .arg(s.daemon.socket())
        .args(["switch", "pool-b", "--wait-drained", "20s"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1000));
    assert!(waiter.try_wait().unwrap().is_none(), "still waiting while connections are open");
    drop(conns);
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(st) = waiter.try_wait().unwrap() {
            break st;
        }
        assert!(Instant::now() < deadline, "--wait-drained did not return after the connections closed");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success());
}

#[test]
fn expect_active_loses_cleanly_to_a_concurrent_switch() {
    let s = setup("cas", "nat").expect("setup");
    // Two pipelines race from the same starting point; exactly one wins.
    let spawn =
        |args: &[&str]| Command::new(lbctl_bin()).arg("--socket").arg(s.daemon.socket()).args(args).output();
    let (a, b) = std::thread::scope(|sc| {
        let a = sc.spawn(|| spawn(&["switch", "pool-b", "--expect-active", "pool-a"]).unwrap());
        let b =
            sc.spawn(|| spawn(&["split", "pool-a=50", "pool-b=50", "--expect-active", "pool-a"]).unwrap());
        (a.join().unwrap(), b.join().unwrap())
    });
    let codes = [a.status.code(), b.status.code()];
    assert!(codes.contains(&Some(0)) && codes.contains(&Some(6)), "one wins, one gets 6: {codes:?}");
    let history: Vec<serde_json::Value> = s.daemon.client().get("/v1/history").unwrap();
    assert_eq!(history.len(), 1, "only the winner changed anything");
    let loser = if a.status.code() == Some(6) { &a } else { &b };
    assert!(String::from_utf8_lossy(&loser.stderr).contains("expected pool-a"));
}

#[test]
fn ci_step_script_passes_and_fails_the_pipeline_on_auto_rollback() {
    let mut s = setup("cis", "nat").expect("setup");
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/ci-switch.sh");
    let run = |new: &str, current: &str, watch: &str| {
        Command::new("bash")
            .arg(&script)
            .env("NEW_POOL", new)
            .env("CURRENT_POOL", current)
            .env("WATCH", watch)
            .env("WAIT", "10s")
            .env("LBCTL", lbctl_bin())
            .env("LB_SOCKET", s.daemon.socket())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    // Some traffic so that --wait sees new flows on the new pool.
    let mut opts = LoadOptions::new(web_vip());
    opts.rate_per_s = 100;
    opts.max_connections = 3000;
    opts.max_duration = Duration::from_secs(20);
    let load = LoadHandle::start(s.topo.client(), opts).unwrap();
    let ok = run("pool-b", "pool-a", "2s").wait_with_output().unwrap();
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));
    // Deploy "broken" pool-a and switch to it: the watch catches it, the pipeline fails with 9.
    let child = run("pool-a", "pool-b", "20s");
    wait_for(&s, Duration::from_secs(5), "pool-a active", |v| v.active == Active::Pool("pool-a".into()));
    std::thread::sleep(Duration::from_millis(300));
    s.topo.stop_backend("a1").unwrap();
    s.topo.stop_backend("a2").unwrap();
    let failed = child.wait_with_output().unwrap();
    assert_eq!(failed.status.code(), Some(9), "{}", String::from_utf8_lossy(&failed.stderr));
    assert!(String::from_utf8_lossy(&failed.stderr).contains("rolled back"));
    assert_eq!(web(&s).active, Active::Pool("pool-b".into()));
    let _ = load.stop();
}
