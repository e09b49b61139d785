//! The daemon's configuration file (TOML, by default `/etc/lb/lb.toml`).
//!
//! # Format
//!
//! Top-level keys describe the instance and the data plane; `[api]` the management API; one
//! `[[services]]` table per service, and under it one `[services.pools.<name>]` table per pool.
//! [`EXAMPLE_CONFIG`] shows every key with its default and a comment. A minimal file:
//!
//! ```toml
//! interfaces = ["eth0"]
//!
//! [[services]]
//! name = "web"
//! vips = ["192.0.2.10:80"]
//! active = "pool-a"
//!
//! [services.pools.pool-a]
//! backends = ["10.0.1.1:8080", { addr = "10.0.1.2:8080", weight = 2 }]
//! ```
//!
//! - Addresses are `ip:port` strings; IPv6 in brackets: `"[2001:db8::1]:443"`.
//! - A backend is either such a string (weight 1) or an inline table
//!   `{ addr = "ip:port", weight = N }` with `N` in `0..=10000` (0 = takes no new flows).
//! - Pools keep the order in which they appear in the file.
//! - `mode` is `"nat"` (default; the balancer rewrites the destination both ways) or `"dsr"`
//!   (direct server return; backends hold the VIP and answer clients themselves, so a backend's
//!   port must equal the VIP port).
//! - One service is one address family: its VIPs and backends are all IPv4 or all IPv6.
//! - A pool may have a `[services.pools.<name>.health]` table ([`HealthConfig`]): active health
//!   checks of each of its backends. Every key is optional:
//!
//!   | key           | default      | meaning                                                     |
//!   |---------------|--------------|-------------------------------------------------------------|
//!   | `enabled`     | `true`       | `false`: the backends are never checked, always up          |
//!   | `interval`    | `"1s"`       | time between two checks of a backend, `"50ms"` ..= `"1h"`   |
//!   | `timeout`     | `"500ms"`    | bound of one check, more than 0 and at most `interval`      |
//!   | `rise`        | `2`          | consecutive successes that bring a down backend up, 1..=100 |
//!   | `fall`        | `2`          | consecutive failures that take an up backend down, 1..=100  |
//!   | `http_path`   | none         | `"/path"`: send `GET /path HTTP/1.0` after connecting       |
//!   | `http_status` | `[200, 299]` | status codes that pass (with `http_path`), in 100..=599     |
//!
//!   Durations are strings such as `"500ms"`, `"2s"` or `"1m 30s"`. Without `http_path` a check
//!   passes when a TCP connection is established within the timeout; with it, when the status
//!   line of the answer arrives within the timeout and its code is in `http_status`.
//!
//! # Errors
//!
//! Unknown keys are errors everywhere. Syntax and type errors ([`ConfigError::Parse`]) carry the
//! line and column; everything that parses is then validated as a whole and every problem found
//! is reported at once ([`ConfigError::Invalid`]), each under a dotted key such as
//! `services[1] (api).pools.pool-b.backends[0]`, `ring_size` or `api.tcp`.

//! Files: this one holds the schema (the types serde fills) and loading; `validate` the rules,
//! `host` the checks against this host (interfaces, token file), `de` the serde plumbing that
//! names the list entry an error is about, `example` the commented example.

mod de;
mod example;
mod host;
mod validate;

pub use example::EXAMPLE_CONFIG;
pub use host::HostCheck;
pub use validate::check_split_fits;

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use lb_common::maps::{DEFAULT_FLOW_ENTRIES, DEFAULT_RING_SIZE, DEFAULT_TABLE_SLOTS};
use serde::Deserialize;
use std::net::SocketAddr;

