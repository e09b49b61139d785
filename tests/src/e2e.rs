//! The standard end-to-end setup: backends a1 a2 (pool-a) and b1 b2 (pool-b), one service `web`
//! on VIP 10.77.100.1:80 (or `[fd77:100::1]:80` over IPv6) in NAT or DSR mode, the daemon
//! attached to the balancer.

use crate::{
    daemon::{LbDaemon, ServiceSpec, config_toml},
    topology::{BackendSpec, LB_IFACE, Topology, TopologyOptions, in_family, vip},
};
use anyhow::Result;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

/// The VIP of the standard setup (IPv4).
pub fn web_vip() -> SocketAddr {
    SocketAddr::new(vip(1).into(), 80)
}

/// Pool-a backend names.
pub const POOL_A: [&str; 2] = ["a1", "a2"];
/// Pool-b backend names.
pub const POOL_B: [&str; 2] = ["b1", "b2"];

/// How to build the standard setup.
#[derive(Clone, Debug)]
pub struct SetupOptions {
    /// `nat` or `dsr`.
    pub mode: String,
    /// VIP, backends and client addresses over IPv6 instead of IPv4.
    pub v6: bool,
    /// The client behind a router with a link of this MTU
    /// ([`TopologyOptions::client_link_mtu`]).
    pub client_link_mtu: Option<u32>,
}

impl SetupOptions {
    /// `mode` over IPv4, the client on the bridge.
    pub fn new(mode: &str) -> Self {
        Self { mode: mode.to_string(), v6: false, client_link_mtu: None }
    }

    /// The same over IPv6 when `v6`.
    pub fn v6(mut self, v6: bool) -> Self {
        self.v6 = v6;
        self
    }
}

/// Topology and daemon of the standard setup. Fields drop in order: daemon first.
pub struct Setup {
    /// The daemon.
    pub daemon: LbDaemon,
    /// The namespaces.
    pub topo: Topology,
    /// The service's VIP (of the setup's family).
    pub vip: SocketAddr,
    /// Whether the setup runs over IPv6.
    pub v6: bool,
}

impl Setup {
    /// The client's addresses of the setup's family, for [`crate::load::LoadOptions::source_addrs`].
    pub fn sources(&self) -> Vec<IpAddr> {
        self.topo.client_ips(self.v6)
    }
}

/// Builds the standard setup over IPv4 with `mode` (`nat` or `dsr`) and starts every backend.
pub fn setup(prefix: &str, mode: &str) -> Result<Setup> {
    setup_with(prefix, &SetupOptions::new(mode))
}

/// Builds the standard setup as `opts` says and starts every backend.
pub fn setup_with(prefix: &str, opts: &SetupOptions) -> Result<Setup> {
    setup_edited(prefix, opts, None, |c| c)
}

/// Like [`setup_with`], with the daemon's `RLIMIT_NOFILE` set to `nofile_limit` and its config
/// text passed through `edit`.
pub fn setup_edited(
    prefix: &str,
    opts: &SetupOptions,
    nofile_limit: Option<u64>,
    edit: impl FnOnce(String) -> String,
) -> Result<Setup> {
    let mode = opts.mode.as_str();
    let port = if mode == "dsr" { 80 } else { 8080 };
    let specs = vec![
        BackendSpec::new("a1", Ipv4Addr::new(10, 77, 2, 11), port),
        BackendSpec::new("a2", Ipv4Addr::new(10, 77, 2, 12), port),
        BackendSpec::new("b1", Ipv4Addr::new(10, 77, 2, 21), port),
        BackendSpec::new("b2", Ipv4Addr::new(10, 77, 2, 22), port),
    ];
    let addrs: Vec<SocketAddr> = specs.iter().map(|s| s.socket_addr_in(opts.v6)).collect();
    let mut topo_opts = TopologyOptions::new(specs);
    topo_opts.clients = 4;
    topo_opts.client_link_mtu = opts.client_link_mtu;
    if mode == "dsr" {
        topo_opts.dsr_vips = vec![vip(1)];
    }
    let mut topo = Topology::new(prefix, topo_opts)?;
    for name in POOL_A.iter().chain(POOL_B.iter()) {
        topo.start_backend(name)?;
    }
    let service_vip = SocketAddr::new(in_family(vip(1), opts.v6), 80);
    let daemon = LbDaemon::start_limited(&topo, nofile_limit, |instance, dir| {
        edit(config_toml(
            instance,
            dir,
            LB_IFACE,
            &[ServiceSpec {
                name: "web",
                vip: service_vip,
                mode,
                pools: vec![("pool-a", addrs[..2].to_vec()), ("pool-b", addrs[2..].to_vec())],
                active: "pool-a",
            }],
        ))
    })?;
    Ok(Setup { daemon, topo, vip: service_vip, v6: opts.v6 })
}

/// Whether a backend name belongs to pool-a.
pub fn in_pool_a(name: &str) -> bool {
    POOL_A.contains(&name)
}

/// Whether a backend name belongs to pool-b.
pub fn in_pool_b(name: &str) -> bool {
    POOL_B.contains(&name)
}
