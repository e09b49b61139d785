//! The configuration's rules, one test per rule or message.

use super::validate::valid_name;
use super::*;
use lb_common::maglev::is_prime;
use lb_common::maps::{MAX_SERVICES, MAX_VIPS_PER_BACKEND};
use std::net::SocketAddr;

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
fn drain_idle_timeout_defaults_parses_and_is_bounded() {
    let base = "interfaces = [\"eth0\"]\n[[services]]\nname = \"web\"\nvips = [\"192.0.2.10:80\"]\nactive = \"a\"\n[services.pools.a]\nbackends = [\"10.0.1.1:80\"]\n";
    assert_eq!(Config::from_toml_str(base).unwrap().drain_idle_timeout, Duration::from_secs(300));
    let c = Config::from_toml_str(&format!("drain_idle_timeout = \"90s\"\n{base}")).unwrap();
    assert_eq!(c.drain_idle_timeout, Duration::from_secs(90));
    for bad in ["1s", "2d"] {
        let e = Config::from_toml_str(&format!("drain_idle_timeout = \"{bad}\"\n{base}")).unwrap_err();
        assert!(e.to_string().contains("drain_idle_timeout"), "{e}");
    }
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
fn example_config_mentions_every_key() {
    for key in [
        "instance",
        "state_dir",
        "bpffs",
        "interfaces",
        "xdp_mode",
        "flow_table_size",
        "ring_size",
        "drain_idle_timeout",
        "[api]",
        "unix_socket",
        "tcp",
        "token",
        "token_file",
        "read_token",
        "read_token_file",
        "metrics",
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
    // 211 is prime; pool-a and pool-b have 2 backends each, so 200 are needed for one pool
    // (and 400 for a split of both: see `ring_size_must_fit_a_split_of_all_pools`).
    let one_pool = with_pools(
        "ring_size = 211",
        "[services.pools.pool-a]\nbackends = [\"10.0.1.1:80\", \"10.0.1.2:80\"]\n",
    );
    Config::from_toml_str(&one_pool).unwrap();
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
fn ring_size_must_fit_a_split_of_all_pools() {
    // Each pool fits 211 slots alone, but a split of both (4 backends) needs 400.
    let text = format!("ring_size = 211\n{BRIEF_EXAMPLE}");
    assert_eq!(keys(&text), ["ring_size"]);
    let r = reason(&text, "ring_size");
    assert!(r.contains("split over 4 backends") && r.contains("at least 400"), "{r}");
    assert!(r.contains("next prime is 401") && r.contains("services[0] (web)"), "{r}");
    Config::from_toml_str(&format!("ring_size = 401\n{BRIEF_EXAMPLE}")).unwrap();
    // A backend of weight 0 takes no slot.
    let light = text
        .replace("\"10.0.2.2:8080\"]", "{ addr = \"10.0.2.2:8080\", weight = 0 }]")
        .replace("min_healthy = 2", "min_healthy = 1");
    let r = reason(&light, "ring_size");
    assert!(r.contains("split over 3 backends"), "{r}");
    assert_eq!(check_split_fits(401, 4), Ok(()));
    assert!(check_split_fits(307, 4).unwrap_err().contains("at least 400"));
}

#[test]
fn active_pool_needs_a_backend_with_weight() {
    let zero = BRIEF_EXAMPLE.replace(
        "\"10.0.1.1:8080\", { addr = \"10.0.1.2:8080\", weight = 2 }",
        "{ addr = \"10.0.1.1:8080\", weight = 0 }",
    );
    assert_ne!(zero, BRIEF_EXAMPLE);
    assert_eq!(keys(&zero), ["services[0] (web).active"]);
    assert!(reason(&zero, "services[0] (web).active").contains("no backend with a weight above 0"));
    // The same pool is fine when it is not the active one.
    let inactive = zero.replace("active = \"pool-a\"", "active = \"pool-b\"");
    Config::from_toml_str(&inactive).unwrap();
}

#[test]
fn a_missing_file_names_its_error_once() {
    let e = Config::load(Path::new("/nonexistent/lb.toml")).unwrap_err();
    let chain = format!("{:#}", anyhow::Error::from(e));
    assert_eq!(chain, "reading /nonexistent/lb.toml: No such file or directory (os error 2)");
}

#[test]
fn host_check_finds_missing_interfaces() {
    let mut c = Config::from_toml_str(BRIEF_EXAMPLE).unwrap();
    c.interfaces = vec!["lo".into(), "nosuch0".into()];
    match c.check_host() {
        Err(ConfigError::Invalid(p)) => {
            assert_eq!(p.len(), 1, "{p:?}");
            assert_eq!(p[0].key, "interfaces[1]");
            assert!(p[0].reason.contains("\"nosuch0\": no such interface"), "{p:?}");
        }
        other => panic!("{other:?}"),
    }
    c.interfaces = vec!["lo".into()];
    assert_eq!(c.check_host().unwrap(), HostCheck { token: None, read_token: None, warnings: vec![] });
}

#[test]
fn host_check_reads_the_token_file() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("token");
    let mut c = Config::from_toml_str(BRIEF_EXAMPLE).unwrap();
    c.interfaces = vec!["lo".into()];
    c.api.token_file = Some(file.clone());
    let problem = |c: &Config| match c.check_host() {
        Err(ConfigError::Invalid(p)) if p.len() == 1 && p[0].key == "api.token_file" => p[0].reason.clone(),
        other => panic!("{other:?}"),
    };
    assert!(problem(&c).contains("cannot read") && problem(&c).contains("No such file"), "missing");
    std::fs::write(&file, "short\n").unwrap();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
    assert!(problem(&c).contains("too short (5 characters)"));
    std::fs::write(&file, "0123456789 abcdef\n").unwrap();
    assert!(problem(&c).contains("printable ASCII"));
    std::fs::write(&file, "0123456789abcdef\n").unwrap();
    let host = c.check_host().unwrap();
    assert_eq!(host.token.as_deref(), Some("0123456789abcdef"));
    assert!(host.warnings.is_empty(), "{:?}", host.warnings);
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let host = c.check_host().unwrap();
    assert_eq!(host.warnings.len(), 1);
    assert!(host.warnings[0].contains("readable by every user (mode 644)"), "{:?}", host.warnings);
    // A directory cannot be read as a file.
    c.api.token_file = Some(dir.path().to_path_buf());
    assert!(problem(&c).contains("cannot read"));
}

#[test]
fn ring_size_upper_bound() {
    // 2147483647 is prime but too large for the table map.
    let text = format!("ring_size = 2147483647\n{BRIEF_EXAMPLE}");
    assert_eq!(keys(&text), ["ring_size"]);
    assert!(reason(&text, "ring_size").contains("too large"));
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
    let with_file = BRIEF_EXAMPLE.replace("[api]", "[api]\ntcp = \"127.0.0.1:9180\"\ntoken_file = \"/t\"");
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
fn read_token_rules() {
    let tcp = "[api]\ntcp = \"127.0.0.1:9180\"\ntoken = \"0123456789abcdef\"\n";
    let ok = BRIEF_EXAMPLE.replace("[api]", &format!("{tcp}read_token = \"fedcba9876543210\""));
    let c = Config::from_toml_str(&ok).unwrap();
    assert_eq!(c.api.read_token.as_deref(), Some("fedcba9876543210"));
    let file = BRIEF_EXAMPLE.replace("[api]", &format!("{tcp}read_token_file = \"/r\""));
    assert_eq!(Config::from_toml_str(&file).unwrap().api.read_token_file, Some(PathBuf::from("/r")));
    // Without TCP there is nothing to use it on.
    let no_tcp = BRIEF_EXAMPLE.replace("[api]", "[api]\nread_token = \"fedcba9876543210\"");
    assert_eq!(keys(&no_tcp), ["api.read_token"]);
    assert!(reason(&no_tcp, "api.read_token").contains("set api.tcp"));
    let both = BRIEF_EXAMPLE
        .replace("[api]", &format!("{tcp}read_token = \"fedcba9876543210\"\nread_token_file = \"/r\""));
    assert_eq!(keys(&both), ["api.read_token"]);
    let short = BRIEF_EXAMPLE.replace("[api]", &format!("{tcp}read_token = \"short\""));
    assert!(reason(&short, "api.read_token").contains("too short (5 characters)"));
    let same = BRIEF_EXAMPLE.replace("[api]", &format!("{tcp}read_token = \"0123456789abcdef\""));
    assert!(reason(&same, "api.read_token").contains("must differ from api.token"));
}

#[test]
fn host_check_reads_the_read_token_file() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("read-token");
    let mut c = Config::from_toml_str(BRIEF_EXAMPLE).unwrap();
    c.interfaces = vec!["lo".into()];
    c.api.tcp = Some(sa("127.0.0.1:9180"));
    c.api.token = Some("0123456789abcdef".into());
    c.api.read_token_file = Some(file.clone());
    let problem = |c: &Config| match c.check_host() {
        Err(ConfigError::Invalid(p)) if p.len() == 1 => (p[0].key.clone(), p[0].reason.clone()),
        other => panic!("{other:?}"),
    };
    let (key, reason) = problem(&c);
    assert_eq!(key, "api.read_token_file");
    assert!(reason.contains("cannot read"), "{reason}");
    std::fs::write(&file, "0123456789abcdef\n").unwrap();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let (key, reason) = problem(&c);
    assert_eq!(key, "api.read_token");
    assert!(reason.contains("equals api.token"), "{reason}");
    std::fs::write(&file, "fedcba9876543210\n").unwrap();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let host = c.check_host().unwrap();
    assert_eq!(host.read_token.as_deref(), Some("fedcba9876543210"));
    assert_eq!(host.token.as_deref(), Some("0123456789abcdef"));
    assert!(host.warnings[0].starts_with("api.read_token_file "), "{:?}", host.warnings);
}

#[test]
fn metrics_listener_rules() {
    let ok = BRIEF_EXAMPLE.replace("[api]", "[api]\nmetrics = \"127.0.0.1:9181\"");
    assert_eq!(Config::from_toml_str(&ok).unwrap().api.metrics, Some(sa("127.0.0.1:9181")));
    let no_port = BRIEF_EXAMPLE.replace("[api]", "[api]\nmetrics = \"127.0.0.1:0\"");
    assert_eq!(keys(&no_port), ["api.metrics"]);
    let same = BRIEF_EXAMPLE.replace(
        "[api]",
        "[api]\ntcp = \"127.0.0.1:9180\"\ntoken = \"0123456789abcdef\"\nmetrics = \"127.0.0.1:9180\"",
    );
    assert_eq!(keys(&same), ["api.metrics"]);
    let bad = BRIEF_EXAMPLE.replace("[api]", "[api]\nmetrics = \"localhost\"");
    assert!(parse_error(&bad).contains("metrics"), "{}", parse_error(&bad));
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
    let other_port = text
        .replace("name = \"api\"\nvips = [\"192.0.2.10:80\"]", "name = \"api\"\nvips = [\"192.0.2.10:443\"]");
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
    let text = BRIEF_EXAMPLE.replace("instance = \"edge1\"", &format!("instance = \"{}\"", "x".repeat(33)));
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
    let ok = many_services(MAX_SERVICES as usize, |i| vec![format!("10.1.{}.{}:80", i / 200, i % 200 + 1)]);
    Config::from_toml_str(&ok).unwrap();
}

#[test]
fn too_many_backends() {
    // 5 services of 820 backends each: 4100 > MAX_BACKENDS.
    let per = 820;
    let text = format!(
        "ring_size = 82003\n{}",
        many_services(5, |s| (0..per).map(|b| format!("10.{s}.{}.{}:80", b / 200, b % 200 + 1)).collect())
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
    assert_eq!(keys, ["ring_size", "services[0] (web).active", "services[0] (web).pools.pool-b.min_healthy"]);
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
