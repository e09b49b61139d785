//! Bad config, bad API requests and unknown names: a clear error, and nothing changes.

use lb_daemon::api::{
    client::ClientError,
    model::{Active, ErrorCode},
};
use lb_tests::e2e::{setup, web_vip};
use std::process::Command;

#[test]
fn bad_requests_are_refused_and_change_nothing() {
    let s = setup("err", "nat").expect("setup");
    let before = s.daemon.status().unwrap().services;

    let out = s.daemon.lbctl(&["switch", "pool-zz"]);
    assert_eq!(out.status.code(), Some(4), "unknown pool: exit 4");
    assert!(String::from_utf8_lossy(&out.stderr).contains("pool-zz"));
    let out = s.daemon.lbctl(&["--service", "nope", "switch", "pool-b"]);
    assert_eq!(out.status.code(), Some(4), "unknown service: exit 4");
    let out = s.daemon.lbctl(&["rollback"]);
    assert_eq!(out.status.code(), Some(5), "nothing to roll back to: refused, exit 5");
    let out = s.daemon.lbctl(&["split", "pool-a=60", "pool-b=30"]);
    assert_ne!(out.status.code(), Some(0), "weights not summing to 100");
    // Through the API directly: unknown fields, wrong types, bad weights.
    let c = s.daemon.client();
    for body in [serde_json::json!({"pool": "pool-b", "hardd": true}), serde_json::json!({"pool": 7})] {
        match c.post::<_, serde_json::Value>("/v1/services/web/switch", &body) {
            Err(ClientError::Api { status: 400, error }) => assert_eq!(error.code, ErrorCode::InvalidRequest),
            other => panic!("{body}: {other:?}"),
        }
    }
    match c.post::<_, serde_json::Value>(
        "/v1/services/web/split",
        &serde_json::json!({"weights": [{"pool": "pool-a", "weight": 100}]}),
    ) {
        Err(ClientError::Api { status: 400, .. }) => {}
        other => panic!("split of one pool: {other:?}"),
    }
    // Idempotent: switching to the active pool succeeds and records nothing.
    let out = s.daemon.lbctl_ok(&["--output", "json", "switch", "pool-a"]);
    assert_eq!(serde_json::from_str::<serde_json::Value>(&out).unwrap()["changed"], false);

    let after = s.daemon.status().unwrap().services;
    assert_eq!(
        before.iter().map(|s| (&s.active, s.epoch)).collect::<Vec<_>>(),
        after.iter().map(|s| (&s.active, s.epoch)).collect::<Vec<_>>()
    );
    assert!(s.daemon.client().get::<Vec<serde_json::Value>>("/v1/history").unwrap().is_empty());
}

#[test]
fn bad_config_is_refused_at_start_and_on_reload() {
    let s = setup("cfg", "nat").expect("setup");
    s.daemon.lbctl_ok(&["switch", "pool-b"]);
    let good = std::fs::read_to_string(s.daemon.config_path()).unwrap();
    // An unknown pool as `active`, and a duplicate backend.
    let bad = good.replace("active = \"pool-a\"", "active = \"pool-x\"");
    std::fs::write(s.daemon.config_path(), &bad).unwrap();
    let out = s.daemon.lbctl(&["reload"]);
    assert_eq!(out.status.code(), Some(5));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("active") && err.contains("pool-x"), "{err}");
    assert_eq!(
        s.daemon.status().unwrap().services[0].active,
        Active::Pool("pool-b".into()),
        "state untouched"
    );
    // lb-daemon --check names the key too and exits non-zero.
    let bin = lb_tests::topology::find_binary("lb-daemon", "LB_DAEMON_BIN").unwrap();
    let check =
        Command::new(bin).arg("--check").arg("--config").arg(s.daemon.config_path()).output().unwrap();
    assert!(!check.status.success());
    assert!(String::from_utf8_lossy(&check.stderr).contains("pool-x"));
    // A valid change applies: a third backend in pool-b.
    let grown = good.replace("\"10.77.2.22:8080\"]", "\"10.77.2.22:8080\", \"10.77.2.23:8080\"]");
    assert_ne!(grown, good);
    std::fs::write(s.daemon.config_path(), &grown).unwrap();
    let out = s.daemon.lbctl_ok(&["--output", "json", "reload"]);
    assert_eq!(serde_json::from_str::<serde_json::Value>(&out).unwrap()["changed"], true);
    let web = &s.daemon.status().unwrap().services[0];
    assert_eq!(web.pools[1].backends.len(), 3);
    assert_eq!(web.active, Active::Pool("pool-b".into()), "reload keeps the switched pool");
    let _ = web_vip();
}
