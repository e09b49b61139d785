//! Issue 13: the Prometheus alert rules in `deploy/prometheus/` are valid (`promtool check
//! rules`) and do what their unit tests say (`promtool test rules`), and the Grafana dashboard
//! is valid JSON with switches as annotations. (That both use only metrics the daemon exports
//! is checked against a `/metrics` render in lb-daemon's engine tests.)
//!
//! promtool comes with the Debian package `prometheus`, which `cargo xtask test` installs.

use std::path::{Path, PathBuf};
use std::process::Command;

fn deploy() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join("deploy")
}

/// Runs promtool in `dir`; panics with its output when it fails.
fn promtool(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("promtool")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("promtool (Debian package prometheus; `cargo xtask test` installs it)");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "promtool {args:?} failed:\n{text}");
    text
}

#[test]
fn alert_rules_pass_promtool_check_and_their_unit_tests() {
    let dir = deploy().join("prometheus");
    let check = promtool(&dir, &["check", "rules", "lb-rules.yml"]);
    assert!(check.contains("SUCCESS: 4 rules found"), "{check}");
    let test = promtool(&dir, &["test", "rules", "lb-rules.test.yml"]);
    assert!(test.contains("SUCCESS"), "{test}");
}

#[test]
fn the_rule_unit_tests_can_fail() {
    // A copy of the rules with the flow-table threshold raised must fail the same unit tests:
    // the suite would notice a broken rule.
    let src = deploy().join("prometheus");
    let dir = tempfile::tempdir().unwrap();
    let rules = std::fs::read_to_string(src.join("lb-rules.yml")).unwrap();
    let broken = rules.replace("lb_flow_table_capacity > 0.9", "lb_flow_table_capacity > 0.99");
    assert_ne!(broken, rules);
    std::fs::write(dir.path().join("lb-rules.yml"), broken).unwrap();
    std::fs::copy(src.join("lb-rules.test.yml"), dir.path().join("lb-rules.test.yml")).unwrap();
    let out = Command::new("promtool")
        .args(["test", "rules", "lb-rules.test.yml"])
        .current_dir(dir.path())
        .output()
        .expect("promtool");
    assert!(!out.status.success(), "a broken rule passed its unit tests");
}

#[test]
fn the_dashboard_shows_what_the_issue_asks_for() {
    let text = std::fs::read_to_string(deploy().join("grafana").join("lb.json")).unwrap();
    let dash: serde_json::Value = serde_json::from_str(&text).expect("lb.json is JSON");
    let exprs: Vec<&str> = dash["panels"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| p["targets"].as_array().unwrap().iter().filter_map(|t| t["expr"].as_str()))
        .collect();
    for metric in [
        "lb_backend_packets_total",
        "lb_backend_bytes_total",
        "lb_service_active_pool",
        "lb_pool_healthy_backends",
        "lb_health_checks_total",
        "lb_flow_table_entries",
    ] {
        assert!(exprs.iter().any(|e| e.contains(metric)), "no panel shows {metric}");
    }
    let annotations = dash["annotations"]["list"].as_array().unwrap();
    assert!(annotations.iter().any(|a| a["expr"].as_str().is_some_and(|e| e.contains("lb_switches_total"))));
}
