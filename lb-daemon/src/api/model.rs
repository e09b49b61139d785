//! The management API's request and response bodies (JSON), shared by the daemon and `lbctl`.
//! Field names are the wire format: changing one is an API change.

use serde::{Deserialize, Serialize};

/// What new flows of a service go to: one pool, or a weighted split between pools.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Active {
    /// Every new flow goes to this pool.
    Pool(String),
    /// New flows are shared between pools by percentage (weights sum to 100).
    Split(Vec<PoolWeight>),
}

impl Active {
    /// Percentage of new flows `pool` receives: 100 for the active pool, its weight in a split,
    /// 0 otherwise.
    pub fn share(&self, pool: &str) -> u32 {
        match self {
            Active::Pool(p) => {
                if p == pool {
                    100
                } else {
                    0
                }
            }
            Active::Split(ws) => ws.iter().find(|w| w.pool == pool).map(|w| w.weight).unwrap_or(0),
        }
    }
}

impl std::fmt::Display for Active {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Active::Pool(p) => write!(f, "{p}"),
            Active::Split(ws) => {
                let parts: Vec<String> = ws.iter().map(|w| format!("{}={}", w.pool, w.weight)).collect();
                write!(f, "split {}", parts.join(" "))
            }
        }
    }
}

/// One pool's share of a split.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolWeight {
    /// Pool name.
    pub pool: String,
    /// Percentage of new flows (1..=100).
    pub weight: u32,
}

/// Switch mode: `drain` keeps established flows on their backend, `hard` moves them too.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SwitchMode {
    /// Established flows stay where they are; only new flows follow.
    #[default]
    Drain,
    /// Every flow follows at once.
    Hard,
}

/// `POST /v1/services/{name}/switch`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SwitchRequest {
    /// Pool to make active.
    pub pool: String,
    /// Move established flows too.
    #[serde(default)]
    pub hard: bool,
    /// Switch even when the pool has fewer healthy backends than its `min_healthy`.
    #[serde(default)]
    pub force: bool,
    /// Validate and describe the change, change nothing.
    #[serde(default)]
    pub dry_run: bool,
    /// Compare-and-swap: only switch if this is what is active now (a pool name, or the text
    /// form of a split such as `split pool-a=90 pool-b=10`); otherwise `conflict`.
    #[serde(default)]
    pub expect_active: Option<String>,
    /// Watch the new pool for this many seconds after the switch: if its healthy backends fall
    /// below `min_healthy` meanwhile, the daemon rolls back by itself.
    #[serde(default)]
    pub watch_s: Option<u64>,
}

/// `POST /v1/services/{name}/rollback`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RollbackRequest {
    /// Move established flows too.
    #[serde(default)]
    pub hard: bool,
    /// Compare-and-swap, as for a switch.
    #[serde(default)]
    pub expect_active: Option<String>,
    /// Validate and describe the change, change nothing.
    #[serde(default)]
    pub dry_run: bool,
}

/// `POST /v1/services/{name}/split`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SplitRequest {
    /// Pools and their percentages; at least two, summing to 100.
    pub weights: Vec<PoolWeight>,
    /// Split even when a pool has fewer healthy backends than its `min_healthy`.
    #[serde(default)]
    pub force: bool,
    /// Validate and describe the change, change nothing.
    #[serde(default)]
    pub dry_run: bool,
    /// Compare-and-swap, as for a switch.
    #[serde(default)]
    pub expect_active: Option<String>,
}

/// `POST /v1/shutdown`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShutdownRequest {
    /// Detach the XDP program and remove the pinned maps (forwarding stops). Without it the
    /// daemon exits and forwarding continues from the pinned state.
    #[serde(default)]
    pub detach: bool,
}

