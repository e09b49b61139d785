//! `lbctl backends`: one line per backend of the service.

use lb_daemon::api::client::Client;
use lb_daemon::api::model::ServiceView;

use super::service_view;
use crate::failure::Failure;
use crate::render::{Paint, json, table};

/// `GET /v1/services/{name}` of `--service` or the only service.
pub fn run(client: &Client, service: Option<&str>, json_out: bool) -> Result<String, Failure> {
    let (raw, view) = service_view(client, service)?;
    Ok(if json_out { json::pretty(&raw) } else { render(&view, Paint::stdout()) })
}

/// `lbctl backends` as text.
pub fn render(svc: &ServiceView, paint: Paint) -> String {
    let mut rows = vec![
        ["POOL", "ADDR", "WEIGHT", "STATE", "PACKETS", "NEW FLOWS", "LAST ERROR"].map(String::from).to_vec(),
    ];
    for p in &svc.pools {
        for b in &p.backends {
            rows.push(vec![
                p.name.clone(),
                b.addr.clone(),
                super::backend::weight_text(b),
                super::backend::state_text(b, paint),
                b.traffic.packets.to_string(),
                b.traffic.new_flows.to_string(),
                b.last_error.clone().unwrap_or_default(),
            ]);
        }
    }
    table::table(&rows, &[false, false, true, false, true, true], "")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::*;

    #[test]
    fn one_line_per_backend_with_its_last_error() {
        let backends = render(&service(0, 4, None), Paint::OFF);
        assert!(backends.lines().next().unwrap().ends_with("LAST ERROR"), "{backends}");
        assert!(backends.contains("DOWN") && backends.contains("connect: connection refused"), "{backends}");
    }
}
