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
    tls: Option<EtcdTls>,
}

/// Port of the plain-HTTP `/health` and `/metrics` listener of a TLS etcd (the client port
/// then speaks only TLS and wants a client certificate).
pub const METRICS_PORT: u16 = 2381;

/// TLS on etcd's client port, with client certificates required (`--client-cert-auth`).
#[derive(Clone, Debug)]
pub struct EtcdTls {
    /// CA (PEM) that signed the client certificates etcd accepts.
    pub ca: PathBuf,
    /// etcd's server certificate (PEM).
    pub cert: PathBuf,
    /// Its key (PEM).
    pub key: PathBuf,
}

/// Certificates made by [`make_certs`] in a directory of the test.
#[derive(Clone, Debug)]
pub struct TestCerts {
    /// The CA that signed the server and client certificates.
    pub ca: PathBuf,
    /// A second CA that signed nothing here: a daemon trusting it rejects etcd's certificate.
    pub other_ca: PathBuf,
    /// etcd's server certificate, for `ip` (as an IP subject alternative name).
    pub server_cert: PathBuf,
    /// Its key.
    pub server_key: PathBuf,
    /// The daemon's client certificate.
    pub client_cert: PathBuf,
    /// Its key.
    pub client_key: PathBuf,
}

impl TestCerts {
    /// The server side, for [`Etcd::start_tls`].
    pub fn etcd_tls(&self) -> EtcdTls {
        EtcdTls { ca: self.ca.clone(), cert: self.server_cert.clone(), key: self.server_key.clone() }
    }
}

/// Runs `openssl` (Debian's `openssl`; `cargo xtask test` installs it) in `dir`.
fn openssl(dir: &Path, args: &[&str]) -> Result<()> {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .output()
        .context("running openssl (Debian package openssl)")?;
    ensure!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    Ok(())
}

/// A CA, a second unrelated CA, a server certificate for `ip` and a client certificate, all
/// P-256 keys valid for two days, written into `dir` with the `openssl` command line.
pub fn make_certs(dir: &Path, ip: Ipv4Addr) -> Result<TestCerts> {
    let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"];
    for ca in ["ca", "other-ca"] {
        let mut args = vec!["req", "-x509"];
        args.extend(ec);
        let (key, pem, subj) = (format!("{ca}.key"), format!("{ca}.pem"), format!("/CN=lb test {ca}"));
        args.extend(["-keyout", &key, "-out", &pem, "-days", "2", "-subj", &subj]);
        args.extend(["-addext", "basicConstraints=critical,CA:TRUE"]);
        args.extend(["-addext", "keyUsage=critical,keyCertSign,cRLSign"]);
        openssl(dir, &args)?;
    }
    let leaf = |name: &str, cn: &str, ext: &str| -> Result<()> {
        std::fs::write(dir.join(format!("{name}.ext")), ext)?;
        let (key, csr, pem, subj) =
            (format!("{name}.key"), format!("{name}.csr"), format!("{name}.pem"), format!("/CN={cn}"));
        let mut args = vec!["req"];
        args.extend(ec);
        args.extend(["-keyout", &key, "-out", &csr, "-subj", &subj]);
        openssl(dir, &args)?;
        let extfile = format!("{name}.ext");
        openssl(
            dir,
            &[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-out",
                &pem,
                "-days",
                "2",
                "-extfile",
                &extfile,
            ],
        )
    };
    leaf(
        "server",
        "etcd",
        &format!(
            "subjectAltName=IP:{ip}\nextendedKeyUsage=serverAuth,clientAuth\nkeyUsage=critical,digitalSignature\n"
        ),
    )?;
    leaf("client", "lb", "extendedKeyUsage=clientAuth\nkeyUsage=critical,digitalSignature\n")?;
    Ok(TestCerts {
        ca: dir.join("ca.pem"),
        other_ca: dir.join("other-ca.pem"),
        server_cert: dir.join("server.pem"),
        server_key: dir.join("server.key"),
        client_cert: dir.join("client.pem"),
        client_key: dir.join("client.key"),
    })
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
            tls: None,
        };
        e.spawn()?;
        Ok(e)
    }

    /// Like [`Etcd::start`], with TLS on the client port and client certificates required;
    /// `/health` is probed on the plain [`METRICS_PORT`].
    pub fn start_tls(ns: &NetNs, addr: Ipv4Addr, tls: EtcdTls) -> Result<Etcd> {
        let mut e = Etcd {
            child: None,
            ns_path: format!("/run/netns/{}", ns.name()),
            addr,
            dir: tempfile::tempdir()?,
            tls: Some(tls),
        };
        e.spawn()?;
        Ok(e)
    }

    /// The client URL daemons are configured with (`http://<addr>:2379`, `https://` with TLS).
    pub fn endpoint(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://{}:{CLIENT_PORT}", self.addr)
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
        let addr = match self.tls {
            Some(_) => SocketAddr::from((self.addr, METRICS_PORT)),
            None => self.client_addr(),
        };
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
            .args(self.tls_args())
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

impl Etcd {
    /// The TLS flags of etcd (none without TLS).
    fn tls_args(&self) -> Vec<String> {
        let Some(t) = &self.tls else { return Vec::new() };
        let path = |p: &PathBuf| p.display().to_string();
        vec![
            "--cert-file".into(),
            path(&t.cert),
            "--key-file".into(),
            path(&t.key),
            "--trusted-ca-file".into(),
            path(&t.ca),
            "--client-cert-auth".into(),
            "--listen-metrics-urls".into(),
            format!("http://{}:{METRICS_PORT}", self.addr),
        ]
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
