//! The host endpoints of the management API (routed here by one hook in `api::server`):
//!
//! - `GET /v1/host`: [`HostView`] (announcements, why not, maintenance state, flows left);
//! - `POST /v1/host/drain`: maintenance: withdraw every VIP, keep forwarding what still arrives;
//! - `POST /v1/host/undrain`: announce again what the rules allow.
//!
//! Drain and undrain answer with the [`BgpView`] once BIRD confirmed (or with `in_sync: false`
//! and the error while it does not; the daemon keeps retrying). Without `[bgp]` every host path
//! answers 404 saying so.

use std::sync::Arc;

use hyper::Method;

use super::host::{BgpView, Fleet, HostView};
use crate::api::model::{ApiError, StatusView};

/// What a host endpoint answers.
#[derive(Debug, serde::Serialize)]
#[serde(untagged)]
pub enum HostAnswer {
    /// `GET /v1/host`.
    Host(Box<HostView>),
    /// `POST /v1/host/drain` and `/undrain`.
    Bgp(Box<BgpView>),
}

/// Answers the host paths (`None` for any other path, which the server routes as before).
pub async fn route(
    fleet: Option<&Arc<Fleet>>,
    method: &Method,
    path: &str,
    requester: &str,
) -> Option<Result<HostAnswer, ApiError>> {
    let action = match path {
        "/v1/host" => None,
        "/v1/host/drain" => Some(true),
        "/v1/host/undrain" => Some(false),
        _ => return None,
    };
    let wanted = if action.is_some() { Method::POST } else { Method::GET };
    if method != wanted {
        return Some(Err(ApiError::invalid(format!("method {method} not allowed on {path}; use {wanted}"))));
    }
    let Some(fleet) = fleet.cloned() else {
        return Some(Err(ApiError::not_found(
            "this daemon has no [bgp] table: it announces nothing, so there is no host to drain",
        )));
    };
    let requester = requester.to_owned();
    let outcome = tokio::task::spawn_blocking(move || match action {
        None => fleet.host_view().map(|v| HostAnswer::Host(Box::new(v))),
        Some(drain) => fleet.set_drained(drain, &requester).map(|v| HostAnswer::Bgp(Box::new(v))),
    })
    .await;
    Some(outcome.unwrap_or_else(|e| Err(ApiError::internal(format!("host request failed: {e}")))))
}

/// `GET /v1/status` with a `bgp` member when BGP is configured (unchanged otherwise).
pub fn status_with_bgp(status: StatusView, fleet: Option<&Arc<Fleet>>) -> serde_json::Value {
    let mut value = serde_json::to_value(&status).unwrap_or(serde_json::Value::Null);
    if let (Some(fleet), serde_json::Value::Object(map)) = (fleet, &mut value) {
        map.insert("bgp".into(), serde_json::to_value(fleet.view()).unwrap_or(serde_json::Value::Null));
    }
    value
}