/// Result of a switch, rollback or split.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SwitchOutcome {
    /// Service name.
    pub service: String,
    /// False when the service already was in the requested state (nothing was written).
    pub changed: bool,
    /// Active pool or split before.
    pub before: Active,
    /// Active pool or split after.
    pub after: Active,
    /// Drain or hard.
    pub mode: SwitchMode,
    /// Service epoch after the change (a hard switch bumps it).
    pub epoch: u32,
    /// Microseconds from accepting the request to the map update that made it effective.
    pub apply_us: u64,
    /// History entry recorded for it (absent when nothing changed).
    pub history_id: Option<u64>,
    /// True when this was a dry run: nothing was changed.
    #[serde(default)]
    pub dry_run: bool,
    /// Things worth knowing (e.g. a forced switch to an unhealthy pool).
    #[serde(default)]
    pub warnings: Vec<String>,
    /// The watch started with the switch, if any.
    #[serde(default)]
    pub watch: Option<WatchView>,
    /// With `[fleet]`: the etcd revision of the one transaction that made the change (or of the
    /// desired state that stands, when nothing changed); `lbctl --wait-fleet` waits until every
    /// live host applied it. `None` on a single host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<i64>,
}

/// State of a post-switch watch.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WatchState {
    /// Still watching.
    Watching,
    /// The window ended with the pool healthy.
    Passed,
    /// The pool turned unhealthy and the daemon rolled back.
    RolledBack,
    /// Another change of the service ended the watch early.
    Cancelled,
}

/// A watch of a service's new pool after a switch (the daemon holds it, whoever asked).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WatchView {
    /// Service name.
    pub service: String,
    /// Pool being watched.
    pub pool: String,
    /// End of the window, RFC 3339.
    pub until: String,
    /// Seconds left (0 once it ended).
    pub remaining_s: u64,
    /// Where it stands.
    pub state: WatchState,
    /// Why it ended, when it did not pass.
    #[serde(default)]
    pub reason: Option<String>,
    /// History entry of the switch being watched.
    pub switch_history_id: Option<u64>,
    /// History entry of the automatic rollback, if one happened.
    #[serde(default)]
    pub rollback_history_id: Option<u64>,
}

/// Established flows of one pool, counted from the flow table.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolDrain {
    /// Pool name.
    pub pool: String,
    /// Share of new flows it receives now (0 for a pool being drained).
    pub share: u32,
    /// Flows seen within the idle timeout and not closed by FIN or RST (this host's own: not
    /// the copies received from peers).
    pub established: u64,
    /// Flows that saw a FIN or RST (finishing).
    pub closing: u64,
    /// Flows received from the fleet's other hosts (flow sync) and alive by the same rules,
    /// counted apart: connections the peers carry (or that ECMP moved here from a peer).
    /// Absent from an older daemon's answer: 0.
    #[serde(default)]
    pub synced: u64,
}

/// `GET /v1/services/{name}/drain`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DrainView {
    /// Service name.
    pub service: String,
    /// A flow idle longer than this is not counted as established.
    pub idle_timeout_s: u64,
    /// Per pool, in config order.
    pub pools: Vec<PoolDrain>,
    /// Entries read from the flow table.
    pub flows_scanned: u64,
}

/// Why a history entry was recorded.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HistoryKind {
    /// `switch`.
    Switch,
    /// `rollback`.
    Rollback,
    /// `split`.
    Split,
    /// A config reload changed the active pool (the configured one was removed).
    Reload,
    /// The daemon rolled back by itself.
    AutoRollback,
    /// An operator changed one backend (`lbctl backend drain|disable|enable|weight`); the
    /// entry's `backend` says which and how.
    Backend,
}

/// One recorded change of a service's active pool.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryEntry {
    /// Increasing id.
    pub id: u64,
    /// RFC 3339 UTC time.
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
    /// Who asked (user, process, CI job...).
    pub requester: String,
    /// Free text, e.g. why an automatic rollback happened.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The backend changed, for a `backend` entry (`from` and `to` then both name what the
    /// service serves, which the change leaves as it is).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend: Option<BackendChange>,
}

/// Counters of a backend, a pool or a VIP, summed over CPUs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Traffic {
    /// Packets forwarded.
    pub packets: u64,
    /// Bytes forwarded.
    pub bytes: u64,
    /// Flows started.
    pub new_flows: u64,
}

