//! One etcd member (Debian's `etcd-server`, `/usr/bin/etcd`; `cargo xtask test` installs it)
//! running inside a namespace of a test rig, on a rig address, with its data directory in a
//! temporary directory. The fleet's shared desired state lives there. The process is killed on
//! drop, also when a test fails; a test may stop it (etcd lost) and start it again on the same
//! data (etcd back).

use anyhow::{Context, Result, bail, ensure};
use std::{
    io::{Read, Write},
    net::{Ipv4Addr, SocketAddr, TcpStream},
    os::fd::AsRawFd,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use crate::netns::NetNs;

/// Client port (etcd's default).
pub const CLIENT_PORT: u16 = 2379;
/// Peer port (etcd's default; a one-member cluster still listens on it).
pub const PEER_PORT: u16 = 2380;
/// Longest wait for etcd to answer `/health` after a start.
pub const START_TIMEOUT: Duration = Duration::from_secs(20);

/// The etcd program: `LB_ETCD_BIN` when set, else Debian's.
pub fn etcd_program() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("LB_ETCD_BIN") {
        return Ok(PathBuf::from(p));
    }
    for p in ["/usr/bin/etcd", "/usr/local/bin/etcd"] {
        if Path::new(p).is_file() {
            return Ok(PathBuf::from(p));
        }
    }
    bail!("etcd not found: install Debian's etcd-server (cargo xtask test does)")
}

/// A running (or stopped) one-member etcd in a namespace.
pub struct Etcd {
    child: Option<Child>,
    ns_path: String,
    addr: Ipv4Addr,
    dir: tempfile::TempDir,
}

impl Etcd {
    /// Starts etcd in `ns` listening on `addr` (an address of that namespace) and waits until it
    /// answers `/health`.
    pub fn start(ns: &NetNs, addr: Ipv4Addr) -> Result<Etcd> {
        let mut e = Etcd {
            child: None,
            ns_path: format!("/run/netns/{}", ns.name()),
            addr,
            dir: tempfile::tempdir()?,
        };
        e.spawn()?;
        Ok(e)
    }

    /// The client URL daemons are configured with (`http://<addr>:2379`).
    pub fn endpoint(&self) -> String {
        format!("http://{}:{CLIENT_PORT}", self.addr)
    }

    /// The client address.
    pub fn client_addr(&self) -> SocketAddr {
        SocketAddr::from((self.addr, CLIENT_PORT))
    }

    /// etcd's own log (stdout and stderr).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("etcd.log")).unwrap_or_default()
    }

    /// Whether the process runs.
    pub fn running(&mut self) -> bool {
        self.child.as_mut().is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// Kills etcd (SIGKILL: etcd lost, as a crash or a partition would look to the clients);
    /// its data stays for [`Etcd::restart`].
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts etcd again on the same data (after [`Etcd::stop`]) and waits until it answers.
    pub fn restart(&mut self) -> Result<()> {
        self.stop();
        self.spawn()
    }

    /// `GET /health` from inside the namespace: true when etcd says it is healthy.
    pub fn healthy(&self) -> bool {
        let addr = self.client_addr();
        let ns = self.ns_path.clone();
        std::thread::scope(|s| {
            s.spawn(move || -> Result<bool> {
                // A thread of its own, which ends here: it need not come back.
                let f = std::fs::File::open(&ns)?;
                if unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                    bail!("setns {ns}: {}", std::io::Error::last_os_error());
                }
                Ok(health_probe(addr).unwrap_or(false))
            })
            .join()
            .ok()
            .and_then(Result::ok)
            .unwrap_or(false)
        })
    }

    fn spawn(&mut self) -> Result<()> {
        ensure!(self.child.is_none(), "etcd already running");
        let data = self.dir.path().join("data");
        let client = self.endpoint();
        let peer = format!("http://{}:{PEER_PORT}", self.addr);
        let log =
            std::fs::OpenOptions::new().create(true).append(true).open(self.dir.path().join("etcd.log"))?;
        let child = Command::new("nsenter")
            .arg(format!("--net={}", self.ns_path))
            .arg(etcd_program()?)
            .args(["--name", "rig", "--data-dir"])
            .arg(&data)
            .args(["--listen-client-urls", &client, "--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer, "--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &format!("rig={peer}"), "--initial-cluster-state", "new"])
            // Small and quick: one member, short heartbeats, nothing kept that a test does not need.
            .args(["--heartbeat-interval", "50", "--election-timeout", "500", "--log-level", "warn"])
            .args(["--auto-compaction-retention", "0"])
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting etcd")?;
        self.child = Some(child);
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if self.healthy() {
                return Ok(());
            }
            if !self.running() {
                self.child = None;
                bail!("etcd exited at start:\n{}", self.log());
            }
            if Instant::now() > deadline {
                self.stop();
                bail!("etcd not healthy within {START_TIMEOUT:?}:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.stop();
    }
}

/// One HTTP/1.0 `GET /health` (etcd answers `{"health":"true"}`).
fn health_probe(addr: SocketAddr) -> std::io::Result<bool> {
    let t = Duration::from_millis(500);
    let mut s = TcpStream::connect_timeout(&addr, t)?;
    s.set_read_timeout(Some(t))?;
    s.write_all(format!("GET /health HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())?;
    let mut body = String::new();
    s.read_to_string(&mut body)?;
    Ok(parse_health(&body))
}

/// Whether an HTTP answer of `/health` says healthy.
fn parse_health(answer: &str) -> bool {
    answer.starts_with("HTTP/1.") && answer.split_whitespace().nth(1) == Some("200") && {
        let compact: String = answer.chars().filter(|c| !c.is_whitespace()).collect();
        compact.contains("\"health\":\"true\"")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn health_answers() {
        assert!(parse_health(
            "HTTP/1.0 200 OK\r\nContent-Type: application/json\r\n\r\n{\"health\":\"true\"}"
        ));
        assert!(!parse_health("HTTP/1.0 503 Service Unavailable\r\n\r\n{\"health\":\"false\"}"));
        assert!(!parse_health("HTTP/1.0 200 OK\r\n\r\n{\"health\":\"false\",\"reason\":\"x\"}"));
        assert!(!parse_health(""));
    }
}
