//! `lbctl rollback`: back to the previous active pool or split.

use std::time::Duration;

use lb_daemon::api::client::Client;
use lb_daemon::api::model::RollbackRequest;

use super::{changed, service_path};
use crate::ChangeFlags;
use crate::failure::Failure;

/// `POST /v1/services/{name}/rollback`, then `--wait-fleet`.
pub fn run(
    client: &Client,
    service: Option<&str>,
    json: bool,
    hard: bool,
    change: &ChangeFlags,
    wait_fleet: Option<Duration>,
) -> Result<String, Failure> {
    let req = RollbackRequest { hard, dry_run: change.dry_run, expect_active: change.expect_active.clone() };
    let raw = client.post_text(&service_path(service, "rollback"), &req)?;
    changed(client, json, &raw, "roll back", wait_fleet)
}