/// Smallest accepted `flow_table_size`.
pub const MIN_FLOW_TABLE_SIZE: u32 = 1024;
/// Largest accepted `flow_table_size`.
pub const MAX_FLOW_TABLE_SIZE: u32 = 1 << 27;
/// Largest accepted backend weight.
pub const MAX_WEIGHT: u32 = 10_000;
/// Maglev table slots required per backend of the largest pool.
pub const RING_SLOTS_PER_BACKEND: u64 = 100;
/// Largest accepted `ring_size`: the `TABLES` map holds `DEFAULT_TABLE_SLOTS * ring_size` entries,
/// which must fit a `u32`.
pub const MAX_RING_SIZE: u32 = u32::MAX / DEFAULT_TABLE_SLOTS;
/// Shortest accepted `api.token`.
pub const MIN_TOKEN_LEN: usize = 16;
/// Default `drain_idle_timeout`. Long enough for an idle but live connection between two
/// requests (HTTP keep-alive pools, a database client between queries), short enough that
/// `--wait-drained` after a lost host or client ends in minutes rather than never.
pub const DEFAULT_DRAIN_IDLE_TIMEOUT: Duration = Duration::from_secs(300);
/// Accepted `drain_idle_timeout` range. The lower end stays well above the data plane's
/// 1-second `last_seen_ns` granularity (`FLOW_TOUCH_NS`), so a busy flow is never taken for idle.
pub const DRAIN_IDLE_TIMEOUT_RANGE: std::ops::RangeInclusive<Duration> =
    Duration::from_secs(5)..=Duration::from_secs(86_400);
/// Shortest accepted health-check `interval`.
pub const MIN_HEALTH_INTERVAL: Duration = Duration::from_millis(50);
/// Longest accepted health-check `interval`.
pub const MAX_HEALTH_INTERVAL: Duration = Duration::from_secs(3600);
/// Largest accepted health-check `rise` and `fall`.
pub const MAX_RISE_FALL: u32 = 100;
/// Longest accepted health-check `http_path`, in characters.
pub const MAX_HTTP_PATH_LEN: usize = 1024;

/// The whole configuration file.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Name of this balancer instance (`[A-Za-z0-9_-]{1,32}`, default `"lb"`): pins go to
    /// `<bpffs>/<instance>`, the state file is `<state_dir>/<instance>.state.json`.
    #[serde(default = "default_instance")]
    pub instance: String,
    /// Directory of the state file (default `/var/lib/lb`).
    #[serde(default = "default_state_dir")]
    pub state_dir: PathBuf,
    /// Mount point of the BPF filesystem (default `/sys/fs/bpf`).
    #[serde(default = "default_bpffs")]
    pub bpffs: PathBuf,
    /// Interfaces the XDP program attaches to (at least one).
    #[serde(default)]
    pub interfaces: Vec<String>,
    /// How the XDP program is attached (default [`XdpMode::Auto`]).
    #[serde(default)]
    pub xdp_mode: XdpMode,
    /// Entries of the flow table (`1024..=1<<27`, default
    /// [`lb_common::maps::DEFAULT_FLOW_ENTRIES`]).
    #[serde(default = "default_flow_table_size")]
    pub flow_table_size: u32,
    /// Slots of one Maglev table: prime and at least 100 per backend of the largest pool
    /// (default [`lb_common::maps::DEFAULT_RING_SIZE`]).
    #[serde(default = "default_ring_size")]
    pub ring_size: u32,
    /// A flow with no packet for this long is not counted as established by `drain-status`,
    /// `--wait-drained` and `lb_pool_established_flows` (default 5m; `5s..=24h`): its
    /// connection is taken for dead (a client or balancer host lost without FIN or RST). TOML:
    /// a string such as `"2m"`.
    #[serde(default = "default_drain_idle_timeout", deserialize_with = "de::de_duration")]
    pub drain_idle_timeout: Duration,
    /// The management API (`[api]`, all defaults when left out).
    #[serde(default)]
    pub api: ApiConfig,
    /// Flow-table protection (`[flows]`, all defaults when left out).
    #[serde(default)]
    pub flows: FlowsConfig,
    /// The services (`[[services]]`, at least one).
    #[serde(default)]
    pub services: Vec<ServiceConfig>,
    /// BGP announcement of the VIPs through BIRD (`[bgp]`, see [`crate::fleet::BgpConfig`]);
    /// absent: nothing is announced and nothing about BGP runs.
    #[serde(default)]
    pub bgp: Option<crate::fleet::BgpConfig>,
    /// Shared desired state in etcd (`[fleet]`, see [`crate::fleet::etcd::FleetConfig`]);
    /// absent: the state file alone holds the desired state and nothing about etcd runs.
    #[serde(default)]
    pub fleet: Option<crate::fleet::etcd::FleetConfig>,
    /// Flow-state sync between the hosts of a fleet (`[sync]`, see
    /// [`crate::fleet::sync::SyncConfig`]); absent: no flow is shared.
    #[serde(default)]
    pub sync: Option<crate::fleet::sync::SyncConfig>,
}

