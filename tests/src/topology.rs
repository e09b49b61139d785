//! End-to-end topology: a client, a balancer host and backends, each in its own network
//! namespace, on one L2 segment (a Linux bridge in a namespace of its own), for real TCP traffic
//! through the load balancer.
//!
//! ```text
//!                       <p>-sw-*: bridge br0
//!          ┌───────────────┬───────────┴──────┬──────────────┐
//!     p-c  │          p-lb │           p-<a1> │       p-<b1> │   (veth ports, bridge side)
//!     eth0 │          eth0 │             eth0 │         eth0 │
//!   <p>-c-*: client   <p>-lb-*: balancer  <p>-a1-*      <p>-b1-*   (one per backend)
//!   10.77.1.2/24      10.77.1.1/24        10.77.2.11/24 10.77.2.21/24
//!   (+10.77.1.3..)    10.77.2.1/24        default via 10.77.2.1
//!   10.77.100.0/24    ip_forward=1
//!    via 10.77.1.1
//!   10.77.2.0/24
//!    via 10.77.1.1
//! ```
//!
//! - Every host is dual-stack: each IPv4 address `10.77.X.Y` has the IPv6 twin `fd77:X::Y`
//!   ([`v6_twin`]; prefixes /64), with the same routes, so a test runs over either
//!   family by picking its addresses (VIPs `fd77:100::x`, [`vip6`]). ICMPv6 redirects are
//!   ignored by every host, as IPv4 ones are.
//! - No IPv6 address goes through duplicate address detection, link-local ones included (see
//!   `new_ns`): a tentative link-local address silently holds back neighbour solicitations, so
//!   the first IPv6 DSR connections after a topology is built would lose their SYN.
//! - With [`TopologyOptions::client_link_mtu`], a router namespace (`<p>-r-*`) sits between the
//!   client and the bridge: the client is then `10.77.3.2`… behind it (default route via
//!   `10.77.3.1`), the router is `10.77.1.2` on the bridge, and the router's end of the client
//!   link has the smaller MTU while the client's end keeps 1500: the client announces an MSS
//!   that does not fit the path, as behind a tunnel, and the router answers packets too big
//!   for the link with ICMP "fragmentation needed" / "packet too big" (path MTU discovery).
//! - VIPs are `10.77.100.x` ([`vip`]). They are never assigned to the balancer: the client
//!   reaches them through its route via 10.77.1.1, the balancer's XDP program (attached by the
//!   test to the balancer's `eth0`) rewrites them. Without a balancer the kernel of the balancer
//!   namespace simply routes between 10.77.1.0/24 and 10.77.2.0/24 (ICMP redirects are off, since
//!   both subnets share one interface).
//! - Backends route everything via 10.77.2.1, so NAT replies go back through the balancer. With
//!   [`TopologyOptions::dsr_vips`], every backend also holds those VIPs on `lo`, with
//!   `arp_ignore=1` / `arp_announce=2` so that it never answers ARP for them.
//! - TX checksum offload is off on every veth (both ends): packets carry complete checksums, so a
//!   checksum bug of the balancer shows up as dropped packets instead of being fixed up later.
//! - Native XDP on a veth that sends with `XDP_TX` (or `XDP_REDIRECT` into a veth) needs NAPI on
//!   the *receiving* peer, which the kernel only enables when that peer has an XDP program or GRO
//!   on. GRO is therefore turned on for `p-lb` (the bridge-side peer of the balancer's `eth0`) and
//!   on the balancer's `eth0` itself. GRO alone is not enough for `XDP_TX`, though: after an
//!   `XDP_TX` burst the veth driver kicks the peer's NAPI only when the peer has an XDP program of
//!   its own, so with GRO alone the frames sit in `p-lb`'s ring until some unrelated packet
//!   schedules it (seen on 6.18: connections stall). `p-lb` therefore also gets a two-instruction
//!   native `XDP_PASS` program (loaded by the raw `bpf()` syscall, attached by a BPF link that the
//!   topology holds). `XDP_REDIRECT` kicks the peer itself and works either way.
//! - Every host's `eth0` steers received packets to a CPU by flow hash (RPS), as a NIC's RSS
//!   would. A veth otherwise delivers each packet on the CPU that sent it, so a client's
//!   handshake ACK (sent from softirq on one CPU) and its first data segment (sent by the thread
//!   on another) reach the server on two CPUs at once, and the server's 6.18 kernel sometimes
//!   answers the data with a bare RST, as if it had found no socket (a capture on the bridge
//!   shows the two segments in order; likely the lookup racing the request socket being turned
//!   into the established one). About once in 50,000 to 100,000 connections, with or without
//!   the balancer in the path; with RPS none in 160,000. Real NICs never split a flow like that.
//! - The client namespace allows a wide ephemeral port range and `tcp_tw_reuse=1`, so load runs
//!   of many short connections do not run out of ports because of TIME_WAIT.
//!
//! Everything is torn down on drop, also when a test panics: tracked child processes are killed
//! and reaped, then every namespace is deleted (which deletes the veths and the bridge).
//! Namespace names are `<prefix>-<role>-<pid>-<n>` (see [`NetNs::new`]), so topologies of
//! parallel tests never collide.
//!
//! The `test-backend` binary is found by [`find_test_backend`]: `$LB_TEST_BACKEND` if set,
//! otherwise next to the current executable or one directory up (integration tests live in
//! `target/<profile>/deps/`, bins such as `dataplane-bench` and `test-backend` in
//! `target/<profile>/`). [`TopologyOptions::backend_bin`] overrides it; integration tests may pass
//! `env!("CARGO_BIN_EXE_test-backend")`.

