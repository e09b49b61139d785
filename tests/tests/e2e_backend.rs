//! `lbctl backend drain|disable|enable|weight` through the real daemon and lbctl (issue 13,
//! item 1): a drained backend gets no new connection while its established ones stay, a
//! disabled one loses its established ones too, enable brings it back, a weight shifts the
//! share, a change below min_healthy is refused with exit 5 unless --force, and the history
//! names the user from the socket's peer credentials. Also the logs of item 5: the API's
//! spelling of values, and a refused `lbctl reload` logged.

use lb_daemon::api::model::{BackendAdmin, HistoryEntry, HistoryKind, ServiceView};
use lb_tests::{
    e2e::{Setup, setup},
    load::{LoadHandle, LoadOptions, LoadReport, LongLived},
};
use std::time::Duration;

const A1: &str = "10.77.2.11:8080";
const A2: &str = "10.77.2.12:8080";

fn web(s: &Setup) -> ServiceView {
    s.daemon.client().get("/v1/services/web").unwrap()
}

/// `n` new connections at a bounded rate (at most 10 s), all answered.
fn connections(s: &Setup, n: u32) -> LoadReport {
    let mut opts = LoadOptions::new(s.vip);
    opts.rate_per_s = 200;
    opts.max_connections = n;
    opts.max_duration = Duration::from_secs(10);
    opts.source_addrs = s.sources();
    let report = LoadHandle::start(s.topo.client(), opts).unwrap().wait();
    assert_eq!(report.len(), n as usize, "{}", report.summary());
    report
}

fn count(report: &LoadReport, backend: &str) -> u32 {
    report.by_backend().get(backend).copied().unwrap_or(0)
}

/// The name of this process's uid: what the daemon records as the user of lbctl's requests.
fn me() -> String {
    let uid = nix::unistd::getuid();
    nix::unistd::User::from_uid(uid).unwrap().map(|u| u.name).unwrap_or(format!("uid:{uid}"))
}

