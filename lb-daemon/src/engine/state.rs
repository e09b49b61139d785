//! The daemon's desired state on disk: which pool (or split) each service serves, what rollback
//! goes back to, the switch history, and the stable data-plane indices (backend, VIP, service)
//! that established flows refer to. Written atomically (temp file, fsync, rename, fsync of the
//! folder) after every change, so a restart or a reboot comes back to the last switch.

use crate::{
    api::model::{Active, BackendAdmin, HistoryEntry, WatchState},
    atomic_file::write_atomic,
};
use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use std::{
    collections::BTreeMap,
    fs,
    path::{Path, PathBuf},
};

/// Format version of the state file.
pub const STATE_VERSION: u32 = 1;
/// History entries kept (oldest dropped first).
pub const HISTORY_LIMIT: usize = 1000;

/// Desired state of one service.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceState {
    /// Stable service id (index of `SERVICES`).
    pub id: u32,
    /// What new flows go to.
    pub active: Active,
    /// What `rollback` returns to.
    pub previous: Option<Active>,
    /// Last epoch written to the data plane.
    pub epoch: u32,
}

/// A post-switch watch, persisted so that it holds across a daemon restart.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WatchRecord {
    /// Pool being watched.
    pub pool: String,
    /// End of the window, milliseconds since the Unix epoch.
    pub until_ms: u64,
    /// Where it stands.
    pub state: WatchState,
    /// Why it ended, when it did not pass.
    pub reason: Option<String>,
    /// History entry of the watched switch.
    pub switch_history_id: Option<u64>,
    /// History entry of the automatic rollback.
    pub rollback_history_id: Option<u64>,
}

/// Everything the daemon persists.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PersistedState {
    /// `STATE_VERSION`.
    pub version: u32,
    /// Services by name.
    pub services: BTreeMap<String, ServiceState>,
    /// Backend index of each `service/pool/addr`.
    pub backend_indices: BTreeMap<String, u32>,
    /// Counter index of each VIP (`ip:port`).
    pub vip_indices: BTreeMap<String, u32>,
    /// Recorded changes, oldest first.
    pub history: Vec<HistoryEntry>,
    /// Next history id.
    pub next_history_id: u64,
    /// Next never-used service id. Ids are not reused while unused ones remain, so flows of a
    /// removed service can never be taken for flows of a new one.
    #[serde(default)]
    pub next_service_id: u32,
    /// Next never-used backend index (same reasoning).
    #[serde(default)]
    pub next_backend_index: u32,
    /// Next never-used VIP counter index.
    #[serde(default)]
    pub next_vip_index: u32,
    /// The watch of each service's last watched switch.
    #[serde(default)]
    pub watches: BTreeMap<String, WatchRecord>,
    /// With `[fleet]`: the etcd revision of the last desired state applied from the fleet (0:
    /// none yet), so a restart without etcd says which fleet state it serves.
    #[serde(default)]
    pub fleet_revision: i64,
    /// Runtime settings of backends (`lbctl backend ...`) by `service/pool/addr`, kept across
    /// restarts and reloads until the config removes the backend. Absent: as configured.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub backend_settings: BTreeMap<String, BackendOverride>,
}

/// What an operator changed of one backend; what is left out is as configured.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackendOverride {
    /// State set by `lbctl backend drain|disable|enable`.
    #[serde(default)]
    pub admin: BackendAdmin,
    /// Weight set by `lbctl backend weight`, in force instead of the config's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight: Option<u32>,
}

impl PersistedState {
    /// Reads the state file; a missing file is an empty state.
    pub fn load(path: &Path) -> Result<Self> {
        let text = match fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(Self { version: STATE_VERSION, next_history_id: 1, ..Self::default() });
            }
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        let state: Self =
            serde_json::from_str(&text).with_context(|| format!("parsing state file {}", path.display()))?;
        anyhow::ensure!(
            state.version == STATE_VERSION,
            "state file {} has version {}, this daemon reads {STATE_VERSION}",
            path.display(),
            state.version
        );
        Ok(state)
    }

    /// Writes the state atomically: a crash leaves either the old or the new file, never half.
    pub fn save(&self, path: &Path) -> Result<()> {
        let body = serde_json::to_vec_pretty(self)?;
        write_atomic(path, &body).with_context(|| format!("writing {}", path.display()))
    }

    /// Appends a history entry (assigning its id) and trims the oldest beyond `HISTORY_LIMIT`.
    pub fn record(&mut self, mut entry: HistoryEntry) -> u64 {
        let id = self.next_history_id.max(1);
        entry.id = id;
        self.next_history_id = id + 1;
        self.history.push(entry);
        if self.history.len() > HISTORY_LIMIT {
            let excess = self.history.len() - HISTORY_LIMIT;
            self.history.drain(..excess);
        }
        id
    }
}