use anyhow::{Context, Result, bail, ensure};
use std::{
    collections::BTreeMap,
    fs::File,
    io::{BufRead, BufReader, Write},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, TcpStream},
    os::{
        fd::{AsRawFd, FromRawFd, OwnedFd},
        unix::process::CommandExt,
    },
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::Mutex,
    time::{Duration, Instant},
};

use crate::netns::NetNs;

/// The client's first address (more client addresses follow: 10.77.1.3, 10.77.1.4, ...).
pub const CLIENT_ADDR: Ipv4Addr = Ipv4Addr::new(10, 77, 1, 2);
/// The balancer's address on the client subnet (the client's gateway to the VIPs).
pub const LB_CLIENT_ADDR: Ipv4Addr = Ipv4Addr::new(10, 77, 1, 1);
/// The balancer's address on the backend subnet (the backends' default gateway).
pub const LB_BACKEND_ADDR: Ipv4Addr = Ipv4Addr::new(10, 77, 2, 1);
/// Name of the balancer's interface (inside its namespace); the test attaches XDP to it.
pub const LB_IFACE: &str = "eth0";

/// VIP number `n`: `10.77.100.n`.
pub fn vip(n: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 77, 100, n)
}

/// IPv6 VIP number `n`: `fd77:100::n`, the twin of [`vip`].
pub fn vip6(n: u8) -> Ipv6Addr {
    v6_twin(vip(n))
}

/// The IPv6 twin of a topology address: `10.77.X.Y` → `fd77:X::Y` (the decimal digits read as
/// hexadecimal, so the two look alike).
pub fn v6_twin(a: Ipv4Addr) -> Ipv6Addr {
    let o = a.octets();
    format!("fd{}:{}::{}", o[1], o[2], o[3]).parse().expect("valid IPv6 twin")
}

/// `addr` itself, or its IPv6 twin when `v6`.
pub fn in_family(addr: Ipv4Addr, v6: bool) -> IpAddr {
    if v6 { v6_twin(addr).into() } else { addr.into() }
}

/// One backend host of the topology.
#[derive(Clone, Debug)]
pub struct BackendSpec {
    /// Short name (letters, digits, `-`; at most 10 characters), e.g. `a1`; also the name the
    /// backend answers with.
    pub name: String,
    /// Its address, inside 10.77.2.0/24 (e.g. 10.77.2.11; its IPv6 twin is set too).
    pub addr: Ipv4Addr,
    /// The TCP port `test-backend` listens on (on 0.0.0.0).
    pub port: u16,
}

impl BackendSpec {
    /// A backend named `name` at `addr:port`.
    pub fn new(name: &str, addr: Ipv4Addr, port: u16) -> Self {
        Self { name: name.to_string(), addr, port }
    }

    /// `addr:port`.
    pub fn socket_addr(&self) -> SocketAddr {
        SocketAddr::V4(SocketAddrV4::new(self.addr, self.port))
    }

    /// `addr:port`, or its IPv6 twin's when `v6`.
    pub fn socket_addr_in(&self, v6: bool) -> SocketAddr {
        SocketAddr::new(in_family(self.addr, v6), self.port)
    }
}