/// How the XDP program is attached to the interfaces.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum XdpMode {
    /// Native (driver) mode, falling back to generic mode with a warning; generic on a veth
    /// (see `dataplane::links::plan_mode`).
    #[default]
    Auto,
    /// Native (driver) mode only; fail if the driver cannot do it.
    Native,
    /// Generic (skb) mode: works everywhere, slower.
    Generic,
}

/// The management API (`[api]`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiConfig {
    /// Path of the Unix socket (default `/run/lb/lb.sock`).
    #[serde(default = "default_unix_socket")]
    pub unix_socket: PathBuf,
    /// Optional TCP listener; needs `token` or `token_file`.
    #[serde(default)]
    pub tcp: Option<SocketAddr>,
    /// Bearer token TCP clients must send (at least 16 characters).
    #[serde(default)]
    pub token: Option<String>,
    /// File holding the bearer token (instead of `token`).
    #[serde(default)]
    pub token_file: Option<PathBuf>,
    /// A second bearer token for the TCP listener that may only read (GET: status, history,
    /// drain status, `/metrics`, health); any change sent with it gets 403. Lets dashboards
    /// and on-call tooling look without being able to switch pools.
    #[serde(default)]
    pub read_token: Option<String>,
    /// File holding the read-only token (instead of `read_token`).
    #[serde(default)]
    pub read_token_file: Option<PathBuf>,
    /// Optional listener serving only `GET /metrics`, without a token (e.g.
    /// `"127.0.0.1:9181"`), so Prometheus needs no credential that could change anything.
    #[serde(default)]
    pub metrics: Option<SocketAddr>,
}

impl Default for ApiConfig {
    fn default() -> Self {
        Self {
            unix_socket: default_unix_socket(),
            tcp: None,
            token: None,
            token_file: None,
            read_token: None,
            read_token_file: None,
            metrics: None,
        }
    }
}

/// Flow-table protection (`[flows]`): the flood-mode guard and how long entries that no longer
/// describe a live connection are trusted. Changed by `lbctl reload`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FlowsConfig {
    /// New connections per second and CPU above which that CPU stops recording SYNs (flood
    /// mode: forwarded by the hash, recorded on their first ACK), so a SYN flood cannot evict
    /// established flows. 0 turns the guard off. Default
    /// [`lb_common::maps::DEFAULT_NEW_FLOW_LIMIT`].
    #[serde(default = "default_new_flow_limit")]
    pub new_flow_limit: u32,
    /// A handshake that did not complete is forgotten after this long without a packet
    /// (`MIN_FLOW_TIMEOUT..=MAX_FLOW_TIMEOUT`, default 5 s).
    #[serde(default = "default_flow_timeout", deserialize_with = "de::de_duration")]
    pub handshake_timeout: Duration,
    /// A connection closed by FIN or RST is forgotten after this long without a packet
    /// (`MIN_FLOW_TIMEOUT..=MAX_FLOW_TIMEOUT`, default 5 s).
    #[serde(default = "default_flow_timeout", deserialize_with = "de::de_duration")]
    pub closed_timeout: Duration,
}

impl Default for FlowsConfig {
    fn default() -> Self {
        Self {
            new_flow_limit: default_new_flow_limit(),
            handshake_timeout: default_flow_timeout(),
            closed_timeout: default_flow_timeout(),
        }
    }
}

/// Shortest accepted `flows.handshake_timeout` / `flows.closed_timeout` (SYN and FIN
/// retransmissions need the entry for at least this long).
pub const MIN_FLOW_TIMEOUT: Duration = Duration::from_secs(1);
/// Longest accepted `flows.handshake_timeout` / `flows.closed_timeout`.
pub const MAX_FLOW_TIMEOUT: Duration = Duration::from_secs(600);

