//! The fleet's fast path to "applied" (`[fleet]` only): a desired state from etcd is already
//! durable there (quorum, fsynced by etcd before any watch delivers it), so a host need not wait
//! for its own state file's fsyncs before it serves it. What a host must never do is come back,
//! after a crash, to an OLDER state than the one its pinned maps serve.
//!
//! So the change is first written as a small "pending" record beside the state file — a plain
//! write, no fsync: it is in the kernel's page cache once `write` returns, which outlives the
//! daemon (a crash, a kill -9) exactly as the pinned maps do — then the `SERVICES` entry is
//! updated, and only then is the whole state file written atomically (fsyncs) and the record
//! removed. A start replays a pending record newer than the state file's `fleet_revision`.
//! A power cut or reboot may lose or tear the record, but it also empties the pinned maps: the
//! host then starts from the (complete, fsynced) state file and resyncs from etcd.

use super::state::{PersistedState, ServiceState};
use crate::api::model::{HistoryEntry, WatchState};
use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// One service's change from the fleet, made live before the state file caught up with it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FleetPending {
    /// The etcd revision of the desired state.
    pub revision: i64,
    /// The service.
    pub service: String,
    /// Its new desired state.
    pub state: ServiceState,
    /// The history entry the change adds (its id is assigned when it is recorded).
    pub entry: Option<HistoryEntry>,
}

impl FleetPending {
    /// Makes `state` hold this change: the one transition both the live apply and a start's
    /// replay use. Returns the history id recorded, if any.
    pub fn apply_to(&self, state: &mut PersistedState) -> Option<u64> {
        let mut svc = self.state.clone();
        if let Some(known) = state.services.get(&self.service) {
            svc.id = known.id;
        }
        state.services.insert(self.service.clone(), svc);
        state.fleet_revision = state.fleet_revision.max(self.revision);
        let id = self.entry.clone().map(|e| state.record(e));
        // A local watch (from before the host joined a fleet) must not roll back on its own.
        if let Some(w) = state.watches.get_mut(&self.service)
            && w.state == WatchState::Watching
        {
            w.state = WatchState::Cancelled;
            w.reason = Some(format!("superseded by the fleet's change at revision {}", self.revision));
        }
        id
    }
}

/// Where the pending record of the state file `state_path` lives (beside it).
pub fn pending_path(state_path: &Path) -> PathBuf {
    let mut name = state_path.file_name().map(|n| n.to_os_string()).unwrap_or_else(|| "lb.state.json".into());
    name.push(".fleet-pending");
    state_path.with_file_name(name)
}

/// Writes the record: one `write` into the page cache, no fsync (see the module documentation).
pub fn write_pending(state_path: &Path, pending: &FleetPending) -> Result<()> {
    let path = pending_path(state_path);
    let body = serde_json::to_vec(pending)?;
    std::fs::write(&path, body).with_context(|| format!("writing {}", path.display()))
}

/// Removes the record once the state file holds it (a leftover is harmless: its revision is
/// not newer than the state file's).
pub fn remove_pending(state_path: &Path) -> Result<()> {
    let path = pending_path(state_path);
    match std::fs::remove_file(&path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(e).with_context(|| format!("removing {}", path.display()))
        }
        _ => Ok(()),
    }
}

/// The record beside `state_path`, if one is there and readable. A torn record (only after a
/// power cut, which also empties the pinned maps) is ignored with a warning.
pub fn read_pending(state_path: &Path) -> Option<FleetPending> {
    let path = pending_path(state_path);
    let text = std::fs::read(&path).ok()?;
    match serde_json::from_slice(&text) {
        Ok(p) => Some(p),
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "unreadable fleet pending record ignored (torn by a power cut?); the state file and etcd hold the desired state");
            None
        }
    }
}

/// `state` with `pending` replayed when it is newer than what the state file says was applied
/// last; whether it was.
pub fn replay(state: &mut PersistedState, pending: Option<&FleetPending>) -> bool {
    match pending {
        Some(p) if p.revision > state.fleet_revision => {
            tracing::info!(service = %p.service, revision = p.revision, active = %p.state.active, "replaying the fleet's change the state file had not caught up with (the pinned maps may serve it already)");
            p.apply_to(state);
            true
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::model::Active;

    fn pending(revision: i64, pool: &str) -> FleetPending {
        FleetPending {
            revision,
            service: "web".into(),
            state: ServiceState {
                id: 9,
                active: Active::Pool(pool.into()),
                previous: Some(Active::Pool("pool-a".into())),
                epoch: 1,
            },
            entry: None,
        }
    }

    #[test]
    fn only_a_newer_record_is_replayed_and_a_torn_one_is_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let state_path = dir.path().join("lb.state.json");
        assert_eq!(read_pending(&state_path), None);
        write_pending(&state_path, &pending(7, "pool-b")).unwrap();
        let read = read_pending(&state_path).unwrap();
        let mut s = PersistedState { fleet_revision: 7, ..PersistedState::default() };
        assert!(!replay(&mut s, Some(&read)), "not newer than the state file");
        s.fleet_revision = 5;
        s.services.insert("web".into(), ServiceState { id: 0, ..pending(0, "pool-a").state });
        assert!(replay(&mut s, Some(&read)));
        assert_eq!(s.fleet_revision, 7);
        assert_eq!(s.services["web"].active, Active::Pool("pool-b".into()));
        assert_eq!(s.services["web"].id, 0, "the state file's service id is kept");
        std::fs::write(pending_path(&state_path), b"{\"revision\":").unwrap();
        assert_eq!(read_pending(&state_path), None);
        remove_pending(&state_path).unwrap();
        remove_pending(&state_path).unwrap();
        assert!(!pending_path(&state_path).exists());
    }
}