/// What [`Topology::new`] builds.
#[derive(Clone, Debug)]
pub struct TopologyOptions {
    /// The backend hosts, one namespace each (their servers start with [`Topology::start_backend`]).
    pub backends: Vec<BackendSpec>,
    /// VIPs put on `lo` of every backend (for DSR), with ARP for them suppressed; their IPv6
    /// twins too.
    pub dsr_vips: Vec<Ipv4Addr>,
    /// Number of client addresses (at least 1): 10.77.1.2, 10.77.1.3, ...
    pub clients: u8,
    /// Path of the `test-backend` binary; `None` finds it with [`find_test_backend`].
    pub backend_bin: Option<PathBuf>,
    /// Put the client behind a router whose link toward the client has this MTU (see the
    /// module documentation); `None`: the client is on the bridge.
    pub client_link_mtu: Option<u32>,
}

impl TopologyOptions {
    /// The given backends, no DSR VIPs, one client address, `test-backend` found automatically.
    pub fn new(backends: Vec<BackendSpec>) -> Self {
        Self { backends, dsr_vips: Vec::new(), clients: 1, backend_bin: None, client_link_mtu: None }
    }
}

/// Finds the `test-backend` binary: `$LB_TEST_BACKEND` if set, otherwise `test-backend` in the
/// directory of the current executable or in its parent (for test binaries in `deps/`).
pub fn find_test_backend() -> Result<PathBuf> {
    find_binary("test-backend", "LB_TEST_BACKEND")
}

/// Finds a workspace binary: `$<env_var>` if set, otherwise `name` in the directory of the
/// current executable or in its parent (for test binaries in `deps/`).
pub fn find_binary(name: &str, env_var: &str) -> Result<PathBuf> {
    if let Some(path) = std::env::var_os(env_var) {
        return Ok(PathBuf::from(path));
    }
    let exe = std::env::current_exe().context("current executable")?;
    let mut dir = exe.parent();
    for _ in 0..2 {
        let Some(d) = dir else { break };
        let candidate = d.join(name);
        if candidate.is_file() {
            return Ok(candidate);
        }
        dir = d.parent();
    }
    bail!(
        "{name} not found next to {} (build the workspace's binaries with `cargo build --release --workspace --bins`, or set {env_var})",
        exe.display()
    )
}

/// A backend host: its namespace, its spec and, while started, its server process.
struct BackendHost {
    spec: BackendSpec,
    ns: NetNs,
    server: Option<Child>,
}

/// Client, balancer and backend namespaces on one bridge; see the module documentation.
pub struct Topology {
    // Field order is drop order: processes are killed in `Drop::drop` before any namespace goes.
    tracked: Mutex<Vec<OwnedFd>>,
    /// BPF link of the XDP_PASS program on `p-lb` (detached when closed or when `p-lb` goes).
    _peer_pass: OwnedFd,
    backends: BTreeMap<String, BackendHost>,
    client: NetNs,
    router: Option<NetNs>,
    balancer: NetNs,
    switch: NetNs,
    client_addrs: Vec<Ipv4Addr>,
    dsr_vips: Vec<Ipv4Addr>,
    backend_bin: PathBuf,
}

