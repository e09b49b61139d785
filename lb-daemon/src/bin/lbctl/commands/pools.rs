//! `lbctl pools`: each pool of the service with its share, health and backends.

use lb_daemon::api::client::Client;
use lb_daemon::api::model::ServiceView;

use super::service_view;
use crate::failure::Failure;
use crate::render::{Paint, json, parts, table};

/// `GET /v1/services/{name}` of `--service` or the only service.
pub fn run(client: &Client, service: Option<&str>, json_out: bool) -> Result<String, Failure> {
    let (raw, view) = service_view(client, service)?;
    Ok(if json_out { json::pretty(&raw) } else { render(&view, Paint::stdout()) })
}

/// `lbctl pools` as text.
pub fn render(svc: &ServiceView, paint: Paint) -> String {
    let mut out = parts::service_header(svc, paint);
    for p in &svc.pools {
        out.push_str(&format!(
            "\npool {}: share {}%, healthy {}, {} packets, {} new flows\n",
            paint.bold(&p.name),
            p.share,
            parts::pool_health(p, paint),
            p.traffic.packets,
            p.traffic.new_flows
        ));
        let rows: Vec<Vec<String>> = p
            .backends
            .iter()
            .map(|b| {
                let mut row =
                    vec![b.addr.clone(), format!("weight {}", b.weight), parts::up_down(b.up, paint)];
                if let Some(e) = &b.last_error {
                    row.push(e.clone());
                }
                row
            })
            .collect();
        out.push_str(&table::table(&rows, &[], "  "));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::*;
    use lb_daemon::api::model::WatchState;

    #[test]
    fn pools_with_health_backends_and_the_watch() {
        let svc = service(0, 4, Some(watch_view(WatchState::Watching, 7)));
        let pools = render(&svc, Paint::OFF);
        assert!(pools.contains("pool pool-a: share 0%, healthy 1/2 (min 2) below min,"), "{pools}");
        assert!(pools.contains("pool pool-b: share 100%, healthy 2/2 (min 1),"), "{pools}");
        assert!(pools.contains("10.0.0.2:8080  weight 1  DOWN  connect: connection refused\n"), "{pools}");
        assert!(pools.contains("10.0.0.1:8080  weight 1  up\n"), "{pools}");
        assert!(
            pools.contains("watch of switch #7: pool-b watched for 42s more (until 2030-01-01T00:01:00Z)"),
            "{pools}"
        );
    }

    #[test]
    fn colours_change_nothing_but_the_escapes() {
        let svc = service(0, 4, Some(watch_view(WatchState::RolledBack, 7)));
        let coloured = render(&svc, Paint::ON);
        assert!(coloured.contains("service \x1b[1mweb\x1b[0m (nat)"), "{coloured}");
        assert!(coloured.contains("\x1b[31mlast watch of switch #7"), "{coloured}");
        assert_eq!(strip(&coloured), render(&svc, Paint::OFF));
    }
}
