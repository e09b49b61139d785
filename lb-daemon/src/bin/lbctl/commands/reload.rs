//! `lbctl reload`: the daemon re-reads its config file (as on SIGHUP).

use lb_daemon::api::client::Client;
use lb_daemon::api::model::ReloadOutcome;

use super::parse;
use crate::failure::Failure;
use crate::render::json;

/// `POST /v1/reload`: what changed, one line each.
pub fn run(client: &Client, json_out: bool) -> Result<String, Failure> {
    let raw = client.post_text("/v1/reload", &serde_json::json!({}))?;
    let out: ReloadOutcome = parse(&raw)?;
    Ok(if json_out {
        json::pretty(&raw)
    } else if !out.changed {
        "config reloaded: nothing changed\n".to_owned()
    } else {
        let mut s = "config reloaded:\n".to_owned();
        for c in &out.changes {
            s.push_str(&format!("  {c}\n"));
        }
        s
    })
}