impl Topology {
    /// Builds the namespaces, the bridge and the links (backend servers are not started yet).
    pub fn new(prefix: &str, opts: TopologyOptions) -> Result<Topology> {
        ensure!(opts.clients >= 1, "at least one client address");
        ensure!(opts.clients <= 200, "at most 200 client addresses");
        let backend_bin = match opts.backend_bin {
            Some(path) => path,
            None => find_test_backend()?,
        };
        let mut seen = std::collections::BTreeSet::new();
        for b in &opts.backends {
            ensure!(
                !b.name.is_empty()
                    && b.name.len() <= 10
                    && b.name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'),
                "backend name {:?}: 1-10 letters, digits or '-'",
                b.name
            );
            let o = b.addr.octets();
            ensure!(
                o[0] == 10 && o[1] == 77 && o[2] == 2 && o[3] > 1 && o[3] < 255,
                "backend {} address {} is not a host of 10.77.2.0/24 (other than .1)",
                b.name,
                b.addr
            );
            ensure!(seen.insert(b.name.clone()), "backend name {} used twice", b.name);
            ensure!(seen.insert(b.addr.to_string()), "backend address {} used twice", b.addr);
        }
        for v in &opts.dsr_vips {
            let o = v.octets();
            ensure!(o[0] == 10 && o[1] == 77 && o[2] == 100, "VIP {v} is not in 10.77.100.0/24");
        }

        // The switch: a bridge without STP, so ports forward as soon as they are up, and without
        // multicast snooping, which with no MLD querier on the segment may hold back the IPv6
        // neighbour solicitations (sent to solicited-node multicast groups).
        let switch = new_ns(&format!("{prefix}-sw"))?;
        switch.ip(&["link", "add", "br0", "type", "bridge", "stp_state", "0", "mcast_snooping", "0"])?;
        switch.ip(&["link", "set", "br0", "up"])?;

        // The client, on the bridge or behind the router.
        let client = new_ns(&format!("{prefix}-c"))?;
        let router = match opts.client_link_mtu {
            None => {
                plug(&switch, "p-c", &client)?;
                None
            }
            Some(mtu) => {
                let router = new_ns(&format!("{prefix}-r"))?;
                plug(&switch, "p-r", &router)?;
                add_addr(&router, Ipv4Addr::new(10, 77, 1, 2), "eth0")?;
                link_router_client(&router, &client, Some(mtu))?;
                add_addr(&router, Ipv4Addr::new(10, 77, 3, 1), "eth1")?;
                for dst in ["10.77.100.0/24", "10.77.2.0/24"] {
                    route_both(&router, dst, Ipv4Addr::new(10, 77, 1, 1))?;
                }
                router.sysctl("net.ipv4.ip_forward", "1")?;
                router.sysctl("net.ipv6.conf.all.forwarding", "1")?;
                Some(router)
            }
        };
        let (client_net, gateway) =
            if router.is_some() { (3, Ipv4Addr::new(10, 77, 3, 1)) } else { (1, LB_CLIENT_ADDR) };
        let client_addrs: Vec<Ipv4Addr> =
            (0..opts.clients).map(|i| Ipv4Addr::new(10, 77, client_net, 2 + i)).collect();
        for a in &client_addrs {
            add_addr(&client, *a, "eth0")?;
        }
        for dst in ["10.77.100.0/24", "10.77.2.0/24"] {
            route_both(&client, dst, gateway)?;
        }
        client.sysctl("net.ipv4.conf.all.accept_redirects", "0")?;
        client.sysctl("net.ipv6.conf.all.accept_redirects", "0")?;
        client.sysctl("net.ipv6.conf.eth0.accept_redirects", "0")?;
        client.sysctl("net.ipv4.ip_local_port_range", "10000 65000")?;
        client.sysctl("net.ipv4.tcp_tw_reuse", "1")?;

        // The balancer host: both subnets on its one interface, kernel forwarding between them.
        let balancer = new_ns(&format!("{prefix}-lb"))?;
        plug(&switch, "p-lb", &balancer)?;
        add_addr(&balancer, LB_CLIENT_ADDR, "eth0")?;
        add_addr(&balancer, LB_BACKEND_ADDR, "eth0")?;
        if router.is_some() {
            route_both(&balancer, "10.77.3.0/24", Ipv4Addr::new(10, 77, 1, 2))?;
        }
        balancer.sysctl("net.ipv4.ip_forward", "1")?;
        balancer.sysctl("net.ipv6.conf.all.forwarding", "1")?;
        for scope in ["all", "default", "eth0"] {
            balancer.sysctl(&format!("net.ipv4.conf.{scope}.send_redirects"), "0")?;
        }
        // NAPI on both ends of the balancer's veth, for native XDP_TX / XDP_REDIRECT, and an
        // XDP_PASS program on the peer so that XDP_TX frames are delivered at once.
        ethtool(&switch, &["-K", "p-lb", "gro", "on"])?;
        ethtool(&balancer, &["-K", "eth0", "gro", "on"])?;
        let peer_pass = switch
            .run_in(|| attach_xdp_pass("p-lb"))?
            .context("attaching XDP_PASS to p-lb (the balancer's peer)")?;

        // The backends.
        let mut backends = BTreeMap::new();
        for spec in opts.backends {
            let ns = new_ns(&format!("{prefix}-{}", spec.name))?;
            plug(&switch, &format!("p-{}", spec.name), &ns)?;
            add_addr(&ns, spec.addr, "eth0")?;
            ns.ip(&["route", "add", "default", "via", "10.77.2.1"])?;
            ns.ip(&["-6", "route", "add", "default", "via", &v6_twin(LB_BACKEND_ADDR).to_string()])?;
            ns.sysctl("net.ipv4.conf.all.accept_redirects", "0")?;
            ns.sysctl("net.ipv6.conf.all.accept_redirects", "0")?;
            ns.sysctl("net.ipv6.conf.eth0.accept_redirects", "0")?;
            if !opts.dsr_vips.is_empty() {
                for scope in ["all", "eth0"] {
                    ns.sysctl(&format!("net.ipv4.conf.{scope}.arp_ignore"), "1")?;
                    ns.sysctl(&format!("net.ipv4.conf.{scope}.arp_announce"), "2")?;
                }
                for v in &opts.dsr_vips {
                    ns.ip(&["addr", "add", &format!("{v}/32"), "dev", "lo"])?;
                    ns.ip(&["-6", "addr", "add", &format!("{}/128", v6_twin(*v)), "dev", "lo"])?;
                }
            }
            backends.insert(spec.name.clone(), BackendHost { spec, ns, server: None });
        }

        Ok(Topology {
            tracked: Mutex::new(Vec::new()),
            _peer_pass: peer_pass,
            backends,
            client,
            router,
            balancer,
            switch,
            client_addrs,
            dsr_vips: opts.dsr_vips,
            backend_bin,
        })
    }

