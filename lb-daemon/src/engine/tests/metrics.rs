//! Issue 13: `/metrics` keeps packet outcomes apart from flow events, counts switches without
//! reloads, and reports the flow table's occupancy and each service's last switch.

use super::*;
use crate::api::model::{HistoryKind, RollbackRequest};
use crate::engine::{drain::FlowCounts, metrics};
use lb_common::maps::{FlowKey, FlowValue};
use lb_common::stats::{Reason, reason_counter};
use std::time::Duration;

/// The engine's part of `/metrics` for the rig, as `Engine::metrics` renders it (a scan of
/// `age`).
pub fn render(r: &Rig, age: Duration) -> String {
    let (source, timeouts) = r.core.flow_scan();
    let counts = FlowCounts::scan(source.as_ref(), timeouts).unwrap();
    let mut text = metrics::render(&r.core.layout, &r.core.state, &r.core.maps, &r.core.down, &counts);
    metrics::render_flow_table(
        &mut text,
        &counts,
        crate::dataplane::Maps::options(&r.core.maps).flow_entries,
        age,
    );
    metrics::render_last_switch(&mut text, &r.core.layout, &r.core.state);
    metrics::render_pool_health(&mut text, &r.core.layout, &r.core.down);
    text
}

fn has(text: &str, line: &str) -> bool {
    text.lines().any(|l| l == line)
}

#[test]
fn packet_outcomes_and_flow_events_are_separate_counters() {
    let mut r = Rig::new(CONFIG);
    let set = |r: &mut Rig, reason: Reason, packets: u64| {
        r.core.maps.counters.insert(reason_counter(reason), lb_common::maps::Counter { packets, bytes: 0 });
    };
    set(&mut r, Reason::FwdTx, 7);
    set(&mut r, Reason::NewFlow, 5);
    set(&mut r, Reason::FlowRebalanced, 2);
    set(&mut r, Reason::FloodNotRecorded, 3);
    let text = render(&r, Duration::ZERO);
    assert!(has(&text, "lb_packets_total{reason=\"fwd_tx\"} 7"), "{text}");
    assert!(!text.contains("lb_packets_total{reason=\"new_flow\"}"), "{text}");
    assert!(!text.contains("lb_packets_total{reason=\"flood_not_recorded\"}"), "{text}");
    assert!(has(&text, "lb_flow_events_total{event=\"new_flow\"} 5"), "{text}");
    assert!(has(&text, "lb_flow_events_total{event=\"rebalanced\"} 2"), "{text}");
    assert!(has(&text, "lb_flow_events_total{event=\"flood_not_recorded\"} 3"), "{text}");
    assert!(has(&text, "lb_flow_events_total{event=\"backend_down\"} 0"), "{text}");
    // Every reason is in exactly one of the two.
    for reason in lb_common::stats::ALL_REASONS {
        let packets = text.contains(&format!("lb_packets_total{{reason=\"{}\"}}", reason.name()));
        let event = metrics::flow_event(reason)
            .is_some_and(|e| text.contains(&format!("lb_flow_events_total{{event=\"{e}\"}}")));
        assert!(packets != event, "{reason:?}");
    }
}

#[test]
fn switches_count_without_reloads_and_the_last_one_is_timed() {
    let mut r = Rig::new(CONFIG);
    let text = render(&r, Duration::ZERO);
    assert!(has(&text, "lb_switches_total{service=\"web\",kind=\"switch\"} 0"), "{text}");
    assert!(has(&text, "lb_last_switch_timestamp_seconds{service=\"web\"} 0"), "{text}");

    r.core.switch(None, &to("pool-b"), "ci").unwrap();
    r.advance_ms(90_000);
    r.core.rollback(None, &RollbackRequest::default(), "ops").unwrap();
    r.advance_ms(60_000);
    // A reload that falls back to the configured pool is recorded but is not a switch.
    let text_c = CONFIG.replace("[services.pools.pool-b]", "[services.pools.pool-c]");
    r.core.switch(None, &to("pool-b"), "ci").unwrap();
    r.advance_ms(30_000);
    r.core.reload(config(&text_c), "ops").unwrap();
    assert_eq!(r.core.state.history.last().unwrap().kind, HistoryKind::Reload);

    let text = render(&r, Duration::ZERO);
    assert!(has(&text, "lb_switches_total{service=\"web\",kind=\"switch\"} 2"), "{text}");
    assert!(has(&text, "lb_switches_total{service=\"web\",kind=\"rollback\"} 1"), "{text}");
    assert!(has(&text, "lb_switches_total{service=\"web\",kind=\"auto_rollback\"} 0"), "{text}");
    assert!(!text.contains("kind=\"reload\""), "{text}");
    assert!(!text.contains("automatic="), "{text}");
    // The second switch, at T0 + 150 s; not the reload 30 s later.
    let expected = (T0_MS + 150_000) as f64 / 1000.0;
    assert!(has(&text, &format!("lb_last_switch_timestamp_seconds{{service=\"web\"}} {expected}")), "{text}");
}

