//! The fleet rig: a router running BIRD 2 with ECMP in front of two balancer hosts, each running
//! lb-daemon and its own BIRD, on one L2 segment with the backends (DSR), and a client behind
//! the router. Everything lives in namespaces this rig creates; BIRD processes, daemons and
//! backends are killed, pins removed and namespaces deleted on drop, also when a test fails.
//!
//! ```text
//!   <p>-c-*: client 10.77.1.2/24 (+ .3 ..), default via 10.77.1.1
//!        │ eth0 ↔ eth1
//!   <p>-r-*: router 10.77.1.1/24 (eth1), 10.77.2.1/24 (eth0); BIRD AS 65000, kernel protocol
//!        │ eth0      with `merge paths on`; fib_multipath_hash_policy=3, fields 0x37 (5-tuple)
//!   <p>-sw-*: bridge br0 ── p-r, p-lb1, p-lb2, p-a1, p-a2, p-b1, p-b2
//!   <p>-lb1-*: 10.77.2.2/24   <p>-lb2-*: 10.77.2.3/24   lb-daemon (dsr, XDP on eth0) + BIRD
//!              AS 65001, eBGP to the router, BFD 50 ms × 3, ip_forward=1
//!   backends a1 .11, a2 .12 (pool-a), b1 .21, b2 .22 (pool-b): VIP 10.77.100.1 on lo,
//!              arp_ignore=1 / arp_announce=2, default via the router (replies skip the
//!              balancers)
//! ```
//!
//! With [`FleetOptions`]: a third balancer (lb3, 10.77.2.4), and etcd ([`crate::etcd`]) in its
//! own namespace on the segment at [`ETCD_ADDR`], every daemon's config then holding a `[fleet]`
//! table (a cluster name unique to the rig, host `lbN`) so they share their desired state.
//!
//! Each balancer's daemon renders `<dir>/lb-vips.conf`, which its BIRD includes; the router
//! learns a /32 per announcing balancer and installs one multipath route. Daemons start with
//! `nsenter --net=/run/netns/<ns>` (never `ip netns exec`: its private bpffs would hide the
//! pins), as do the BIRD processes, each with its own config directory and control socket.

use crate::{
    daemon::{ServiceSpec, config_toml},
    etcd::Etcd,
    netns::NetNs,
    topology::{attach_xdp_pass, ethtool, find_binary, find_test_backend, link_router_client, plug},
};
use anyhow::{Context, Result, bail, ensure};
use lb_daemon::{
    api::{
        client::{Client, Endpoint},
        model::StatusView,
    },
    dataplane::{Dataplane, PinDir},
};
use std::{
    io::{BufRead, BufReader, Write},
    net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream},
    os::fd::OwnedFd,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant},
};

static NEXT: AtomicU32 = AtomicU32::new(0);

/// The router's address on the segment (the balancers' BGP peer, the backends' gateway).
pub const ROUTER_ADDR: Ipv4Addr = Ipv4Addr::new(10, 77, 2, 1);
/// The router's AS.
pub const ROUTER_AS: u32 = 65000;
/// The balancers' AS (shared).
pub const BALANCER_AS: u32 = 65001;
/// The VIP announced by both balancers (outside every subnet of the rig).
pub const VIP: Ipv4Addr = Ipv4Addr::new(10, 77, 100, 1);
/// Backends of pool-a and pool-b: name, address.
pub const BACKENDS: [(&str, Ipv4Addr, &str); 4] = [
    ("a1", Ipv4Addr::new(10, 77, 2, 11), "pool-a"),
    ("a2", Ipv4Addr::new(10, 77, 2, 12), "pool-a"),
    ("b1", Ipv4Addr::new(10, 77, 2, 21), "pool-b"),
    ("b2", Ipv4Addr::new(10, 77, 2, 22), "pool-b"),
];
/// Address of the rig's etcd (its own namespace on the segment) when the rig has one.
pub const ETCD_ADDR: Ipv4Addr = Ipv4Addr::new(10, 77, 2, 5);

/// What [`FleetRig::with`] builds beyond the default two hosts without etcd.
#[derive(Clone, Copy, Debug)]
pub struct FleetOptions {
    /// Balancer hosts: 2 or 3 (lb1 10.77.2.2, lb2 .3, lb3 .4).
    pub hosts: usize,
    /// Run etcd on [`ETCD_ADDR`] and give every daemon a `[fleet]` table (shared desired state).
    pub etcd: bool,
}

impl Default for FleetOptions {
    fn default() -> Self {
        FleetOptions { hosts: 2, etcd: false }
    }
}

/// Longest wait for BGP sessions to come up and both paths to reach the router's kernel.
pub const CONVERGE_TIMEOUT: Duration = Duration::from_secs(30);

/// The VIP and port clients connect to.
pub fn vip_addr() -> SocketAddr {
    SocketAddr::V4(SocketAddrV4::new(VIP, 80))
}

/// A child process killed (SIGKILL) and reaped on drop.
pub struct Proc {
    child: Option<Child>,
    name: String,
}