    /// The client namespace.
    pub fn client(&self) -> &NetNs {
        &self.client
    }

    /// The client addresses (10.77.1.2 first; 10.77.3.2 first behind a router).
    pub fn client_addrs(&self) -> &[Ipv4Addr] {
        &self.client_addrs
    }

    /// The client addresses of one family (the IPv6 twins when `v6`).
    pub fn client_ips(&self, v6: bool) -> Vec<IpAddr> {
        self.client_addrs.iter().map(|a| in_family(*a, v6)).collect()
    }

    /// The router namespace between client and bridge, if the topology has one.
    pub fn router(&self) -> Option<&NetNs> {
        self.router.as_ref()
    }

    /// The balancer namespace.
    pub fn balancer(&self) -> &NetNs {
        &self.balancer
    }

    /// The bridge namespace (rarely needed: for captures on the `p-*` ports).
    pub fn switch(&self) -> &NetNs {
        &self.switch
    }

    /// The balancer's interface inside its namespace (`eth0`).
    pub fn balancer_iface(&self) -> &str {
        LB_IFACE
    }

    /// The namespace of backend `name`. Panics on an unknown name (a bug in the test).
    pub fn backend(&self, name: &str) -> &NetNs {
        &self.host(name).ns
    }

    /// The spec of backend `name`. Panics on an unknown name.
    pub fn backend_spec(&self, name: &str) -> &BackendSpec {
        &self.host(name).spec
    }

    /// All backend names, sorted.
    pub fn backend_names(&self) -> Vec<String> {
        self.backends.keys().cloned().collect()
    }

    /// The VIPs put on the backends' `lo`.
    pub fn dsr_vips(&self) -> &[Ipv4Addr] {
        &self.dsr_vips
    }

    /// Names of every namespace of the topology (to check that they are gone after drop).
    pub fn namespace_names(&self) -> Vec<String> {
        let mut names = vec![
            self.switch.name().to_string(),
            self.client.name().to_string(),
            self.balancer.name().to_string(),
        ];
        names.extend(self.router.iter().map(|r| r.name().to_string()));
        names.extend(self.backends.values().map(|b| b.ns.name().to_string()));
        names
    }

