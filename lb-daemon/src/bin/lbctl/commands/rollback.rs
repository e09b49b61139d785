//! `lbctl rollback`: back to the previous active pool or split.

use lb_daemon::api::client::Client;
use lb_daemon::api::model::RollbackRequest;

use super::{outcome, service_path};
use crate::ChangeFlags;
use crate::failure::Failure;

/// `POST /v1/services/{name}/rollback`.
pub fn run(
    client: &Client,
    service: Option<&str>,
    json: bool,
    hard: bool,
    change: &ChangeFlags,
) -> Result<String, Failure> {
    let req = RollbackRequest { hard, dry_run: change.dry_run, expect_active: change.expect_active.clone() };
    outcome(json, &client.post_text(&service_path(service, "rollback"), &req)?, "roll back")
}
