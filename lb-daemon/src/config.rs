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

use std::collections::hash_map::Entry;
use std::collections::{HashMap, HashSet};
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use lb_common::maglev::is_prime;
use lb_common::maps::{
    DEFAULT_FLOW_ENTRIES, DEFAULT_RING_SIZE, DEFAULT_TABLE_SLOTS, MAX_BACKENDS, MAX_SERVICES, MAX_VIPS,
    MAX_VIPS_PER_BACKEND,
};
use serde::Deserialize;
use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};

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
    /// The management API (`[api]`, all defaults when left out).
    #[serde(default)]
    pub api: ApiConfig,
    /// Flow-table protection (`[flows]`, all defaults when left out).
    #[serde(default)]
    pub flows: FlowsConfig,
    /// The services (`[[services]]`, at least one).
    #[serde(default)]
    pub services: Vec<ServiceConfig>,
}

/// How the XDP program is attached to the interfaces.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum XdpMode {
    /// Native (driver) mode, falling back to generic mode with a warning.
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
}

impl Default for ApiConfig {
    fn default() -> Self {
        Self { unix_socket: default_unix_socket(), tcp: None, token: None, token_file: None }
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
    #[serde(default = "default_flow_timeout", deserialize_with = "de_duration")]
    pub handshake_timeout: Duration,
    /// A connection closed by FIN or RST is forgotten after this long without a packet
    /// (`MIN_FLOW_TIMEOUT..=MAX_FLOW_TIMEOUT`, default 5 s).
    #[serde(default = "default_flow_timeout", deserialize_with = "de_duration")]
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

    fn check(&self, p: &mut Problems) {
        for (key, value) in [
            ("flows.handshake_timeout", self.handshake_timeout),
            ("flows.closed_timeout", self.closed_timeout),
        ] {
            if !(MIN_FLOW_TIMEOUT..=MAX_FLOW_TIMEOUT).contains(&value) {
                p.push(
                    key,
                    format!(
                        "{} is out of range ({}..={})",
                        humantime::format_duration(value),
                        humantime::format_duration(MIN_FLOW_TIMEOUT),
                        humantime::format_duration(MAX_FLOW_TIMEOUT)
                    ),
                );
            }
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
    #[serde(default, deserialize_with = "de_vips")]
    pub vips: Vec<SocketAddr>,
    /// Forwarding mode (default [`ForwardMode::Nat`]).
    #[serde(default)]
    pub mode: ForwardMode,
    /// The pool active at start; must name one of `pools`.
    #[serde(default)]
    pub active: String,
    /// The pools, in file order (TOML: one `[services.pools.<name>]` table each).
    #[serde(default, deserialize_with = "de_pools")]
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
    #[serde(default, deserialize_with = "de_backends")]
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
    #[serde(deserialize_with = "de_duration")]
    pub interval: Duration,
    /// Bound of one check, connection and (with `http_path`) status line included (default
    /// 500ms; more than 0 and at most `interval`). TOML: a string such as `"200ms"`.
    #[serde(deserialize_with = "de_duration")]
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
    #[serde(deserialize_with = "de_status_range")]
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
    #[error("reading {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        source: std::io::Error,
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
            .map_err(|source| ConfigError::Io { path: path.to_path_buf(), source })?;
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

    fn problems(&self) -> Vec<Problem> {
        let mut p = Problems::default();
        self.check_globals(&mut p);
        self.api.check(&mut p);
        self.check_services(&mut p);
        p.0
    }

    fn check_globals(&self, p: &mut Problems) {
        let instance_ok = (1..=32).contains(&self.instance.len())
            && self.instance.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if !instance_ok {
            p.push(
                "instance",
                format!(
                    "invalid instance name {:?}: use 1-32 characters A-Z a-z 0-9 _ - (it names \
                     the pin directory and the state file)",
                    self.instance
                ),
            );
        }
        if self.state_dir.as_os_str().is_empty() {
            p.push("state_dir", "must not be empty");
        }
        if self.bpffs.as_os_str().is_empty() {
            p.push("bpffs", "must not be empty");
        }

        if self.interfaces.is_empty() {
            p.push("interfaces", "at least one interface is required");
        }
        let mut seen: HashMap<&str, usize> = HashMap::new();
        for (i, name) in self.interfaces.iter().enumerate() {
            let key = format!("interfaces[{i}]");
            if name.is_empty() {
                p.push(&key, "empty interface name");
            } else if name.len() > 15 {
                p.push(&key, format!("{name:?} is longer than 15 bytes (Linux IFNAMSIZ)"));
            }
            if name.chars().any(|c| c == '/' || c == ':' || c.is_whitespace()) {
                p.push(&key, format!("{name:?} contains '/', ':' or whitespace"));
            }
            if name == "." || name == ".." {
                p.push(&key, format!("{name:?} is not a valid interface name"));
            }
            match seen.entry(name.as_str()) {
                Entry::Occupied(o) => {
                    p.push(&key, format!("duplicate interface {name:?} (also interfaces[{}])", o.get()))
                }
                Entry::Vacant(v) => {
                    v.insert(i);
                }
            }
        }

        if !(MIN_FLOW_TABLE_SIZE..=MAX_FLOW_TABLE_SIZE).contains(&self.flow_table_size) {
            p.push(
                "flow_table_size",
                format!(
                    "{} is out of range ({MIN_FLOW_TABLE_SIZE}..={MAX_FLOW_TABLE_SIZE})",
                    self.flow_table_size
                ),
            );
        }

        self.flows.check(p);

        let ring = self.ring_size;
        if !is_prime(ring) {
            p.push("ring_size", format!("{ring} is not a prime number (Maglev needs a prime)"));
        }
        if ring > MAX_RING_SIZE {
            p.push(
                "ring_size",
                format!(
                    "{ring} is too large: the table map holds {DEFAULT_TABLE_SLOTS} tables of \
                     ring_size slots (at most {MAX_RING_SIZE})"
                ),
            );
        }
        let pools = || {
            self.services.iter().enumerate().flat_map(|(i, s)| s.pools.iter().map(move |pool| (i, s, pool)))
        };
        // The first pool of the largest size, so the message names the one a reader meets first.
        let largest = pools().map(|(_, _, pool)| pool.backends.len()).max();
        if let Some((i, s, pool)) = largest.and_then(|n| pools().find(|t| t.2.backends.len() == n)) {
            let n = pool.backends.len();
            let min = RING_SLOTS_PER_BACKEND * n as u64;
            if u64::from(ring) < min {
                let hint = next_prime(min).map(|q| format!("; the next prime is {q}")).unwrap_or_default();
                p.push(
                    "ring_size",
                    format!(
                        "{ring} is too small for the largest pool, {}.pools.{} with {n} \
                         backends: need at least {min} ({RING_SLOTS_PER_BACKEND} slots per \
                         backend){hint}",
                        service_label(i, &s.name),
                        pool.name
                    ),
                );
            }
        }
    }

    fn check_services(&self, p: &mut Problems) {
        if self.services.is_empty() {
            p.push("services", "at least one service ([[services]]) is required");
        }
        let mut names: HashMap<&str, usize> = HashMap::new();
        let mut all_vips: HashMap<SocketAddr, String> = HashMap::new();
        let mut nat_index: HashMap<SocketAddr, usize> = HashMap::new();
        let mut nat_uses: Vec<NatUse<'_>> = Vec::new();
        let mut total_vips = 0usize;
        let mut total_backends = 0usize;

        for (i, s) in self.services.iter().enumerate() {
            let svc = service_label(i, &s.name);

            // Name.
            let name_key = format!("{svc}.name");
            if s.name.is_empty() {
                p.push(&name_key, "missing: every service needs a name");
            } else if !valid_name(&s.name) {
                p.push(&name_key, format!("invalid service name {:?}: {NAME_RULE}", s.name));
            } else {
                match names.entry(s.name.as_str()) {
                    Entry::Occupied(o) => p.push(
                        &name_key,
                        format!("duplicate service name {:?} (also services[{}])", s.name, o.get()),
                    ),
                    Entry::Vacant(v) => {
                        v.insert(i);
                    }
                }
            }

            // The family every address of the service must share: the first VIP's, or the first
            // backend's when there is no VIP.
            let reference = s
                .vips
                .first()
                .or_else(|| s.pools.iter().flat_map(|pool| &pool.backends).map(|b| &b.addr).next())
                .copied();
            let family_problem = |addr: &SocketAddr, what: &str| -> Option<String> {
                let reference = reference?;
                (addr.is_ipv6() != reference.is_ipv6()).then(|| {
                    format!(
                        "{} {what} in a service whose other addresses are {} (one family per \
                         service; make a second service for the other family)",
                        family(addr),
                        family(&reference)
                    )
                })
            };

            // VIPs.
            if s.vips.is_empty() {
                p.push(format!("{svc}.vips"), "at least one VIP is required");
            }
            for (j, vip) in s.vips.iter().enumerate() {
                let key = format!("{svc}.vips[{j}]");
                total_vips += 1;
                check_addr(p, &key, vip, "VIP");
                if let Some(reason) = family_problem(vip, "VIP") {
                    p.push(&key, reason);
                }
                if s.mode == ForwardMode::Dsr && vip.port() != s.vips[0].port() {
                    p.push(
                        &key,
                        format!(
                            "port {} differs from vips[0]'s port {}: the VIPs of a DSR service \
                             share one port (DSR cannot rewrite ports)",
                            vip.port(),
                            s.vips[0].port()
                        ),
                    );
                }
                match all_vips.entry(*vip) {
                    Entry::Occupied(o) => {
                        p.push(&key, format!("duplicate VIP {vip} (also {})", o.get()));
                    }
                    Entry::Vacant(v) => {
                        v.insert(key);
                    }
                }
            }

            // Active pool.
            let active_key = format!("{svc}.active");
            if s.active.is_empty() {
                p.push(&active_key, "missing: name the pool that serves new flows at start");
            } else if s.pool(&s.active).is_none() {
                let known = if s.pools.is_empty() {
                    "none".to_owned()
                } else {
                    s.pools.iter().map(|pool| pool.name.as_str()).collect::<Vec<_>>().join(", ")
                };
                p.push(&active_key, format!("unknown pool {:?} (this service's pools: {known})", s.active));
            }

            // Pools.
            if s.pools.is_empty() {
                p.push(
                    format!("{svc}.pools"),
                    "at least one pool is required (a [services.pools.<name>] table)",
                );
            }
            let mut pool_names: HashSet<&str> = HashSet::new();
            for pool in &s.pools {
                let pk = format!("{svc}.pools.{}", pool.name);
                if !valid_name(&pool.name) {
                    p.push(&pk, format!("invalid pool name {:?}: {NAME_RULE}", pool.name));
                } else if !pool_names.insert(pool.name.as_str()) {
                    p.push(&pk, format!("duplicate pool name {:?}", pool.name));
                }
                if pool.backends.is_empty() {
                    p.push(format!("{pk}.backends"), "empty pool: at least one backend is required");
                }
                // (An empty pool is reported above; min_healthy would only repeat it.)
                if !pool.backends.is_empty() && pool.min_healthy as usize > pool.backends.len() {
                    p.push(
                        format!("{pk}.min_healthy"),
                        format!(
                            "{} is more than the pool's {} backend(s): a switch to this pool \
                             could never pass the health gate",
                            pool.min_healthy,
                            pool.backends.len()
                        ),
                    );
                }
                pool.health.check(p, &format!("{pk}.health"));
                let mut seen: HashMap<SocketAddr, usize> = HashMap::new();
                for (k, b) in pool.backends.iter().enumerate() {
                    let bk = format!("{pk}.backends[{k}]");
                    total_backends += 1;
                    check_addr(p, &bk, &b.addr, "backend");
                    if let Some(reason) = family_problem(&b.addr, "backend") {
                        p.push(&bk, reason);
                    }
                    if s.mode == ForwardMode::Dsr
                        && let Some(vip) = s.vips.first()
                        && b.addr.port() != vip.port()
                    {
                        p.push(
                            &bk,
                            format!(
                                "port {} differs from the VIP port {} (DSR cannot rewrite \
                                 ports: backends listen on the VIP port)",
                                b.addr.port(),
                                vip.port()
                            ),
                        );
                    }
                    if b.weight > MAX_WEIGHT {
                        p.push(
                            format!("{bk}.weight"),
                            format!("{} is out of range (0..={MAX_WEIGHT})", b.weight),
                        );
                    }
                    match seen.entry(b.addr) {
                        Entry::Occupied(o) => p.push(
                            &bk,
                            format!("duplicate backend {} in this pool (also backends[{}])", b.addr, o.get()),
                        ),
                        Entry::Vacant(v) => {
                            v.insert(k);
                        }
                    }
                    if s.mode == ForwardMode::Nat {
                        let at = *nat_index.entry(b.addr).or_insert_with(|| {
                            nat_uses.push(NatUse {
                                addr: b.addr,
                                key: bk.clone(),
                                vips: Vec::new(),
                                services: Vec::new(),
                            });
                            nat_uses.len() - 1
                        });
                        let use_ = &mut nat_uses[at];
                        for vip in &s.vips {
                            if !use_.vips.contains(vip) {
                                use_.vips.push(*vip);
                            }
                        }
                        if !use_.services.contains(&s.name.as_str()) {
                            use_.services.push(&s.name);
                        }
                    }
                }
            }
        }

        // Totals.
        if self.services.len() > MAX_SERVICES as usize {
            p.push("services", format!("{} services; at most {MAX_SERVICES}", self.services.len()));
        }
        if total_vips > MAX_VIPS as usize {
            p.push("services", format!("{total_vips} VIPs over all services; at most {MAX_VIPS}"));
        }
        if total_backends > MAX_BACKENDS as usize {
            p.push(
                "services",
                format!(
                    "{total_backends} backends over all pools of all services (a backend in two \
                     pools counts twice); at most {MAX_BACKENDS}"
                ),
            );
        }
        for u in &nat_uses {
            if u.vips.len() > MAX_VIPS_PER_BACKEND {
                p.push(
                    &u.key,
                    format!(
                        "backend {} serves {} distinct VIPs of NAT services ({}); at most \
                         {MAX_VIPS_PER_BACKEND} (the reply path checks each VIP of a NAT backend)",
                        u.addr,
                        u.vips.len(),
                        u.services.join(", ")
                    ),
                );
            }
        }
    }
}

impl ApiConfig {
    fn check(&self, p: &mut Problems) {
        if self.unix_socket.as_os_str().is_empty() {
            p.push("api.unix_socket", "must not be empty");
        }
        if self.tcp.is_some() && self.token.is_none() && self.token_file.is_none() {
            p.push("api.tcp", "a TCP listener needs a bearer token: set api.token or api.token_file");
        }
        if self.token.is_some() && self.token_file.is_some() {
            p.push("api.token", "set only one of api.token and api.token_file");
        }
        if let Some(token) = &self.token {
            let n = token.chars().count();
            if n < MIN_TOKEN_LEN {
                p.push("api.token", format!("too short ({n} characters); use at least {MIN_TOKEN_LEN}"));
            }
            if !token.bytes().all(|b| b.is_ascii_graphic()) {
                p.push("api.token", "must be printable ASCII without spaces (it travels in an HTTP header)");
            }
        }
        if self.token_file.as_ref().is_some_and(|f| f.as_os_str().is_empty()) {
            p.push("api.token_file", "must not be empty");
        }
    }
}

impl HealthConfig {
    /// Pushes one problem per broken rule, under `key` (`….pools.<name>.health`).
    fn check(&self, p: &mut Problems, key: &str) {
        let (interval, timeout) = (self.interval, self.timeout);
        // (An out-of-range interval is not compared with the timeout.)
        let interval_ok = (MIN_HEALTH_INTERVAL..=MAX_HEALTH_INTERVAL).contains(&interval);
        if !interval_ok {
            p.push(
                format!("{key}.interval"),
                format!(
                    "{} is out of range ({}..={})",
                    humantime::format_duration(interval),
                    humantime::format_duration(MIN_HEALTH_INTERVAL),
                    humantime::format_duration(MAX_HEALTH_INTERVAL)
                ),
            );
        }
        if timeout.is_zero() {
            p.push(format!("{key}.timeout"), "must be more than 0");
        } else if interval_ok && timeout > interval {
            p.push(
                format!("{key}.timeout"),
                format!(
                    "{} is longer than the interval {}: a check must end before the next starts",
                    humantime::format_duration(timeout),
                    humantime::format_duration(interval)
                ),
            );
        }
        for (name, value) in [("rise", self.rise), ("fall", self.fall)] {
            if !(1..=MAX_RISE_FALL).contains(&value) {
                p.push(format!("{key}.{name}"), format!("{value} is out of range (1..={MAX_RISE_FALL})"));
            }
        }
        if let Some(path) = &self.http_path {
            let path_key = format!("{key}.http_path");
            if !path.starts_with('/') {
                p.push(&path_key, format!("{path:?} must start with '/'"));
            }
            if path.chars().any(|c| c.is_whitespace() || c.is_control()) {
                p.push(
                    &path_key,
                    format!(
                        "{path:?} contains whitespace or control characters (it is sent in the \
                         HTTP request line)"
                    ),
                );
            }
            let n = path.chars().count();
            if n > MAX_HTTP_PATH_LEN {
                p.push(&path_key, format!("too long ({n} characters); at most {MAX_HTTP_PATH_LEN}"));
            }
        }
        let (lo, hi) = self.http_status;
        let status_key = format!("{key}.http_status");
        if !(100..=599).contains(&lo) || !(100..=599).contains(&hi) {
            p.push(&status_key, format!("[{lo}, {hi}]: HTTP status codes are in 100..=599"));
        }
        if lo > hi {
            p.push(&status_key, format!("[{lo}, {hi}]: the first code must not be above the second"));
        }
    }
}

impl ServiceConfig {
    /// The pool named `name`.
    pub fn pool(&self, name: &str) -> Option<&PoolConfig> {
        self.pools.iter().find(|p| p.name == name)
    }
}

/// Where one NAT backend address is used: the key of its first occurrence, and the distinct VIPs
/// and services whose replies it carries.
struct NatUse<'a> {
    addr: SocketAddr,
    key: String,
    vips: Vec<SocketAddr>,
    services: Vec<&'a str>,
}

#[derive(Default)]
struct Problems(Vec<Problem>);

impl Problems {
    fn push(&mut self, key: impl AsRef<str>, reason: impl Into<String>) {
        self.0.push(Problem { key: key.as_ref().to_owned(), reason: reason.into() });
    }
}

const NAME_RULE: &str = "use 1-63 characters a-z 0-9 . _ -, starting with a letter or digit";

/// `[a-z0-9][a-z0-9._-]{0,62}`.
fn valid_name(name: &str) -> bool {
    let b = name.as_bytes();
    (1..=63).contains(&b.len())
        && (b[0].is_ascii_lowercase() || b[0].is_ascii_digit())
        && b.iter()
            .all(|&c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'.' || c == b'_' || c == b'-')
}

fn service_label(index: usize, name: &str) -> String {
    if name.is_empty() { format!("services[{index}]") } else { format!("services[{index}] ({name})") }
}

fn family(addr: &SocketAddr) -> &'static str {
    if addr.is_ipv6() { "IPv6" } else { "IPv4" }
}

/// Port 0 and addresses no packet can be forwarded to.
fn check_addr(p: &mut Problems, key: &str, addr: &SocketAddr, what: &str) {
    if addr.port() == 0 {
        p.push(key, format!("port 0 is not a valid {what} port"));
    }
    let ip = addr.ip();
    let unusable = if ip.is_unspecified() {
        Some("unspecified")
    } else if ip.is_multicast() {
        Some("multicast")
    } else if matches!(ip, IpAddr::V4(v4) if v4.is_broadcast()) {
        Some("broadcast")
    } else {
        None
    };
    if let Some(kind) = unusable {
        p.push(key, format!("{ip} is not a usable {what} address ({kind})"));
    }
}

/// The smallest prime `>= n`, if it fits a `u32`.
fn next_prime(n: u64) -> Option<u32> {
    let mut q = u32::try_from(n).ok()?;
    while !is_prime(q) {
        q = q.checked_add(1)?;
    }
    Some(q)
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

// ---------------------------------------------------------------------------------------------
// Deserialization helpers. Addresses and backends are read element by element with their index,
// so an error says which entry is wrong and why; the TOML deserializer adds the line and column
// of that entry.

const BAD_ADDR_HINT: &str = "expected IPv4:port or [IPv6]:port with a port 1-65535";

fn parse_addr(text: &str) -> Result<SocketAddr, String> {
    text.parse().map_err(|_| format!("invalid socket address {text:?} ({BAD_ADDR_HINT})"))
}

/// Reads a duration written as a string such as `"500ms"` or `"2s"`.
fn de_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let text = String::deserialize(d)?;
    humantime::parse_duration(&text).map_err(|e| {
        de::Error::custom(format!("invalid duration {text:?} ({e}; expected e.g. \"500ms\" or \"2s\")"))
    })
}

/// Reads `[lo, hi]`: exactly two status codes.
fn de_status_range<'de, D: Deserializer<'de>>(d: D) -> Result<(u16, u16), D::Error> {
    match Vec::<u16>::deserialize(d)?.as_slice() {
        &[lo, hi] => Ok((lo, hi)),
        other => Err(de::Error::custom(format!(
            "expected two status codes [lo, hi], found {} value(s)",
            other.len()
        ))),
    }
}

fn index_prefix(what: &str, index: Option<usize>) -> String {
    match index {
        Some(i) => format!("{what}[{i}]: "),
        None => String::new(),
    }
}

/// A list read element by element with a seed that knows the element's index.
struct IndexedList<F> {
    expecting: &'static str,
    seed: F,
}

impl<'de, F, S> Visitor<'de> for IndexedList<F>
where
    F: Fn(usize) -> S,
    S: DeserializeSeed<'de>,
{
    type Value = Vec<S::Value>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.expecting)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(1024));
        while let Some(value) = seq.next_element_seed((self.seed)(out.len()))? {
            out.push(value);
        }
        Ok(out)
    }
}