    /// Whether backend `name`'s server is running (started and not stopped or exited).
    pub fn backend_running(&mut self, name: &str) -> bool {
        let host = self.host_mut(name);
        match &mut host.server {
            Some(child) => matches!(child.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// Starts `test-backend --listen [::]:<port> --name <name>` (IPv4 and IPv6) in backend `name`'s namespace
    /// and waits (at most 5 s) until it answers a request with its name.
    pub fn start_backend(&mut self, name: &str) -> Result<()> {
        let bin = self.backend_bin.clone();
        let host = self.backends.get_mut(name).with_context(|| format!("no backend {name}"))?;
        if let Some(child) = &mut host.server
            && child.try_wait()?.is_none()
        {
            bail!("backend {name} is already running");
        }
        host.server = None;
        let mut cmd = Command::new(&bin);
        cmd.args(["--listen", &format!("[::]:{}", host.spec.port), "--name", name])
            .stdin(Stdio::null())
            .stdout(Stdio::null());
        let child = spawn_in_ns(&host.ns, &mut cmd)
            .with_context(|| format!("starting {} in {}", bin.display(), host.ns.name()))?;
        host.server = Some(child);

        let probe = SocketAddr::from((Ipv4Addr::LOCALHOST, host.spec.port));
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let answer = host.ns.run_in(|| probe_backend(probe));
            match answer {
                Ok(Ok(got)) if got == name => return Ok(()),
                Ok(Ok(got)) => bail!("port {} of backend {name} answers {got:?}", host.spec.port),
                Err(e) => return Err(e),
                Ok(Err(e)) => {
                    let child = host.server.as_mut().expect("just started");
                    if let Some(status) = child.try_wait()? {
                        host.server = None;
                        bail!("test-backend {name} exited ({status}) before accepting: {e}");
                    }
                    if Instant::now() > deadline {
                        let _ = child.kill();
                        let _ = child.wait();
                        host.server = None;
                        bail!("test-backend {name} not accepting after 5 s: {e}");
                    }
                    std::thread::sleep(Duration::from_millis(10));
                }
            }
        }
    }

    /// Kills backend `name`'s server (SIGKILL) and waits for it: a backend dying.
    pub fn stop_backend(&mut self, name: &str) -> Result<()> {
        let host = self.backends.get_mut(name).with_context(|| format!("no backend {name}"))?;
        let mut child = host.server.take().with_context(|| format!("backend {name} is not running"))?;
        let _ = child.kill();
        child.wait().with_context(|| format!("waiting for backend {name}"))?;
        Ok(())
    }

    /// Spawns `cmd` with its network namespace switched to `ns` (`setns` between fork and exec;
    /// stdio, environment and working directory of `cmd` are kept). Unlike `ip netns exec`, the
    /// mount namespace is not changed, so `/sys/fs/bpf` pins are shared with every other process
    /// (a restarted daemon finds its pins); the price is that `/sys/class/net` shows the host's
    /// interfaces, not the namespace's (netlink and ioctls see the namespace).
    ///
    /// The child is tracked by a pidfd: dropping the topology kills and reaps it if it still
    /// runs. The caller may kill and wait for it earlier; it must not use the returned `Child`
    /// after the topology is dropped.
    pub fn spawn_in(&self, ns: &NetNs, cmd: &mut Command) -> Result<Child> {
        let child = spawn_in_ns(ns, cmd)?;
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, child.id() as libc::pid_t, 0) };
        if fd < 0 {
            let err = std::io::Error::last_os_error();
            let mut child = child;
            let _ = child.kill();
            let _ = child.wait();
            bail!("pidfd_open: {err}");
        }
        self.tracked.lock().unwrap().push(unsafe { OwnedFd::from_raw_fd(fd as i32) });
        Ok(child)
    }

    fn host(&self, name: &str) -> &BackendHost {
        self.backends.get(name).unwrap_or_else(|| panic!("no backend {name} in the topology"))
    }

