//! `lbctl drain-status`: established and closing flows per pool, counted from the flow table,
//! and apart from them the flows received from the fleet's other hosts (flow sync).

use std::time::Duration;

use lb_daemon::api::client::Client;
use lb_daemon::api::model::DrainView;

use super::{parse, service_path};
use crate::failure::Failure;
use crate::render::{json, table};

/// `GET /v1/services/{name}/drain`.
pub fn run(client: &Client, service: Option<&str>, json_out: bool) -> Result<String, Failure> {
    let raw = client.get_text(&service_path(service, "drain"))?;
    let view: DrainView = parse(&raw)?;
    Ok(if json_out { json::pretty(&raw) } else { render(&view) })
}

/// The drain view as a table.
pub fn render(d: &DrainView) -> String {
    let mut out = format!(
        "service {}: flows per pool ({} flows scanned; idle over {} not counted as established)\n",
        d.service,
        d.flows_scanned,
        humantime::format_duration(Duration::from_secs(d.idle_timeout_s))
    );
    // The SYNCED column only where flows are synced (a host without a fleet never has one).
    let synced = d.pools.iter().any(|p| p.synced > 0);
    let mut head = vec!["POOL", "SHARE", "ESTABLISHED", "CLOSING"];
    if synced {
        head.push("SYNCED");
    }
    let mut rows = vec![head.into_iter().map(String::from).collect::<Vec<_>>()];
    for p in &d.pools {
        let mut row =
            vec![p.pool.clone(), format!("{}%", p.share), p.established.to_string(), p.closing.to_string()];
        if synced {
            row.push(p.synced.to_string());
        }
        rows.push(row);
    }
    out.push_str(&table::table(&rows, &[false, true, true, true, true], "  "));
    if synced {
        out.push_str("  (SYNCED: received from the fleet's other hosts, not counted as established here)\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::*;

    #[test]
    fn flows_per_pool() {
        assert_eq!(
            render(&drain_view(0, 4)),
            "service web: flows per pool (99 flows scanned; idle over 2m not counted as established)\n  \
             POOL    SHARE  ESTABLISHED  CLOSING\n  \
             pool-a     0%            4        1\n  \
             pool-b   100%           30        0\n"
        );
    }

    #[test]
    fn synced_flows_have_their_own_column_when_there_are_any() {
        let mut d = drain_view(0, 4);
        d.pools[1].synced = 7;
        assert_eq!(
            render(&d),
            "service web: flows per pool (99 flows scanned; idle over 2m not counted as established)\n  \
             POOL    SHARE  ESTABLISHED  CLOSING  SYNCED\n  \
             pool-a     0%            4        1       0\n  \
             pool-b   100%           30        0       7\n  \
             (SYNCED: received from the fleet's other hosts, not counted as established here)\n"
        );
    }
}
