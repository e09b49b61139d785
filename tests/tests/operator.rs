//! What an SRE plugs in next to the balancer: Prometheus metrics (checked by promtool), the
//! systemd unit (checked by systemd-analyze), structured logs.

use lb_tests::{
    e2e::{setup, web_vip},
    load::{LoadHandle, LoadOptions},
    topology::find_binary,
};
use std::{
    io::Write,
    process::{Command, Stdio},
};

#[test]
fn metrics_pass_promtool_and_carry_the_numbers() {
    let s = setup("met", "nat").expect("setup");
    let mut opts = LoadOptions::new(web_vip());
    opts.rate_per_s = 0;
    opts.max_connections = 200;
    let report = LoadHandle::start(s.topo.client(), opts).unwrap().wait();
    assert_eq!(report.failed(), 0);
    s.daemon.lbctl_ok(&["switch", "pool-b"]);
    let text = s.daemon.client().get_text("/metrics").unwrap();
    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (Debian package prometheus)");
    promtool.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let out = promtool.wait_with_output().unwrap();
    let problems =
        format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success() && problems.trim().is_empty(), "promtool: {problems}\n{text}");
    for needle in [
        "lb_build_info{",
        "lb_flow_events_total{event=\"new_flow\"} 200",
        "lb_service_active_pool{service=\"web\",pool=\"pool-b\"} 1",
        "lb_service_active_pool{service=\"web\",pool=\"pool-a\"} 0",
        "lb_switches_total{service=\"web\",kind=\"switch\"} 1",
        "lb_backend_up{service=\"web\",pool=\"pool-a\",backend=\"10.77.2.11:8080\"} 1",
        "lb_pool_established_flows{service=\"web\",pool=\"pool-a\"}",
    ] {
        assert!(text.contains(needle), "missing {needle:?} in\n{text}");
    }
    let new_flows: u64 = text
        .lines()
        .filter(|l| l.starts_with("lb_backend_new_flows_total{"))
        .map(|l| l.rsplit(' ').next().unwrap().parse::<u64>().unwrap())
        .sum();
    assert_eq!(new_flows, 200, "every connection counted once as a new flow");
}

#[test]
fn every_switch_logs_one_structured_line() {
    let s = setup("log", "nat").expect("setup");
    s.daemon.lbctl_ok(&["switch", "pool-b", "--hard"]);
    let log = s.daemon.log();
    let lines: Vec<serde_json::Value> = log
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["fields"]["message"] == "switched")
        .collect();
    assert_eq!(lines.len(), 1, "{log}");
    let f = &lines[0]["fields"];
    assert_eq!(
        (f["service"].as_str(), f["from"].as_str(), f["to"].as_str(), f["mode"].as_str()),
        (Some("web"), Some("pool-a"), Some("pool-b"), Some("hard"))
    );
    assert!(f["requester"].as_str().unwrap().contains("lbctl/"), "{f}");
}

#[test]
fn systemd_unit_verifies() {
    let unit =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/lb-daemon.service")).unwrap();
    // Point the unit at the binaries just built (installed, they live in /usr/local/bin).
    let bin_dir = find_binary("lb-daemon", "LB_DAEMON_BIN").unwrap().parent().unwrap().to_path_buf();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("lb-daemon.service");
    std::fs::write(&path, unit.replace("/usr/local/bin/", &format!("{}/", bin_dir.display()))).unwrap();
    // --man=no: the man page the unit documents is installed by `cargo xtask install`, not here.
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(&path)
        .output()
        .expect("systemd-analyze");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let own: Vec<&str> = stderr.lines().filter(|l| l.contains("lb-daemon.service")).collect();
    assert!(out.status.success() && own.is_empty(), "systemd-analyze verify: {stderr}");
    assert!(unit.contains("Restart=on-failure") && unit.contains("ExecReload=/usr/local/bin/lbctl reload"));
}