/// One backend of a pool.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackendView {
    /// `ip:port`.
    pub addr: String,
    /// Maglev weight.
    pub weight: u32,
    /// Data-plane index.
    pub index: u32,
    /// Whether it may receive traffic (health checks).
    pub up: bool,
    /// Last health-check error, when it failed.
    #[serde(default)]
    pub last_error: Option<String>,
    /// Its counters.
    pub traffic: Traffic,
    /// What an operator set (`lbctl backend drain|disable|enable`): `enabled` unless changed.
    #[serde(default)]
    pub admin: BackendAdmin,
    /// The config's weight, when `lbctl backend weight` set another one (`weight` is the one in
    /// force); `None` when the config's weight is in force.
    #[serde(default)]
    pub configured_weight: Option<u32>,
}

/// One pool of a service.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolView {
    /// Pool name.
    pub name: String,
    /// Percentage of new flows it receives now (100 for the active pool, 0 for idle ones).
    pub share: u32,
    /// Fewest healthy backends a switch to it accepts without `force`.
    pub min_healthy: u32,
    /// Backends currently healthy.
    pub healthy: u32,
    /// Its backends.
    pub backends: Vec<BackendView>,
    /// Sum of its backends' counters.
    pub traffic: Traffic,
}

/// One service.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceView {
    /// Name.
    pub name: String,
    /// `nat` or `dsr`.
    pub mode: String,
    /// VIPs as `ip:port`.
    pub vips: Vec<String>,
    /// What new flows go to now.
    pub active: Active,
    /// What `rollback` would go back to.
    pub previous: Option<Active>,
    /// Current epoch.
    pub epoch: u32,
    /// Pools, in config order.
    pub pools: Vec<PoolView>,
    /// The watch of the last switch, if one is running or just ended.
    #[serde(default)]
    pub watch: Option<WatchView>,
}

/// `GET /v1/status`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusView {
    /// Instance name (pins live under `/sys/fs/bpf/<instance>`).
    pub instance: String,
    /// Daemon version.
    pub version: String,
    /// Seconds since this daemon process started.
    pub uptime_s: u64,
    /// Whether this process adopted pinned state left by an earlier one.
    pub adopted: bool,
    /// Interfaces and their XDP attach mode.
    pub interfaces: Vec<InterfaceView>,
    /// Services.
    pub services: Vec<ServiceView>,
    /// Pass/drop/forward counters by reason name.
    pub reasons: Vec<(String, u64)>,
    /// Problems of the host or the setup that make traffic fail or the state fragile, each with
    /// its fix (forwarding off, a private bpffs, native XDP on a veth…). Empty when all is well.
    #[serde(default)]
    pub warnings: Vec<String>,
}

#[cfg(test)]
impl StatusView {
    /// A status of `instance` with `eth0` attached natively and `services`: the fixture the API
    /// server's and the BGP announcer's unit tests share.
    pub(crate) fn fixture(instance: &str, services: Vec<ServiceView>) -> Self {
        Self {
            instance: instance.into(),
            version: "0".into(),
            uptime_s: 0,
            adopted: false,
            interfaces: vec![InterfaceView {
                name: "eth0".into(),
                mode: "native".into(),
                attached: true,
                ..Default::default()
            }],
            services,
            reasons: Vec::new(),
            warnings: Vec::new(),
        }
    }
}

/// An interface the program is attached to, as the kernel reports it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct InterfaceView {
    /// Interface name.
    pub name: String,
    /// The mode the kernel runs the program in: `native`, `generic` (or `offload`); `none` when
    /// it is not attached.
    pub mode: String,
    /// The interface's kind (`veth`, `bridge`, …); absent for a NIC.
    #[serde(default)]
    pub kind: Option<String>,
    /// Whether the kernel runs this daemon's program on the interface (checked every second).
    #[serde(default = "yes")]
    pub attached: bool,
    /// Times the program was found missing and attached again by this daemon.
    #[serde(default)]
    pub reattachments: u64,
    /// When and why the last re-attachment happened.
    #[serde(default)]
    pub last_reattach: Option<String>,
    /// Why the program is not attached, while it is not.
    #[serde(default)]
    pub problem: Option<String>,
}

