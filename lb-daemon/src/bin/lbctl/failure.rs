//! Why lbctl failed, and the one path from a failure to its exit code (stable: CI steps branch
//! on them, see `lbctl --help`) and to what it prints.

use lb_daemon::api::client::ClientError;
use lb_daemon::api::model::{ApiError, ErrorCode};

use crate::render::{self, Paint};

/// Why lbctl failed.
#[derive(Debug)]
pub enum Failure {
    /// A request failed; whatever it asked for did not happen.
    Request(ClientError),
    /// The change was made, but a request while following it failed. `note` says what the
    /// daemon still does by itself (a watch it holds).
    Following {
        /// What failed.
        error: ClientError,
        /// E.g. "lb-daemon still holds the watch of pool-b until ...".
        note: Option<String>,
    },
    /// `--wait` or `--wait-drained` ran out of time.
    WaitTimedOut(String),
    /// The daemon rolled back by itself during `--watch`.
    RolledBack(String),
    /// Anything else: a cancelled watch, a watch that did not end, a malformed response.
    Unexpected(String),
}

impl From<ClientError> for Failure {
    fn from(error: ClientError) -> Self {
        Failure::Request(error)
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Request(e) => write!(f, "{e}"),
            Failure::Following { error, note: Some(note) } => write!(f, "{error}; {note}"),
            Failure::Following { error, note: None } => write!(f, "{error} (the change itself was made)"),
            Failure::WaitTimedOut(m) | Failure::RolledBack(m) | Failure::Unexpected(m) => write!(f, "{m}"),
        }
    }
}

impl Failure {
    /// The process exit code:
    ///
    /// | code | meaning |
    /// |------|---------|
    /// | 0 | success (never returned here) |
    /// | 1 | daemon internal error, or an unexpected failure (bad response, request timeout, watch cancelled) |
    /// | 2 | usage error (clap exits with it before anything is sent) |
    /// | 3 | daemon unreachable; also when it stays unreachable while following a change; or the fleet's etcd is unreachable (nothing changed) |
    /// | 4 | not found (unknown service or pool) |
    /// | 5 | invalid request or refused (e.g. a pool below min_healthy without `--force`) |
    /// | 6 | conflict (`--expect-active` did not match, or the service changed during `--wait-drained`) |
    /// | 7 | unauthorized (TCP without the right token) |
    /// | 8 | a wait (`--wait`, `--wait-drained`) timed out |
    /// | 9 | the daemon rolled back automatically during `--watch` |
    pub fn exit_code(&self) -> i32 {
        match self {
            Failure::Request(e) => request_exit_code(e),
            Failure::Following { error, .. } => match error {
                ClientError::Api { .. } => request_exit_code(error),
                // Lost contact (or a timeout) after the change: the daemon is what is unreachable.
                ClientError::Unreachable { .. } | ClientError::Protocol(_) => 3,
            },
            Failure::WaitTimedOut(_) => 8,
            Failure::RolledBack(_) => 9,
            Failure::Unexpected(_) => 1,
        }
    }
}

/// The exit code of a failed request (see [`Failure::exit_code`]).
fn request_exit_code(error: &ClientError) -> i32 {
    match error {
        ClientError::Unreachable { .. } => 3,
        ClientError::Api { error, .. } => match error.code {
            ErrorCode::NotFound => 4,
            ErrorCode::InvalidRequest | ErrorCode::Refused => 5,
            ErrorCode::Conflict => 6,
            ErrorCode::Unauthorized => 7,
            ErrorCode::Internal => 1,
            // The fleet's etcd is unreachable: like an unreachable daemon, nothing changed.
            ErrorCode::Unavailable => 3,
        },
        ClientError::Protocol(_) => 1,
    }
}

/// An error found by lbctl itself, shaped like the daemon's.
pub fn local_error(code: ErrorCode, message: String) -> ClientError {
    ClientError::Api { status: code.http_status(), error: ApiError::new(code, message) }
}

/// Reports a failure: message (and a hint) on stderr; in JSON mode the API's error body on
/// stdout for a failed request (a failure after a change is part of the JSON printed already),
/// on `one_line` when the command prints one JSON object per line (`top`). `unix`: the
/// endpoint is the Unix socket (the hints name --socket).
pub fn report(failure: &Failure, json: bool, one_line: bool, unix: bool) {
    if json && let Failure::Request(ClientError::Api { error, .. }) = failure {
        let body = if one_line {
            serde_json::to_string(&error.body())
        } else {
            serde_json::to_string_pretty(&error.body())
        };
        if let Ok(body) = body {
            render::print_stdout(&body);
        }
    }
    let hint = match failure {
        Failure::Request(ClientError::Unreachable { source, .. }) => match source.kind() {
            std::io::ErrorKind::PermissionDenied => " (the API socket is root-only: try sudo)",
            std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused if unix => {
                " (is lb-daemon running? the socket path is set by --socket or LB_SOCKET)"
            }
            _ => "",
        },
        Failure::Request(ClientError::Api { error, .. }) if error.code == ErrorCode::Unauthorized => {
            " (check --token-file or LB_TOKEN)"
        }
        _ => "",
    };
    eprintln!("{} {failure}{hint}", Paint::stderr().error("lbctl:"));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::unreachable;

    fn api(code: ErrorCode) -> ClientError {
        ClientError::Api { status: code.http_status(), error: ApiError::new(code, "x") }
    }

    #[test]
    fn exit_codes() {
        let code = |e: ClientError| Failure::from(e).exit_code();
        assert_eq!(code(unreachable()), 3);
        assert_eq!(code(api(ErrorCode::NotFound)), 4);
        assert_eq!(code(api(ErrorCode::InvalidRequest)), 5);
        assert_eq!(code(api(ErrorCode::Refused)), 5);
        assert_eq!(code(api(ErrorCode::Conflict)), 6);
        assert_eq!(code(api(ErrorCode::Unauthorized)), 7);
        assert_eq!(code(api(ErrorCode::Internal)), 1);
        assert_eq!(code(api(ErrorCode::Unavailable)), 3);
        assert_eq!(code(ClientError::Protocol("bad".into())), 1);
        // 405 and 413 carry invalid_request.
        assert_eq!(code(ClientError::Api { status: 405, error: ApiError::invalid("method") }), 5);
    }

    #[test]
    fn exit_codes_of_waits_and_watches() {
        assert_eq!(Failure::WaitTimedOut("no new flow reached pool-b within 30s".into()).exit_code(), 8);
        assert_eq!(Failure::RolledBack("rolled back".into()).exit_code(), 9);
        assert_eq!(Failure::Unexpected("cancelled".into()).exit_code(), 1);
        // Losing the daemon after the change is "unreachable", whatever the transport said.
        let lost = |error| Failure::Following { error, note: Some("watch".into()) }.exit_code();
        assert_eq!(lost(unreachable()), 3);
        assert_eq!(lost(ClientError::Protocol("lb-daemon did not answer within 10s".into())), 3);
        // The daemon's own answers keep their codes.
        assert_eq!(lost(api(ErrorCode::NotFound)), 4);
        assert_eq!(lost(api(ErrorCode::Conflict)), 6);
        let e =
            Failure::Following { error: unreachable(), note: Some("lb-daemon still holds the watch".into()) };
        assert!(e.to_string().ends_with("; lb-daemon still holds the watch"), "{e}");
        let e = Failure::Following { error: unreachable(), note: None };
        assert!(e.to_string().contains("the change itself was made"), "{e}");
    }
}
