//! Prometheus text exposition of the data-plane counters and the control-plane state.

use super::{drain::FlowCounts, layout::Layout, state::PersistedState};
use crate::{api::model::HistoryKind, dataplane::Maps};
use lb_common::stats::{
    ALL_REASONS, Reason, backend_counter, backend_new_flow_counter, reason_counter, vip_counter,
};
use std::{collections::BTreeSet, fmt::Write};

/// Escapes a label value.
fn esc(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// The history kinds that change a service's active pool, with their label value (a reload is
/// not one: it changes the configuration, not which pool is active).
pub const SWITCH_KINDS: [(HistoryKind, &str); 4] = [
    (HistoryKind::Switch, "switch"),
    (HistoryKind::Rollback, "rollback"),
    (HistoryKind::Split, "split"),
    (HistoryKind::AutoRollback, "auto_rollback"),
];

/// The `event` label of a reason counter that counts something that happened to a flow rather
/// than what was done with the packet (the packet has its own outcome counter too), or None
/// for a packet outcome. Keeps `lb_packets_total` summing to the packets seen.
pub fn flow_event(reason: Reason) -> Option<&'static str> {
    Some(match reason {
        Reason::NewFlow => "new_flow",
        Reason::FlowRebalanced => "rebalanced",
        Reason::FlowBackendDown => "backend_down",
        Reason::FlowExpired => "expired",
        Reason::FloodNotRecorded => "flood_not_recorded",
        Reason::StatelessRst => "stateless_rst",
        Reason::SyncEventDropped => "sync_event_dropped",
        _ => return None,
    })
}

