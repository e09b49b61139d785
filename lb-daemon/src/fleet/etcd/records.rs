//! The keys of a fleet in etcd and their JSON values (the wire format between hosts: changing a
//! field's name is a protocol change).
//!
//! ```text
//! /lb/<cluster>/services/<service>               DesiredService
//! /lb/<cluster>/history/<20-digit seq>           HistoryRecord
//! /lb/<cluster>/history/<20-digit seq>/applied/<host>   AppliedMark
//! /lb/<cluster>/hosts/<host>                     HostStatus (under the host's lease)
//! /lb/<cluster>/watches/<service>                WatchRecord (a --watch auto-rollback)
//! ```

use serde::{Deserialize, Serialize};

use crate::api::model::{Active, HistoryEntry, HistoryKind, SwitchMode, WatchState};

/// The key layout of one cluster.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Keys {
    root: String,
}

impl Keys {
    /// Keys of `cluster` (under `/lb/<cluster>/`).
    pub fn new(cluster: &str) -> Self {
        Self { root: format!("/lb/{cluster}/") }
    }
    /// `/lb/<cluster>/`: everything of the cluster.
    pub fn root(&self) -> &str {
        &self.root
    }
    /// Prefix of the services' desired states.
    pub fn services(&self) -> String {
        format!("{}services/", self.root)
    }
    /// A service's desired state.
    pub fn service(&self, name: &str) -> String {
        format!("{}services/{name}", self.root)
    }
    /// Prefix of the history.
    pub fn history(&self) -> String {
        format!("{}history/", self.root)
    }
    /// One history entry (the sequence zero-padded so keys sort in order).
    pub fn history_entry(&self, seq: u64) -> String {
        format!("{}history/{seq:020}", self.root)
    }
    /// A host's mark that it applied history entry `seq`.
    pub fn applied(&self, seq: u64, host: &str) -> String {
        format!("{}history/{seq:020}/applied/{host}", self.root)
    }
    /// Prefix of the hosts' status.
    pub fn hosts(&self) -> String {
        format!("{}hosts/", self.root)
    }
    /// A host's status.
    pub fn host(&self, host: &str) -> String {
        format!("{}hosts/{host}", self.root)
    }
    /// Prefix of the watch records.
    pub fn watches(&self) -> String {
        format!("{}watches/", self.root)
    }
    /// A service's watch record.
    pub fn watch(&self, service: &str) -> String {
        format!("{}watches/{service}", self.root)
    }
    /// The name after `prefix` in `key` (`None` for another prefix, or a deeper key).
    pub fn name_in<'k>(key: &'k str, prefix: &str) -> Option<&'k str> {
        key.strip_prefix(prefix).filter(|n| !n.is_empty() && !n.contains('/'))
    }
}

/// A service's desired state: what every host of the fleet serves.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DesiredService {
    /// What new flows go to.
    pub active: Active,
    /// What rollback returns to.
    #[serde(default)]
    pub previous: Option<Active>,
    /// The service epoch, identical on every host (a hard switch bumps it: flows of an older
    /// epoch are re-picked everywhere alike).
    pub epoch: u32,
    /// The history entry of the change that set it.
    pub seq: u64,
}

/// One change of the fleet's desired state.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryRecord {
    /// Sequence (also the key).
    pub seq: u64,
    /// RFC 3339 UTC time of the change.
    pub time: String,
    /// Service name.
    pub service: String,
    /// What kind of change.
    pub kind: HistoryKind,
    /// Before.
    pub from: Active,
    /// After.
    pub to: Active,
    /// Drain or hard.
    pub mode: SwitchMode,
    /// Who asked (user, CI job, the host that rolled back...).
    pub requester: String,
    /// The host whose API took the request.
    pub via: String,
    /// The `min_healthy` gate was overridden with `--force`.
    #[serde(default)]
    pub forced: bool,
    /// Why (forced gate problems, automatic rollback reason).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

impl HistoryRecord {
    /// This change as an entry of a host's history (numbered `id`): what a host records when
    /// it applies it, and what the fleet's history shows.
    pub fn entry(&self, id: u64) -> HistoryEntry {
        HistoryEntry {
            id,
            time: self.time.clone(),
            service: self.service.clone(),
            kind: self.kind,
            from: self.from.clone(),
            to: self.to.clone(),
            mode: self.mode,
            requester: self.requester.clone(),
            reason: self.reason.clone(),
            backend: None,
        }
    }
}

/// A host's mark under a history entry: it serves that change.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppliedMark {
    /// The etcd revision the host had applied.
    pub revision: i64,
    /// When (RFC 3339).
    pub time: String,
}

/// Health of one pool on one host.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolHealth {
    /// Pool name.
    pub pool: String,
    /// Healthy backends here.
    pub healthy: u32,
    /// The pool's `min_healthy`.
    pub min_healthy: u32,
    /// Backends (`ip:port`) failing their health checks here.
    #[serde(default)]
    pub down: Vec<String>,
}

/// One service as a host serves it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceHealth {
    /// Service name.
    pub service: String,
    /// What this host serves.
    pub active: Active,
    /// Its epoch here.
    pub epoch: u32,
    /// Every pool's health.
    pub pools: Vec<PoolHealth>,
}

/// A host's status, under its lease: gone when the host stops renewing it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostStatus {
    /// Host name.
    pub host: String,
    /// The etcd revision whose desired state the host serves.
    pub applied_revision: i64,
    /// It serves the latest desired state it knows of and its watch runs.
    pub in_sync: bool,
    /// Why not, when not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub problem: Option<String>,
    /// VIP addresses BIRD announces for it (empty without `[bgp]`).
    #[serde(default)]
    pub announced: Vec<String>,
    /// Health per service and pool.
    #[serde(default)]
    pub services: Vec<ServiceHealth>,
    /// Its management API TCP address, if it has one.
    #[serde(default)]
    pub api: Option<String>,
    /// Daemon version.
    pub version: String,
    /// When it was written (ms since the Unix epoch).
    pub time_ms: u64,
    /// Its flow-sync address (`[sync] listen`), when it syncs flows: the other hosts of the
    /// fleet take their sync peers from these (see `fleet::sync::FleetPeers`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sync_addr: Option<std::net::SocketAddr>,
    /// Digest of its service config (see [`super::digest`]): hosts with different digests build
    /// different Maglev tables. Absent from hosts of older versions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_digest: Option<String>,
}

impl HostStatus {
    /// The health of `pool` of `service` on this host.
    pub fn pool(&self, service: &str, pool: &str) -> Option<&PoolHealth> {
        self.services.iter().find(|s| s.service == service)?.pools.iter().find(|p| p.pool == pool)
    }
}

/// A `--watch` auto-rollback, held by the fleet: any host that sees the watched pool fall below
/// `min_healthy` before `until_ms` rolls back, by a transaction that succeeds only once.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WatchRecord {
    /// Service name.
    pub service: String,
    /// Pool watched.
    pub pool: String,
    /// End of the window (ms since the Unix epoch).
    pub until_ms: u64,
    /// Where it stands.
    pub state: WatchState,
    /// History entry of the watched switch (the service's desired `seq` while it stands).
    pub switch_seq: u64,
    /// What the rollback goes back to.
    pub rollback_to: Active,
    /// Why it ended, when it did not pass.
    #[serde(default)]
    pub reason: Option<String>,
    /// History entry of the automatic rollback.
    #[serde(default)]
    pub rollback_seq: Option<u64>,
    /// The host that rolled back.
    #[serde(default)]
    pub rolled_back_by: Option<String>,
}
