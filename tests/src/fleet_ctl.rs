//! Driving a fleet rig with etcd ([`crate::fleet_rig::FleetRig::with`]) the way an operator or
//! a CI step does: the real `lbctl` against one host's socket, the fleet view each daemon
//! publishes (`GET /v1/fleet`), and bounded waits until every host applied the same state.

use crate::{
    fleet_rig::{Balancer, FleetRig, vip_addr},
    load::{LoadHandle, LoadOptions, LoadReport},
    topology::find_binary,
};
use anyhow::{Context, Result, bail};
use lb_daemon::api::model::Active;
use std::{
    process::{Child, Command, Output, Stdio},
    time::{Duration, Instant},
};

/// `lbctl --socket <host's socket> <args>` (waits for it to exit).
pub fn lbctl(b: &Balancer, args: &[&str]) -> Output {
    lbctl_command(b, args).output().expect("running lbctl")
}

/// `lbctl` against `b` as a child process (stdout and stderr piped), for commands that run
/// while the test does something else (two at once, a `--watch` being followed).
pub fn lbctl_spawn(b: &Balancer, args: &[&str]) -> Child {
    lbctl_command(b, args).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("starting lbctl")
}

fn lbctl_command(b: &Balancer, args: &[&str]) -> Command {
    let mut c = Command::new(find_binary("lbctl", "LB_LBCTL_BIN").expect("lbctl binary"));
    c.arg("--socket").arg(b.dir.path().join("lb.sock")).args(args).stdin(Stdio::null());
    c
}

/// Exit code, stdout and stderr of an lbctl run, for assertion messages.
pub fn describe(out: &Output) -> String {
    format!(
        "exit {:?}\nstdout: {}\nstderr: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Runs lbctl and fails unless it exits 0; returns stdout.
pub fn lbctl_ok(b: &Balancer, args: &[&str]) -> Result<String> {
    let out = lbctl(b, args);
    if !out.status.success() {
        bail!("lbctl {args:?} on {}: {}", b.host, describe(&out));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `GET /v1/fleet` of host `b`.
pub fn fleet_view(b: &Balancer) -> Result<serde_json::Value> {
    b.client().get("/v1/fleet").with_context(|| format!("GET /v1/fleet on {}", b.host))
}

/// The active pool (or split, as text) of the only service of host `b`, from its data plane's
/// point of view (its status).
pub fn active(b: &Balancer) -> Result<String> {
    let s = b.status()?;
    let svc = s.services.first().context("no service")?;
    Ok(match &svc.active {
        Active::Pool(p) => p.clone(),
        Active::Split(w) => {
            let parts: Vec<String> = w.iter().map(|w| format!("{}={}", w.pool, w.weight)).collect();
            format!("split {}", parts.join(" "))
        }
    })
}

/// The applied revision and in-sync flag of every running host, from each host itself.
pub fn applied(rig: &FleetRig) -> Result<Vec<(String, i64, bool)>> {
    rig.balancers
        .iter()
        .map(|b| {
            let v = fleet_view(b)?;
            Ok((b.host.clone(), v["applied_revision"].as_i64().unwrap_or(-1), v["in_sync"] == true))
        })
        .collect()
}

/// Waits (bounded) until every host says it is in sync at the same applied revision and sees
/// every other host live; returns that revision.
pub fn wait_in_sync(rig: &FleetRig, timeout: Duration) -> Result<i64> {
    let start = Instant::now();
    loop {
        let now = applied(rig);
        if let Ok(list) = &now {
            let hosts_seen = rig.balancers.iter().all(|b| {
                fleet_view(b)
                    .is_ok_and(|v| v["hosts"].as_array().is_some_and(|h| h.len() == rig.balancers.len()))
            });
            let first = list[0].1;
            if hosts_seen && list.iter().all(|(_, r, sync)| *sync && *r == first && *r > 0) {
                return Ok(first);
            }
        }
        if start.elapsed() > timeout {
            bail!("the fleet is not in sync within {timeout:?}: {now:?}\n{}", why_not_in_sync(rig));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits (bounded) until host `b`'s active pool is `want`.
pub fn wait_active(b: &Balancer, want: &str, timeout: Duration) -> Result<Duration> {
    let start = Instant::now();
    loop {
        let now = active(b);
        if now.as_deref().ok() == Some(want) {
            return Ok(start.elapsed());
        }
        if start.elapsed() > timeout {
            bail!("{}: active {now:?}, expected {want} within {timeout:?}", b.host);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Why hosts are not in sync, for an error message: each host's `problem` in `GET /v1/fleet`
/// and the fleet lines of its daemon log (the cause is found there, not in a bare flag).
pub fn why_not_in_sync(rig: &FleetRig) -> String {
    let mut out = String::new();
    for b in &rig.balancers {
        let view = fleet_view(b).map(|v| v.to_string()).unwrap_or_else(|e| format!("{e:#}"));
        out += &format!("{}: GET /v1/fleet: {view}\n", b.host);
        let log = b.daemon_log();
        let fleet: Vec<&str> = log
            .lines()
            .filter(|l| l.contains("fleet") || l.contains("etcd") || l.contains("ERROR"))
            .collect();
        for l in fleet.iter().rev().take(15).rev() {
            out += &format!("  {l}\n");
        }
    }
    out
}

/// Bounded load from every client address of `rig`: `rate` connections/s for at most `secs`
/// seconds (the fleet tests' background traffic across a change).
pub fn load(rig: &FleetRig, rate: u32, secs: u64) -> LoadHandle {
    let mut opts = LoadOptions::new(vip_addr());
    opts.rate_per_s = rate;
    opts.max_connections = rate * secs as u32;
    opts.max_duration = Duration::from_secs(secs);
    opts.source_addrs = rig.client_addrs.iter().copied().map(std::net::IpAddr::V4).collect();
    LoadHandle::start(&rig.client, opts).expect("starting load")
}

/// New flows each running host forwarded so far (all pools), in host order: the difference of
/// two calls shows how ECMP spread a load.
pub fn new_flows(rig: &FleetRig) -> Vec<u64> {
    rig.balancers.iter().map(|b| b.new_flows().expect("status")).collect()
}

/// Fails unless `report` made connections and none failed.
pub fn assert_clean(report: &LoadReport, what: &str) {
    assert!(!report.is_empty(), "{what}: no connection made");
    assert_eq!(report.failed(), 0, "{what}: {}", report.summary());
}