    fn host_mut(&mut self, name: &str) -> &mut BackendHost {
        self.backends.get_mut(name).unwrap_or_else(|| panic!("no backend {name} in the topology"))
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        // Processes first (they may hold the namespaces' interfaces busy), then the namespaces
        // (dropped as fields after this).
        let tracked = std::mem::take(&mut *self.tracked.lock().unwrap_or_else(|e| e.into_inner()));
        for fd in &tracked {
            unsafe {
                // ESRCH / ECHILD when the caller already reaped it: nothing to do.
                libc::syscall(
                    libc::SYS_pidfd_send_signal,
                    fd.as_raw_fd(),
                    libc::SIGKILL,
                    std::ptr::null::<libc::siginfo_t>(),
                    0,
                );
                let mut info: libc::siginfo_t = std::mem::zeroed();
                libc::waitid(libc::P_PIDFD, fd.as_raw_fd() as libc::id_t, &mut info, libc::WEXITED);
            }
        }
        for host in self.backends.values_mut() {
            if let Some(mut child) = host.server.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

/// Spawns `cmd` inside `ns` (setns in the child before exec).
fn spawn_in_ns(ns: &NetNs, cmd: &mut Command) -> Result<Child> {
    let path = format!("/var/run/netns/{}", ns.name());
    // Fail early, with a readable error, when the namespace is gone.
    File::open(&path).with_context(|| format!("opening netns {}", ns.name()))?;
    let path = std::ffi::CString::new(path)?;
    // Between fork and exec only async-signal-safe calls: open, setns and close are plain
    // syscalls. The namespace file is opened in the child, so a Command spawned again later
    // (its pre_exec hooks run again) never uses a stale descriptor.
    unsafe {
        cmd.pre_exec(move || {
            let fd = libc::open(path.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC);
            if fd < 0 {
                return Err(std::io::Error::last_os_error());
            }
            let rc = libc::setns(fd, libc::CLONE_NEWNET);
            let err = std::io::Error::last_os_error();
            libc::close(fd);
            if rc != 0 {
                return Err(err);
            }
            Ok(())
        });
    }
    cmd.spawn().with_context(|| format!("spawning {:?} in {}", cmd.get_program(), ns.name()))
}

/// One request to a backend (from the current namespace): its name, or why not.
fn probe_backend(addr: SocketAddr) -> std::io::Result<String> {
    let timeout = Duration::from_millis(500);
    let mut stream = TcpStream::connect_timeout(&addr, timeout)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    stream.write_all(b"probe\n")?;
    let mut line = String::new();
    BufReader::new(stream).read_line(&mut line)?;
    if !line.ends_with('\n') {
        return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "no answer"));
    }
    Ok(line.trim_end().to_string())
}

/// Creates veth `port` (in the switch, enslaved to `br0`) ↔ `eth0` (in `host`), both up, with TX
/// checksum offload off on both ends.
pub fn plug(switch: &NetNs, port: &str, host: &NetNs) -> Result<()> {
    switch.ip(&["link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", host.name()])?;
    switch.ip(&["link", "set", port, "master", "br0"])?;
    ethtool(switch, &["-K", port, "tx", "off"])?;
    ethtool(host, &["-K", "eth0", "tx", "off"])?;
    switch.ip(&["link", "set", port, "up"])?;
    host.ip(&["link", "set", "eth0", "up"])?;
    steer_by_flow(host)
}

/// Creates veth `eth1` (in `router`, with `mtu` when given) ↔ `eth0` (in `client`), both up,
/// with TX checksum offload off on both ends and RPS on the client's `eth0`.
pub fn link_router_client(router: &NetNs, client: &NetNs, mtu: Option<u32>) -> Result<()> {
    router.ip(&["link", "add", "eth1", "type", "veth", "peer", "name", "eth0", "netns", client.name()])?;
    ethtool(router, &["-K", "eth1", "tx", "off"])?;
    ethtool(client, &["-K", "eth0", "tx", "off"])?;
    match mtu {
        Some(mtu) => router.ip(&["link", "set", "eth1", "mtu", &mtu.to_string(), "up"])?,
        None => router.ip(&["link", "set", "eth1", "up"])?,
    };
    client.ip(&["link", "set", "eth0", "up"])?;
    steer_by_flow(client)
}

/// Turns on RPS over every CPU for `eth0` of `host`: each flow is processed on one CPU.
pub fn steer_by_flow(host: &NetNs) -> Result<()> {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get()).min(64);
    let mask = if cpus == 64 { u64::MAX } else { (1u64 << cpus) - 1 };
    // `ip netns exec` mounts the namespace's own /sys, so the path names its eth0.
    host.exec("sh", &["-c", &format!("echo {mask:x} > /sys/class/net/eth0/queues/rx-0/rps_cpus")])
        .context("turning on RPS (receive packet steering) for eth0")
        .map(drop)
}