fn de_vips<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<SocketAddr>, D::Error> {
    d.deserialize_seq(IndexedList {
        expecting: "an array of \"ip:port\" strings",
        seed: |index| AddrSeed { what: "vips", index: Some(index) },
    })
}

fn de_backends<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<BackendConfig>, D::Error> {
    d.deserialize_seq(IndexedList {
        expecting: "an array of backends (\"ip:port\" or { addr = \"ip:port\", weight = N })",
        seed: |index| BackendSeed { index: Some(index) },
    })
}

/// Reads one `"ip:port"` string. Goes through `deserialize_newtype_struct` so that errors raised
/// here are attributed to the element (its line and column), not to the whole array.
#[derive(Clone, Copy)]
struct AddrSeed {
    what: &'static str,
    index: Option<usize>,
}

impl<'de> DeserializeSeed<'de> for AddrSeed {
    type Value = SocketAddr;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<SocketAddr, D::Error> {
        d.deserialize_newtype_struct("SocketAddr", self)
    }
}

impl<'de> Visitor<'de> for AddrSeed {
    type Value = SocketAddr;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string \"ip:port\"")
    }

    fn visit_newtype_struct<D: Deserializer<'de>>(self, d: D) -> Result<SocketAddr, D::Error> {
        let prefix = index_prefix(self.what, self.index);
        let text = String::deserialize(d).map_err(|e| de::Error::custom(format!("{prefix}{e}")))?;
        parse_addr(&text).map_err(|reason| de::Error::custom(format!("{prefix}{reason}")))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<SocketAddr, E> {
        parse_addr(v).map_err(|r| E::custom(format!("{}{r}", index_prefix(self.what, self.index))))
    }
}

