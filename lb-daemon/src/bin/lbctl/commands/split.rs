//! `lbctl split`: share new flows between pools by percentage (a canary).

use std::time::Duration;

use lb_daemon::api::client::Client;
use lb_daemon::api::model::SplitRequest;

use super::{changed, service_path};
use crate::ChangeFlags;
use crate::failure::Failure;

/// `POST /v1/services/{name}/split` with the weights parsed from the command line, then
/// `--wait-fleet`.
pub fn run(
    client: &Client,
    service: Option<&str>,
    json: bool,
    weights: SplitRequest,
    force: bool,
    change: &ChangeFlags,
    wait_fleet: Option<Duration>,
) -> Result<String, Failure> {
    let req = SplitRequest {
        force,
        dry_run: change.dry_run,
        expect_active: change.expect_active.clone(),
        ..weights
    };
    let raw = client.post_text(&service_path(service, "split"), &req)?;
    changed(client, json, &raw, "split", wait_fleet)
}
