//! Telling systemd (`Type=notify`) where the daemon is: READY=1 once the data plane is attached
//! and the API listens, so `systemctl start` (and units ordered after lb-daemon) wait for a
//! balancer that forwards and answers lbctl; STOPPING=1 when it begins to exit. Outside systemd
//! (`NOTIFY_SOCKET` unset) every call does nothing.

use sd_notify::NotifyState;

/// Sends READY=1 with a one-line STATUS for `systemctl status`.
pub fn ready(status: &str) {
    send(&[NotifyState::Ready, NotifyState::Status(status)]);
}

/// Sends STOPPING=1: systemd shows "deactivating" instead of taking the exit for a crash.
pub fn stopping() {
    send(&[NotifyState::Stopping]);
}

/// A failed notification is logged and otherwise ignored: forwarding does not depend on it, and
/// systemd times the start out by itself if READY never arrives.
fn send(states: &[NotifyState]) {
    if std::env::var_os("NOTIFY_SOCKET").is_none() {
        return;
    }
    match sd_notify::notify(false, states) {
        Ok(()) => tracing::debug!(?states, "notified the service manager"),
        Err(e) => tracing::warn!("cannot notify the service manager (NOTIFY_SOCKET): {e}"),
    }
}