#[test]
fn drain_disable_enable_weight_and_the_min_healthy_refusal() {
    let s = setup("bkc", "nat").expect("setup");
    // Established connections on both pool-a backends (20 connections: all on one backend
    // has a chance of 2^-19).
    let mut long = LongLived::open(s.topo.client(), s.vip, 20).unwrap();
    let before: Vec<String> = long.ask().into_iter().map(|a| a.unwrap()).collect();
    assert!(before.iter().any(|b| b == "a1") && before.iter().any(|b| b == "a2"), "{before:?}");

    // Drain a1 under load: no new connection reaches it, established ones keep it.
    let mut opts = LoadOptions::new(s.vip);
    opts.rate_per_s = 200;
    opts.max_connections = 600;
    opts.max_duration = Duration::from_secs(10);
    opts.source_addrs = s.sources();
    let load = LoadHandle::start(s.topo.client(), opts).unwrap();
    while load.snapshot() < 100 && !load.is_finished() {
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = s.daemon.lbctl_ok(&["backend", "drain", A1]);
    assert!(out.contains("web/pool-a 10.77.2.11:8080: enabled (weight 1) -> drain (weight 1)"), "{out}");
    let drained_at = load.elapsed();
    let report = load.wait();
    assert_eq!(report.failed(), 0, "{}", report.summary());
    let after = report.since(drained_at);
    assert!(after.len() > 100, "{}", after.summary());
    assert_eq!(count(&after, "a1"), 0, "new connections after the drain: {}", after.summary());
    assert!(count(&report.until(drained_at), "a1") > 0, "a1 served before: {}", report.summary());
    let now: Vec<String> = long.ask().into_iter().map(|a| a.unwrap()).collect();
    assert_eq!(now, before, "established connections keep their backend");
    let v = web(&s);
    assert_eq!(v.pools[0].backends[0].admin, BackendAdmin::Drain);
    assert_eq!(v.pools[0].healthy, 1);
    let backends = s.daemon.lbctl_ok(&["backends"]);
    assert!(backends.lines().any(|l| l.contains(A1) && l.contains("up, drain")), "{backends}");

    // Draining a2 too would leave pool-a (active, min_healthy 1) empty: refused, exit 5.
    let refused = s.daemon.lbctl(&["backend", "drain", A2]);
    assert_eq!(refused.status.code(), Some(5), "{refused:?}");
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(err.contains("min_healthy is 1") && err.contains("--force"), "{err}");
    assert_eq!(web(&s).pools[0].backends[1].admin, BackendAdmin::Enabled, "nothing changed");

    // Disable a1: a hard cut, its established connections are gone; a2's stay.
    s.daemon.lbctl_ok(&["backend", "disable", A1]);
    let answers = long.ask();
    for (was, now) in before.iter().zip(&answers) {
        match was.as_str() {
            "a1" => assert!(now.is_err(), "a connection of the disabled a1 still answers: {now:?}"),
            _ => assert_eq!(now.as_deref(), Ok(was.as_str())),
        }
    }
    assert_eq!(count(&connections(&s, 50), "a1"), 0);

    // Enable: back in the table.
    s.daemon.lbctl_ok(&["backend", "enable", A1]);
    let report = connections(&s, 200);
    assert_eq!(report.failed(), 0, "{}", report.summary());
    assert!(count(&report, "a1") > 0 && count(&report, "a2") > 0, "{}", report.summary());

    // Weight 4 against 1: a1 gets about 4/5 of new connections.
    let out = s.daemon.lbctl_ok(&["backend", "weight", A1, "4"]);
    assert!(out.contains("(weight 1) -> enabled (weight 4)"), "{out}");
    let report = connections(&s, 400);
    assert_eq!(report.failed(), 0, "{}", report.summary());
    assert!(count(&report, "a1") > 2 * count(&report, "a2"), "{}", report.summary());
    let v = web(&s);
    assert_eq!((v.pools[0].backends[0].weight, v.pools[0].backends[0].configured_weight), (4, Some(1)));

    // Forced below min_healthy: done, and recorded as forced.
    s.daemon.lbctl_ok(&["backend", "drain", A2]);
    let refused = s.daemon.lbctl(&["backend", "disable", A1]);
    assert_eq!(refused.status.code(), Some(5), "{refused:?}");
    let forced = s.daemon.lbctl_ok(&["backend", "disable", A1, "--force"]);
    assert!(forced.contains("warning: forced"), "{forced}");

    // The history: every change, with the user of the caller's uid (not a claimed $USER).
    let history: Vec<HistoryEntry> = s.daemon.client().get("/v1/history?limit=100").unwrap();
    let changes: Vec<&HistoryEntry> = history.iter().filter(|h| h.kind == HistoryKind::Backend).collect();
    assert_eq!(changes.len(), 6, "{history:#?}");
    let user = me();
    for h in &changes {
        assert!(h.requester.starts_with(&format!("{user} (lbctl/")), "{}", h.requester);
    }
    let last = changes.last().unwrap().backend.clone().unwrap();
    assert!(last.forced && last.addr == A1 && last.after.admin == BackendAdmin::Disabled, "{last:?}");
    let text = s.daemon.lbctl_ok(&["history"]);
    assert!(text.contains("backend: pool-a/10.77.2.11:8080 enabled -> drain by "), "{text}");
    assert!(text.contains("enabled -> disabled (forced) by "), "{text}");

    // Logs: the API's spelling of values.
    let log = s.daemon.log();
    assert!(log.contains(r#""action":"drain""#) && log.contains(r#""to":"disabled""#), "{log}");
}

#[test]
fn a_refused_reload_is_logged_and_the_switch_log_uses_the_api_s_spelling() {
    let s = setup("bkl", "nat").expect("setup");
    s.daemon.lbctl_ok(&["switch", "pool-b"]);
    let config = s.daemon.config_path();
    let good = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, good.replace("ring_size = 1009", "ring_size = 1013")).unwrap();
    let out = s.daemon.lbctl(&["reload"]);
    assert_eq!(out.status.code(), Some(5), "{out:?}");
    std::fs::write(&config, &good).unwrap();
    let log = s.daemon.log();
    let refused = log.lines().find(|l| l.contains("reload refused")).unwrap_or_else(|| panic!("{log}"));
    assert!(refused.contains("ring_size") && refused.contains("lbctl/"), "{refused}");
    let switched =
        log.lines().find(|l| l.contains(r#""message":"switched""#)).unwrap_or_else(|| panic!("{log}"));
    assert!(switched.contains(r#""mode":"drain""#) && switched.contains(r#""kind":"switch""#), "{switched}");
    assert!(!log.contains('\u{1b}'), "no ANSI escapes in a log file");
}