/// A backend as written in TOML, before checking: a bare address or an inline table.
#[derive(Deserialize)]
#[serde(untagged)]
enum BackendEntry {
    Addr(String),
    Table(toml::Table),
}

const BACKEND_SHAPE: &str =
    "expected a string \"ip:port\" or an inline table { addr = \"ip:port\", weight = N }";

impl TryFrom<BackendEntry> for BackendConfig {
    type Error = String;

    fn try_from(entry: BackendEntry) -> Result<Self, String> {
        match entry {
            BackendEntry::Addr(text) => Ok(BackendConfig { addr: parse_addr(&text)?, weight: 1 }),
            BackendEntry::Table(table) => {
                if let Some(key) = table.keys().find(|k| *k != "addr" && *k != "weight") {
                    return Err(format!("unknown field `{key}`, expected `addr` or `weight`"));
                }
                let addr = match table.get("addr") {
                    Some(toml::Value::String(text)) => parse_addr(text)?,
                    Some(other) => {
                        return Err(format!(
                            "`addr` must be a string \"ip:port\", found {}",
                            other.type_str()
                        ));
                    }
                    None => return Err("missing field `addr`".to_owned()),
                };
                let weight = match table.get("weight") {
                    None => 1,
                    Some(toml::Value::Integer(w)) => u32::try_from(*w)
                        .map_err(|_| format!("weight {w} is out of range (0..={MAX_WEIGHT})"))?,
                    Some(other) => {
                        return Err(format!("`weight` must be an integer, found {}", other.type_str()));
                    }
                };
                Ok(BackendConfig { addr, weight })
            }
        }
    }
}

/// Reads one backend; see [`AddrSeed`] for why it goes through `deserialize_newtype_struct`.
#[derive(Clone, Copy)]
struct BackendSeed {
    index: Option<usize>,
}

impl BackendSeed {
    fn convert<E: de::Error>(self, entry: BackendEntry) -> Result<BackendConfig, E> {
        BackendConfig::try_from(entry)
            .map_err(|reason| E::custom(format!("{}{reason}", index_prefix("backends", self.index))))
    }
}

impl<'de> DeserializeSeed<'de> for BackendSeed {
    type Value = BackendConfig;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<BackendConfig, D::Error> {
        d.deserialize_newtype_struct("BackendConfig", self)
    }
}

impl<'de> Visitor<'de> for BackendSeed {
    type Value = BackendConfig;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string \"ip:port\" or an inline table { addr = \"ip:port\", weight = N }")
    }

    fn visit_newtype_struct<D: Deserializer<'de>>(self, d: D) -> Result<BackendConfig, D::Error> {
        let entry = BackendEntry::deserialize(d).map_err(|_| {
            de::Error::custom(format!("{}{BACKEND_SHAPE}", index_prefix("backends", self.index)))
        })?;
        self.convert(entry)
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<BackendConfig, E> {
        self.convert(BackendEntry::Addr(v.to_owned()))
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<BackendConfig, A::Error> {
        let table = toml::Table::deserialize(de::value::MapAccessDeserializer::new(map))?;
        self.convert(BackendEntry::Table(table))
    }
}

impl<'de> Deserialize<'de> for BackendConfig {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        BackendSeed { index: None }.deserialize(d)
    }
}

/// Reads `[services.pools.<name>]` tables into a list, in file order, naming each pool after
/// its key.
fn de_pools<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<PoolConfig>, D::Error> {
    struct Pools;

    impl<'de> Visitor<'de> for Pools {
        type Value = Vec<PoolConfig>;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a table of pools, one [services.pools.<name>] table per pool")
        }

        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let mut pools = Vec::new();
            while let Some(name) = map.next_key::<String>()? {
                let mut pool: PoolConfig = map.next_value()?;
                pool.name = name;
                pools.push(pool);
            }
            Ok(pools)
        }
    }

    d.deserialize_map(Pools)
}

/// A complete, commented example configuration: every key with its default (or, for keys
/// without one, an example value). It parses and validates.
pub const EXAMPLE_CONFIG: &str = r#"# lb-daemon configuration (TOML). Unknown keys are errors. Keys left out take the default
# shown here; `interfaces` and at least one [[services]] are required.

# Name of this balancer instance, 1-32 characters A-Z a-z 0-9 _ -. Maps and links are pinned
# under <bpffs>/<instance>/ and the state file is <state_dir>/<instance>.state.json, so two
# daemons on one host need two instance names.
instance = "lb"

# Directory of the state file (active pool per service and switch history, written atomically
# so a reboot comes back to the last switch).
state_dir = "/var/lib/lb"

# Mount point of the BPF filesystem.
bpffs = "/sys/fs/bpf"

# Interfaces the XDP program attaches to (required; at least one).
interfaces = ["eth0"]

# XDP attach mode: "auto" (native, falling back to generic with a warning), "native" (driver
# mode or fail) or "generic" (skb mode: works everywhere, slower).
xdp_mode = "auto"

# Entries of the flow table (LRU), 1024 ..= 134217728. One entry per live connection.
flow_table_size = 1048576

# Slots of one Maglev table: a prime number, at least 100 x the backend count of the largest
# pool. Larger tables spread load more evenly and cost memory (16 tables of 4 bytes per slot).
ring_size = 65537