#[test]
fn flow_table_occupancy_and_capacity() {
    let r = Rig::new(CONFIG);
    {
        let mut f = r.core.maps.flows.lock().unwrap();
        f.flows =
            (0..3u16).map(|i| (FlowKey { sport: i, ..FlowKey::default() }, FlowValue::default())).collect();
    }
    let text = render(&r, Duration::from_millis(2500));
    assert!(has(&text, "lb_flow_table_entries 3"), "{text}");
    assert!(has(&text, "lb_flow_table_capacity 1024"), "{text}");
    assert!(has(&text, "lb_flow_table_scan_age_seconds 2.5"), "{text}");
    assert!(has(&text, "lb_pool_min_healthy{service=\"web\",pool=\"pool-b\"} 2"), "{text}");
    assert!(has(&text, "lb_pool_healthy_backends{service=\"web\",pool=\"pool-b\"} 2"), "{text}");
}

/// Every metric name `/metrics` declares (`# TYPE` lines; a histogram's series too), from a
/// render of the fixture with every part `Engine::metrics` appends.
fn exported_names() -> std::collections::BTreeSet<String> {
    let r = Rig::new(CONFIG);
    let mut text = render(&r, Duration::ZERO);
    crate::dataplane::links::Links::default().render_metrics(&mut text);
    crate::health::stats::HealthStats::default().render(&mut text);
    crate::process_metrics::render(&mut text);
    let mut names = std::collections::BTreeSet::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("# TYPE ") else { continue };
        let (name, kind) = rest.split_once(' ').unwrap();
        if kind == "histogram" {
            for suffix in ["_bucket", "_sum", "_count"] {
                names.insert(format!("{name}{suffix}"));
            }
        }
        names.insert(name.to_owned());
    }
    names
}

/// The `lb_*` and `process_*` names a file uses.
fn used_names(text: &str) -> std::collections::BTreeSet<String> {
    let mut names = std::collections::BTreeSet::new();
    let bytes = text.as_bytes();
    let word = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    let mut i = 0;
    while i < bytes.len() {
        let starts = (i == 0 || !word(bytes[i - 1]))
            && (text[i..].starts_with("lb_") || text[i..].starts_with("process_"));
        if starts {
            let end = (i..bytes.len()).find(|&j| !word(bytes[j])).unwrap_or(bytes.len());
            names.insert(text[i..end].to_owned());
            i = end;
        } else {
            i += 1;
        }
    }
    names
}

#[test]
fn the_dashboard_and_the_alert_rules_use_only_exported_metrics() {
    let exported = exported_names();
    for must in ["lb_flow_table_entries", "lb_health_checks_total", "lb_xdp_attached", "process_open_fds"] {
        assert!(exported.contains(must), "{must} not exported: {exported:?}");
    }
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join("deploy");
    for file in ["grafana/lb.json", "prometheus/lb-rules.yml", "prometheus/lb-rules.test.yml"] {
        let text = std::fs::read_to_string(root.join(file)).unwrap();
        let used = used_names(&text);
        assert!(used.len() >= 3, "{file}: {used:?}");
        let unknown: Vec<_> = used.difference(&exported).collect();
        assert!(unknown.is_empty(), "{file} uses metrics the daemon does not export: {unknown:?}");
    }
    // The parser finds a name that is not exported.
    assert_eq!(used_names("rate(lb_no_such_total[1m]) x_lb_not"), ["lb_no_such_total".to_owned()].into());
}
