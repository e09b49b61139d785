//! `lbctl switch --watch` follows the daemon's watch through a daemon restart (issue 9, item 10).
//! The watch is the daemon's: it lives in the state file and a restarted daemon adopts it, so
//! lbctl must keep polling while the daemon is away instead of giving up on the first failed
//! requests, and report how the watch ended (here: an automatic rollback, exit 9).

use lb_daemon::api::model::{Active, ServiceView, WatchState};
use lb_tests::{
    e2e::{in_pool_a, setup, web_vip},
    load::request,
    topology::find_binary,
};
use std::{
    process::{Command, Stdio},
    time::{Duration, Instant},
};

fn web(s: &lb_tests::e2e::Setup) -> ServiceView {
    s.daemon.client().get("/v1/services/web").unwrap()
}

#[test]
fn watch_follows_through_a_daemon_restart_and_reports_the_rollback() {
    let mut s = setup("wrs", "nat").expect("setup");
    let lbctl = find_binary("lbctl", "LB_LBCTL_BIN").unwrap();
    let mut child = Command::new(&lbctl)
        .arg("--socket")
        .arg(s.daemon.socket())
        .args(["--output", "json", "switch", "pool-b", "--watch", "60s"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while web(&s).watch.is_none_or(|w| w.state != WatchState::Watching) {
        assert!(Instant::now() < deadline, "the watch did not start: {:#?}", web(&s));
        std::thread::sleep(Duration::from_millis(50));
    }
    // A second lbctl, in text mode, follows the same watch (pool-b is already active).
    let mut follower = Command::new(&lbctl)
        .arg("--socket")
        .arg(s.daemon.socket())
        .args(["switch", "pool-b", "--watch", "60s"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));

    // The daemon dies and stays away for a few seconds (a restart with a slow start-up).
    s.daemon.kill9().unwrap();
    std::thread::sleep(Duration::from_secs(4));
    if child.try_wait().unwrap().is_some() || follower.try_wait().unwrap().is_some() {
        let _ = (child.kill(), follower.kill());
        let (a, b) = (child.wait_with_output().unwrap(), follower.wait_with_output().unwrap());
        panic!(
            "lbctl gave up while the daemon was restarting: {} / {}\nstderr: {}\nstderr: {}",
            a.status,
            b.status,
            String::from_utf8_lossy(&a.stderr),
            String::from_utf8_lossy(&b.stderr)
        );
    }
    s.daemon.spawn(&s.topo).expect("restart");
    assert!(s.daemon.status().unwrap().adopted, "the restarted daemon adopted the pinned state");
    let w = web(&s).watch.expect("the restarted daemon still holds the watch");
    assert_eq!((w.pool.as_str(), w.state), ("pool-b", WatchState::Watching));

    // The new pool dies: the restarted daemon rolls back, and lbctl reports it with exit 9.
    s.topo.stop_backend("b1").unwrap();
    s.topo.stop_backend("b2").unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        assert!(Instant::now() < deadline, "lbctl --watch did not return after the rollback");
        std::thread::sleep(Duration::from_millis(50));
    };
    let out = child.wait_with_output().unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert_eq!(
        status.code(),
        Some(9),
        "exit code of an automatic rollback\nstdout: {stdout}\nstderr: {stderr}"
    );
    assert!(stderr.contains("rolled back web from pool-b to pool-a automatically"), "{stderr}");
    let doc: serde_json::Value = serde_json::from_str(&stdout).expect("one JSON document");
    assert_eq!(doc["watch"]["state"], "rolled_back", "{doc}");
    assert_eq!(doc["error"]["exit_code"], 9, "{doc}");
    // The text-mode follower says what happened along the way, and ends the same way.
    let out = follower.wait_with_output().unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert_eq!(out.status.code(), Some(9), "follower\nstdout: {stdout}\nstderr: {stderr}");
    for line in [
        "pool-b is already active and watched by lb-daemon until",
        "lost contact with lb-daemon (cannot reach lb-daemon at",
        "trying again for up to 30s",
        "lb-daemon answers again (no answer for",
        "watch of pool-b ended: lb-daemon rolled back to pool-a",
    ] {
        assert!(stdout.contains(line), "{line:?} in\n{stdout}");
    }
    assert_eq!(web(&s).active, Active::Pool("pool-a".into()));
    assert!(in_pool_a(&request(s.topo.client(), web_vip()).unwrap()));
}
