//! The flow sync in `lbctl status`: the status's `sync` member (only with `[sync]`), so an
//! operator sees whether the peers are linked and whether records are queued, dropped or
//! refused before a host loss shows it.

use lb_daemon::fleet::sync::SyncView;

use crate::render::{Paint, table};

/// The `sync` member of a raw status, if the daemon syncs flows.
pub fn of_status(raw_status: &str) -> Option<SyncView> {
    let value: serde_json::Value = serde_json::from_str(raw_status).ok()?;
    serde_json::from_value(value.get("sync")?.clone()).ok()
}

/// The sync as text: one summary line (ready, counters, refusals) and a row per peer.
pub fn render(s: &SyncView, paint: Paint) -> String {
    let state = if s.ready {
        paint.green("ready")
    } else {
        paint.yellow(&format!("waiting for {}", s.waiting_for.join(", ")))
    };
    let refused = s.refused_unknown_service + s.refused_unknown_backend + s.refused_stale_epoch;
    let mut out = format!(
        "flow sync on {} (interval {}ms): {state}; reported {}, received {}, inserted {}, kept local {}\n",
        s.listen, s.interval_ms, s.reported, s.received, s.inserted, s.kept_local
    );
    let refused_text = format!(
        "refused {refused} (unknown service {}, unknown backend {}, stale epoch {}), auth failures {}",
        s.refused_unknown_service, s.refused_unknown_backend, s.refused_stale_epoch, s.auth_failures
    );
    out.push_str("  ");
    out.push_str(&if refused > 0 || s.auth_failures > 0 { paint.red(&refused_text) } else { refused_text });
    out.push('\n');
    if let Some(f) = &s.flows {
        out.push_str(&format!(
            "  flow table: {} established of this host, {} synced from peers (counted apart; scan {}s old)\n",
            f.local,
            f.synced,
            f.scan_age_ms / 1000
        ));
    }
    if s.peers.is_empty() {
        out.push_str("  no peers\n");
        return out;
    }
    let mut rows = vec![["PEER", "LINK", "QUEUED", "SENT", "DROPPED", "LAST ACK"].map(String::from).to_vec()];
    for p in &s.peers {
        let link = if p.connected { paint.green("up") } else { paint.red("down") };
        rows.push(vec![
            p.addr.clone(),
            link,
            p.queued.to_string(),
            p.sent.to_string(),
            p.dropped.to_string(),
            if p.connected { format!("{}ms", p.since_ack_ms) } else { "-".into() },
        ]);
    }
    out.push_str(&table::table(&rows, &[false, false, true, true, true, true], "  "));
    for p in s.peers.iter().filter(|p| p.error.is_some()) {
        out.push_str(&format!("  {} {}\n", p.addr, p.error.as_deref().unwrap_or_default()));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use lb_daemon::fleet::sync::view::{SyncFlows, SyncPeerView};

    fn view() -> SyncView {
        SyncView {
            listen: "10.0.0.1:7946".into(),
            interval_ms: 100,
            peer_timeout_ms: 2000,
            ready: true,
            waiting_for: vec![],
            reported: 200,
            received: 100,
            inserted: 99,
            kept_local: 1,
            refused_unknown_service: 0,
            refused_unknown_backend: 0,
            refused_stale_epoch: 3,
            auth_failures: 0,
            bytes_sent: 1000,
            peers: vec![
                SyncPeerView {
                    addr: "10.0.0.2:7946".into(),
                    connected: true,
                    since_ack_ms: 40,
                    queued: 5,
                    sent: 200,
                    dropped: 0,
                    connects: 1,
                    drops: 0,
                    bulk_sent: 0,
                    bulk_received: true,
                    error: None,
                },
                SyncPeerView {
                    addr: "10.0.0.3:7946".into(),
                    connected: false,
                    since_ack_ms: 9000,
                    queued: 0,
                    sent: 7,
                    dropped: 12,
                    connects: 1,
                    drops: 1,
                    bulk_sent: 0,
                    bulk_received: false,
                    error: Some("connection refused".into()),
                },
            ],
            flows: Some(SyncFlows { local: 40, synced: 75, scan_age_ms: 2500 }),
        }
    }

    #[test]
    fn the_sync_part_shows_peers_queues_drops_and_refusals() {
        let raw = serde_json::json!({ "sync": view() }).to_string();
        let s = of_status(&raw).expect("sync member");
        let text = render(&s, Paint::OFF);
        assert!(text.starts_with("flow sync on 10.0.0.1:7946 (interval 100ms): ready; reported 200, received 100, inserted 99, kept local 1\n"), "{text}");
        assert!(text.contains("refused 3 (unknown service 0, unknown backend 0, stale epoch 3)"), "{text}");
        assert!(
            text.contains("  flow table: 40 established of this host, 75 synced from peers (counted apart; scan 2s old)\n"),
            "{text}"
        );
        assert!(text.contains("  PEER           LINK  QUEUED  SENT  DROPPED  LAST ACK\n"), "{text}");
        assert!(text.contains("  10.0.0.2:7946  up         5   200        0      40ms\n"), "{text}");
        assert!(text.contains("  10.0.0.3:7946  down       0     7       12         -\n"), "{text}");
        assert!(text.contains("  10.0.0.3:7946 connection refused\n"), "{text}");
        assert_eq!(of_status(r#"{"sync":null}"#), None, "no [sync]: no part");
        assert_eq!(of_status("{}"), None);
    }
}
