//! Bad config, bad API requests and unknown names: a clear error, and nothing changes.

use lb_daemon::api::{
    client::ClientError,
    model::{Active, ErrorCode},
};
use lb_tests::e2e::{setup, web_vip};
use std::{os::unix::fs::PermissionsExt, path::Path, process::Command};

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

/// A config for `lb-daemon` alone (no topology): one NAT service on `interfaces`, state and
/// socket in `dir`, with `extra` top-level keys and `api` keys.
fn lone_config(instance: &str, dir: &Path, interface: &str, extra: &str, api: &str) -> String {
    format!(
        "instance = \"{instance}\"\ninterfaces = [\"{interface}\"]\nstate_dir = \"{dir}\"\n{extra}\n\
         [api]\nunix_socket = \"{dir}/lb.sock\"\n{api}\n\
         [[services]]\nname = \"web\"\nvips = [\"10.77.100.1:80\"]\nactive = \"pool-a\"\n\
         [services.pools.pool-a]\nbackends = [\"10.77.2.11:8080\", \"10.77.2.12:8080\"]\n\
         [services.pools.pool-b]\nbackends = [\"10.77.2.21:8080\", \"10.77.2.22:8080\"]\n",
        dir = dir.display()
    )
}

fn daemon_bin() -> std::path::PathBuf {
    lb_tests::topology::find_binary("lb-daemon", "LB_DAEMON_BIN").unwrap()
}

/// Runs `lb-daemon --check` on `config`; returns (success, stderr).
fn check(dir: &Path, config: &str) -> (bool, String) {
    let path = dir.join("lb.toml");
    std::fs::write(&path, config).unwrap();
    let out = Command::new(daemon_bin()).arg("--check").arg("--config").arg(&path).output().unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stderr).into_owned())
}

/// Issue 9 item 14: `--check` refuses what start-up would refuse (or what would fail later),
/// naming the key, and prints each error once.
#[test]
fn check_refuses_what_start_would_refuse() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let good = lone_config("chk", d, "lo", "ring_size = 1009", "");
    assert_eq!(check(d, &good), (true, String::new()));

    let (ok, err) = check(d, &lone_config("chk", d, "nosuch0", "ring_size = 1009", ""));
    assert!(!ok && err.contains("interfaces[0]: \"nosuch0\": no such interface"), "{err}");

    let token = d.join("token");
    let with_file = |api: &str| lone_config("chk", d, "lo", "ring_size = 1009", api);
    let api = format!("tcp = \"127.0.0.1:9900\"\ntoken_file = \"{}\"", token.display());
    let (ok, err) = check(d, &with_file(&api));
    assert!(!ok && err.contains("api.token_file: cannot read") && err.contains("No such file"), "{err}");
    assert_eq!(err.matches("No such file or directory").count(), 1, "printed once: {err}");
    std::fs::write(&token, "short\n").unwrap();
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o600)).unwrap();
    let (ok, err) = check(d, &with_file(&api));
    assert!(!ok && err.contains("api.token_file: the token in") && err.contains("too short"), "{err}");
    std::fs::write(&token, "0123456789abcdef\n").unwrap();
    assert_eq!(check(d, &with_file(&api)), (true, String::new()));
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o644)).unwrap();
    let (ok, err) = check(d, &with_file(&api));
    assert!(ok && err.contains("readable by every user"), "a warning, not an error: {err}");

    // 4 backends in a split need 400 slots: today `lbctl split` fails with HTTP 500.
    let (ok, err) = check(d, &lone_config("chk", d, "lo", "ring_size = 211", ""));
    assert!(
        !ok && err.contains("ring_size: ring_size 211 is too small for a split over 4 backends"),
        "{err}"
    );

    let zero = good.replace(
        "backends = [\"10.77.2.11:8080\", \"10.77.2.12:8080\"]",
        "backends = [{ addr = \"10.77.2.11:8080\", weight = 0 }]",
    );
    let (ok, err) = check(d, &zero);
    assert!(!ok && err.contains("services[0] (web).active") && err.contains("weight above 0"), "{err}");

    let missing =
        Command::new(daemon_bin()).args(["--check", "--config", "/nonexistent/lb.toml"]).output().unwrap();
    let err = String::from_utf8_lossy(&missing.stderr);
    assert!(!missing.status.success());
    assert_eq!(err.trim(), "lb-daemon: reading /nonexistent/lb.toml: No such file or directory (os error 2)");
}

/// Issue 9 item 14: a start that fails after the data plane was loaded (here: native XDP on a
/// loopback, which has no driver support) removes the pins it created, and says why once.
#[test]
fn a_failed_start_leaves_no_pins() {
    let ns = lb_tests::netns::NetNs::new("pins").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let instance = format!("lbtpin{}", std::process::id());
    let pins = std::path::PathBuf::from("/sys/fs/bpf").join(&instance);
    let config = lone_config(&instance, dir.path(), "lo", "ring_size = 1009\nxdp_mode = \"native\"", "");
    std::fs::write(dir.path().join("lb.toml"), config).unwrap();
    let out = Command::new("nsenter")
        .arg(format!("--net=/run/netns/{}", ns.name()))
        .arg(daemon_bin())
        .arg("--config")
        .arg(dir.path().join("lb.toml"))
        .env("LB_LOG", "warn")
        .output()
        .unwrap();
    let left = pins.exists();
    let _ = lb_daemon::dataplane::Dataplane::remove_pins(&lb_daemon::dataplane::PinDir(pins));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "native XDP on lo attached?\n{err}");
    assert_eq!(err.matches("attaching XDP").count(), 1, "the error, once: {err}");
    assert!(!left, "pins left behind after a failed start");
}

/// Issue 9 item 15: a user without CAP_BPF/CAP_NET_ADMIN is told it needs root, before
/// anything is created.
#[test]
fn non_root_is_told_it_needs_root() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let instance = format!("lbtroot{}", std::process::id());
    let path = dir.path().join("lb.toml");
    std::fs::write(&path, lone_config(&instance, dir.path(), "lo", "ring_size = 1009", "")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(daemon_bin())
        .arg("--config")
        .arg(&path)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("needs root (CAP_BPF and CAP_NET_ADMIN)") && err.contains("uid 65534"), "{err}");
    assert!(!err.contains("failed to create map"), "{err}");
    assert!(!std::path::Path::new("/sys/fs/bpf").join(&instance).exists());
    // --check needs no privileges.
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(daemon_bin())
        .args(["--check", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

/// Issue 9 item 15: `lb-demo --help` prints its usage and exits 0 without building anything
/// (it used to run the whole demo).
#[test]
fn demo_help_prints_usage() {
    let bin = lb_tests::topology::find_binary("lb-demo", "LB_DEMO_BIN").unwrap();
    let child = Command::new(bin).arg("--help").stdout(std::process::Stdio::piped()).spawn().unwrap();
    // Namespaces are named `<prefix>-<pid>-<n>` after the process that made them.
    let mine = format!("-{}-", child.id());
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("Usage: lb-demo") && text.contains("guided tour"), "{text}");
    let namespaces = lb_tests::netns::ip(&["netns", "list"]).unwrap();
    assert!(!namespaces.contains(&mine), "lb-demo --help created namespaces: {namespaces}");
}
