//! The standard end-to-end setup: backends a1 a2 (pool-a) and b1 b2 (pool-b), one service `web`
//! on VIP 10.77.100.1:80 in NAT or DSR mode, the daemon attached to the balancer.

use crate::{
    daemon::{LbDaemon, ServiceSpec, config_toml},
    topology::{BackendSpec, LB_IFACE, Topology, TopologyOptions, vip},
};
use anyhow::Result;
use std::net::{Ipv4Addr, SocketAddr};

/// The VIP of the standard setup.
pub fn web_vip() -> SocketAddr {
    SocketAddr::new(vip(1).into(), 80)
}

/// Pool-a backend names.
pub const POOL_A: [&str; 2] = ["a1", "a2"];
/// Pool-b backend names.
pub const POOL_B: [&str; 2] = ["b1", "b2"];

/// Topology and daemon of the standard setup. Fields drop in order: daemon first.
pub struct Setup {
    /// The daemon.
    pub daemon: LbDaemon,
    /// The namespaces.
    pub topo: Topology,
}

/// Builds the standard setup with `mode` (`nat` or `dsr`) and starts every backend.
pub fn setup(prefix: &str, mode: &str) -> Result<Setup> {
    setup_with(prefix, mode, |config| config)
}

/// [`setup`] with the daemon's config text passed through `edit` first (e.g. a smaller flow
/// table, a `[flows]` table).
pub fn setup_with(prefix: &str, mode: &str, edit: impl FnOnce(String) -> String) -> Result<Setup> {
    let port = if mode == "dsr" { 80 } else { 8080 };
    let specs = vec![
        BackendSpec::new("a1", Ipv4Addr::new(10, 77, 2, 11), port),
        BackendSpec::new("a2", Ipv4Addr::new(10, 77, 2, 12), port),
        BackendSpec::new("b1", Ipv4Addr::new(10, 77, 2, 21), port),
        BackendSpec::new("b2", Ipv4Addr::new(10, 77, 2, 22), port),
    ];
    let addrs: Vec<SocketAddr> = specs.iter().map(|s| s.socket_addr()).collect();
    let mut opts = TopologyOptions::new(specs);
    opts.clients = 4;
    if mode == "dsr" {
        opts.dsr_vips = vec![vip(1)];
    }
    let mut topo = Topology::new(prefix, opts)?;
    for name in POOL_A.iter().chain(POOL_B.iter()) {
        topo.start_backend(name)?;
    }
    let daemon = LbDaemon::start(&topo, |instance, dir| {
        edit(config_toml(
            instance,
            dir,
            LB_IFACE,
            &[ServiceSpec {
                name: "web",
                vip: web_vip(),
                mode,
                pools: vec![("pool-a", addrs[..2].to_vec()), ("pool-b", addrs[2..].to_vec())],
                active: "pool-a",
            }],
        ))
    })?;
    Ok(Setup { daemon, topo })
}

/// Whether a backend name belongs to pool-a.
pub fn in_pool_a(name: &str) -> bool {
    POOL_A.contains(&name)
}

/// Whether a backend name belongs to pool-b.
pub fn in_pool_b(name: &str) -> bool {
    POOL_B.contains(&name)
}
