//! `PacketBed`: a loaded data plane inside a fresh network namespace with a fixed topology, for
//! packet tests through BPF_PROG_TEST_RUN. The namespace gives `bpf_fib_lookup` real routes and
//! permanent neighbours, so forwarded frames have exact, known MAC addresses.
//!
//! Topology (namespace `lbpkt-*`): veth `v0` (10.0.0.1/24, fd00::1/64, MAC `LB_MAC`) ↔ `v1`.
//! Backends, the client and VIPs all live on that subnet, as permanent neighbours of `v0`.
//!
//! | service | mode | VIP | pools (table slot: backend index = address) |
//! | --- | --- | --- | --- |
//! | 0 | nat | 10.0.0.200:80 | pool-a (0: 0=10.0.0.11:8080, 1=10.0.0.12:8080), pool-b (1: 2=10.0.0.21:8080, 3=10.0.0.22:8080) |
//! | 1 | dsr | 10.0.0.201:80 | pool-a (2: 4=10.0.0.11:80, 5=10.0.0.12:80) |
//! | 2 | nat | [fd00::200]:80 | pool-a (3: 8=[fd00::11]:8080, 9=[fd00::12]:8080), pool-b (4: 10=[fd00::21]:8080, 11=[fd00::22]:8080) |
//! | 3 | dsr | [fd00::201]:80 | pool-a (5: 12=[fd00::11]:80, 13=[fd00::12]:80) |
//!
//! `v0`'s MAC is recorded in `IFACE_MACS` as the daemon does at attach, so frames received on
//! `v0` (test_run with `v0` as ingress) that are sent to another MAC are not forwarded.

use anyhow::{Context, Result};
use lb_common::{
    hash::flow_hash,
    maglev::{MaglevBackend, build_table},
    maps::{
        BACKEND_UP, Backend, EndpointKey, FlowKey, NatBackend, NatVip, PROTO_TCP, SERVICE_DSR,
        SERVICE_ENABLED, Service, VipValue,
    },
};
use lb_daemon::dataplane::{Dataplane, DataplaneOptions};
use std::{
    collections::BTreeMap,
    net::{IpAddr, SocketAddr},
};

use crate::{
    netns::{NetNs, NsGuard},
    packets::{Frame, Mac},
};

/// Maglev ring size of the default bed (small, prime, ≥ 100 × 2 backends).
pub const RING: u32 = 1009;
/// MAC of the balancer's interface `v0`.
pub const LB_MAC: Mac = [0x02, 0, 0, 0, 0, 0x01];
/// MAC of `v1`, the sender of crafted frames.
pub const PEER_MAC: Mac = [0x02, 0, 0, 0, 0, 0x02];
/// MAC of the client.
pub const CLIENT_MAC: Mac = [0x02, 0, 0, 0, 0x02, 0x00];
/// Client IPv4 address.
pub const CLIENT_V4: &str = "10.0.0.100";
/// Client IPv6 address.
pub const CLIENT_V6: &str = "fd00::100";

/// The NAT IPv4 service.
pub const SVC_NAT: u32 = 0;
/// The DSR IPv4 service.
pub const SVC_DSR: u32 = 1;
/// The NAT IPv6 service.
pub const SVC_NAT6: u32 = 2;
/// The DSR IPv6 service.
pub const SVC_DSR6: u32 = 3;

/// One service of the bed.
pub struct BedService {
    /// VIP.
    pub vip: SocketAddr,
    /// Forwarding mode.
    pub dsr: bool,
    /// Table slot of each pool, in pool order (pool-a first).
    pub pool_tables: Vec<u32>,
}

/// The bed: namespace, data plane and what was configured.
pub struct PacketBed {
    /// The loaded data plane (maps are configured; the program is not attached).
    pub dp: Dataplane,
    /// Index of `v0` in the namespace.
    pub v0: u32,
    /// Services by id.
    pub services: BTreeMap<u32, BedService>,
    /// Backend index → address.
    pub backends: BTreeMap<u32, SocketAddr>,
    /// Table slot → its entries.
    pub tables: BTreeMap<u32, Vec<u32>>,
    // Field order matters: leave the namespace before it is deleted.
    _guard: NsGuard,
    /// The namespace.
    pub ns: NetNs,
}

pub use lb_daemon::engine::addr_words;

/// The flow key of a client → VIP packet.
pub fn flow_key(src: SocketAddr, dst: SocketAddr) -> FlowKey {
    let (s, family) = addr_words(src.ip());
    let (d, _) = addr_words(dst.ip());
    FlowKey {
        src: s,
        dst: d,
        sport: src.port().to_be(),
        dport: dst.port().to_be(),
        proto: PROTO_TCP,
        family,
        _pad: [0; 2],
    }
}