/// Where the engine persists its desired state. A trait so that unit tests can watch what is
/// written, and make the write fail as a full disk does.
pub trait StateStore: Send {
    /// Persists `state` completely, or fails and leaves the earlier one in place.
    fn save(&mut self, state: &PersistedState) -> Result<()>;
    /// Records a fleet change about to be made live before the whole state is written (see
    /// [`super::fleet_pending`]): must be readable by the next start once it returns, even
    /// after a crash of the daemon.
    fn stage_pending(&mut self, pending: &super::fleet_pending::FleetPending) -> Result<()>;
    /// Drops the pending record once [`StateStore::save`] wrote a state that holds it.
    fn clear_pending(&mut self) -> Result<()>;
    /// A second handle on the same files: whole states are written on it off the engine lock
    /// while the pending record stays writable on this one (see [`super::persist`]).
    fn handle(&self) -> Box<dyn StateStore>;
}

/// The state file, written with [`write_atomic`].
#[derive(Clone, Debug)]
pub struct StateFile(pub PathBuf);

impl StateStore for StateFile {
    fn save(&mut self, state: &PersistedState) -> Result<()> {
        state.save(&self.0)
    }

    fn stage_pending(&mut self, pending: &super::fleet_pending::FleetPending) -> Result<()> {
        super::fleet_pending::write_pending(&self.0, pending)
    }

    fn clear_pending(&mut self) -> Result<()> {
        super::fleet_pending::remove_pending(&self.0)
    }

    fn handle(&self) -> Box<dyn StateStore> {
        Box::new(self.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::model::{HistoryKind, SwitchMode};

    fn entry(n: u32) -> HistoryEntry {
        HistoryEntry {
            id: 0,
            time: "2026-01-01T00:00:00Z".into(),
            service: "web".into(),
            kind: HistoryKind::Switch,
            from: Active::Pool(format!("p{n}")),
            to: Active::Pool(format!("p{}", n + 1)),
            mode: SwitchMode::Drain,
            requester: "test".into(),
            reason: None,
            backend: None,
        }
    }

    #[test]
    fn save_then_load_round_trips_and_leaves_no_temp_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/lb.state.json");
        let mut s = PersistedState::load(&path).unwrap();
        assert!(s.services.is_empty());
        s.services.insert(
            "web".into(),
            ServiceState {
                id: 0,
                active: Active::Pool("b".into()),
                previous: Some(Active::Pool("a".into())),
                epoch: 3,
            },
        );
        s.backend_indices.insert("web/a/10.0.0.1:80".into(), 7);
        s.record(entry(1));
        s.save(&path).unwrap();
        assert_eq!(PersistedState::load(&path).unwrap(), s);
        let names: Vec<_> =
            fs::read_dir(path.parent().unwrap()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, vec![std::ffi::OsString::from("lb.state.json")]);
    }

    #[test]
    fn history_ids_increase_and_old_entries_are_trimmed() {
        let mut s = PersistedState::default();
        for n in 0..(HISTORY_LIMIT as u32 + 5) {
            s.record(entry(n));
        }
        assert_eq!(s.history.len(), HISTORY_LIMIT);
        assert_eq!(s.history.first().unwrap().id, 6);
        assert_eq!(s.history.last().unwrap().id, HISTORY_LIMIT as u64 + 5);
    }

    #[test]
    fn corrupt_or_foreign_state_is_an_error_not_a_reset() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.json");
        fs::write(&path, "{not json").unwrap();
        assert!(PersistedState::load(&path).is_err());
        fs::write(&path, r#"{"version":99,"services":{},"backend_indices":{},"vip_indices":{},"history":[],"next_history_id":1}"#).unwrap();
        assert!(PersistedState::load(&path).unwrap_err().to_string().contains("version 99"));
    }
}