impl FlowsConfig {
    /// The data plane's `SETTINGS` entry for this config.
    pub fn settings(&self) -> lb_common::maps::Settings {
        lb_common::maps::Settings {
            new_flow_limit: self.new_flow_limit,
            _pad: 0,
            handshake_timeout_ns: self.handshake_timeout.as_nanos() as u64,
            closed_timeout_ns: self.closed_timeout.as_nanos() as u64,
        }
    }
}

/// One service (`[[services]]`): its VIPs, its pools and the pool active at start.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceConfig {
    /// Name (`[a-z0-9][a-z0-9._-]{0,62}`), unique across services.
    #[serde(default)]
    pub name: String,
    /// Addresses clients connect to (at least one; port not 0; unique across all services).
    #[serde(default, deserialize_with = "de::de_list")]
    pub vips: Vec<SocketAddr>,
    /// Forwarding mode (default [`ForwardMode::Nat`]).
    #[serde(default)]
    pub mode: ForwardMode,
    /// The pool active at start; must name one of `pools`.
    #[serde(default)]
    pub active: String,
    /// The pools, in file order (TOML: one `[services.pools.<name>]` table each).
    #[serde(default, deserialize_with = "de::de_pools")]
    pub pools: Vec<PoolConfig>,
}

/// How packets reach the backends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ForwardMode {
    /// Destination rewritten to the backend, replies rewritten back to the VIP.
    #[default]
    Nat,
    /// Direct server return: only the destination MAC changes; ports cannot be rewritten.
    Dsr,
}

/// One pool (`[services.pools.<name>]`): a named set of backends.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoolConfig {
    /// The table key (same rules as service names). Not a key inside the table: filled in from
    /// the table's name when the service is read.
    #[serde(skip_deserializing)]
    pub name: String,
    /// The backends (at least one).
    #[serde(default, deserialize_with = "de::de_list")]
    pub backends: Vec<BackendConfig>,
    /// A switch to this pool is refused (unless forced) with fewer healthy backends than this
    /// (default 1; at most the number of backends).
    #[serde(default = "default_min_healthy")]
    pub min_healthy: u32,
    /// Active health checks of the pool's backends (`[services.pools.<name>.health]`, all
    /// defaults when left out).
    #[serde(default)]
    pub health: HealthConfig,
}

/// Active health checks of one pool's backends (`[services.pools.<name>.health]`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HealthConfig {
    /// Whether backends are checked at all (default `true`); when `false` they are always up.
    pub enabled: bool,
    /// Time between two checks of one backend (default 1s; `50ms..=1h`). TOML: a string such as
    /// `"500ms"` or `"2s"`.
    #[serde(deserialize_with = "de::de_duration")]
    pub interval: Duration,
    /// Bound of one check, connection and (with `http_path`) status line included (default
    /// 500ms; more than 0 and at most `interval`). TOML: a string such as `"200ms"`.
    #[serde(deserialize_with = "de::de_duration")]
    pub timeout: Duration,
    /// Consecutive successful checks that bring a down backend up (default 2; `1..=100`).
    pub rise: u32,
    /// Consecutive failed checks that take an up backend down (default 2; `1..=100`).
    pub fall: u32,
    /// When set, a check sends `GET <path> HTTP/1.0` (with a `Host` header) after connecting and
    /// looks at the status code. Starts with `/`, no whitespace or control characters, at most
    /// [`MAX_HTTP_PATH_LEN`] characters. Default: none (a TCP connect check).
    pub http_path: Option<String>,
    /// Inclusive range of status codes that pass an HTTP check (default `[200, 299]`; both in
    /// `100..=599`, first at most second). Ignored without `http_path`.
    #[serde(deserialize_with = "de::de_status_range")]
    pub http_status: (u16, u16),
}

impl Default for HealthConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            interval: Duration::from_secs(1),
            timeout: Duration::from_millis(500),
            rise: 2,
            fall: 2,
            http_path: None,
            http_status: (200, 299),
        }
    }
}

