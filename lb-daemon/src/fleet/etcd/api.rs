//! `GET /v1/fleet` (routed here by one hook in `api::server`) and the `fleet` member of
//! `GET /v1/status`. Without `[fleet]`, `/v1/fleet` answers 404 saying so and the status has
//! no `fleet` member.

use std::sync::Arc;

use hyper::Method;

use crate::api::Control;
use crate::api::model::{ApiError, FleetView};

/// Answers `/v1/fleet` (`None` for any other path).
pub async fn route(
    control: &Arc<dyn Control>,
    method: &Method,
    path: &str,
) -> Option<Result<FleetView, ApiError>> {
    if path != "/v1/fleet" {
        return None;
    }
    if method != Method::GET {
        return Some(Err(ApiError::invalid(format!("method {method} not allowed on {path}; use GET"))));
    }
    let control = control.clone();
    let view = tokio::task::spawn_blocking(move || control.fleet())
        .await
        .unwrap_or_else(|e| Err(ApiError::internal(format!("fleet request failed: {e}"))));
    Some(view.and_then(|v| {
        v.ok_or_else(|| {
            ApiError::not_found("this daemon has no [fleet] table: its desired state is its own state file")
        })
    }))
}

/// Adds `fleet` to a status JSON object when the daemon is in a fleet.
pub async fn with_fleet(control: &Arc<dyn Control>, mut status: serde_json::Value) -> serde_json::Value {
    let control = control.clone();
    let view = tokio::task::spawn_blocking(move || control.fleet()).await;
    if let (Ok(Ok(Some(view))), serde_json::Value::Object(map)) = (view, &mut status) {
        map.insert("fleet".into(), serde_json::to_value(view).unwrap_or(serde_json::Value::Null));
    }
    status
}
