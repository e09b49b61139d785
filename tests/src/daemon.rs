//! The real `lb-daemon` running in a topology's balancer namespace, driven by the real `lbctl`,
//! for end-to-end tests. Pins live under `/sys/fs/bpf/<instance>` with a unique instance name;
//! dropping the fixture kills the daemon and removes its pins (detaching the program).

use crate::topology::{Topology, find_binary};
use anyhow::{Context, Result, bail};
use lb_daemon::{
    api::{
        client::{Client, Endpoint},
        model::StatusView,
    },
    dataplane::{Dataplane, PinDir},
};
use std::{
    net::SocketAddr,
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant},
};

static NEXT: AtomicU32 = AtomicU32::new(0);

/// A service for [`config_toml`].
pub struct ServiceSpec<'a> {
    /// Service name.
    pub name: &'a str,
    /// VIP.
    pub vip: SocketAddr,
    /// `nat` or `dsr`.
    pub mode: &'a str,
    /// Pools in order: name and backends.
    pub pools: Vec<(&'a str, Vec<SocketAddr>)>,
    /// Initially active pool.
    pub active: &'a str,
}

/// A config file for one instance with its state and socket inside `dir`.
pub fn config_toml(instance: &str, dir: &Path, iface: &str, services: &[ServiceSpec<'_>]) -> String {
    let mut t = format!(
        "instance = \"{instance}\"\nstate_dir = \"{}\"\ninterfaces = [\"{iface}\"]\nflow_table_size = 65536\nring_size = 1009\n\n[api]\nunix_socket = \"{}\"\n",
        dir.join("state").display(),
        dir.join("lb.sock").display()
    );
    for s in services {
        t += &format!(
            "\n[[services]]\nname = \"{}\"\nvips = [\"{}\"]\nmode = \"{}\"\nactive = \"{}\"\n",
            s.name, s.vip, s.mode, s.active
        );
        for (pool, backends) in &s.pools {
            let list: Vec<String> = backends.iter().map(|b| format!("\"{b}\"")).collect();
            t += &format!("\n[services.pools.{pool}]\nbackends = [{}]\n", list.join(", "));
            // Fast health checks, so tests see a dead backend leave within ~0.5 s.
            t += &format!(
                "\n[services.pools.{pool}.health]\ninterval = \"200ms\"\ntimeout = \"150ms\"\nrise = 2\nfall = 2\n"
            );
        }
    }
    t
}

/// A daemon process and the files of its instance.
pub struct LbDaemon {
    child: Option<Child>,
    /// Instance name (unique per fixture).
    pub instance: String,
    /// Temporary folder with the config, state, socket and log.
    pub dir: tempfile::TempDir,
    daemon_bin: PathBuf,
    lbctl_bin: PathBuf,
    /// `RLIMIT_NOFILE` (soft and hard) the daemon is started with, when set.
    pub nofile_limit: Option<u64>,
}

impl LbDaemon {
    /// A fresh instance name and folder; the config is made by `make_config(instance, dir)`.
    pub fn start(topo: &Topology, make_config: impl FnOnce(&str, &Path) -> String) -> Result<Self> {
        Self::start_limited(topo, None, make_config)
    }

    /// Like [`Self::start`], with the daemon's `RLIMIT_NOFILE` (soft and hard) set to
    /// `nofile_limit` before it runs.
    pub fn start_limited(
        topo: &Topology,
        nofile_limit: Option<u64>,
        make_config: impl FnOnce(&str, &Path) -> String,
    ) -> Result<Self> {
        let instance = format!("lbt{}x{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed));
        let dir = tempfile::tempdir()?;
        std::fs::write(dir.path().join("lb.toml"), make_config(&instance, dir.path()))?;
        let mut d = Self {
            child: None,
            instance,
            dir,
            daemon_bin: find_binary("lb-daemon", "LB_DAEMON_BIN")?,
            lbctl_bin: find_binary("lbctl", "LB_LBCTL_BIN")?,
            nofile_limit,
        };
        d.spawn(topo)?;
        Ok(d)
    }

    /// Path of the config file.
    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("lb.toml")
    }

    /// Path of the API socket.
    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("lb.sock")
    }

    /// Starts the daemon process and waits until its API answers.
    pub fn spawn(&mut self, topo: &Topology) -> Result<()> {
        let log =
            std::fs::OpenOptions::new().create(true).append(true).open(self.dir.path().join("daemon.log"))?;
        let mut cmd = Command::new(&self.daemon_bin);
        cmd.arg("--config")
            .arg(self.config_path())
            .env("LB_LOG", "info")
            .env("LB_LOG_FORMAT", "json")
            .stdout(Stdio::null())
            .stderr(log);
        if let Some(limit) = self.nofile_limit {
            let lim = libc::rlimit { rlim_cur: limit, rlim_max: limit };
            // SAFETY: setrlimit is async-signal-safe; `lim` is copied into the closure.
            unsafe {
                cmd.pre_exec(move || {
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        let mut child = topo.spawn_in(topo.balancer(), &mut cmd)?;
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = child.try_wait()? {
                bail!("lb-daemon exited with {status} during start-up:\n{}", self.log());
            }
            if self.client().get::<serde_json::Value>("/v1/health").is_ok() {
                break;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                bail!("lb-daemon did not answer within 20 s:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.child = Some(child);
        Ok(())
    }

    /// The running daemon's pid.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The path of the daemon binary.
    pub fn daemon_bin(&self) -> &Path {
        &self.daemon_bin
    }

    /// `kill -9` the daemon and reap it.
    pub fn kill9(&mut self) -> Result<()> {
        let mut child = self.child.take().context("daemon not running")?;
        child.kill()?;
        child.wait()?;
        Ok(())
    }

    /// Waits for the daemon to exit by itself (after `lbctl shutdown`).
    pub fn wait_exit(&mut self, timeout: Duration) -> Result<std::process::ExitStatus> {
        let mut child = self.child.take().context("daemon not running")?;
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = child.try_wait()? {
                return Ok(s);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                bail!("daemon did not exit within {timeout:?}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The daemon's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("daemon.log")).unwrap_or_default()
    }

    /// An API client on the socket.
    pub fn client(&self) -> Client {
        Client::new(Endpoint::Unix(self.socket()), "lb-tests".into(), Duration::from_secs(5))
    }

    /// `GET /v1/status`.
    pub fn status(&self) -> Result<StatusView> {
        Ok(self.client().get("/v1/status")?)
    }

    /// Runs `lbctl --socket <sock> <args>`.
    pub fn lbctl(&self, args: &[&str]) -> Output {
        Command::new(&self.lbctl_bin)
            .arg("--socket")
            .arg(self.socket())
            .args(args)
            .output()
            .expect("running lbctl")
    }

    /// Runs lbctl and fails unless it exits 0; returns stdout.
    pub fn lbctl_ok(&self, args: &[&str]) -> String {
        let out = self.lbctl(args);
        assert!(
            out.status.success(),
            "lbctl {args:?} failed ({}):\nstdout: {}\nstderr: {}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Where the instance's pins live.
    pub fn pin_dir(&self) -> PathBuf {
        PathBuf::from("/sys/fs/bpf").join(&self.instance)
    }
}

impl Drop for LbDaemon {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = Dataplane::remove_pins(&PinDir(self.pin_dir()));
    }
}