impl Proc {
    /// The process id (while it runs).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Sends `signal` (e.g. `libc::SIGSTOP`).
    pub fn signal(&self, signal: i32) -> Result<()> {
        let pid = self.pid().with_context(|| format!("{} is not running", self.name))?;
        if unsafe { libc::kill(pid as libc::pid_t, signal) } != 0 {
            bail!("kill({pid}, {signal}) for {}: {}", self.name, std::io::Error::last_os_error());
        }
        Ok(())
    }

    /// SIGKILL and reap.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Waits (bounded) for the process to exit by itself.
    pub fn wait_exit(&mut self, timeout: Duration) -> Result<std::process::ExitStatus> {
        let child = self.child.as_mut().with_context(|| format!("{} is not running", self.name))?;
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = child.try_wait()? {
                self.child = None;
                return Ok(s);
            }
            if Instant::now() > deadline {
                self.kill();
                bail!("{} did not exit within {timeout:?}", self.name);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Whether it still runs.
    pub fn running(&mut self) -> bool {
        self.child.as_mut().is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Some(pid) = self.pid() {
            // A stopped process must be continued to die promptly from SIGKILL: it does anyway,
            // but continue it so nothing depends on that.
            unsafe { libc::kill(pid as libc::pid_t, libc::SIGCONT) };
        }
        self.kill();
    }
}

/// Spawns `program args` inside `ns` through `nsenter --net` (the program replaces nsenter, so
/// the child's pid is the program's).
fn spawn_nsenter(ns: &NetNs, program: &Path, args: &[&str], log: &Path) -> Result<Proc> {
    let out = std::fs::OpenOptions::new().create(true).append(true).open(log)?;
    let child = Command::new("nsenter")
        .arg(format!("--net=/run/netns/{}", ns.name()))
        .arg(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out)
        .spawn()
        .with_context(|| format!("starting {} in {}", program.display(), ns.name()))?;
    Ok(Proc { child: Some(child), name: format!("{} in {}", program.display(), ns.name()) })
}

/// The `bird`/`birdc` programs (Debian's `bird2`; `cargo xtask test` installs it).
pub fn bird_program(name: &str) -> Result<PathBuf> {
    for dir in ["/usr/sbin", "/usr/bin", "/sbin"] {
        let p = Path::new(dir).join(name);
        if p.is_file() {
            return Ok(p);
        }
    }
    bail!("{name} not found: install Debian's bird2 (cargo xtask test does)")
}

/// A BIRD 2 process with its own directory (config, control socket, log).
pub struct Bird {
    proc: Proc,
    /// Its directory.
    pub dir: PathBuf,
}

impl Bird {
    /// Writes `config` to `<dir>/bird.conf`, checks it (`bird -p`) and starts BIRD in `ns`
    /// in the foreground with its control socket at `<dir>/bird.ctl`.
    pub fn start(ns: &NetNs, dir: &Path, config: &str) -> Result<Bird> {
        std::fs::create_dir_all(dir)?;
        let conf = dir.join("bird.conf");
        std::fs::write(&conf, config)?;
        let bird = bird_program("bird")?;
        let check = Command::new(&bird).arg("-p").arg("-c").arg(&conf).output()?;
        ensure!(
            check.status.success(),
            "bird -p {}: {}{}",
            conf.display(),
            String::from_utf8_lossy(&check.stdout),
            String::from_utf8_lossy(&check.stderr)
        );
        let mut b = Bird { proc: Proc { child: None, name: "bird".into() }, dir: dir.to_path_buf() };
        b.spawn(ns)?;
        Ok(b)
    }

    /// Starts the process (config already in place) and waits for its control socket.
    fn spawn(&mut self, ns: &NetNs) -> Result<()> {
        let _ = std::fs::remove_file(self.socket());
        let conf = self.dir.join("bird.conf").to_string_lossy().into_owned();
        let sock = self.socket().to_string_lossy().into_owned();
        self.proc = spawn_nsenter(
            ns,
            &bird_program("bird")?,
            &["-f", "-c", &conf, "-s", &sock],
            &self.dir.join("bird.out"),
        )?;
        let deadline = Instant::now() + Duration::from_secs(5);
        while !self.socket().exists() {
            ensure!(
                Instant::now() < deadline,
                "BIRD in {} did not open its socket: {}",
                ns.name(),
                self.log()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(())
    }

    /// Kills BIRD and starts it again with the same config (it reads the include file afresh).
    pub fn restart(&mut self, ns: &NetNs) -> Result<()> {
        self.proc.kill();
        self.spawn(ns)
    }

    /// Control socket.
    pub fn socket(&self) -> PathBuf {
        self.dir.join("bird.ctl")
    }

    /// `birdc -s <socket> <args>` output.
    pub fn birdc(&self, args: &[&str]) -> Result<String> {
        let out = Command::new(bird_program("birdc")?).arg("-s").arg(self.socket()).args(args).output()?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr))
    }

    /// BIRD's log file.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("bird.log")).unwrap_or_default()
    }

    /// The process (to freeze it with SIGSTOP, or kill it).
    pub fn process(&mut self) -> &mut Proc {
        &mut self.proc
    }
}

/// BFD timers of every session of the rig: 50 ms × 3.
const BFD: &str = "min rx interval 50 ms; min tx interval 50 ms; multiplier 3;";

/// The router's BIRD config: one eBGP session per balancer, import only host routes of the VIP
/// range, nothing exported to them; the kernel protocol merges equal paths into one multipath
/// route.
pub fn router_bird_conf(dir: &Path, balancers: &[Ipv4Addr]) -> String {
    let mut t = format!(
        "router id {ROUTER_ADDR};\nlog \"{}\" all;\n\
         protocol device {{ scan time 10; }}\n\
         protocol kernel {{ merge paths on; ipv4 {{ import none; export all; }}; }}\n\
         protocol bfd {{ interface \"eth0\" {{ {BFD} }}; }}\n\
         filter from_balancers {{ if net ~ [ 10.77.100.0/24{{32,32}} ] then accept; reject; }}\n\
         template bgp balancer {{\n  local {ROUTER_ADDR} as {ROUTER_AS};\n  bfd on;\n  \
         connect retry time 1;\n  error wait time 1, 5;\n  \
         ipv4 {{ import filter from_balancers; export none; }};\n}}\n",
        dir.join("bird.log").display()
    );
    for (i, b) in balancers.iter().enumerate() {
        t += &format!("protocol bgp lb{} from balancer {{ neighbor {b} as {BALANCER_AS}; }}\n", i + 1);
    }
    t
}

/// A balancer's BIRD config: includes the daemon's file and exports exactly its two static
/// protocols to the router, with BFD (the README's snippet, with the rig's addresses).
pub fn balancer_bird_conf(dir: &Path, addr: Ipv4Addr, include: &Path) -> String {
    format!(
        "router id {addr};\nlog \"{}\" all;\n\
         protocol device {{ scan time 10; }}\n\
         include \"{}\";\n\
         filter lb_vips_out {{ if proto = \"lb_vips4\" || proto = \"lb_vips6\" then accept; reject; }}\n\
         protocol bfd {{ interface \"eth0\" {{ {BFD} }}; }}\n\
         protocol bgp upstream {{\n  local {addr} as {BALANCER_AS};\n  neighbor {ROUTER_ADDR} as {ROUTER_AS};\n  \
         bfd on;\n  connect retry time 1;\n  error wait time 1, 5;\n  \
         ipv4 {{ import none; export filter lb_vips_out; next hop self; }};\n}}\n",
        dir.join("bird.log").display(),
        include.display()
    )
}

/// One balancer host: namespace, BIRD, daemon.
pub struct Balancer {
    /// Its address on the segment.
    pub addr: Ipv4Addr,
    /// Its host name in the fleet (`lb1`, `lb2`, ...; the `[fleet]` table's `host`).
    pub host: String,
    /// lb-daemon instance name (pins under /sys/fs/bpf/<instance>).
    pub instance: String,
    /// Config, state, socket, logs, BIRD directory.
    pub dir: tempfile::TempDir,
    daemon: Option<Proc>,
    /// Its BIRD.
    pub bird: Bird,
    /// Its namespace.
    pub ns: NetNs,
}

impl Balancer {
    /// The daemon's config file.
    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("lb.toml")
    }

