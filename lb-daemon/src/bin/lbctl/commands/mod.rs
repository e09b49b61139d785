//! One file per command: the requests it makes and, for text output, how it renders the
//! answer. What several commands share is here: decoding, the service path, the only service.

pub mod backend;
pub mod backends;
pub mod completions;
pub mod drain_status;
pub mod history;
pub mod host;
pub mod man;
pub mod pools;
pub mod reload;
pub mod rollback;
pub mod shutdown;
pub mod split;
pub mod status;
pub mod switch;
pub mod top;

use lb_daemon::api::client::{Client, ClientError};
use lb_daemon::api::model::{ErrorCode, ServiceView, StatusView, SwitchOutcome};
use serde::de::DeserializeOwned;

use crate::Command;
use crate::failure::{Failure, local_error};
use crate::fleet;
use crate::render::{json, parts, print_stdout};

/// What a command that needs no daemon prints (`completions`, `man`); `None` for the others.
pub fn offline_output(command: &Command) -> Option<String> {
    match command {
        Command::Completions { shell } => Some(completions::script(*shell)),
        Command::Man => Some(man::page()),
        _ => None,
    }
}

/// A response decoded as `T`.
pub fn parse<T: DeserializeOwned>(raw: &str) -> Result<T, ClientError> {
    serde_json::from_str(raw)
        .map_err(|e| ClientError::Protocol(format!("unexpected response from lb-daemon: {e}")))
}

/// `/v1/services/web/switch` with --service, `/v1/switch` (the only service) without.
pub fn service_path(service: Option<&str>, verb: &str) -> String {
    match service {
        Some(s) => format!("/v1/services/{s}/{verb}"),
        None => format!("/v1/{verb}"),
    }
}

/// `not_found` when `--service` names a service the status does not have.
pub fn check_service(status: &StatusView, only: Option<&str>) -> Result<(), ClientError> {
    match only {
        Some(name) if !status.services.iter().any(|s| s.name == name) => {
            Err(local_error(ErrorCode::NotFound, format!("no service named {name}")))
        }
        _ => Ok(()),
    }
}

/// `GET /v1/services/{name}` of `--service` or of the only service: the raw answer and its view.
pub fn service_view(client: &Client, service: Option<&str>) -> Result<(String, ServiceView), ClientError> {
    let name = match service {
        Some(s) => s.to_owned(),
        None => only_service(client)?,
    };
    let raw = client.get_text(&format!("/v1/services/{name}"))?;
    let view = parse(&raw)?;
    Ok((raw, view))
}

/// The only service's name, or an error naming the choices.
fn only_service(client: &Client) -> Result<String, ClientError> {
    let services: Vec<ServiceView> = client.get("/v1/services")?;
    match services.as_slice() {
        [one] => Ok(one.name.clone()),
        [] => Err(local_error(ErrorCode::NotFound, "the daemon has no services".into())),
        many => {
            let names: Vec<&str> = many.iter().map(|s| s.name.as_str()).collect();
            Err(local_error(
                ErrorCode::InvalidRequest,
                format!("the daemon has several services ({}): pick one with --service", names.join(", ")),
            ))
        }
    }
}

/// A switch/rollback/split outcome as printed (`verb` as in "would switch").
pub fn outcome(json_out: bool, raw: &str, verb: &str) -> Result<String, Failure> {
    let o: SwitchOutcome = parse(raw)?;
    Ok(if json_out { json::pretty(raw) } else { parts::outcome_text(&o, verb) })
}

/// A change's outcome (`raw`), then, with `--wait-fleet`, the wait for every live host to
/// apply it: text prints the outcome before waiting and a line once applied; JSON prints one
/// document, the outcome with a `fleet_wait` member.
pub fn changed(
    client: &Client,
    json_out: bool,
    raw: &str,
    verb: &str,
    wait_fleet: Option<std::time::Duration>,
) -> Result<String, Failure> {
    let Some(timeout) = wait_fleet else { return outcome(json_out, raw, verb) };
    let o: SwitchOutcome = parse(raw)?;
    if !json_out {
        print_stdout(&parts::outcome_text(&o, verb));
    }
    match fleet::after_change(client, raw, timeout) {
        None if json_out => Ok(json::pretty(raw)),
        None => Ok(String::new()),
        Some((waited, result)) => {
            if json_out {
                print_stdout(&json::pretty(&fleet::with_wait(raw, &waited)));
            } else if result.is_ok() {
                print_stdout(&fleet::applied_line(&waited));
            }
            result.map(|()| String::new())
        }
    }
}