/// Loads a two-instruction XDP program (`return XDP_PASS`) and attaches it in native mode to
/// `dev` of the calling thread's namespace by a BPF link; the link's fd keeps it attached.
pub fn attach_xdp_pass(dev: &str) -> Result<OwnedFd> {
    // BPF_PROG_LOAD / BPF_LINK_CREATE; prog type XDP; attach type BPF_XDP; XDP_FLAGS_DRV_MODE.
    const BPF_PROG_LOAD: libc::c_long = 5;
    const BPF_LINK_CREATE: libc::c_long = 28;
    const BPF_PROG_TYPE_XDP: u32 = 6;
    const BPF_XDP: u32 = 37;
    const XDP_FLAGS_DRV_MODE: u32 = 1 << 2;
    // r0 = XDP_PASS (2); exit.
    let insns: [u64; 2] = [0xb7 | (2 << 32), 0x95];
    let license = c"GPL";
    #[repr(C)]
    struct ProgLoad {
        prog_type: u32,
        insn_cnt: u32,
        insns: u64,
        license: u64,
        log_level: u32,
        log_size: u32,
        log_buf: u64,
        kern_version: u32,
        prog_flags: u32,
        prog_name: [u8; 16],
        prog_ifindex: u32,
        expected_attach_type: u32,
    }
    let mut name = [0u8; 16];
    name[..8].copy_from_slice(b"e2e_pass");
    let load = ProgLoad {
        prog_type: BPF_PROG_TYPE_XDP,
        insn_cnt: insns.len() as u32,
        insns: insns.as_ptr() as u64,
        license: license.as_ptr() as u64,
        log_level: 0,
        log_size: 0,
        log_buf: 0,
        kern_version: 0,
        prog_flags: 0,
        prog_name: name,
        prog_ifindex: 0,
        expected_attach_type: BPF_XDP,
    };
    let fd = unsafe {
        libc::syscall(libc::SYS_bpf, BPF_PROG_LOAD, &load as *const ProgLoad, size_of::<ProgLoad>() as u32)
    };
    if fd < 0 {
        bail!("BPF_PROG_LOAD: {}", std::io::Error::last_os_error());
    }
    let prog = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    let ifname = std::ffi::CString::new(dev)?;
    let ifindex = unsafe { libc::if_nametoindex(ifname.as_ptr()) };
    if ifindex == 0 {
        bail!("no interface {dev}: {}", std::io::Error::last_os_error());
    }
    // prog_fd, target_ifindex, attach_type, flags; the rest of the union zero.
    let mut link = [0u32; 16];
    link[0] = prog.as_raw_fd() as u32;
    link[1] = ifindex;
    link[2] = BPF_XDP;
    link[3] = XDP_FLAGS_DRV_MODE;
    let fd =
        unsafe { libc::syscall(libc::SYS_bpf, BPF_LINK_CREATE, link.as_ptr(), size_of_val(&link) as u32) };
    if fd < 0 {
        bail!("BPF_LINK_CREATE (XDP on {dev}): {}", std::io::Error::last_os_error());
    }
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// A new namespace of the topology (see [`NetNs::new`]) in which no IPv6 address, link-local ones
/// included, goes through duplicate address detection.
///
/// While an interface's link-local address is tentative (for 1 to 2 s after the link comes up),
/// the kernel sends no neighbour solicitation that has to come from it: every solicitation whose
/// triggering packet has no source address on that interface, such as the balancer's managed
/// entries for its backends' next hops, the backends' solicitations for their gateway when they
/// answer from a VIP on `lo` (DSR), and the balancer's for forwarded packets. They are silently
/// skipped, the entry stays incomplete until a retransmission after DAD is over, and a DSR SYN
/// to an IPv6 backend is dropped for want of a next hop. IPv4 (ARP) has no such wait. So DAD is
/// off for every interface (`all` and `default`, set before any interface exists in the
/// namespace), as `nodad` already makes it for the global addresses.
fn new_ns(name: &str) -> Result<NetNs> {
    let ns = NetNs::new(name)?;
    for scope in ["all", "default"] {
        ns.sysctl(&format!("net.ipv6.conf.{scope}.accept_dad"), "0")
            .with_context(|| format!("turning off IPv6 DAD in {}", ns.name()))?;
    }
    Ok(ns)
}

/// Adds `addr`/24 and its IPv6 twin /64 (without duplicate address detection) to `dev` of `ns`.
fn add_addr(ns: &NetNs, addr: Ipv4Addr, dev: &str) -> Result<()> {
    ns.ip(&["addr", "add", &format!("{addr}/24"), "dev", dev])?;
    ns.ip(&["-6", "addr", "add", &format!("{}/64", v6_twin(addr)), "dev", dev, "nodad"]).map(drop)
}

/// Routes the IPv4 prefix `dst` (`10.77.X.0/24`) via `via`, and its IPv6 twin (`fd77:X::/64`)
/// via `via`'s twin, in `ns`.
fn route_both(ns: &NetNs, dst: &str, via: Ipv4Addr) -> Result<()> {
    ns.ip(&["route", "add", dst, "via", &via.to_string()])?;
    let net: Ipv4Addr = dst.trim_end_matches("/24").parse().context("an IPv4 /24 prefix")?;
    let o = net.octets();
    ns.ip(&["-6", "route", "add", &format!("fd{}:{}::/64", o[1], o[2]), "via", &v6_twin(via).to_string()])
        .map(drop)
}

/// Runs `ethtool` inside `ns`.
pub fn ethtool(ns: &NetNs, args: &[&str]) -> Result<()> {
    ns.exec("ethtool", args).map(drop)
}