/// Renders every metric. `flows` holds the flow-table counts by backend index.
pub fn render(
    layout: &Layout,
    state: &PersistedState,
    dp: &dyn Maps,
    down: &BTreeSet<u32>,
    flows: &FlowCounts,
) -> String {
    let mut out = String::new();
    header(&mut out, "lb_build_info", "gauge", "Daemon version.");
    let _ = writeln!(out, "lb_build_info{{version=\"{}\"}} 1", env!("CARGO_PKG_VERSION"));

    header(
        &mut out,
        "lb_packets_total",
        "counter",
        "Packets seen by the XDP program, by what it did with them.",
    );
    for r in ALL_REASONS.into_iter().filter(|r| flow_event(*r).is_none()) {
        let c = dp.counter(reason_counter(r)).unwrap_or_default();
        let _ = writeln!(out, "lb_packets_total{{reason=\"{}\"}} {}", r.name(), c.packets);
    }
    header(
        &mut out,
        "lb_flow_events_total",
        "counter",
        "What happened to flows, by event; the packets involved are counted once more in lb_packets_total by what was done with them.",
    );
    for r in ALL_REASONS {
        if let Some(event) = flow_event(r) {
            let c = dp.counter(reason_counter(r)).unwrap_or_default();
            let _ = writeln!(out, "lb_flow_events_total{{event=\"{event}\"}} {}", c.packets);
        }
    }

    header(
        &mut out,
        "lb_flood_mode",
        "gauge",
        "CPUs whose new-flow rate is over flows.new_flow_limit: their SYNs are forwarded without being recorded (counted in lb_flow_events_total{event=\"flood_not_recorded\"}).",
    );
    let flood = dp.cpus_in_flood(crate::dataplane::maps::monotonic_coarse_ns()).unwrap_or(0);
    let _ = writeln!(out, "lb_flood_mode {flood}");

    header(&mut out, "lb_vip_packets_total", "counter", "Packets forwarded for a VIP (both directions).");
    for s in &layout.services {
        for v in &s.vips {
            let c = dp.counter(vip_counter(v.index)).unwrap_or_default();
            let _ = writeln!(
                out,
                "lb_vip_packets_total{{service=\"{}\",vip=\"{}\"}} {}",
                esc(&s.name),
                v.addr,
                c.packets
            );
        }
    }
    header(&mut out, "lb_vip_bytes_total", "counter", "Bytes forwarded for a VIP (both directions).");
    for s in &layout.services {
        for v in &s.vips {
            let c = dp.counter(vip_counter(v.index)).unwrap_or_default();
            let _ = writeln!(
                out,
                "lb_vip_bytes_total{{service=\"{}\",vip=\"{}\"}} {}",
                esc(&s.name),
                v.addr,
                c.bytes
            );
        }
    }

    let backends: Vec<_> = layout
        .services
        .iter()
        .flat_map(|s| s.pools.iter().flat_map(move |p| p.backends.iter().map(move |b| (s, p, b))))
        .collect();
    let labels = |s: &str, p: &str, b: &std::net::SocketAddr| {
        format!("service=\"{}\",pool=\"{}\",backend=\"{}\"", esc(s), esc(p), b)
    };
    header(&mut out, "lb_backend_packets_total", "counter", "Packets sent to a backend.");
    for (s, p, b) in &backends {
        let c = dp.counter(backend_counter(b.index)).unwrap_or_default();
        let _ =
            writeln!(out, "lb_backend_packets_total{{{}}} {}", labels(&s.name, &p.name, &b.addr), c.packets);
    }
    header(&mut out, "lb_backend_bytes_total", "counter", "Bytes sent to a backend.");
    for (s, p, b) in &backends {
        let c = dp.counter(backend_counter(b.index)).unwrap_or_default();
        let _ = writeln!(out, "lb_backend_bytes_total{{{}}} {}", labels(&s.name, &p.name, &b.addr), c.bytes);
    }
    header(&mut out, "lb_backend_new_flows_total", "counter", "Flows started on a backend.");
    for (s, p, b) in &backends {
        let c = dp.counter(backend_new_flow_counter(b.index)).unwrap_or_default();
        let _ = writeln!(
            out,
            "lb_backend_new_flows_total{{{}}} {}",
            labels(&s.name, &p.name, &b.addr),
            c.packets
        );
    }
    header(&mut out, "lb_backend_up", "gauge", "1 when the backend may receive new flows.");
    for (s, p, b) in &backends {
        let _ = writeln!(
            out,
            "lb_backend_up{{{}}} {}",
            labels(&s.name, &p.name, &b.addr),
            u8::from(!down.contains(&b.index))
        );
    }

    header(
        &mut out,
        "lb_pool_share_ratio",
        "gauge",
        "Share of new flows a pool receives (1 for the active pool).",
    );
    for s in &layout.services {
        let active = state.services.get(&s.name).map(|st| &st.active);
        for p in &s.pools {
            let share = active.map(|a| f64::from(a.share(&p.name)) / 100.0).unwrap_or(0.0);
            let _ = writeln!(
                out,
                "lb_pool_share_ratio{{service=\"{}\",pool=\"{}\"}} {}",
                esc(&s.name),
                esc(&p.name),
                share
            );
        }
    }
    header(&mut out, "lb_service_epoch", "gauge", "Service epoch (a hard switch increments it).");
    for s in &layout.services {
        let epoch = state.services.get(&s.name).map(|st| st.epoch).unwrap_or(0);
        let _ = writeln!(out, "lb_service_epoch{{service=\"{}\"}} {}", esc(&s.name), epoch);
    }
    header(
        &mut out,
        "lb_service_active_pool",
        "gauge",
        "1 for the pool (or pools, during a split) new flows of the service go to, 0 for the others.",
    );
    for s in &layout.services {
        let active = state.services.get(&s.name).map(|st| &st.active);
        for p in &s.pools {
            let on = active.is_some_and(|a| a.share(&p.name) > 0);
            let _ = writeln!(
                out,
                "lb_service_active_pool{{service=\"{}\",pool=\"{}\"}} {}",
                esc(&s.name),
                esc(&p.name),
                u8::from(on)
            );
        }
    }
    header(
        &mut out,
        "lb_pool_established_flows",
        "gauge",
        "Established flows pinned to a pool's backends, counted from the flow table (this host's own; those received from peers are lb_pool_synced_flows).",
    );
    for s in &layout.services {
        for p in &s.pools {
            let n: u64 = p.backends.iter().map(|b| flows.of(b.index).established).sum();
            let _ = writeln!(
                out,
                "lb_pool_established_flows{{service=\"{}\",pool=\"{}\"}} {n}",
                esc(&s.name),
                esc(&p.name)
            );
        }
    }
    header(
        &mut out,
        "lb_pool_synced_flows",
        "gauge",
        "Established flows pinned to a pool's backends that were received from the fleet's other hosts (flow sync), counted apart from lb_pool_established_flows.",
    );
    for s in &layout.services {
        for p in &s.pools {
            let n: u64 = p.backends.iter().map(|b| flows.of(b.index).synced).sum();
            let _ = writeln!(
                out,
                "lb_pool_synced_flows{{service=\"{}\",pool=\"{}\"}} {n}",
                esc(&s.name),
                esc(&p.name)
            );
        }
    }
    header(
        &mut out,
        "lb_switches_total",
        "counter",
        "Changes of a service's active pool kept in the daemon's history, by kind (switch, rollback, split, auto_rollback: a rollback the daemon made by itself); reloads are not counted.",
    );
    for s in &layout.services {
        for (kind, name) in SWITCH_KINDS {
            let n = state.history.iter().filter(|h| h.service == s.name && h.kind == kind).count();
            let _ = writeln!(out, "lb_switches_total{{service=\"{}\",kind=\"{name}\"}} {n}", esc(&s.name));
        }
    }
    out
}

