//! The reload summary in words: what changed in a service or in `[flows]`, so that the
//! response of `lbctl reload` and the `config reloaded` log line say more than "changed".

use crate::config::{FlowsConfig, PoolConfig, ServiceConfig};

/// What differs between two versions of one service, e.g. `mode nat -> dsr`,
/// `pool pool-a: backend 10.0.1.3:8080 added`.
pub(super) fn describe(old: &ServiceConfig, new: &ServiceConfig) -> Vec<String> {
    let mut out = Vec::new();
    if old.vips != new.vips {
        out.push(format!("vips {} -> {}", list(&old.vips), list(&new.vips)));
    }
    if old.mode != new.mode {
        out.push(format!("mode {} -> {}", mode(old), mode(new)));
    }
    if old.active != new.active {
        out.push(format!("configured active pool {} -> {}", old.active, new.active));
    }
    for p in &new.pools {
        match old.pools.iter().find(|o| o.name == p.name) {
            None => out.push(format!("pool {} added", p.name)),
            Some(o) if o != p => out.push(format!("pool {}: {}", p.name, pool(o, p).join(", "))),
            Some(_) => {}
        }
    }
    for o in old.pools.iter().filter(|o| !new.pools.iter().any(|p| p.name == o.name)) {
        out.push(format!("pool {} removed", o.name));
    }
    if out.is_empty() {
        out.push("settings changed".into());
    }
    out
}

/// What differs between two versions of one pool.
fn pool(old: &PoolConfig, new: &PoolConfig) -> Vec<String> {
    let mut out = Vec::new();
    for b in &new.backends {
        match old.backends.iter().find(|o| o.addr == b.addr) {
            None => out.push(format!("backend {} added", b.addr)),
            Some(o) if o.weight != b.weight => {
                out.push(format!("backend {} weight {} -> {}", b.addr, o.weight, b.weight))
            }
            Some(_) => {}
        }
    }
    for o in old.backends.iter().filter(|o| !new.backends.iter().any(|b| b.addr == o.addr)) {
        out.push(format!("backend {} removed", o.addr));
    }
    if old.min_healthy != new.min_healthy {
        out.push(format!("min_healthy {} -> {}", old.min_healthy, new.min_healthy));
    }
    if old.health != new.health {
        out.push("health check changed".into());
    }
    if out.is_empty() {
        out.push("backend order changed".into());
    }
    out
}

/// What differs in `[flows]`, one key each (`flows.new_flow_limit 125000 -> 500`).
pub(super) fn flows(old: &FlowsConfig, new: &FlowsConfig) -> Vec<String> {
    let d = |d: &std::time::Duration| humantime::format_duration(*d).to_string();
    let mut out = Vec::new();
    if old.new_flow_limit != new.new_flow_limit {
        out.push(format!("flows.new_flow_limit {} -> {}", old.new_flow_limit, new.new_flow_limit));
    }
    if old.handshake_timeout != new.handshake_timeout {
        out.push(format!(
            "flows.handshake_timeout {} -> {}",
            d(&old.handshake_timeout),
            d(&new.handshake_timeout)
        ));
    }
    if old.closed_timeout != new.closed_timeout {
        out.push(format!("flows.closed_timeout {} -> {}", d(&old.closed_timeout), d(&new.closed_timeout)));
    }
    out
}

fn list(addrs: &[std::net::SocketAddr]) -> String {
    addrs.iter().map(|a| a.to_string()).collect::<Vec<_>>().join(",")
}

fn mode(s: &ServiceConfig) -> &'static str {
    match s.mode {
        crate::config::ForwardMode::Nat => "nat",
        crate::config::ForwardMode::Dsr => "dsr",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::tests::{CONFIG, config};

    #[test]
    fn a_changed_service_is_described_key_by_key() {
        let old = config(CONFIG);
        let text = CONFIG
            .replace("min_healthy = 2", "min_healthy = 1")
            .replace(r#""10.0.2.2:8080"]"#, r#"{ addr = "10.0.2.2:8080", weight = 3 }]"#)
            .replace("vips = [\"192.0.2.10:80\"]", "vips = [\"192.0.2.10:80\", \"192.0.2.11:80\"]");
        let new = config(&text);
        assert_eq!(
            describe(&old.services[0], &new.services[0]),
            vec![
                "vips 192.0.2.10:80 -> 192.0.2.10:80,192.0.2.11:80",
                "pool pool-b: backend 10.0.2.2:8080 weight 1 -> 3, min_healthy 2 -> 1"
            ]
        );
    }

    /// Every kind of the history is logged in the API's spelling.
    #[test]
    fn log_names_are_the_api_s_spelling() {
        use crate::api::model::{BackendAdmin, HistoryKind, SwitchMode};
        let json = |v: serde_json::Value| v.as_str().unwrap().to_string();
        for k in [
            HistoryKind::Switch,
            HistoryKind::Rollback,
            HistoryKind::Split,
            HistoryKind::Reload,
            HistoryKind::AutoRollback,
            HistoryKind::Backend,
        ] {
            assert_eq!(k.as_str(), json(serde_json::to_value(k).unwrap()));
        }
        for m in [SwitchMode::Drain, SwitchMode::Hard] {
            assert_eq!(m.to_string(), json(serde_json::to_value(m).unwrap()));
        }
        for a in [BackendAdmin::Enabled, BackendAdmin::Drain, BackendAdmin::Disabled] {
            assert_eq!(a.to_string(), json(serde_json::to_value(a).unwrap()));
        }
        assert_eq!(HistoryKind::AutoRollback.as_str(), "auto_rollback");
    }
}