    /// The include file the daemon renders.
    pub fn include_file(&self) -> PathBuf {
        self.dir.path().join("lb-vips.conf")
    }

    /// An API client on the daemon's socket.
    pub fn client(&self) -> Client {
        Client::new(
            Endpoint::Unix(self.dir.path().join("lb.sock")),
            "fleet-rig".into(),
            Duration::from_secs(10),
        )
    }

    /// `GET /v1/status` (with its `bgp` member).
    pub fn status_json(&self) -> Result<serde_json::Value> {
        Ok(self.client().get("/v1/status")?)
    }

    /// `GET /v1/status`.
    pub fn status(&self) -> Result<StatusView> {
        Ok(self.client().get("/v1/status")?)
    }

    /// New flows this host forwarded to the backends (all pools).
    pub fn new_flows(&self) -> Result<u64> {
        let s = self.status()?;
        Ok(s.services.iter().flat_map(|s| &s.pools).map(|p| p.traffic.new_flows).sum())
    }

    /// `POST /v1/host/<action>` (`drain`, `undrain`), returning the answer.
    pub fn host(&self, action: &str) -> Result<serde_json::Value> {
        Ok(self.client().post(&format!("/v1/host/{action}"), &serde_json::json!({}))?)
    }

    /// Runs `lbctl --socket <this daemon's socket> <args>` (as an operator on the host would);
    /// its exit status and output.
    pub fn lbctl(&self, args: &[&str]) -> Result<std::process::Output> {
        Ok(Command::new(find_binary("lbctl", "LB_LBCTL_BIN")?)
            .arg("--socket")
            .arg(self.dir.path().join("lb.sock"))
            .args(args)
            .output()?)
    }