fn yes() -> bool {
    true
}

/// `GET /v1/health`: whether the daemon serves traffic as configured. `ok` is false (HTTP 503)
/// while an interface runs without the program; warnings do not make it false.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthView {
    /// Whether every interface runs the program.
    pub ok: bool,
    /// What is wrong when `ok` is false.
    #[serde(default)]
    pub problems: Vec<String>,
    /// As in the status.
    #[serde(default)]
    pub warnings: Vec<String>,
    /// Re-attachments of the program since the daemon started, summed over interfaces.
    #[serde(default)]
    pub reattachments: u64,
}

impl HealthView {
    /// The health the status shows.
    pub fn of(status: &StatusView) -> Self {
        let problems: Vec<String> = status
            .interfaces
            .iter()
            .filter(|i| !i.attached)
            .map(|i| i.problem.clone().unwrap_or_else(|| format!("XDP is not attached to {}", i.name)))
            .collect();
        Self {
            ok: problems.is_empty(),
            problems,
            warnings: status.warnings.clone(),
            reattachments: status.interfaces.iter().map(|i| i.reattachments).sum(),
        }
    }
}

/// `POST /v1/reload`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReloadOutcome {
    /// Whether anything changed.
    pub changed: bool,
    /// One line per change.
    pub changes: Vec<String>,
}

/// Body of every error response.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// The error.
    pub error: ErrorDetail,
}

/// What went wrong.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorDetail {
    /// Stable machine-readable code (`ErrorCode`).
    pub code: ErrorCode,
    /// Human-readable explanation.
    pub message: String,
}

/// Error classes; each has its own HTTP status and `lbctl` exit code.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// Malformed request or invalid arguments (HTTP 400).
    InvalidRequest,
    /// Unknown service, pool or path (HTTP 404).
    NotFound,
    /// Valid request the daemon will not carry out as asked (HTTP 409), e.g. an unhealthy pool.
    Refused,
    /// Someone else changed the state first (HTTP 412).
    Conflict,
    /// Missing or wrong bearer token (HTTP 401).
    Unauthorized,
    /// The read-only token asked for a change (HTTP 403).
    Forbidden,
    /// The daemon failed (HTTP 500).
    Internal,
    /// A change needs the fleet's shared state (etcd) and it cannot be reached (HTTP 503):
    /// nothing changed anywhere; forwarding continues on the last applied state.
    Unavailable,
}

impl ErrorCode {
    /// HTTP status for the code.
    pub fn http_status(self) -> u16 {
        match self {
            ErrorCode::InvalidRequest => 400,
            ErrorCode::NotFound => 404,
            ErrorCode::Refused => 409,
            ErrorCode::Conflict => 412,
            ErrorCode::Unauthorized => 401,
            ErrorCode::Forbidden => 403,
            ErrorCode::Internal => 500,
            ErrorCode::Unavailable => 503,
        }
    }
}

/// An error as the control plane reports it to API clients.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ApiError {
    /// Class.
    pub code: ErrorCode,
    /// Explanation.
    pub message: String,
}

impl ApiError {
    /// A new error.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self { code, message: message.into() }
    }
    /// `InvalidRequest`.
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::InvalidRequest, message)
    }
    /// `NotFound`.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::NotFound, message)
    }
    /// `Refused`.
    pub fn refused(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Refused, message)
    }
    /// `Internal`.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Internal, message)
    }
    /// `Unavailable`.
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Unavailable, message)
    }
    /// The JSON body.
    pub fn body(&self) -> ErrorBody {
        ErrorBody { error: ErrorDetail { code: self.code, message: self.message.clone() } }
    }
}

