//! `lbctl status`: the daemon (uptime, adoption, XDP mode per interface), then per service its
//! active pool or split, watch, pools and backends, then the pass/drop counters, then (in a
//! fleet) every live host and its applied revision.

use std::time::Duration;

use lb_daemon::api::client::Client;
use lb_daemon::api::model::StatusView;

use super::{check_service, parse};
use crate::failure::Failure;
use crate::fleet;
use crate::render::{Paint, json, parts, table};

/// `GET /v1/status` (only `service` when given).
pub fn run(client: &Client, service: Option<&str>, json_out: bool) -> Result<String, Failure> {
    let raw = client.get_text("/v1/status")?;
    let status: StatusView = parse(&raw)?;
    check_service(&status, service)?;
    if json_out {
        return Ok(json::pretty(&raw));
    }
    let mut text = render(&status, service, Paint::stdout()) + &bgp_part(&raw);
    // With [sync]: the flow sync's peers, queues, drops and refusals (the `sync` member).
    if let Some(s) = crate::sync::of_status(&raw) {
        text.push('\n');
        text.push_str(&crate::sync::render(&s, Paint::stdout()));
    }
    // In a fleet: every live host and its applied revision (the status's `fleet` member).
    if let Some(f) = fleet::of_status(&raw) {
        text.push('\n');
        text.push_str(&fleet::render(&f, Paint::stdout()));
    }
    Ok(text)
}

/// The BGP announcements (`bgp` in the raw status, with `[bgp]` only), after a blank line.
fn bgp_part(raw: &str) -> String {
    let part = super::host::status_part(raw, Paint::stdout());
    if part.is_empty() { part } else { format!("\n{part}") }
}

/// `lbctl status` as text: the daemon (version, uptime, adopted state, XDP mode per interface),
/// then per service its header (active pool or split, watch), pools (share, health, counters),
/// backends (health, counters) and the down backends with their errors; then the non-zero
/// pass/drop/forward counters.
pub fn render(s: &StatusView, only: Option<&str>, paint: Paint) -> String {
    let mut out = format!(
        "lb-daemon {} (instance {}): uptime {}, {}\n",
        s.version,
        s.instance,
        humantime::format_duration(Duration::from_secs(s.uptime_s)),
        if s.adopted {
            "adopted pinned state (forwarding survived a restart)"
        } else {
            "started fresh (no pinned state adopted)"
        }
    );
    out.push_str(&format!("interfaces: {}\n", parts::interfaces_line(&s.interfaces, paint)));
    for w in &s.warnings {
        out.push_str(&format!("{} {w}\n", paint.red("warning:")));
    }
    for svc in s.services.iter().filter(|svc| only.is_none_or(|n| n == svc.name)) {
        out.push('\n');
        out.push_str(&parts::service_header(svc, paint));
        let mut rows = vec![["POOL", "SHARE", "HEALTHY", "PACKETS", "NEW FLOWS"].map(String::from).to_vec()];
        for p in &svc.pools {
            rows.push(vec![
                p.name.clone(),
                format!("{}%", p.share),
                parts::pool_health(p, paint),
                p.traffic.packets.to_string(),
                p.traffic.new_flows.to_string(),
            ]);
        }
        out.push_str(&table::table(&rows, &[false, true, false, true, true], "  "));
        let mut rows = vec![["POOL", "BACKEND", "STATE", "PACKETS", "NEW FLOWS"].map(String::from).to_vec()];
        for p in &svc.pools {
            for b in &p.backends {
                rows.push(vec![
                    p.name.clone(),
                    b.addr.clone(),
                    super::backend::state_text(b, paint),
                    b.traffic.packets.to_string(),
                    b.traffic.new_flows.to_string(),
                ]);
            }
        }
        if rows.len() > 1 {
            out.push_str(&table::table(&rows, &[false, false, false, true, true], "  "));
        }
        let down: Vec<String> = svc
            .pools
            .iter()
            .flat_map(|p| p.backends.iter().filter(|b| !b.up).map(move |b| (p, b)))
            .map(|(p, b)| format!("  {} {} {}{}", paint.red("DOWN"), p.name, b.addr, parts::last_error(b)))
            .collect();
        for line in down {
            out.push_str(&line);
            out.push('\n');
        }
    }
    let counters: Vec<String> =
        s.reasons.iter().filter(|(_, n)| *n > 0).map(|(r, n)| format!("{r}={n}")).collect();
    if !counters.is_empty() {
        out.push_str(&format!("\ncounters: {}\n", counters.join(" ")));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::*;
    use lb_daemon::api::model::{InterfaceView, WatchState};

    #[test]
    fn status_shows_backends_interfaces_and_adoption() {
        let mut status = status_view(vec![counted(2)], &[("pass_not_vip", 3), ("fwd_tx", 0)]);
        status.interfaces.push(InterfaceView {
            name: "eth1".into(),
            mode: "generic".into(),
            ..Default::default()
        });
        status.uptime_s = 3_700;
        let text = render(&status, None, Paint::OFF);
        assert!(
            text.starts_with("lb-daemon 0.1.0 (instance lb): uptime 1h 1m 40s, adopted pinned state"),
            "{text}"
        );
        assert!(text.contains("interfaces: eth0 (XDP native), eth1 (XDP generic)\n"), "{text}");
        assert!(text.contains("  active: pool-b   previous: pool-a   epoch: 3\n"), "{text}");
        assert!(text.contains("  POOL    BACKEND        STATE  PACKETS  NEW FLOWS\n"), "{text}");
        assert!(text.contains("  pool-a  10.0.0.1:8080  up          20         10\n"), "{text}");
        assert!(text.contains("  pool-a  10.0.0.2:8080  DOWN        20          0\n"), "{text}");
        assert!(text.contains("  pool-b  10.0.1.2:8080  up          20          4\n"), "{text}");
        assert!(text.contains("counters: pass_not_vip=3\n"), "{text}");
        status.adopted = false;
        assert!(render(&status, None, Paint::OFF).contains("started fresh"));
    }

    #[test]
    fn down_backends_and_the_last_watch() {
        let status = StatusView {
            instance: "lb".into(),
            version: "0.1.0".into(),
            uptime_s: 5,
            adopted: false,
            interfaces: vec![],
            services: vec![service(100, 0, Some(watch_view(WatchState::RolledBack, 7)))],
            reasons: vec![],
            warnings: vec!["IPv4 forwarding is off on eth0".into()],
        };
        let text = render(&status, None, Paint::OFF);
        assert!(text.contains("\nwarning: IPv4 forwarding is off on eth0\n"), "{text}");
        assert!(text.contains("POOL    SHARE  HEALTHY"), "{text}");
        assert!(text.contains("1/2 (min 2) below min"), "{text}");
        assert!(text.contains("DOWN pool-a 10.0.0.2:8080: connect: connection refused"), "{text}");
        assert!(
            text.contains("last watch of switch #7: pool-b rolled back automatically (#8): pool-b: 0 of 2"),
            "{text}"
        );
    }
}