    /// The daemon's log.
    pub fn daemon_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("daemon.log")).unwrap_or_default()
    }

    /// Starts lb-daemon (nsenter --net) and waits until its API answers.
    pub fn start_daemon(&mut self) -> Result<()> {
        ensure!(self.daemon.is_none(), "daemon of {} already running", self.instance);
        let bin = find_binary("lb-daemon", "LB_DAEMON_BIN")?;
        let config = self.config_path().to_string_lossy().into_owned();
        let mut p = {
            let out = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(self.dir.path().join("daemon.log"))?;
            let child = Command::new("nsenter")
                .arg(format!("--net=/run/netns/{}", self.ns.name()))
                .arg(&bin)
                .args(["--config", &config])
                .env("LB_LOG", "info")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(out)
                .spawn()
                .context("starting lb-daemon")?;
            Proc { child: Some(child), name: format!("lb-daemon {}", self.instance) }
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if !p.running() {
                bail!("lb-daemon {} exited during start-up:\n{}", self.instance, self.daemon_log());
            }
            if self.client().get::<serde_json::Value>("/v1/health").is_ok() {
                break;
            }
            if Instant::now() > deadline {
                p.kill();
                bail!("lb-daemon {} did not answer within 20 s:\n{}", self.instance, self.daemon_log());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.daemon = Some(p);
        Ok(())
    }

    /// `kill -9` the daemon (forwarding continues from the pins).
    pub fn kill9_daemon(&mut self) -> Result<()> {
        let mut p = self.daemon.take().context("daemon not running")?;
        p.kill();
        Ok(())
    }

    /// Asks the daemon to stop (`detach`: also detach the program and remove the pins) and waits
    /// for it to exit.
    pub fn shutdown_daemon(&mut self, detach: bool) -> Result<()> {
        let _: serde_json::Value =
            self.client().post("/v1/shutdown", &serde_json::json!({ "detach": detach }))?;
        let mut p = self.daemon.take().context("daemon not running")?;
        let status = p.wait_exit(Duration::from_secs(20))?;
        ensure!(status.success(), "lb-daemon {} exited with {status}:\n{}", self.instance, self.daemon_log());
        Ok(())
    }
}

impl Drop for Balancer {
    fn drop(&mut self) {
        if let Some(mut p) = self.daemon.take() {
            p.kill();
        }
        let _ = Dataplane::remove_pins(&PinDir(PathBuf::from("/sys/fs/bpf").join(&self.instance)));
    }
}

/// A backend host and its server.
pub struct Backend {
    /// Name (the server answers with it).
    pub name: String,
    /// Address.
    pub addr: Ipv4Addr,
    server: Option<Proc>,
    /// Its namespace.
    pub ns: NetNs,
    log: PathBuf,
}

impl Backend {
    /// Starts its server and waits until it answers.
    pub fn start(&mut self) -> Result<()> {
        ensure!(self.server.is_none(), "backend {} already running", self.name);
        let bin = find_test_backend()?;
        let p = spawn_nsenter(&self.ns, &bin, &["--listen", "0.0.0.0:80", "--name", &self.name], &self.log)?;
        self.server = Some(p);
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let probe = self.ns.run_in(|| probe((Ipv4Addr::LOCALHOST, 80).into()))?;
            match probe {
                Ok(name) if name == self.name => return Ok(()),
                Ok(other) => bail!("backend {} answers {other:?}", self.name),
                Err(e) if Instant::now() > deadline => bail!("backend {} not answering: {e}", self.name),
                Err(_) => std::thread::sleep(Duration::from_millis(10)),
            }
        }
    }

    /// Kills its server (a backend dying).
    pub fn stop(&mut self) -> Result<()> {
        self.server.take().with_context(|| format!("backend {} not running", self.name))?.kill();
        Ok(())
    }
}

fn probe(addr: SocketAddr) -> std::io::Result<String> {
    let t = Duration::from_millis(500);
    let mut s = TcpStream::connect_timeout(&addr, t)?;
    s.set_read_timeout(Some(t))?;
    s.write_all(b"probe\n")?;
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line)?;
    Ok(line.trim_end().to_string())
}

/// The whole rig; see the module documentation. Field order is drop order: balancers (daemons,
/// BIRDs), backends, router BIRD, then the namespaces.
pub struct FleetRig {
    /// The two balancer hosts (lb1, lb2).
    pub balancers: Vec<Balancer>,
    /// The backends, in [`BACKENDS`] order.
    pub backends: Vec<Backend>,
    /// The router's BIRD.
    pub router_bird: Bird,
    /// The fleet's etcd (with [`FleetOptions::etcd`]).
    pub etcd: Option<Etcd>,
    /// The etcd cluster name in every daemon's `[fleet]` table (unique per rig).
    pub cluster: String,
    etcd_ns: Option<NetNs>,
    _peer_pass: Vec<OwnedFd>,
    _dir: tempfile::TempDir,
    /// The client namespace.
    pub client: NetNs,
    /// The router namespace.
    pub router: NetNs,
    switch: NetNs,
    /// The client's addresses.
    pub client_addrs: Vec<Ipv4Addr>,
}

impl FleetRig {
    /// Builds the namespaces, starts the backends, the router's BIRD, each balancer's BIRD and
    /// daemon, and waits (bounded) until the router has a path through each balancer.
    pub fn new(prefix: &str) -> Result<FleetRig> {
        Self::with(prefix, FleetOptions::default())
    }