/// `GET /v1/fleet` (and `fleet` in `GET /v1/status`): the fleet as this host sees it through
/// etcd. Only with a `[fleet]` table.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FleetView {
    /// The cluster (`/lb/<cluster>/` in etcd).
    pub cluster: String,
    /// This host's name.
    pub host: String,
    /// This host reaches etcd and its watch runs.
    pub connected: bool,
    /// The latest etcd revision this host has seen.
    pub revision: i64,
    /// The etcd revision whose desired state this host serves.
    pub applied_revision: i64,
    /// This host serves the latest desired state (connected, resynced, every change applied).
    pub in_sync: bool,
    /// Why it is not in sync, when it is not.
    #[serde(default)]
    pub problem: Option<String>,
    /// Every live host (its status key exists under a lease), this one included, by name.
    pub hosts: Vec<FleetHostView>,
    /// Digest of this host's service config (pools, backends, weights, ring size).
    #[serde(default)]
    pub config_digest: Option<String>,
    /// Live hosts whose service config digest differs from this host's: their Maglev tables
    /// differ, so a flow ECMP moves between them may change backend.
    #[serde(default)]
    pub config_mismatch: Vec<String>,
}

/// One live host of the fleet, from its status in etcd.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FleetHostView {
    /// Host name.
    pub host: String,
    /// The etcd revision whose desired state it serves.
    pub applied_revision: i64,
    /// It says it serves the latest desired state.
    pub in_sync: bool,
    /// Why not, when not.
    #[serde(default)]
    pub problem: Option<String>,
    /// VIP addresses it announces by BGP.
    #[serde(default)]
    pub announced: Vec<String>,
    /// Healthy backends there, all pools.
    pub backends_up: u32,
    /// Backends there, all pools.
    pub backends_total: u32,
    /// Pools below `min_healthy` there (`service/pool`).
    #[serde(default)]
    pub pools_below_min: Vec<String>,
    /// Its management API TCP address, if any.
    #[serde(default)]
    pub api: Option<String>,
    /// Milliseconds since it last wrote its status (by this host's clock).
    pub age_ms: u64,
    /// Digest of its service config (absent from older versions).
    #[serde(default)]
    pub config_digest: Option<String>,
    /// Its digest differs from this host's.
    #[serde(default)]
    pub config_mismatch: bool,
}

impl SwitchMode {
    /// The name as the API spells it (`drain`, `hard`), for logs and text output.
    pub fn as_str(self) -> &'static str {
        match self {
            SwitchMode::Drain => "drain",
            SwitchMode::Hard => "hard",
        }
    }
}

impl std::fmt::Display for SwitchMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl HistoryKind {
    /// The name as the API spells it (`switch`, `auto_rollback`, …), for logs: a log search
    /// for a value finds the same word the API and the history show.
    pub fn as_str(self) -> &'static str {
        match self {
            HistoryKind::Switch => "switch",
            HistoryKind::Rollback => "rollback",
            HistoryKind::Split => "split",
            HistoryKind::Reload => "reload",
            HistoryKind::AutoRollback => "auto_rollback",
            HistoryKind::Backend => "backend",
        }
    }
}

impl std::fmt::Display for HistoryKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What an operator set for one backend at runtime (HAProxy's `set server ... state`). Health
/// checks go on in every state; `healthy` in the status counts only `enabled` backends.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BackendAdmin {
    /// In service: takes new flows while healthy (the default).
    #[default]
    Enabled,
    /// Takes no new flows; established flows stay on it until they end (HAProxy `drain`, or
    /// `maint` without `shutdown sessions`).
    Drain,
    /// Out of service, a hard cut: no new flows, and its established flows move to the pool's
    /// other backends on their next packet (where they are reset, as after a hard switch).
    Disabled,
}

impl BackendAdmin {
    /// The name as the API spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            BackendAdmin::Enabled => "enabled",
            BackendAdmin::Drain => "drain",
            BackendAdmin::Disabled => "disabled",
        }
    }
}

