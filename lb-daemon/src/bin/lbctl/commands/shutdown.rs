//! `lbctl shutdown`: stop the daemon, forwarding on (or off with `--detach`).

use lb_daemon::api::client::Client;
use lb_daemon::api::model::ShutdownRequest;

use crate::failure::Failure;
use crate::render::json;

/// `POST /v1/shutdown`.
pub fn run(client: &Client, json_out: bool, detach: bool) -> Result<String, Failure> {
    let raw = client.post_text("/v1/shutdown", &ShutdownRequest { detach })?;
    Ok(if json_out {
        json::pretty(&raw)
    } else if detach {
        "lb-daemon is shutting down and detaching the XDP program: forwarding stops\n".into()
    } else {
        "lb-daemon is shutting down; the XDP program stays attached and forwarding continues\n".into()
    })
}