/// Renders the flow table's occupancy: `flows` is a scan taken `age` ago (scans are cached, see
/// [`super::flow_cache`]), `capacity` the entries the table was created with.
pub fn render_flow_table(out: &mut String, flows: &FlowCounts, capacity: u32, age: std::time::Duration) {
    header(
        out,
        "lb_flow_table_entries",
        "gauge",
        "Entries in the flow table (all states), from the last scan (taken at most every few seconds).",
    );
    let _ = writeln!(out, "lb_flow_table_entries {}", flows.entries());
    header(out, "lb_flow_table_capacity", "gauge", "Entries the flow table holds at most (flow_table_size).");
    let _ = writeln!(out, "lb_flow_table_capacity {capacity}");
    header(
        out,
        "lb_flow_table_scan_age_seconds",
        "gauge",
        "Age of the flow-table scan these counts come from.",
    );
    let _ = writeln!(out, "lb_flow_table_scan_age_seconds {}", age.as_secs_f64());
}

/// Renders, per service, when its active pool last changed (switch, rollback, split or
/// automatic rollback kept in the history; 0 when none is).
pub fn render_last_switch(out: &mut String, layout: &Layout, state: &PersistedState) {
    header(
        out,
        "lb_last_switch_timestamp_seconds",
        "gauge",
        "Unix time of the last change of the service's active pool kept in the history (0: none).",
    );
    for s in &layout.services {
        let last = state
            .history
            .iter()
            .rev()
            .find(|h| h.service == s.name && SWITCH_KINDS.iter().any(|(k, _)| *k == h.kind))
            .and_then(|h| humantime::parse_rfc3339(&h.time).ok())
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(0.0, |d| d.as_secs_f64());
        let _ = writeln!(out, "lb_last_switch_timestamp_seconds{{service=\"{}\"}} {last}", esc(&s.name));
    }
}

/// Renders, per pool, its healthy backends and its `min_healthy`, so an alert can compare them.
pub fn render_pool_health(out: &mut String, layout: &Layout, down: &BTreeSet<u32>) {
    header(out, "lb_pool_healthy_backends", "gauge", "Backends of the pool that passed their health checks.");
    for s in &layout.services {
        for p in &s.pools {
            let n = p.backends.iter().filter(|b| !down.contains(&b.index)).count();
            let _ = writeln!(
                out,
                "lb_pool_healthy_backends{{service=\"{}\",pool=\"{}\"}} {n}",
                esc(&s.name),
                esc(&p.name)
            );
        }
    }
    header(
        out,
        "lb_pool_min_healthy",
        "gauge",
        "Fewest healthy backends the pool needs (min_healthy): below it a switch to it is refused and a watch rolls back.",
    );
    for s in &layout.services {
        for p in &s.pools {
            let _ = writeln!(
                out,
                "lb_pool_min_healthy{{service=\"{}\",pool=\"{}\"}} {}",
                esc(&s.name),
                esc(&p.name),
                p.min_healthy
            );
        }
    }
}