# Flow-table protection (changed by `lbctl reload`).
[flows]
# New connections per second and CPU above which that CPU stops recording SYNs (flood mode: they
# are forwarded by the hash and recorded on their first ACK), so a SYN flood cannot push
# established connections out of the flow table. 0 turns the guard off.
new_flow_limit = 125000
# A handshake that did not complete, and a connection closed by FIN or RST, are forgotten after
# this long without a packet (1s ..= 10m), so an old entry never decides where a later
# connection reusing the same addresses and ports goes.
handshake_timeout = "5s"
closed_timeout = "5s"

# Management API.
[api]
# Unix socket (mode 0600, root only). lbctl talks to it by default.
unix_socket = "/run/lb/lb.sock"
# Optional TCP listener (default: none). It requires a bearer token: `token` (at least 16
# characters) or `token_file` (a file holding it), not both.
# tcp = "127.0.0.1:9180"
# token = "change-me-to-a-long-random-string"
# token_file = "/etc/lb/api.token"

# One [[services]] table per service.
[[services]]
# Name: 1-63 characters a-z 0-9 . _ -, starting with a letter or digit; unique.
name = "web"
# Addresses clients connect to, "ip:port" (IPv6 as "[addr]:port"); unique over all services.
# All VIPs and backends of one service are of one address family.
vips = ["192.0.2.10:80", "192.0.2.11:80"]
# Forwarding: "nat" (default; destination rewritten, replies return through the balancer) or
# "dsr" (direct server return: backends hold the VIP on lo, listen on the VIP port and answer
# clients directly).
mode = "nat"
# Pool that serves new flows at start (required). After a switch the state file wins.
active = "pool-a"

# One [services.pools.<name>] table per pool, kept in this order. Pool names follow the rules of
# service names.
[services.pools.pool-a]
# Backends: "ip:port" (weight 1) or { addr = "ip:port", weight = N }, N in 0..=10000 (0 = takes
# no new flows). At least one; no address twice in one pool.
backends = [
    "10.0.1.1:8080",
    { addr = "10.0.1.2:8080", weight = 2 },
]
# A switch to this pool is refused (unless forced) while fewer backends are healthy.
min_healthy = 1

# Active health checks of this pool's backends (optional table; every key optional). A backend
# goes down after `fall` consecutive failed checks and comes back after `rise` consecutive
# successful ones; a down backend leaves the pool's Maglev table. Backends start up.
[services.pools.pool-a.health]
# false: never check, the backends are always up.
enabled = true
# Time between two checks of one backend, "50ms" ..= "1h" (e.g. "500ms", "2s", "1m 30s").
interval = "1s"
# Bound of one check (connect, and with http_path the status line), more than 0, <= interval.
timeout = "500ms"
# Consecutive successes that bring a down backend up, 1..=100.
rise = 2
# Consecutive failures that take an up backend down, 1..=100.
fall = 2
# Default: a TCP connect check. With http_path, the check sends
# `GET <http_path> HTTP/1.0` (with a Host header) and passes when the status code is in
# http_status (inclusive, 100..=599). The path starts with '/', without spaces.
# http_path = "/healthz"
http_status = [200, 299]

[services.pools.pool-b]
backends = ["10.0.2.1:8080", "10.0.2.2:8080"]
min_healthy = 2

# A second service: IPv6 with direct server return (backend ports equal the VIP port).
[[services]]
name = "web6"
vips = ["[2001:db8::10]:443"]
mode = "dsr"
active = "blue"

[services.pools.blue]
backends = ["[2001:db8:1::1]:443", "[2001:db8:1::2]:443"]

[services.pools.green]
backends = ["[2001:db8:2::1]:443", { addr = "[2001:db8:2::2]:443", weight = 0 }]
"#;

#[cfg(test)]
mod tests {
    use super::*;

    /// The example from the design brief.
    const BRIEF_EXAMPLE: &str = r#"
instance = "edge1"
interfaces = ["eth0"]

[api]
unix_socket = "/run/lb/lb.sock"

[[services]]
name = "web"
vips = ["192.0.2.10:80"]
mode = "nat"
active = "pool-a"

[services.pools.pool-a]
backends = ["10.0.1.1:8080", { addr = "10.0.1.2:8080", weight = 2 }]

[services.pools.pool-b]
backends = ["10.0.2.1:8080", "10.0.2.2:8080"]
min_healthy = 2
"#;

    /// A valid config with one NAT service "web" (IPv4, VIP port 80) and `pools` appended.
    fn with_pools(head: &str, pools: &str) -> String {
        format!(
            "interfaces = [\"eth0\"]\n{head}\n[[services]]\nname = \"web\"\n\
             vips = [\"192.0.2.10:80\"]\nactive = \"pool-a\"\n{pools}"
        )
    }

    fn sa(text: &str) -> SocketAddr {
        text.parse().unwrap()
    }

    fn backend(addr: &str, weight: u32) -> BackendConfig {
        BackendConfig { addr: sa(addr), weight }
    }

    fn problems(text: &str) -> Vec<Problem> {
        match Config::from_toml_str(text) {
            Err(ConfigError::Invalid(problems)) => problems,
            other => panic!("expected validation problems, got {other:?}"),
        }
    }

    fn keys(text: &str) -> Vec<String> {
        problems(text).into_iter().map(|p| p.key).collect()
    }

    /// The reason reported for `key` (exactly one problem under that key expected).
    fn reason(text: &str, key: &str) -> String {
        let all = problems(text);
        let found: Vec<_> = all.iter().filter(|p| p.key == key).collect();
        assert_eq!(found.len(), 1, "one problem under {key:?} expected, got {all:?}");
        found[0].reason.clone()
    }

    fn parse_error(text: &str) -> String {
        match Config::from_toml_str(text) {
            Err(ConfigError::Parse(msg)) => msg,
            other => panic!("expected a parse error, got {other:?}"),
        }
    }

