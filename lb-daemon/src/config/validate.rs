//! The rules a configuration must follow; every broken one is reported at once, under its key.

use super::*;
use lb_common::maglev::is_prime;
use lb_common::maps::{DEFAULT_TABLE_SLOTS, MAX_BACKENDS, MAX_SERVICES, MAX_VIPS, MAX_VIPS_PER_BACKEND};
use std::collections::hash_map::Entry;
use std::collections::{HashMap, HashSet};
use std::net::IpAddr;

impl Config {
    pub(super) fn problems(&self) -> Vec<Problem> {
        let mut p = Problems::default();
        self.check_globals(&mut p);
        self.api.check(&mut p);
        self.check_services(&mut p);
        if let Some(bgp) = &self.bgp {
            p.0.extend(bgp.problems(&self.services));
        }
        if let Some(fleet) = &self.fleet {
            p.0.extend(fleet.problems(&self.services));
        }
        if let Some(sync) = &self.sync {
            p.0.extend(sync.problems());
            p.0.extend(sync.membership_problems(self.fleet.is_some()));
        }
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

        if !DRAIN_IDLE_TIMEOUT_RANGE.contains(&self.drain_idle_timeout) {
            p.push(
                "drain_idle_timeout",
                format!("{} is out of range (5s..=24h)", humantime::format_duration(self.drain_idle_timeout)),
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
                return;
            }
        }
        // A split builds one table over the backends of all its pools: every split of a
        // service's pools must fit, so all of them together must.
        for (i, s) in self.services.iter().enumerate() {
            if s.pools.len() < 2 {
                continue;
            }
            let backends = s.pools.iter().map(PoolConfig::backends_taking_flows).sum();
            if let Err(reason) = check_split_fits(ring, backends) {
                p.push("ring_size", format!("{reason} (all the pools of {})", service_label(i, &s.name)));
                return;
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
            } else if let Some(pool) = s.pool(&s.active)
                && !pool.backends.is_empty()
                && pool.backends_taking_flows() == 0
            {
                p.push(
                    &active_key,
                    format!(
                        "pool {:?} has no backend with a weight above 0: it would take no new flows \
                         (give a backend a weight, or make another pool active)",
                        s.active
                    ),
                );
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

/// Whether a split over `backends` backends (with a weight above 0) fits a Maglev table of
/// `ring` slots; the error says how many slots it needs. The engine refuses such a split with
/// this reason, and validation refuses a `ring_size` that a split of a service could exceed.
pub fn check_split_fits(ring: u32, backends: usize) -> Result<(), String> {
    let need = RING_SLOTS_PER_BACKEND * backends as u64;
    if u64::from(ring) >= need {
        return Ok(());
    }
    let hint = next_prime(need).map(|q| format!("; the next prime is {q}")).unwrap_or_default();
    Err(format!(
        "ring_size {ring} is too small for a split over {backends} backends: it needs at least {need} \
         slots ({RING_SLOTS_PER_BACKEND} per backend){hint}"
    ))
}

impl FlowsConfig {
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

impl PoolConfig {
    /// Backends with a weight above 0 (those that take new flows).
    pub fn backends_taking_flows(&self) -> usize {
        self.backends.iter().filter(|b| b.weight > 0).count()
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
        self.check_read_only(p);
    }
}

impl ApiConfig {
    /// The read-only token and the metrics listener.
    fn check_read_only(&self, p: &mut Problems) {
        let read = self.read_token.is_some() || self.read_token_file.is_some();
        if read && self.tcp.is_none() {
            p.push("api.read_token", "a read-only token is only used on TCP: set api.tcp too");
        }
        if self.read_token.is_some() && self.read_token_file.is_some() {
            p.push("api.read_token", "set only one of api.read_token and api.read_token_file");
        }
        if let Some(token) = &self.read_token {
            let n = token.chars().count();
            if n < MIN_TOKEN_LEN {
                p.push("api.read_token", format!("too short ({n} characters); use at least {MIN_TOKEN_LEN}"));
            }
            if !token.bytes().all(|b| b.is_ascii_graphic()) {
                p.push(
                    "api.read_token",
                    "must be printable ASCII without spaces (it travels in an HTTP header)",
                );
            }
            if self.token.as_ref() == Some(token) {
                p.push("api.read_token", "must differ from api.token (it would grant full access)");
            }
        }
        if self.read_token_file.as_ref().is_some_and(|f| f.as_os_str().is_empty()) {
            p.push("api.read_token_file", "must not be empty");
        }
        if let Some(metrics) = self.metrics {
            if metrics.port() == 0 {
                p.push("api.metrics", "needs a port (e.g. \"127.0.0.1:9181\")");
            }
            if self.tcp == Some(metrics) {
                p.push("api.metrics", format!("{metrics} is api.tcp already: use another port"));
            }
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
pub(super) struct Problems(pub(super) Vec<Problem>);

impl Problems {
    pub(super) fn push(&mut self, key: impl AsRef<str>, reason: impl Into<String>) {
        self.0.push(Problem { key: key.as_ref().to_owned(), reason: reason.into() });
    }
}

const NAME_RULE: &str = "use 1-63 characters a-z 0-9 . _ -, starting with a letter or digit";

/// `[a-z0-9][a-z0-9._-]{0,62}`.
pub(super) fn valid_name(name: &str) -> bool {
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