    /// Like [`FleetRig::new`], with `opts.hosts` balancers and, with `opts.etcd`, etcd on
    /// [`ETCD_ADDR`] (started before the daemons, which get a `[fleet]` table naming it).
    pub fn with(prefix: &str, opts: FleetOptions) -> Result<FleetRig> {
        ensure!((2..=3).contains(&opts.hosts), "the fleet rig has 2 or 3 balancer hosts, not {}", opts.hosts);
        let dir = tempfile::tempdir()?;
        let switch = NetNs::new(&format!("{prefix}-sw"))?;
        switch.ip(&["link", "add", "br0", "type", "bridge", "stp_state", "0"])?;
        switch.ip(&["link", "set", "br0", "up"])?;

        // Router: eth0 on the segment, eth1 to the client.
        let router = NetNs::new(&format!("{prefix}-r"))?;
        plug(&switch, "p-r", &router)?;
        router.ip(&["addr", "add", &format!("{ROUTER_ADDR}/24"), "dev", "eth0"])?;
        let client = NetNs::new(&format!("{prefix}-c"))?;
        link_router_client(&router, &client, None)?;
        router.ip(&["addr", "add", "10.77.1.1/24", "dev", "eth1"])?;
        router.sysctl("net.ipv4.ip_forward", "1")?;
        router.sysctl("net.ipv4.fib_multipath_hash_policy", "3")?;
        router.sysctl("net.ipv4.fib_multipath_hash_fields", "0x37")?;
        for scope in ["all", "default", "eth0", "eth1"] {
            router.sysctl(&format!("net.ipv4.conf.{scope}.rp_filter"), "0")?;
            router.sysctl(&format!("net.ipv4.conf.{scope}.send_redirects"), "0")?;
        }

        // Client: several addresses, everything via the router.
        let client_addrs: Vec<Ipv4Addr> = (0..4).map(|i| Ipv4Addr::new(10, 77, 1, 2 + i)).collect();
        for a in &client_addrs {
            client.ip(&["addr", "add", &format!("{a}/24"), "dev", "eth0"])?;
        }
        client.ip(&["route", "add", "default", "via", "10.77.1.1"])?;
        client.sysctl("net.ipv4.ip_local_port_range", "10000 65000")?;
        client.sysctl("net.ipv4.tcp_tw_reuse", "1")?;

        // Backends.
        let mut backends = Vec::new();
        for (name, addr, _) in BACKENDS {
            let ns = NetNs::new(&format!("{prefix}-{name}"))?;
            plug(&switch, &format!("p-{name}"), &ns)?;
            ns.ip(&["addr", "add", &format!("{addr}/24"), "dev", "eth0"])?;
            ns.ip(&["route", "add", "default", "via", &ROUTER_ADDR.to_string()])?;
            for scope in ["all", "eth0"] {
                ns.sysctl(&format!("net.ipv4.conf.{scope}.arp_ignore"), "1")?;
                ns.sysctl(&format!("net.ipv4.conf.{scope}.arp_announce"), "2")?;
            }
            ns.ip(&["addr", "add", &format!("{VIP}/32"), "dev", "lo"])?;
            let log = dir.path().join(format!("backend-{name}.log"));
            backends.push(Backend { name: name.into(), addr, server: None, ns, log });
        }
        for b in &mut backends {
            b.start()?;
        }

        // Router's BIRD.
        let lb_addrs: Vec<Ipv4Addr> =
            (0..opts.hosts as u8).map(|i| Ipv4Addr::new(10, 77, 2, 2 + i)).collect();

        // etcd, in its own namespace on the segment (losing it loses nothing else).
        let cluster = format!("{prefix}{}x{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed));
        let (etcd_ns, etcd) = if opts.etcd {
            let ns = NetNs::new(&format!("{prefix}-etcd"))?;
            plug(&switch, "p-etcd", &ns)?;
            ns.ip(&["addr", "add", &format!("{ETCD_ADDR}/24"), "dev", "eth0"])?;
            let e = Etcd::start(&ns, ETCD_ADDR)?;
            (Some(ns), Some(e))
        } else {
            (None, None)
        };
        let rdir = dir.path().join("router");
        std::fs::create_dir_all(&rdir)?;
        let router_bird = Bird::start(&router, &rdir, &router_bird_conf(&rdir, &lb_addrs))?;

        // Balancers.
        let mut peer_pass = Vec::new();
        let mut balancers = Vec::new();
        for (i, addr) in lb_addrs.iter().enumerate() {
            let name = format!("lb{}", i + 1);
            let ns = NetNs::new(&format!("{prefix}-{name}"))?;
            let port = format!("p-{name}");
            plug(&switch, &port, &ns)?;
            ns.ip(&["addr", "add", &format!("{addr}/24"), "dev", "eth0"])?;
            ns.sysctl("net.ipv4.ip_forward", "1")?;
            for scope in ["all", "default", "eth0"] {
                ns.sysctl(&format!("net.ipv4.conf.{scope}.send_redirects"), "0")?;
            }
            // NAPI on both ends for native XDP_TX, and an XDP_PASS on the bridge-side peer so
            // XDP_TX frames are delivered at once (see topology.rs).
            ethtool(&switch, &["-K", &port, "gro", "on"])?;
            ethtool(&ns, &["-K", "eth0", "gro", "on"])?;
            let pass =
                switch.run_in(|| attach_xdp_pass(&port))?.with_context(|| format!("XDP_PASS on {port}"))?;
            peer_pass.push(pass);

            let instance = format!("lbf{}x{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed));
            let bdir = tempfile::tempdir()?;
            let include = bdir.path().join("lb-vips.conf");
            // What an operator does once at install: BIRD needs the file to exist; empty is fine.
            std::fs::write(&include, "")?;
            let bird_dir = bdir.path().join("bird");
            std::fs::create_dir_all(&bird_dir)?;
            let bird = Bird::start(&ns, &bird_dir, &balancer_bird_conf(&bird_dir, *addr, &include))?;
            let pool = |p: &str| -> Vec<SocketAddr> {
                BACKENDS
                    .iter()
                    .filter(|b| b.2 == p)
                    .map(|b| SocketAddr::V4(SocketAddrV4::new(b.1, 80)))
                    .collect()
            };
            let mut config = config_toml(
                &instance,
                bdir.path(),
                "eth0",
                &[ServiceSpec {
                    name: "web",
                    vip: vip_addr(),
                    mode: "dsr",
                    pools: vec![("pool-a", pool("pool-a")), ("pool-b", pool("pool-b"))],
                    active: "pool-a",
                }],
            );
            // A connection in flight when its host is drained or lost finishes through the other
            // host, so this one never sees its FIN: its entry counts as established until it is
            // idle for `drain_idle_timeout` (5 min by default). At the lowest value allowed,
            // `host drain --wait` in these tests waits seconds for such a flow, not minutes.
            config = format!("drain_idle_timeout = \"5s\"\n{config}");
            config += &format!(
                "\n[bgp]\ninclude_file = \"{}\"\nbirdc_socket = \"{}\"\nbirdc = \"{}\"\n",
                include.display(),
                bird.socket().display(),
                bird_program("birdc")?.display()
            );
            if let Some(e) = &etcd {
                config += &fleet_table(&cluster, &name, &e.endpoint());
            }
            std::fs::write(bdir.path().join("lb.toml"), config)?;
            let mut b = Balancer { addr: *addr, host: name, instance, dir: bdir, daemon: None, bird, ns };
            b.start_daemon()?;
            balancers.push(b);
        }

        let rig = FleetRig {
            balancers,
            backends,
            router_bird,
            etcd,
            cluster,
            etcd_ns,
            _peer_pass: peer_pass,
            _dir: dir,
            client,
            router,
            switch,
            client_addrs,
        };
        rig.wait_next_hops(&lb_addrs, CONVERGE_TIMEOUT).context("both balancers announcing the VIP")?;
        for a in lb_addrs {
            rig.wait_bfd_up(a, CONVERGE_TIMEOUT)?;
        }
        Ok(rig)
    }

    /// Next hops of the router's route to the VIP (empty: no route).
    pub fn next_hops(&self) -> Result<Vec<Ipv4Addr>> {
        let out = self.router.ip(&["-4", "route", "show", &format!("{VIP}/32")])?;
        Ok(parse_next_hops(&out))
    }

    /// Waits until the router's next hops to the VIP are exactly `want` (any order); returns
    /// how long it took from the call.
    pub fn wait_next_hops(&self, want: &[Ipv4Addr], timeout: Duration) -> Result<Duration> {
        let start = Instant::now();
        let mut want = want.to_vec();
        want.sort();
        loop {
            let mut got = self.next_hops()?;
            got.sort();
            if got == want {
                return Ok(start.elapsed());
            }
            if start.elapsed() > timeout {
                bail!(
                    "router next hops to {VIP}: {got:?}, expected {want:?} within {timeout:?}\n\
                     router BGP: {}\nlb1 log: {}\nlb2 log: {}",
                    self.router_bird.birdc(&["show", "protocols"]).unwrap_or_default(),
                    tail(&self.balancers[0].daemon_log(), 15),
                    tail(&self.balancers[1].daemon_log(), 15),
                );
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// Starts recording every change of the router's routes (`ip monitor route`), to catch a
    /// flap too short for polling to see. Returns once the monitor runs.
    pub fn watch_routes(&self) -> Result<RouteWatch> {
        let file = tempfile::NamedTempFile::new()?;
        let child = Command::new("ip")
            .args(["-n", self.router.name(), "monitor", "route"])
            .stdin(Stdio::null())
            .stdout(file.reopen()?)
            .stderr(Stdio::null())
            .spawn()
            .context("starting ip monitor")?;
        let proc = Proc { child: Some(child), name: "ip monitor".into() };
        // Let it subscribe before the caller acts (a change made earlier would be missed).
        std::thread::sleep(Duration::from_millis(200));
        Ok(RouteWatch { proc, file })
    }

    /// Waits until the router's BFD session with `peer` is up (BFD comes up after the BGP
    /// session it guards; until then only hold timers would notice a lost host).
    pub fn wait_bfd_up(&self, peer: Ipv4Addr, timeout: Duration) -> Result<()> {
        let start = Instant::now();
        loop {
            let out = self.router_bird.birdc(&["show", "bfd", "sessions"])?;
            let up = out.lines().any(|l| {
                let w: Vec<&str> = l.split_whitespace().collect();
                w.first() == Some(&peer.to_string().as_str()) && w.get(2) == Some(&"Up")
            });
            if up {
                return Ok(());
            }
            ensure!(start.elapsed() < timeout, "BFD session with {peer} not up within {timeout:?}:\n{out}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Addresses of both balancers.
    pub fn balancer_addrs(&self) -> Vec<Ipv4Addr> {
        self.balancers.iter().map(|b| b.addr).collect()
    }

    /// The backend named `name`.
    pub fn backend(&mut self, name: &str) -> &mut Backend {
        self.backends.iter_mut().find(|b| b.name == name).unwrap_or_else(|| panic!("no backend {name}"))
    }

    /// Namespace names (for leak checks).
    pub fn namespace_names(&self) -> Vec<String> {
        let mut v =
            vec![self.switch.name().to_owned(), self.router.name().to_owned(), self.client.name().to_owned()];
        v.extend(self.balancers.iter().map(|b| b.ns.name().to_owned()));
        v.extend(self.backends.iter().map(|b| b.ns.name().to_owned()));
        v.extend(self.etcd_ns.iter().map(|n| n.name().to_owned()));
        v
    }
}

/// The `[fleet]` table of host `host` in `cluster`, with the rig's etcd at `endpoint`.
pub fn fleet_table(cluster: &str, host: &str, endpoint: &str) -> String {
    format!("\n[fleet]\ncluster = \"{cluster}\"\nhost = \"{host}\"\nendpoints = [\"{endpoint}\"]\n")
}

/// A running `ip monitor route` of the router ([`FleetRig::watch_routes`]).
pub struct RouteWatch {
    proc: Proc,
    file: tempfile::NamedTempFile,
}

impl RouteWatch {
    /// Stops the monitor and returns the lines about the VIP it saw (each an add, a change or a
    /// `Deleted` of its route).
    pub fn vip_changes(mut self) -> Result<Vec<String>> {
        self.proc.signal(libc::SIGTERM)?;
        self.proc.wait_exit(Duration::from_secs(2))?;
        let text = std::fs::read_to_string(self.file.path())?;
        let vip = VIP.to_string();
        Ok(text
            .lines()
            .filter(|l| l.split_whitespace().any(|w| w == vip || w.starts_with(&format!("{vip}/"))))
            .map(str::to_owned)
            .collect())
    }
}

/// The next hops in `ip route show` output: `via X` of a single path or each `nexthop via X`.
pub fn parse_next_hops(out: &str) -> Vec<Ipv4Addr> {
    let words: Vec<&str> = out.split_whitespace().collect();
    words.windows(2).filter(|w| w[0] == "via").filter_map(|w| w[1].parse().ok()).collect()
}

fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Port of the flow sync on every balancer of the rig.
pub const SYNC_PORT: u16 = 7946;

impl Balancer {
    /// This host's flow-sync address.
    pub fn sync_addr(&self) -> SocketAddr {
        SocketAddr::V4(SocketAddrV4::new(self.addr, SYNC_PORT))
    }

    /// The `sync` member of the status (null without `[sync]`).
    pub fn sync_view(&self) -> Result<serde_json::Value> {
        Ok(self.status_json()?["sync"].clone())
    }

    /// Stops the daemon (forwarding continues from the pins) and starts it again with its
    /// config as it now is.
    pub fn restart_daemon(&mut self) -> Result<()> {
        self.shutdown_daemon(false)?;
        self.start_daemon()
    }

    /// Appends a `[sync]` table to the daemon's config: the rig's shared key (mode 0600), this
    /// host's sync address, `peers`, `interval` and the lines of `extra` (takes effect at the
    /// next daemon start).
    pub fn write_sync_table(&self, peers: &[SocketAddr], interval: Duration, extra: &str) -> Result<()> {
        use std::os::unix::fs::PermissionsExt;
        let key = self.dir.path().join("sync.key");
        std::fs::write(&key, "fleet-rig-shared-sync-key-0123456789\n")?;
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600))?;
        let peers: Vec<String> = peers.iter().map(|a| format!("\"{a}\"")).collect();
        let mut config = std::fs::read_to_string(self.config_path())?;
        config += &format!(
            "\n[sync]\nlisten = \"{}\"\nkey_file = \"{}\"\npeers = [{}]\ninterval = \"{}ms\"\n{extra}",
            self.sync_addr(),
            key.display(),
            peers.join(", "),
            interval.as_millis()
        );
        std::fs::write(self.config_path(), config)?;
        Ok(())
    }

    /// Takes the host out of the fleet as an operator switching it off would: `shutdown
    /// --detach` (VIPs withdrawn, program detached, pins and so flows removed), then its BIRD
    /// stopped. [`Balancer::join`] brings it back as a new host.
    pub fn leave(&mut self) -> Result<()> {
        self.shutdown_daemon(true)?;
        self.bird.process().kill();
        Ok(())
    }

    /// Starts the host's BIRD, then its daemon (from empty pins): a host joining the fleet.
    pub fn join(&mut self) -> Result<()> {
        self.bird.restart(&self.ns)?;
        self.start_daemon()
    }

    /// The instance's pinned flow table (`/sys/fs/bpf/<instance>/maps/FLOWS`), opened read-only
    /// by the test to see when an entry appears there.
    pub fn pinned_flows(
        &self,
    ) -> Result<aya::maps::HashMap<aya::maps::MapData, lb_common::maps::FlowKey, lb_common::maps::FlowValue>>
    {
        let path = PathBuf::from("/sys/fs/bpf").join(&self.instance).join("maps").join("FLOWS");
        let data =
            aya::maps::MapData::from_pin(&path).with_context(|| format!("opening {}", path.display()))?;
        Ok(aya::maps::HashMap::try_from(aya::maps::Map::LruHashMap(data))?)
    }

    /// `POST /v1/services/web/switch` to `pool` (what `lbctl switch` sends).
    pub fn switch(&self, pool: &str, hard: bool) -> Result<serde_json::Value> {
        Ok(self.client().post(
            "/v1/services/web/switch",
            &serde_json::json!({ "pool": pool, "hard": hard, "force": true }),
        )?)
    }
}

impl FleetRig {
    /// Turns on flow sync between the balancers: one shared key (mode 0600), a `[sync]` table in
    /// each daemon's config (listen on its segment address, the others as peers, `interval`),
    /// and a daemon restart (flows survive it in the pins). Waits (bounded) until every host is
    /// ready and linked to every peer.
    pub fn enable_sync(&mut self, interval: Duration) -> Result<()> {
        use std::os::unix::fs::PermissionsExt;
        let addrs: Vec<SocketAddr> = self.balancers.iter().map(Balancer::sync_addr).collect();
        for b in &mut self.balancers {
            let key = b.dir.path().join("sync.key");
            std::fs::write(&key, "fleet-rig-shared-sync-key-0123456789\n")?;
            std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600))?;
            let peers: Vec<String> =
                addrs.iter().filter(|a| **a != b.sync_addr()).map(|a| format!("\"{a}\"")).collect();
            let mut config = std::fs::read_to_string(b.config_path())?;
            config += &format!(
                "\n[sync]\nlisten = \"{}\"\nkey_file = \"{}\"\npeers = [{}]\ninterval = \"{}ms\"\n",
                b.sync_addr(),
                key.display(),
                peers.join(", "),
                interval.as_millis()
            );
            std::fs::write(b.config_path(), config)?;
            b.restart_daemon()?;
        }
        self.wait_sync_linked(Duration::from_secs(20))
    }

    /// Like [`FleetRig::enable_sync`] for a rig with etcd: no static peers (each host's peers
    /// are the fleet's live members in etcd) and a `ready_timeout` of `ready_timeout`, so a
    /// joining host announces only once its peers' bulk transfers arrived (not because the
    /// wait ran out).
    pub fn enable_fleet_sync(&mut self, interval: Duration, ready_timeout: Duration) -> Result<()> {
        ensure!(self.etcd.is_some(), "peers from the fleet's membership need the rig's etcd");
        for b in &mut self.balancers {
            b.write_sync_table(
                &[],
                interval,
                &format!("ready_timeout = \"{}s\"\n", ready_timeout.as_secs()),
            )?;
            b.restart_daemon()?;
        }
        self.wait_sync_linked(Duration::from_secs(20))
    }

    /// Waits until every balancer's sync is ready and its links to every peer are up.
    pub fn wait_sync_linked(&self, timeout: Duration) -> Result<()> {
        let start = Instant::now();
        loop {
            let views: Vec<serde_json::Value> =
                self.balancers.iter().map(Balancer::sync_view).collect::<Result<_>>()?;
            let linked = views.iter().all(|v| {
                v["ready"] == true
                    && v["peers"]
                        .as_array()
                        .is_some_and(|p| !p.is_empty() && p.iter().all(|p| p["connected"] == true))
            });
            if linked {
                return Ok(());
            }
            ensure!(start.elapsed() < timeout, "flow sync not linked within {timeout:?}: {views:#?}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_hops_of_single_and_multipath_routes() {
        assert_eq!(parse_next_hops(""), Vec::<Ipv4Addr>::new());
        assert_eq!(
            parse_next_hops("10.77.100.1 via 10.77.2.3 dev eth0 proto bird metric 32 \n"),
            vec![Ipv4Addr::new(10, 77, 2, 3)]
        );
        let multi = "10.77.100.1 proto bird metric 32 \n\tnexthop via 10.77.2.2 dev eth0 weight 1 \n\tnexthop via 10.77.2.3 dev eth0 weight 1 \n";
        assert_eq!(parse_next_hops(multi), vec![Ipv4Addr::new(10, 77, 2, 2), Ipv4Addr::new(10, 77, 2, 3)]);
    }
}