/// MAC of the neighbour owning a backend address (last octet / last group byte).
pub fn backend_mac(ip: IpAddr) -> Mac {
    let last = match ip {
        IpAddr::V4(a) => a.octets()[3],
        IpAddr::V6(a) => a.octets()[15],
    };
    [0x02, 0, 0, 0, 0x01, last]
}

fn sa(s: &str) -> SocketAddr {
    s.parse().expect("valid socket address")
}

impl PacketBed {
    /// Creates the namespace, enters it (this thread), loads and configures the data plane with
    /// small maps (ring `RING`, 8 tables, 4096 flows).
    pub fn new() -> Result<Self> {
        Self::with_options(DataplaneOptions { ring_size: RING, table_slots: 8, flow_entries: 4096 })
    }

    /// Like `new`, with other map sizes (the benchmark uses the production defaults).
    pub fn with_options(options: DataplaneOptions) -> Result<Self> {
        let ns = NetNs::new("lbpkt")?;
        ns.ip(&["link", "add", "v0", "type", "veth", "peer", "name", "v1"])?;
        ns.ip(&["link", "set", "v0", "address", "02:00:00:00:00:01", "up"])?;
        ns.ip(&["link", "set", "v1", "address", "02:00:00:00:00:02", "up"])?;
        ns.ip(&["addr", "add", "10.0.0.1/24", "dev", "v0"])?;
        ns.ip(&["-6", "addr", "add", "fd00::1/64", "dev", "v0", "nodad"])?;
        ns.sysctl("net.ipv4.conf.all.forwarding", "1")?;
        ns.sysctl("net.ipv6.conf.all.forwarding", "1")?;
        for host in [
            "10.0.0.11",
            "10.0.0.12",
            "10.0.0.21",
            "10.0.0.22",
            "fd00::11",
            "fd00::12",
            "fd00::21",
            "fd00::22",
        ] {
            let mac = backend_mac(host.parse()?);
            let mac = mac.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":");
            ns.ip(&["neigh", "replace", host, "lladdr", &mac, "dev", "v0", "nud", "permanent"])?;
        }
        for host in [CLIENT_V4, CLIENT_V6] {
            ns.ip(&[
                "neigh",
                "replace",
                host,
                "lladdr",
                "02:00:00:00:02:00",
                "dev",
                "v0",
                "nud",
                "permanent",
            ])?;
        }
        let v0 = ns.ifindex("v0")?;
        let guard = ns.enter()?;
        let dp = Dataplane::load(options).context("loading the data plane")?;
        let mut bed = Self {
            dp,
            v0,
            services: BTreeMap::new(),
            backends: BTreeMap::new(),
            tables: BTreeMap::new(),
            _guard: guard,
            ns,
        };
        bed.dp.allow_egress(v0)?;
        let mac = lb_daemon::dataplane::interface_mac("v0")?.context("v0 has an Ethernet MAC")?;
        anyhow::ensure!(mac == LB_MAC, "v0's MAC is {mac:02x?}, not LB_MAC");
        anyhow::ensure!(bed.dp.set_iface_mac(v0, mac)?, "v0's index {v0} has no IFACE_MACS slot");
        bed.add_service(
            SVC_NAT,
            sa("10.0.0.200:80"),
            false,
            &[
                (0, &[(0, "10.0.0.11:8080"), (1, "10.0.0.12:8080")]),
                (1, &[(2, "10.0.0.21:8080"), (3, "10.0.0.22:8080")]),
            ],
        )?;
        bed.add_service(
            SVC_DSR,
            sa("10.0.0.201:80"),
            true,
            &[(2, &[(4, "10.0.0.11:80"), (5, "10.0.0.12:80")])],
        )?;
        bed.add_service(
            SVC_NAT6,
            sa("[fd00::200]:80"),
            false,
            &[
                (3, &[(8, "[fd00::11]:8080"), (9, "[fd00::12]:8080")]),
                (4, &[(10, "[fd00::21]:8080"), (11, "[fd00::22]:8080")]),
            ],
        )?;
        bed.add_service(
            SVC_DSR6,
            sa("[fd00::201]:80"),
            true,
            &[(5, &[(12, "[fd00::11]:80"), (13, "[fd00::12]:80")])],
        )?;
        bed.write_nat_backends()?;
        bed.write_filters()?;
        Ok(bed)
    }

    fn add_service(
        &mut self,
        id: u32,
        vip: SocketAddr,
        dsr: bool,
        pools: &[(u32, &[(u32, &str)])],
    ) -> Result<()> {
        for (table, members) in pools {
            let keys: Vec<String> = members.iter().map(|(_, a)| a.to_string()).collect();
            let mb: Vec<MaglevBackend> = members
                .iter()
                .zip(&keys)
                .map(|((idx, _), k)| MaglevBackend { key: k.as_bytes(), index: *idx, weight: 1 })
                .collect();
            let entries = build_table(&mb, self.dp.options().ring_size)?;
            self.dp.write_table(*table, &entries)?;
            self.tables.insert(*table, entries);
            for (idx, addr) in members.iter() {
                let addr = sa(addr);
                self.set_backend(*idx, addr, true)?;
            }
        }
        let (words, family) = addr_words(vip.ip());
        self.dp.set_vip(
            &EndpointKey { addr: words, port: vip.port().to_be(), proto: PROTO_TCP, family },
            &VipValue { service: id, vip_index: id },
        )?;
        let flags = SERVICE_ENABLED | if dsr { SERVICE_DSR } else { 0 };
        self.dp.set_service(id, &Service { table: pools[0].0, epoch: 1, flags, _pad: 0 })?;
        self.services.insert(id, BedService { vip, dsr, pool_tables: pools.iter().map(|p| p.0).collect() });
        Ok(())
    }

    /// Writes a backend entry (up or down).
    pub fn set_backend(&mut self, idx: u32, addr: SocketAddr, up: bool) -> Result<()> {
        let (words, family) = addr_words(addr.ip());
        let flags = if up { BACKEND_UP } else { 0 };
        self.dp.set_backend(idx, &Backend { addr: words, port: addr.port().to_be(), family, flags })?;
        self.backends.insert(idx, addr);
        Ok(())
    }

    /// Every NAT backend (address, port) → the VIPs of the NAT services it serves.
    fn nat_backends(&self) -> BTreeMap<SocketAddr, Vec<SocketAddr>> {
        let mut out: BTreeMap<SocketAddr, Vec<SocketAddr>> = BTreeMap::new();
        for s in self.services.values().filter(|s| !s.dsr) {
            for t in &s.pool_tables {
                for idx in self.tables[t].iter().collect::<std::collections::BTreeSet<_>>() {
                    let vips = out.entry(self.backends[idx]).or_default();
                    if !vips.contains(&s.vip) {
                        vips.push(s.vip);
                    }
                }
            }
        }
        out
    }

    fn write_nat_backends(&mut self) -> Result<()> {
        for (backend, vips) in self.nat_backends() {
            let (words, family) = addr_words(backend.ip());
            let mut value = NatBackend::default();
            for (slot, vip) in value.vips.iter_mut().zip(&vips) {
                *slot = NatVip { addr: addr_words(vip.ip()).0, port: vip.port().to_be(), _pad: 0 };
            }
            value.count = vips.len() as u32;
            self.dp.set_nat_backend(
                &EndpointKey { addr: words, port: backend.port().to_be(), proto: PROTO_TCP, family },
                &value,
            )?;
        }
        Ok(())
    }

    fn write_filters(&mut self) -> Result<()> {
        let vips: Vec<_> =
            self.services.values().map(|s| (addr_words(s.vip.ip()).0, s.vip.port().to_be())).collect();
        let nat_backends: Vec<_> =
            self.nat_backends().keys().map(|a| (addr_words(a.ip()).0, a.port().to_be())).collect();
        self.dp.set_filters(&vips, &nat_backends)?;
        Ok(())
    }

    /// Points a service at another table: a drain switch keeps the epoch, a hard one bumps it.
    pub fn switch(&mut self, svc: u32, table: u32, hard: bool) -> Result<()> {
        let mut s = self.dp.service(svc)?;
        s.table = table;
        if hard {
            s.epoch += 1;
        }
        self.dp.set_service(svc, &s)?;
        Ok(())
    }

    /// The frame the data plane should emit for `frame` sent to `backend`: NAT rewrites the
    /// destination to the backend, DSR only the MACs; both address the backend's MAC from `v0`.
    pub fn to_backend(&self, frame: &Frame, svc: u32, backend: u32) -> Frame {
        let mut out = frame.clone();
        let addr = self.backends[&backend];
        if !self.services[&svc].dsr {
            out.dst = addr;
        }
        out.dst_mac = backend_mac(addr.ip());
        out.src_mac = LB_MAC;
        out
    }

    /// The frame the data plane should emit for a NAT backend's reply: from the VIP, back to
    /// the MAC the client's frames came from (`PEER_MAC` for crafted frames), from `LB_MAC`.
    pub fn reply_to_client(&self, frame: &Frame, svc: u32) -> Frame {
        let mut out = frame.clone();
        out.src = self.services[&svc].vip;
        out.dst_mac = PEER_MAC;
        out.src_mac = LB_MAC;
        out
    }

    /// A counter summed over CPUs (packets).
    pub fn packets(&self, index: u32) -> u64 {
        self.dp.counter(index).map(|c| c.packets).unwrap_or(0)
    }

    /// Backend index Maglev gives a flow on table `table` (independent of the data plane).
    pub fn expected_backend(&self, table: u32, src: SocketAddr, dst: SocketAddr) -> u32 {
        let h = flow_hash(&flow_key(src, dst));
        self.tables[&table][(h % self.dp.options().ring_size) as usize]
    }
}