impl std::fmt::Display for BackendAdmin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What `POST /v1/backend` does to one backend.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BackendAction {
    /// No new flows, established ones stay ([`BackendAdmin::Drain`]).
    #[default]
    Drain,
    /// Out of service, established flows move ([`BackendAdmin::Disabled`]).
    Disable,
    /// Back in service ([`BackendAdmin::Enabled`]); the weight is left as it is.
    Enable,
    /// A new Maglev weight (`weight` in the request), 0 to 10000; 0 takes no new flows.
    Weight,
}

impl BackendAction {
    /// The name as the API spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            BackendAction::Drain => "drain",
            BackendAction::Disable => "disable",
            BackendAction::Enable => "enable",
            BackendAction::Weight => "weight",
        }
    }
}

/// `POST /v1/backend` and `POST /v1/services/{name}/backend`: change one backend at runtime.
/// The backend is found by address in the named service (or in every service); `pool` is
/// needed when the address is in several pools.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackendRequest {
    /// `ip:port` (IPv6 in brackets: `[2001:db8::1]:443`).
    pub addr: String,
    /// The pool holding it, when the address is in several.
    #[serde(default)]
    pub pool: Option<String>,
    /// What to do.
    pub action: BackendAction,
    /// The new weight, for `weight` only.
    #[serde(default)]
    pub weight: Option<u32>,
    /// Change even when it leaves an active pool with fewer in-service healthy backends than
    /// its `min_healthy` (recorded in the history).
    #[serde(default)]
    pub force: bool,
}

/// A backend's runtime setting: its state and the weight in force.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackendSetting {
    /// State set by an operator.
    pub admin: BackendAdmin,
    /// Maglev weight in force.
    pub weight: u32,
}

/// The history's record of a backend change.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackendChange {
    /// Pool holding the backend.
    pub pool: String,
    /// `ip:port`.
    pub addr: String,
    /// What was asked.
    pub action: BackendAction,
    /// Before.
    pub before: BackendSetting,
    /// After.
    pub after: BackendSetting,
    /// True when `force` overrode the `min_healthy` refusal.
    #[serde(default)]
    pub forced: bool,
}

/// Result of `POST /v1/backend`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackendOutcome {
    /// Service name.
    pub service: String,
    /// Pool holding the backend.
    pub pool: String,
    /// `ip:port`.
    pub addr: String,
    /// False when the backend already was in the requested state (nothing was written).
    pub changed: bool,
    /// Before.
    pub before: BackendSetting,
    /// After.
    pub after: BackendSetting,
    /// Microseconds from accepting the request to the last map update that made it effective.
    pub apply_us: u64,
    /// History entry recorded for it (absent when nothing changed).
    pub history_id: Option<u64>,
    /// Things worth knowing (e.g. a forced change below min_healthy).
    #[serde(default)]
    pub warnings: Vec<String>,
}

/// One entry of `GET /v1/history` in a fleet: the change as every history entry has it, and,
/// since the fleet's history lives in etcd, where it was made and which hosts applied it.
/// Without `[fleet]` the route answers plain [`HistoryEntry`] values (no `fleet` member), so a
/// client reads both shapes as this type.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryItem {
    /// The change (its `id` is the fleet's history number in a fleet).
    #[serde(flatten)]
    pub entry: HistoryEntry,
    /// Fleet facts of the change (absent on a single host).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fleet: Option<FleetHistory>,
}

/// Where a fleet change was made and which hosts serve it (from the applied marks in etcd).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FleetHistory {
    /// The host whose API took the request (or that rolled back by itself).
    pub via: String,
    /// The `min_healthy` gate was overridden with `--force`.
    #[serde(default)]
    pub forced: bool,
    /// Hosts that applied the change, by name. A host that joined later, or applied a newer
    /// change first, never marks older ones.
    #[serde(default)]
    pub applied: Vec<AppliedBy>,
}

/// One host's mark that it applied a fleet change.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppliedBy {
    /// Host name.
    pub host: String,
    /// When it applied it (RFC 3339, that host's clock).
    pub time: String,
    /// The etcd revision it applied.
    pub revision: i64,
}