    #[test]
    fn brief_example_parses_with_defaults() {
        let c = Config::from_toml_str(BRIEF_EXAMPLE).unwrap();
        assert_eq!(c.instance, "edge1");
        assert_eq!(c.state_dir, PathBuf::from("/var/lib/lb"));
        assert_eq!(c.bpffs, PathBuf::from("/sys/fs/bpf"));
        assert_eq!(c.interfaces, vec!["eth0".to_owned()]);
        assert_eq!(c.xdp_mode, XdpMode::Auto);
        assert_eq!(c.flow_table_size, DEFAULT_FLOW_ENTRIES);
        assert_eq!(c.ring_size, DEFAULT_RING_SIZE);
        assert_eq!(c.api, ApiConfig::default());
        assert_eq!(c.api.unix_socket, PathBuf::from("/run/lb/lb.sock"));
        assert_eq!(c.services.len(), 1);
        let web = c.service("web").unwrap();
        assert_eq!(web.vips, vec![sa("192.0.2.10:80")]);
        assert_eq!(web.mode, ForwardMode::Nat);
        assert_eq!(web.active, "pool-a");
        let names: Vec<_> = web.pools.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["pool-a", "pool-b"]);
        let a = web.pool("pool-a").unwrap();
        assert_eq!(a.backends, vec![backend("10.0.1.1:8080", 1), backend("10.0.1.2:8080", 2)]);
        assert_eq!(a.min_healthy, 1);
        let b = web.pool("pool-b").unwrap();
        assert_eq!(b.backends, vec![backend("10.0.2.1:8080", 1), backend("10.0.2.2:8080", 1)]);
        assert_eq!(b.min_healthy, 2);
        assert!(web.pool("pool-c").is_none());
        assert!(c.service("api").is_none());
        assert_eq!(c.state_file(), PathBuf::from("/var/lib/lb/edge1.state.json"));
        assert_eq!(c.pin_dir(), PathBuf::from("/sys/fs/bpf/edge1"));
    }

    #[test]
    fn example_config_parses_to_expected_values() {
        let c = Config::from_toml_str(EXAMPLE_CONFIG).unwrap();
        assert_eq!(c.instance, "lb");
        assert_eq!(c.state_dir, PathBuf::from("/var/lib/lb"));
        assert_eq!(c.bpffs, PathBuf::from("/sys/fs/bpf"));
        assert_eq!(c.interfaces, vec!["eth0".to_owned()]);
        assert_eq!(c.xdp_mode, XdpMode::Auto);
        assert_eq!(c.flow_table_size, DEFAULT_FLOW_ENTRIES);
        assert_eq!(c.ring_size, DEFAULT_RING_SIZE);
        assert_eq!(c.api, ApiConfig::default());
        assert_eq!(c.state_file(), PathBuf::from("/var/lib/lb/lb.state.json"));
        assert_eq!(c.pin_dir(), PathBuf::from("/sys/fs/bpf/lb"));

        let names: Vec<_> = c.services.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["web", "web6"]);
        let web = &c.services[0];
        assert_eq!(web.vips, vec![sa("192.0.2.10:80"), sa("192.0.2.11:80")]);
        assert_eq!(web.mode, ForwardMode::Nat);
        assert_eq!(web.active, "pool-a");
        assert_eq!(
            web.pools,
            vec![
                PoolConfig {
                    name: "pool-a".into(),
                    backends: vec![backend("10.0.1.1:8080", 1), backend("10.0.1.2:8080", 2)],
                    min_healthy: 1,
                    health: HealthConfig::default(),
                },
                PoolConfig {
                    name: "pool-b".into(),
                    backends: vec![backend("10.0.2.1:8080", 1), backend("10.0.2.2:8080", 1)],
                    min_healthy: 2,
                    health: HealthConfig::default(),
                },
            ]
        );
        let web6 = &c.services[1];
        assert_eq!(web6.vips, vec![sa("[2001:db8::10]:443")]);
        assert_eq!(web6.mode, ForwardMode::Dsr);
        assert_eq!(web6.active, "blue");
        let names: Vec<_> = web6.pools.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["blue", "green"]);
        assert_eq!(
            web6.pool("green").unwrap().backends,
            vec![backend("[2001:db8:2::1]:443", 1), backend("[2001:db8:2::2]:443", 0)]
        );
        assert_eq!(web6.pool("green").unwrap().min_healthy, 1);
    }

    #[test]
    fn example_config_mentions_every_key() {
        for key in [
            "instance",
            "state_dir",
            "bpffs",
            "interfaces",
            "xdp_mode",
            "flow_table_size",
            "ring_size",
            "[api]",
            "unix_socket",
            "tcp",
            "token",
            "token_file",
            "[[services]]",
            "name",
            "vips",
            "mode",
            "active",
            "[services.pools.",
            "backends",
            "weight",
            "min_healthy",
            "[services.pools.pool-a.health]",
            "enabled",
            "interval",
            "timeout",
            "rise",
            "fall",
            "http_path",
            "http_status",
            "new_flow_limit",
            "handshake_timeout",
            "closed_timeout",
        ] {
            assert!(EXAMPLE_CONFIG.contains(key), "{key} missing from EXAMPLE_CONFIG");
        }
        // The commented-out TCP listener is itself valid when uncommented.
        let uncommented = EXAMPLE_CONFIG.replace("# tcp = ", "tcp = ").replace("# token = ", "token = ");
        let c = Config::from_toml_str(&uncommented).unwrap();
        assert_eq!(c.api.tcp, Some(sa("127.0.0.1:9180")));
        // So is the commented-out HTTP check.
        let http = EXAMPLE_CONFIG.replace("# http_path = ", "http_path = ");
        let c = Config::from_toml_str(&http).unwrap();
        assert_eq!(c.services[0].pools[0].health.http_path.as_deref(), Some("/healthz"));
    }

    #[test]
    fn pools_keep_file_order() {
        let text = with_pools(
            "",
            "[services.pools.zeta]\nbackends = [\"10.0.0.1:80\"]\n\
             [services.pools.pool-a]\nbackends = [\"10.0.0.2:80\"]\n\
             [services.pools.alpha]\nbackends = [\"10.0.0.3:80\"]\n\
             [services.pools.mid]\nbackends = [\"10.0.0.4:80\"]\n",
        );
        let c = Config::from_toml_str(&text).unwrap();
        let names: Vec<_> = c.services[0].pools.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["zeta", "pool-a", "alpha", "mid"]);
    }

    #[test]
    fn all_top_level_keys_parse() {
        let text = with_pools(
            "instance = \"A_b-9\"\nstate_dir = \"/tmp/st\"\nbpffs = \"/mnt/bpf\"\n\
             xdp_mode = \"generic\"\nflow_table_size = 4096\nring_size = 1009\n\
             [api]\nunix_socket = \"/tmp/lb.sock\"\ntcp = \"[::1]:9180\"\n\
             token_file = \"/etc/lb/token\"\n",
            "[services.pools.pool-a]\nbackends = [\"10.0.0.1:80\"]\n",
        );
        let c = Config::from_toml_str(&text).unwrap();
        assert_eq!(c.instance, "A_b-9");
        assert_eq!(c.state_file(), PathBuf::from("/tmp/st/A_b-9.state.json"));
        assert_eq!(c.pin_dir(), PathBuf::from("/mnt/bpf/A_b-9"));
        assert_eq!(c.xdp_mode, XdpMode::Generic);
        assert_eq!(c.flow_table_size, 4096);
        assert_eq!(c.ring_size, 1009);
        assert_eq!(c.api.unix_socket, PathBuf::from("/tmp/lb.sock"));
        assert_eq!(c.api.tcp, Some(sa("[::1]:9180")));
        assert_eq!(c.api.token, None);
        assert_eq!(c.api.token_file, Some(PathBuf::from("/etc/lb/token")));
    }

    #[test]
    fn unknown_active_pool() {
        let text = BRIEF_EXAMPLE.replace("active = \"pool-a\"", "active = \"pool-c\"");
        assert_eq!(keys(&text), ["services[0] (web).active"]);
        let r = reason(&text, "services[0] (web).active");
        assert!(r.contains("unknown pool \"pool-c\"") && r.contains("pool-a, pool-b"), "{r}");
    }

    #[test]
    fn missing_active() {
        let text = BRIEF_EXAMPLE.replace("active = \"pool-a\"", "");
        assert_eq!(keys(&text), ["services[0] (web).active"]);
    }

    #[test]
    fn duplicate_backend_in_pool() {
        let text = with_pools(
            "",
            "[services.pools.pool-a]\n\
             backends = [\"10.0.0.1:80\", \"10.0.0.2:80\", { addr = \"10.0.0.1:80\" }]\n\
             [services.pools.pool-b]\nbackends = [\"10.0.0.1:80\"]\n",
        );
        assert_eq!(keys(&text), ["services[0] (web).pools.pool-a.backends[2]"]);
        let r = reason(&text, "services[0] (web).pools.pool-a.backends[2]");
        assert!(r.contains("duplicate backend 10.0.0.1:80") && r.contains("backends[0]"), "{r}");
    }

    #[test]
    fn bad_backend_address_names_index_line_and_reason() {
        let text = BRIEF_EXAMPLE.replace("\"10.0.2.2:8080\"", "\"10.0.2.2\"");
        let msg = parse_error(&text);
        assert!(msg.contains("backends[1]: invalid socket address \"10.0.2.2\""), "{msg}");
        assert!(msg.contains("line 18, column 30"), "{msg}");

        let text = BRIEF_EXAMPLE.replace("{ addr = \"10.0.1.2:8080\"", "{ addr = \"10.0.1.x:8080\"");
        let msg = parse_error(&text);
        assert!(msg.contains("backends[1]: invalid socket address \"10.0.1.x:8080\""), "{msg}");
        assert!(msg.contains("line 15, column"), "{msg}");

        let text = BRIEF_EXAMPLE.replace("\"10.0.2.1:8080\"", "8080");
        let msg = parse_error(&text);
        assert!(msg.contains("backends[0]: expected a string \"ip:port\" or an inline table"), "{msg}");

        let text = BRIEF_EXAMPLE.replace("weight = 2", "weight = -2");
        let msg = parse_error(&text);
        assert!(msg.contains("backends[1]: weight -2 is out of range"), "{msg}");

        let text = BRIEF_EXAMPLE.replace("weight = 2", "weight = \"2\"");
        let msg = parse_error(&text);
        assert!(msg.contains("backends[1]: `weight` must be an integer"), "{msg}");

        let text = BRIEF_EXAMPLE.replace("{ addr = \"10.0.1.2:8080\", weight = 2 }", "{ weight = 2 }");
        let msg = parse_error(&text);
        assert!(msg.contains("backends[1]: missing field `addr`"), "{msg}");
    }

    #[test]
    fn bad_vip_address() {
        let text = BRIEF_EXAMPLE.replace("[\"192.0.2.10:80\"]", "[\"192.0.2.10:80\", \"web:80\"]");
        let msg = parse_error(&text);
        assert!(msg.contains("vips[1]: invalid socket address \"web:80\""), "{msg}");
        assert!(msg.contains("line 10, column"), "{msg}");
        let text = BRIEF_EXAMPLE.replace("[\"192.0.2.10:80\"]", "[80]");
        let msg = parse_error(&text);
        assert!(msg.contains("vips[0]: invalid type: integer `80`"), "{msg}");
    }

    #[test]
    fn empty_pool() {
        let text = BRIEF_EXAMPLE
            .replace("backends = [\"10.0.2.1:8080\", \"10.0.2.2:8080\"]\nmin_healthy = 2", "backends = []");
        assert_eq!(keys(&text), ["services[0] (web).pools.pool-b.backends"]);
        assert!(reason(&text, "services[0] (web).pools.pool-b.backends").contains("empty pool"));
        // Leaving `backends` out is the same problem (min_healthy is not reported on top).
        let text = with_pools("", "[services.pools.pool-a]\nmin_healthy = 3\n");
        assert_eq!(keys(&text), ["services[0] (web).pools.pool-a.backends"]);
    }

    #[test]
    fn no_pools() {
        let text = with_pools("", "");
        assert_eq!(keys(&text), ["services[0] (web).active", "services[0] (web).pools"]);
    }

    #[test]
    fn port_zero_is_invalid() {
        let text = BRIEF_EXAMPLE.replace("\"10.0.2.1:8080\"", "\"10.0.2.1:0\"");
        assert_eq!(keys(&text), ["services[0] (web).pools.pool-b.backends[0]"]);
        assert!(reason(&text, "services[0] (web).pools.pool-b.backends[0]").contains("port 0"));
        let text = BRIEF_EXAMPLE.replace("\"192.0.2.10:80\"", "\"192.0.2.10:0\"");
        assert_eq!(keys(&text), ["services[0] (web).vips[0]"]);
    }

    #[test]
    fn out_of_range_port_fails() {
        let text = BRIEF_EXAMPLE.replace("\"10.0.2.1:8080\"", "\"10.0.0.1:70000\"");
        let msg = parse_error(&text);
        assert!(msg.contains("backends[0]: invalid socket address \"10.0.0.1:70000\""), "{msg}");
    }

    #[test]
    fn unusable_addresses() {
        let text = BRIEF_EXAMPLE.replace("\"192.0.2.10:80\"", "\"0.0.0.0:80\"");
        assert_eq!(keys(&text), ["services[0] (web).vips[0]"]);
        let text = BRIEF_EXAMPLE.replace("\"10.0.2.1:8080\"", "\"224.0.0.1:8080\"");
        assert_eq!(keys(&text), ["services[0] (web).pools.pool-b.backends[0]"]);
    }

    #[test]
    fn unknown_fields_everywhere() {
        let cases = [
            (BRIEF_EXAMPLE.replace("instance = \"edge1\"", "instance = \"edge1\"\ncolour = 1"), "colour"),
            (BRIEF_EXAMPLE.replace("[api]", "[api]\nport = 1"), "port"),
            (BRIEF_EXAMPLE.replace("mode = \"nat\"", "mode = \"nat\"\nvip = 1"), "vip"),
            (BRIEF_EXAMPLE.replace("min_healthy = 2", "min_healthy = 2\nmin_heathy = 2"), "min_heathy"),
            (BRIEF_EXAMPLE.replace("min_healthy = 2", "min_healthy = 2\nname = \"x\""), "name"),
            (BRIEF_EXAMPLE.replace("weight = 2", "wieght = 2"), "wieght"),
        ];
        for (text, field) in cases {
            let msg = parse_error(&text);
            assert!(msg.contains(&format!("unknown field `{field}`")), "{msg}");
            assert!(msg.contains("line "), "{msg}");
        }
        let msg = parse_error(&BRIEF_EXAMPLE.replace("\"nat\"", "\"tunnel\""));
        assert!(msg.contains("unknown variant `tunnel`"), "{msg}");
        let msg = parse_error(&format!("xdp_mode = \"fast\"\n{BRIEF_EXAMPLE}"));
        assert!(msg.contains("unknown variant `fast`"), "{msg}");
    }

    #[test]
    fn syntax_error_has_line_and_column() {
        let text = BRIEF_EXAMPLE.replace("name = \"web\"", "name = \"web");
        let msg = parse_error(&text);
        assert!(msg.contains("line 9, column"), "{msg}");
    }

    #[test]
    fn mixed_family() {
        let text = BRIEF_EXAMPLE.replace("[\"192.0.2.10:80\"]", "[\"192.0.2.10:80\", \"[2001:db8::1]:80\"]");
        assert_eq!(keys(&text), ["services[0] (web).vips[1]"]);
        assert_eq!(
            reason(&text, "services[0] (web).vips[1]"),
            "IPv6 VIP in a service whose other addresses are IPv4 (one family per service; make \
             a second service for the other family)"
        );
        let text = BRIEF_EXAMPLE.replace("\"10.0.2.2:8080\"", "\"[2001:db8::2]:8080\"");
        assert_eq!(keys(&text), ["services[0] (web).pools.pool-b.backends[1]"]);
        assert!(
            reason(&text, "services[0] (web).pools.pool-b.backends[1]")
                .starts_with("IPv6 backend in a service whose other addresses are IPv4")
        );
    }

    #[test]
    fn dsr_ports_must_match() {
        let dsr = BRIEF_EXAMPLE.replace("mode = \"nat\"", "mode = \"dsr\"");
        // Every backend listens on 8080, the VIP is on 80.
        assert_eq!(
            keys(&dsr),
            [
                "services[0] (web).pools.pool-a.backends[0]",
                "services[0] (web).pools.pool-a.backends[1]",
                "services[0] (web).pools.pool-b.backends[0]",
                "services[0] (web).pools.pool-b.backends[1]",
            ]
        );
        assert!(
            reason(&dsr, "services[0] (web).pools.pool-a.backends[0]")
                .contains("port 8080 differs from the VIP port 80")
        );
        let ok = dsr.replace(":8080", ":80");
        Config::from_toml_str(&ok).unwrap();
        let vips = ok.replace("[\"192.0.2.10:80\"]", "[\"192.0.2.10:80\", \"192.0.2.11:443\"]");
        assert_eq!(keys(&vips), ["services[0] (web).vips[1]"]);
        // NAT may rewrite ports.
        let nat = vips.replace("mode = \"dsr\"", "mode = \"nat\"");
        Config::from_toml_str(&nat).unwrap();
    }

    #[test]
    fn ring_size_must_be_prime() {
        let text = format!("ring_size = 65536\n{BRIEF_EXAMPLE}");
        assert_eq!(keys(&text), ["ring_size"]);
        assert!(reason(&text, "ring_size").contains("not a prime"));
        let text = format!("ring_size = 1009\n{BRIEF_EXAMPLE}");
        Config::from_toml_str(&text).unwrap();
    }

    #[test]
    fn ring_size_too_small_for_largest_pool() {
        // 211 is prime; pool-a and pool-b have 2 backends each, so 200 are needed.
        Config::from_toml_str(&format!("ring_size = 211\n{BRIEF_EXAMPLE}")).unwrap();
        let text = format!("ring_size = 199\n{BRIEF_EXAMPLE}");
        assert_eq!(keys(&text), ["ring_size"]);
        let r = reason(&text, "ring_size");
        assert!(r.contains("services[0] (web).pools.pool-a with 2 backends"), "{r}");
        assert!(r.contains("need at least 200") && r.contains("next prime is 211"), "{r}");
        // A larger pool in another service raises the bar.
        let three = text.replace("ring_size = 199", "ring_size = 211")
            + "\n[[services]]\nname = \"api\"\nvips = [\"192.0.2.20:80\"]\nactive = \"p\"\n\
               [services.pools.p]\nbackends = [\"10.0.9.1:80\", \"10.0.9.2:80\", \"10.0.9.3:80\"]\n";
        let r = reason(&three, "ring_size");
        assert!(r.contains("services[1] (api).pools.p with 3 backends"), "{r}");
    }

    #[test]
    fn ring_size_upper_bound() {
        // 2147483647 is prime but too large for the table map.
        let text = format!("ring_size = 2147483647\n{BRIEF_EXAMPLE}");
        assert_eq!(keys(&text), ["ring_size"]);
        assert!(reason(&text, "ring_size").contains("too large"));
    }

    #[test]
    fn flows_settings_are_read_and_checked() {
        let c = Config::from_toml_str(BRIEF_EXAMPLE).unwrap();
        assert_eq!(c.flows, FlowsConfig::default());
        assert_eq!(c.flows.settings(), lb_common::maps::Settings::default());
        let text = BRIEF_EXAMPLE.replace(
            "[api]",
            "[flows]\nnew_flow_limit = 0\nhandshake_timeout = \"2s\"\nclosed_timeout = \"30s\"\n\n[api]",
        );
        let s = Config::from_toml_str(&text).unwrap().flows.settings();
        assert_eq!(
            (s.new_flow_limit, s.handshake_timeout_ns, s.closed_timeout_ns),
            (0, 2_000_000_000, 30_000_000_000)
        );
        let text = BRIEF_EXAMPLE
            .replace("[api]", "[flows]\nhandshake_timeout = \"100ms\"\nclosed_timeout = \"1h\"\n\n[api]");
        assert_eq!(keys(&text), ["flows.handshake_timeout", "flows.closed_timeout"]);
        assert!(reason(&text, "flows.closed_timeout").contains("out of range"));
        let text = BRIEF_EXAMPLE.replace("[api]", "[flows]\nsyn_limit = 3\n\n[api]");
        assert!(parse_error(&text).contains("syn_limit"), "unknown keys are errors");
    }

    #[test]
    fn flow_table_size_range() {
        for bad in [0u64, 1023, (1 << 27) + 1] {
            let text = format!("flow_table_size = {bad}\n{BRIEF_EXAMPLE}");
            assert_eq!(keys(&text), ["flow_table_size"], "{bad}");
        }
        for good in [1024u64, 1 << 27] {
            Config::from_toml_str(&format!("flow_table_size = {good}\n{BRIEF_EXAMPLE}")).unwrap();
        }
        let msg = parse_error(&format!("flow_table_size = -1\n{BRIEF_EXAMPLE}"));
        assert!(msg.contains("line 1"), "{msg}");
    }

    #[test]
    fn tcp_without_token() {
        let text = BRIEF_EXAMPLE.replace("[api]", "[api]\ntcp = \"127.0.0.1:9180\"");
        assert_eq!(keys(&text), ["api.tcp"]);
        let with_token =
            BRIEF_EXAMPLE.replace("[api]", "[api]\ntcp = \"127.0.0.1:9180\"\ntoken = \"0123456789abcdef\"");
        let c = Config::from_toml_str(&with_token).unwrap();
        assert_eq!(c.api.token.as_deref(), Some("0123456789abcdef"));
        let with_file =
            BRIEF_EXAMPLE.replace("[api]", "[api]\ntcp = \"127.0.0.1:9180\"\ntoken_file = \"/t\"");
        Config::from_toml_str(&with_file).unwrap();
    }

    #[test]
    fn token_rules() {
        let both = BRIEF_EXAMPLE.replace("[api]", "[api]\ntoken = \"0123456789abcdef\"\ntoken_file = \"/t\"");
        assert_eq!(keys(&both), ["api.token"]);
        let short = BRIEF_EXAMPLE.replace("[api]", "[api]\ntoken = \"0123456789abcde\"");
        assert_eq!(keys(&short), ["api.token"]);
        assert!(reason(&short, "api.token").contains("too short (15 characters)"));
        let spaces = BRIEF_EXAMPLE.replace("[api]", "[api]\ntoken = \"0123456789 abcdef\"");
        assert_eq!(keys(&spaces), ["api.token"]);
    }

    #[test]
    fn duplicate_vip_across_services() {
        let text = format!(
            "{BRIEF_EXAMPLE}\n[[services]]\nname = \"api\"\nvips = [\"192.0.2.10:80\"]\n\
             active = \"p\"\n[services.pools.p]\nbackends = [\"10.0.9.1:80\"]\n"
        );
        assert_eq!(keys(&text), ["services[1] (api).vips[0]"]);
        assert!(reason(&text, "services[1] (api).vips[0]").contains("services[0] (web).vips[0]"));
        // Same address, other port: a different VIP.
        let other_port = text.replace(
            "name = \"api\"\nvips = [\"192.0.2.10:80\"]",
            "name = \"api\"\nvips = [\"192.0.2.10:443\"]",
        );
        assert_ne!(other_port, text);
        Config::from_toml_str(&other_port).unwrap();
        // A repeated VIP inside one service is caught too.
        let twice = BRIEF_EXAMPLE.replace("[\"192.0.2.10:80\"]", "[\"192.0.2.10:80\", \"192.0.2.10:80\"]");
        assert_eq!(keys(&twice), ["services[0] (web).vips[1]"]);
    }

    #[test]
    fn duplicate_service_name() {
        let text = format!(
            "{BRIEF_EXAMPLE}\n[[services]]\nname = \"web\"\nvips = [\"192.0.2.20:80\"]\n\
             active = \"p\"\n[services.pools.p]\nbackends = [\"10.0.9.1:80\"]\n"
        );
        assert_eq!(keys(&text), ["services[1] (web).name"]);
        assert!(reason(&text, "services[1] (web).name").contains("also services[0]"));
    }

    #[test]
    fn invalid_names() {
        let text = BRIEF_EXAMPLE.replace("name = \"web\"", "name = \"Web\"");
        assert_eq!(keys(&text), ["services[0] (Web).name"]);
        let text = BRIEF_EXAMPLE.replace("name = \"web\"", "");
        assert_eq!(keys(&text), ["services[0].name"]);
        let text = BRIEF_EXAMPLE.replace("[services.pools.pool-b]", "[services.pools._b]");
        assert_eq!(keys(&text), ["services[0] (web).pools._b"]);
        let long = "a".repeat(64);
        let text = BRIEF_EXAMPLE.replace("name = \"web\"", &format!("name = \"{long}\""));
        assert_eq!(keys(&text), [format!("services[0] ({long}).name")]);
        assert!(valid_name(&"a".repeat(63)) && valid_name("0.a_b-c") && !valid_name("-a"));
    }

    #[test]
    fn instance_and_interfaces() {
        let text = BRIEF_EXAMPLE.replace("instance = \"edge1\"", "instance = \"edge/1\"");
        assert_eq!(keys(&text), ["instance"]);
        let text =
            BRIEF_EXAMPLE.replace("instance = \"edge1\"", &format!("instance = \"{}\"", "x".repeat(33)));
        assert_eq!(keys(&text), ["instance"]);
        let text = BRIEF_EXAMPLE.replace(
            "interfaces = [\"eth0\"]",
            "interfaces = [\"eth0\", \"a23456789012345\", \"a234567890123456\", \"eth 1\", \"a/b\", \"eth0\", \"\"]",
        );
        assert_eq!(
            keys(&text),
            ["interfaces[2]", "interfaces[3]", "interfaces[4]", "interfaces[5]", "interfaces[6]"]
        );
        assert!(reason(&text, "interfaces[5]").contains("duplicate interface \"eth0\" (also interfaces[0])"));
        let text = BRIEF_EXAMPLE.replace("interfaces = [\"eth0\"]", "");
        assert_eq!(keys(&text), ["interfaces"]);
    }

    #[test]
    fn min_healthy_above_backends() {
        let text = BRIEF_EXAMPLE.replace("min_healthy = 2", "min_healthy = 3");
        assert_eq!(keys(&text), ["services[0] (web).pools.pool-b.min_healthy"]);
        let text = BRIEF_EXAMPLE.replace("min_healthy = 2", "min_healthy = 0");
        Config::from_toml_str(&text).unwrap();
    }

    #[test]
    fn weight_range() {
        let ok = BRIEF_EXAMPLE.replace("weight = 2", "weight = 10000");
        assert_eq!(Config::from_toml_str(&ok).unwrap().services[0].pools[0].backends[1].weight, 10_000);
        let zero = BRIEF_EXAMPLE.replace("weight = 2", "weight = 0");
        Config::from_toml_str(&zero).unwrap();
        let text = BRIEF_EXAMPLE.replace("weight = 2", "weight = 10001");
        assert_eq!(keys(&text), ["services[0] (web).pools.pool-a.backends[1].weight"]);
    }

    #[test]
    fn no_services() {
        assert_eq!(keys("interfaces = [\"eth0\"]\n"), ["services"]);
        let text = BRIEF_EXAMPLE.replace("vips = [\"192.0.2.10:80\"]", "vips = []");
        assert_eq!(keys(&text), ["services[0] (web).vips"]);
    }

    /// `n` NAT services `s<i>`, each with one VIP and one pool of the given backends.
    fn many_services(n: usize, backends: impl Fn(usize) -> Vec<String>) -> String {
        let mut text = String::from("interfaces = [\"eth0\"]\n");
        for i in 0..n {
            let list: Vec<String> = backends(i).iter().map(|b| format!("\"{b}\"")).collect();
            text += &format!(
                "[[services]]\nname = \"s{i}\"\nvips = [\"192.0.{}.{}:80\"]\nactive = \"p\"\n\
                 [services.pools.p]\nbackends = [{}]\n",
                i / 200 + 2,
                i % 200 + 1,
                list.join(", ")
            );
        }
        text
    }

    #[test]
    fn too_many_services_and_vips() {
        let n = MAX_SERVICES as usize + 1;
        let text = many_services(n, |i| vec![format!("10.1.{}.{}:80", i / 200, i % 200 + 1)]);
        let all = problems(&text);
        assert!(all.iter().all(|p| p.key == "services"), "{all:?}");
        assert!(all.iter().any(|p| p.reason == format!("{n} services; at most {MAX_SERVICES}")));
        assert!(all.iter().any(|p| p.reason.starts_with(&format!("{n} VIPs over all services"))));
        let ok =
            many_services(MAX_SERVICES as usize, |i| vec![format!("10.1.{}.{}:80", i / 200, i % 200 + 1)]);
        Config::from_toml_str(&ok).unwrap();
    }

    #[test]
    fn too_many_backends() {
        // 5 services of 820 backends each: 4100 > MAX_BACKENDS.
        let per = 820;
        let text = format!(
            "ring_size = 82003\n{}",
            many_services(5, |s| (0..per)
                .map(|b| format!("10.{s}.{}.{}:80", b / 200, b % 200 + 1))
                .collect())
        );
        assert!(is_prime(82003));
        assert_eq!(keys(&text), ["services"]);
        assert!(reason(&text, "services").starts_with("4100 backends over all pools"));
    }

    #[test]
    fn too_many_vips_per_nat_backend() {
        let shared = "10.9.9.9:80".to_owned();
        let n = MAX_VIPS_PER_BACKEND + 1;
        let text = many_services(n, |i| vec![shared.clone(), format!("10.1.0.{}:80", i + 1)]);
        assert_eq!(keys(&text), ["services[0] (s0).pools.p.backends[0]"]);
        let r = reason(&text, "services[0] (s0).pools.p.backends[0]");
        assert!(r.contains(&format!("serves {n} distinct VIPs")), "{r}");
        // At the limit it is fine; DSR services do not count.
        Config::from_toml_str(&many_services(MAX_VIPS_PER_BACKEND, |_| vec![shared.clone()])).unwrap();
        let dsr = text.replacen("active = \"p\"", "mode = \"dsr\"\nactive = \"p\"", 1);
        Config::from_toml_str(&dsr).unwrap();
        // The same backend in two pools of one service counts the service's VIPs once.
        let two_pools = many_services(MAX_VIPS_PER_BACKEND, |_| vec![shared.clone()]).replacen(
            "[services.pools.p]",
            "[services.pools.q]\nbackends = [\"10.9.9.9:80\"]\n[services.pools.p]",
            1,
        );
        Config::from_toml_str(&two_pools).unwrap();
    }

    #[test]
    fn three_problems_reported_together() {
        let text = format!("ring_size = 1000\n{BRIEF_EXAMPLE}")
            .replace("active = \"pool-a\"", "active = \"nope\"")
            .replace("min_healthy = 2", "min_healthy = 5");
        let err = Config::from_toml_str(&text).unwrap_err();
        let ConfigError::Invalid(all) = &err else { panic!("{err:?}") };
        let keys: Vec<_> = all.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(
            keys,
            ["ring_size", "services[0] (web).active", "services[0] (web).pools.pool-b.min_healthy"]
        );
        let shown = err.to_string();
        assert!(shown.starts_with("invalid config:\n  ring_size: 1000 is not a prime"), "{shown}");
        assert_eq!(shown.lines().count(), 4, "{shown}");
        assert!(shown.contains("\n  services[0] (web).active: unknown pool \"nope\""), "{shown}");
    }

    #[test]
    fn load_reads_and_prefixes_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("lb.toml");
        std::fs::write(&path, BRIEF_EXAMPLE).unwrap();
        assert_eq!(Config::load(&path).unwrap(), Config::from_toml_str(BRIEF_EXAMPLE).unwrap());

        std::fs::write(&path, "interfaces = [").unwrap();
        let err = Config::load(&path).unwrap_err();
        assert!(matches!(err, ConfigError::Parse(_)));
        assert!(err.to_string().starts_with(&format!("{}: TOML parse error at line 1", path.display())));

        let missing = dir.path().join("missing.toml");
        let err = Config::load(&missing).unwrap_err();
        assert!(matches!(err, ConfigError::Io { .. }));
        assert!(err.to_string().starts_with(&format!("reading {}: ", missing.display())));
    }

    #[test]
    fn displays() {
        assert_eq!(ForwardMode::Nat.to_string(), "nat");
        assert_eq!(ForwardMode::Dsr.to_string(), "dsr");
        assert_eq!(XdpMode::Auto.to_string(), "auto");
        assert_eq!(XdpMode::Native.to_string(), "native");
        assert_eq!(XdpMode::Generic.to_string(), "generic");
        let p = Problem { key: "api.tcp".into(), reason: "why".into() };
        assert_eq!(p.to_string(), "  api.tcp: why");
        for mode in ["auto", "native", "generic"] {
            let c = Config::from_toml_str(&format!("xdp_mode = \"{mode}\"\n{BRIEF_EXAMPLE}")).unwrap();
            assert_eq!(c.xdp_mode.to_string(), mode);
        }
    }

    #[test]
    fn backend_deserializes_alone() {
        #[derive(Deserialize)]
        struct One {
            b: BackendConfig,
        }
        let one: One = toml::from_str("b = \"10.0.0.1:80\"").unwrap();
        assert_eq!(one.b, backend("10.0.0.1:80", 1));
        let one: One = toml::from_str("b = { addr = \"[::1]:80\", weight = 7 }").unwrap();
        assert_eq!(one.b, backend("[::1]:80", 7));
        let err = toml::from_str::<One>("b = \"nope\"").err().unwrap().to_string();
        assert!(err.contains("invalid socket address \"nope\""), "{err}");
    }

    /// `BRIEF_EXAMPLE` with `body` as pool-b's `[…health]` table.
    fn with_health(body: &str) -> String {
        format!("{BRIEF_EXAMPLE}\n[services.pools.pool-b.health]\n{body}\n")
    }

    const HEALTH_KEY: &str = "services[0] (web).pools.pool-b.health";

    #[test]
    fn health_defaults() {
        let h = HealthConfig::default();
        assert!(h.enabled);
        assert_eq!(h.interval, Duration::from_secs(1));
        assert_eq!(h.timeout, Duration::from_millis(500));
        assert_eq!((h.rise, h.fall), (2, 2));
        assert_eq!(h.http_path, None);
        assert_eq!(h.http_status, (200, 299));
        let c = Config::from_toml_str(BRIEF_EXAMPLE).unwrap();
        for pool in &c.services[0].pools {
            assert_eq!(pool.health, h, "{}", pool.name);
        }
        // An empty table is all defaults; the example config spells the defaults out.
        let c = Config::from_toml_str(&with_health("")).unwrap();
        assert_eq!(c.services[0].pools[1].health, h);
        let c = Config::from_toml_str(EXAMPLE_CONFIG).unwrap();
        assert!(c.services.iter().flat_map(|s| &s.pools).all(|p| p.health == h));
        // Keys left out keep their defaults.
        let c = Config::from_toml_str(&with_health("fall = 5")).unwrap();
        assert_eq!(c.services[0].pools[1].health, HealthConfig { fall: 5, ..HealthConfig::default() });
    }

    #[test]
    fn health_full_table_parses() {
        let text = with_health(
            "enabled = false\ninterval = \"2s 500ms\"\ntimeout = \"250ms\"\nrise = 3\n\
             fall = 100\nhttp_path = \"/healthz?full=1\"\nhttp_status = [200, 204]",
        );
        let c = Config::from_toml_str(&text).unwrap();
        let pools = &c.services[0].pools;
        assert_eq!(pools[0].health, HealthConfig::default());
        assert_eq!(
            pools[1].health,
            HealthConfig {
                enabled: false,
                interval: Duration::from_millis(2500),
                timeout: Duration::from_millis(250),
                rise: 3,
                fall: 100,
                http_path: Some("/healthz?full=1".into()),
                http_status: (200, 204),
            }
        );
        // Bounds are inclusive.
        let text = with_health(
            "interval = \"1h\"\ntimeout = \"1h\"\nrise = 1\nfall = 1\n\
             http_path = \"/\"\nhttp_status = [100, 599]",
        );
        Config::from_toml_str(&text).unwrap();
        let text = with_health("interval = \"50ms\"\ntimeout = \"50ms\"\nhttp_status = [503, 503]");
        Config::from_toml_str(&text).unwrap();
        let long = format!("http_path = \"/{}\"", "a".repeat(MAX_HTTP_PATH_LEN - 1));
        Config::from_toml_str(&with_health(&long)).unwrap();
    }

    #[test]
    fn health_interval_range() {
        let key = format!("{HEALTH_KEY}.interval");
        for bad in ["49ms", "1h 1ms", "0s", "2h"] {
            // An out-of-range interval is not compared with the timeout as well.
            let text = with_health(&format!("interval = \"{bad}\"\ntimeout = \"1s\""));
            assert_eq!(keys(&text), [key.as_str()], "{bad}");
        }
        let text = with_health("interval = \"10ms\"\ntimeout = \"10ms\"");
        assert_eq!(reason(&text, &key), "10ms is out of range (50ms..=1h)");
    }

    #[test]
    fn health_timeout_rules() {
        let key = format!("{HEALTH_KEY}.timeout");
        let text = with_health("timeout = \"0s\"");
        assert_eq!(keys(&text), [key.as_str()]);
        assert_eq!(reason(&text, &key), "must be more than 0");
        let text = with_health("interval = \"1s\"\ntimeout = \"1s 1ms\"");
        assert_eq!(keys(&text), [key.as_str()]);
        assert!(
            reason(&text, &key).starts_with("1s 1ms is longer than the interval 1s"),
            "{}",
            reason(&text, &key)
        );
        // The default timeout (500ms) against a shorter interval.
        let text = with_health("interval = \"100ms\"");
        assert_eq!(keys(&text), [key.as_str()]);
    }

    #[test]
    fn health_rise_fall_range() {
        for field in ["rise", "fall"] {
            let key = format!("{HEALTH_KEY}.{field}");
            for bad in [0, 101] {
                let text = with_health(&format!("{field} = {bad}"));
                assert_eq!(keys(&text), [key.as_str()], "{field} = {bad}");
                assert_eq!(reason(&text, &key), format!("{bad} is out of range (1..=100)"));
            }
            let msg = parse_error(&with_health(&format!("{field} = -1")));
            assert!(msg.contains("line 22"), "{msg}");
        }
    }

    #[test]
    fn health_http_path_rules() {
        let key = format!("{HEALTH_KEY}.http_path");
        for bad in [r#""""#, r#""healthz""#, r#""/a b""#, r#""/a\tb""#, r#""/a\u007f""#, r#""/\u00a0""#] {
            let text = with_health(&format!("http_path = {bad}"));
            assert_eq!(keys(&text), [key.as_str()], "{bad:?}");
        }
        assert!(reason(&with_health("http_path = \"x\""), &key).contains("must start with '/'"));
        assert!(reason(&with_health("http_path = \"/a b\""), &key).contains("whitespace or control"));
        // Both rules broken: both reported.
        let both = with_health("http_path = \"a b\"");
        assert_eq!(keys(&both), [key.as_str(), key.as_str()]);
        let long = format!("http_path = \"/{}\"", "a".repeat(MAX_HTTP_PATH_LEN));
        let text = with_health(&long);
        assert_eq!(keys(&text), [key.as_str()]);
        assert_eq!(reason(&text, &key), "too long (1025 characters); at most 1024");
    }

    #[test]
    fn health_http_status_rules() {
        let key = format!("{HEALTH_KEY}.http_status");
        for bad in ["[99, 200]", "[200, 600]", "[0, 0]"] {
            let text = with_health(&format!("http_status = {bad}"));
            assert_eq!(keys(&text), [key.as_str()], "{bad}");
            assert!(reason(&text, &key).contains("100..=599"), "{bad}");
        }
        let text = with_health("http_status = [300, 200]");
        assert_eq!(keys(&text), [key.as_str()]);
        assert_eq!(reason(&text, &key), "[300, 200]: the first code must not be above the second");
        // Not a pair of small integers: a parse error with the line.
        for bad in ["[200]", "[200, 299, 300]", "[200, 70000]", "[200, -1]", "200"] {
            let msg = parse_error(&with_health(&format!("http_status = {bad}")));
            assert!(msg.contains("line 22"), "{bad}: {msg}");
        }
        let msg = parse_error(&with_health("http_status = [200, 299, 300]"));
        assert!(msg.contains("expected two status codes [lo, hi], found 3"), "{msg}");
    }

    #[test]
    fn health_parse_errors() {
        let msg = parse_error(&with_health("interval = \"fast\""));
        assert!(msg.contains("invalid duration \"fast\""), "{msg}");
        assert!(msg.contains("line 22"), "{msg}");
        let msg = parse_error(&with_health("timeout = 500"));
        assert!(msg.contains("line 22"), "{msg}");
        let msg = parse_error(&with_health("intervall = \"1s\""));
        assert!(msg.contains("unknown field `intervall`"), "{msg}");
        assert!(msg.contains("line 22"), "{msg}");
        let msg = parse_error(&with_health("enabled = \"yes\""));
        assert!(msg.contains("line 22"), "{msg}");
    }

    #[test]
    fn health_problems_reported_with_others() {
        let text = with_health(
            "interval = \"2h\"\ntimeout = \"0ms\"\nrise = 0\nfall = 0\nhttp_path = \"x\"\n\
             http_status = [600, 100]",
        )
        .replace("min_healthy = 2", "min_healthy = 3");
        let k = |s: &str| format!("{HEALTH_KEY}.{s}");
        assert_eq!(
            keys(&text),
            [
                "services[0] (web).pools.pool-b.min_healthy".to_owned(),
                k("interval"),
                k("timeout"),
                k("rise"),
                k("fall"),
                k("http_path"),
                k("http_status"),
                k("http_status"),
            ]
        );
    }
}
