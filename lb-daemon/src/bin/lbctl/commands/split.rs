//! `lbctl split`: share new flows between pools by percentage (a canary).

use lb_daemon::api::client::Client;
use lb_daemon::api::model::SplitRequest;

use super::{outcome, service_path};
use crate::ChangeFlags;
use crate::failure::Failure;

/// `POST /v1/services/{name}/split` with the weights parsed from the command line.
pub fn run(
    client: &Client,
    service: Option<&str>,
    json: bool,
    weights: SplitRequest,
    force: bool,
    change: &ChangeFlags,
) -> Result<String, Failure> {
    let req = SplitRequest {
        force,
        dry_run: change.dry_run,
        expect_active: change.expect_active.clone(),
        ..weights
    };
    outcome(json, &client.post_text(&service_path(service, "split"), &req)?, "split")
}
