//! `lbctl history`: who switched what, when, newest last. In a fleet the daemon answers the
//! fleet's history from etcd, each change with the host it was made through and the hosts that
//! applied it (etcd unreachable: exit 3, saying so).

use lb_daemon::api::client::Client;
use lb_daemon::api::model::{BackendChange, HistoryEntry, HistoryItem, HistoryKind};

use super::parse;
use crate::failure::Failure;
use crate::render::{json, parts};

/// `GET /v1/history` (at most `limit` entries, of `service` when given).
pub fn run(client: &Client, service: Option<&str>, json_out: bool, limit: u32) -> Result<String, Failure> {
    let mut path = format!("/v1/history?limit={limit}");
    if let Some(s) = service {
        path.push_str(&format!("&service={s}"));
    }
    let raw = client.get_text(&path)?;
    let items: Vec<HistoryItem> = parse(&raw)?;
    Ok(if json_out { json::pretty(&raw) } else { render_items(&items) })
}

/// [`render`], and for a fleet change the host it went through and the hosts that applied it.
pub fn render_items(items: &[HistoryItem]) -> String {
    if items.is_empty() {
        return render(&[]);
    }
    let mut out = String::new();
    for item in items {
        out.push_str(&render(std::slice::from_ref(&item.entry)));
        if let Some(f) = &item.fleet {
            let applied = if f.applied.is_empty() {
                "no host yet".to_owned()
            } else {
                f.applied.iter().map(|a| a.host.as_str()).collect::<Vec<_>>().join(", ")
            };
            let forced = if f.forced { " (forced)" } else { "" };
            out.push_str(&format!("    via {}{forced}, applied on: {applied}\n", f.via));
        }
    }
    out
}

/// One line per entry, and its reason under it.
pub fn render(entries: &[HistoryEntry]) -> String {
    if entries.is_empty() {
        return "no recorded changes\n".into();
    }
    let mut out = String::new();
    for e in entries {
        let kind = match e.kind {
            HistoryKind::Switch => "switch",
            HistoryKind::Rollback => "rollback",
            HistoryKind::Split => "split",
            HistoryKind::Reload => "reload",
            HistoryKind::AutoRollback => "auto-rollback",
            HistoryKind::Backend => "backend",
        };
        if let Some(b) = &e.backend {
            out.push_str(&format!(
                "#{} {} {} {}: {}/{} {} by {}\n",
                e.id,
                e.time,
                e.service,
                kind,
                b.pool,
                b.addr,
                backend_change(b),
                e.requester
            ));
            if let Some(reason) = &e.reason {
                out.push_str(&format!("    reason: {reason}\n"));
            }
            continue;
        }
        out.push_str(&format!(
            "#{} {} {} {}: {} -> {} ({}) by {}\n",
            e.id,
            e.time,
            e.service,
            kind,
            e.from,
            e.to,
            parts::mode_name(e.mode),
            e.requester
        ));
        if let Some(reason) = &e.reason {
            out.push_str(&format!("    reason: {reason}\n"));
        }
    }
    out
}

/// `enabled -> drain`, `weight 1 -> 3`, or both.
fn backend_change(b: &BackendChange) -> String {
    let mut parts = Vec::new();
    if b.before.admin != b.after.admin {
        parts.push(format!("{} -> {}", b.before.admin, b.after.admin));
    }
    if b.before.weight != b.after.weight {
        parts.push(format!("weight {} -> {}", b.before.weight, b.after.weight));
    }
    if parts.is_empty() {
        parts.push(format!("{} (no change)", b.action.as_str()));
    }
    let forced = if b.forced { " (forced)" } else { "" };
    format!("{}{forced}", parts.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;
    use lb_daemon::api::model::{Active, AppliedBy, FleetHistory, SwitchMode};

    #[test]
    fn one_line_per_change_and_its_reason() {
        assert_eq!(render(&[]), "no recorded changes\n");
        let entry = HistoryEntry {
            id: 8,
            time: "2030-01-01T00:00:30Z".into(),
            service: "web".into(),
            kind: HistoryKind::AutoRollback,
            from: Active::Pool("pool-b".into()),
            to: Active::Pool("pool-a".into()),
            mode: SwitchMode::Drain,
            requester: "lb-daemon watch of switch #7".into(),
            reason: Some("pool-b: 0 of 2 backends healthy".into()),
            backend: None,
        };
        let fleet = HistoryItem {
            entry: entry.clone(),
            fleet: Some(FleetHistory {
                via: "lb1".into(),
                forced: false,
                applied: ["lb1", "lb2"]
                    .map(|h| AppliedBy { host: h.into(), time: "2030-01-01T00:00:30Z".into(), revision: 9 })
                    .to_vec(),
            }),
        };
        assert_eq!(
            render_items(&[fleet]),
            format!("{}    via lb1, applied on: lb1, lb2\n", render(std::slice::from_ref(&entry)))
        );
        // A single host's answer (no `fleet` member) reads as items too.
        let raw = serde_json::to_string(&[&entry]).unwrap();
        let items: Vec<HistoryItem> = serde_json::from_str(&raw).unwrap();
        assert_eq!(render_items(&items), render(std::slice::from_ref(&entry)));
        assert_eq!(
            render(&[entry]),
            "#8 2030-01-01T00:00:30Z web auto-rollback: pool-b -> pool-a (drain) by lb-daemon watch of switch #7\n    \
             reason: pool-b: 0 of 2 backends healthy\n"
        );
    }
}