/// One backend: `"ip:port"` or `{ addr = "ip:port", weight = N }` in TOML.
#[derive(Debug, Clone, PartialEq)]
pub struct BackendConfig {
    /// Address and port of the server.
    pub addr: SocketAddr,
    /// Relative weight, `0..=10000` (default 1; 0 = takes no new flows).
    pub weight: u32,
}

/// Why a configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("reading {path}: {error}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What went wrong (in the message, and so not also a `source`: an error chain would
        /// print it twice).
        error: std::io::Error,
    },
    /// TOML syntax, type or unknown-key error (with line and column; prefixed with the file path
    /// when loading a file).
    #[error("{}", .0)]
    Parse(String),
    /// The file parsed but breaks one or more rules; all of them are listed.
    #[error("invalid config:\n{}", format_problems(.0))]
    Invalid(Vec<Problem>),
}

/// One validation problem: the dotted key it concerns and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Dotted key, e.g. `services[0] (web).pools.pool-a.backends[1]`.
    pub key: String,
    /// What is wrong, in words.
    pub reason: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "  {}: {}", self.key, self.reason)
    }
}

fn format_problems(problems: &[Problem]) -> String {
    problems.iter().map(Problem::to_string).collect::<Vec<_>>().join("\n")
}

impl fmt::Display for XdpMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Auto => "auto",
            Self::Native => "native",
            Self::Generic => "generic",
        })
    }
}

impl fmt::Display for ForwardMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Nat => "nat",
            Self::Dsr => "dsr",
        })
    }
}

impl Config {
    /// Parses and validates a configuration.
    pub fn from_toml_str(text: &str) -> Result<Config, ConfigError> {
        let config: Config =
            toml::from_str(text).map_err(|e| ConfigError::Parse(e.to_string().trim_end().to_owned()))?;
        config.validate()?;
        Ok(config)
    }

    /// Reads, parses and validates a configuration file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|error| ConfigError::Io { path: path.to_path_buf(), error })?;
        Self::from_toml_str(&text).map_err(|e| match e {
            ConfigError::Parse(msg) => ConfigError::Parse(format!("{}: {msg}", path.display())),
            other => other,
        })
    }

    /// Checks every rule; `Err(ConfigError::Invalid)` lists all problems found.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let problems = self.problems();
        if problems.is_empty() { Ok(()) } else { Err(ConfigError::Invalid(problems)) }
    }

    /// The service named `name`.
    pub fn service(&self, name: &str) -> Option<&ServiceConfig> {
        self.services.iter().find(|s| s.name == name)
    }

    /// `<state_dir>/<instance>.state.json`.
    pub fn state_file(&self) -> PathBuf {
        self.state_dir.join(format!("{}.state.json", self.instance))
    }

    /// `<bpffs>/<instance>`: where maps and links are pinned.
    pub fn pin_dir(&self) -> PathBuf {
        self.bpffs.join(&self.instance)
    }
}

fn default_instance() -> String {
    "lb".to_owned()
}
fn default_state_dir() -> PathBuf {
    PathBuf::from("/var/lib/lb")
}
fn default_bpffs() -> PathBuf {
    PathBuf::from("/sys/fs/bpf")
}
fn default_flow_table_size() -> u32 {
    DEFAULT_FLOW_ENTRIES
}
fn default_ring_size() -> u32 {
    DEFAULT_RING_SIZE
}
fn default_drain_idle_timeout() -> Duration {
    DEFAULT_DRAIN_IDLE_TIMEOUT
}
fn default_new_flow_limit() -> u32 {
    lb_common::maps::DEFAULT_NEW_FLOW_LIMIT
}
fn default_flow_timeout() -> Duration {
    Duration::from_nanos(lb_common::maps::DEFAULT_HANDSHAKE_TIMEOUT_NS)
}
fn default_unix_socket() -> PathBuf {
    PathBuf::from("/run/lb/lb.sock")
}
fn default_min_healthy() -> u32 {
    1
}

#[cfg(test)]
pub(crate) mod test_support;
#[cfg(test)]
mod tests;
