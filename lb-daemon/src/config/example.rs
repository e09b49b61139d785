//! The complete, commented example configuration (`lb-daemon --print-example-config`).

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

# XDP attach mode: "auto" (native, falling back to generic with a warning; generic on a veth),
# "native" (driver mode or fail) or "generic" (skb mode: works everywhere, slower on a NIC).
xdp_mode = "auto"

# Entries of the flow table (LRU), 1024 ..= 134217728. One entry per live connection.
flow_table_size = 1048576

# Slots of one Maglev table: a prime number, at least 100 x the backend count of the largest
# pool. Larger tables spread load more evenly and cost memory (16 tables of 4 bytes per slot).
ring_size = 65537

# A flow with no packet for this long is not counted as established by `lbctl drain-status`,
# `--wait-drained` and lb_pool_established_flows: its connection is taken for dead (a client
# or a balancer host lost without FIN or RST). 5s ..= 24h.
drain_idle_timeout = "5m"

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
# Optional read-only token for the TCP listener (`read_token` or `read_token_file`): GET
# requests only (status, history, drain status, /metrics); any change gets 403.
# read_token = "another-long-random-string"
# read_token_file = "/etc/lb/api.read-token"
# Optional listener serving only GET /metrics, without a token (default: none).
# metrics = "127.0.0.1:9181"

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
