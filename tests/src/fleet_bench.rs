//! Fleet benchmarks on the BGP rig ([`crate::fleet_rig`]: an ECMP router running BIRD, two
//! balancer hosts each with lb-daemon and BIRD, BFD 50 ms × 3), run by the `fleet-bench`
//! binary (`cargo xtask bench`):
//!
//! - [`failover`]: a host frozen (its BIRD stopped by SIGSTOP: the TCP session stays open, only
//!   BFD notices) or its link to the segment down, until the router's kernel route no longer
//!   has a path through it. A SIGKILL would close the BGP session at once and test nothing.
//! - [`conn_rate`]: unpaced short connections through the VIP while both hosts announce it,
//!   then with one host drained (`POST /v1/host/drain`): connections/s through the fleet vs one
//!   host.
//!
//! Everything stays inside the rig's namespaces and is bounded in time and count.

use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use serde::Serialize;

use crate::cli::check_interrupted;
use crate::fleet_rig::{FleetRig, vip_addr};
use crate::load::{LoadHandle, LoadOptions};

/// How a host is lost in a [`failover`] round.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Loss {
    /// Its BIRD frozen by SIGSTOP (a hung host).
    BirdStopped,
    /// Its link to the segment set down.
    LinkDown,
}

/// Failover timings, one per round and kind of loss, in ms.
#[derive(Clone, Debug, Default, Serialize)]
pub struct FailoverReport {
    /// SIGSTOP of a host's BIRD → router path gone, per round.
    pub bird_stopped_ms: Vec<f64>,
    /// A host's link down → router path gone, per round.
    pub link_down_ms: Vec<f64>,
    /// The rig's BFD timers, in words.
    pub timers: String,
}

/// Connection rates through the fleet and through one host.
#[derive(Clone, Debug, Default, Serialize)]
pub struct ConnRateReport {
    /// Seconds of load per measurement.
    pub seconds: f64,
    /// Client threads, each one connection at a time.
    pub workers: usize,
    /// Answered connections/s with both hosts announcing the VIP, per round.
    pub fleet_conn_per_s: Vec<f64>,
    /// Failed connections with both hosts, per round.
    pub fleet_failed: Vec<usize>,
    /// New flows lb1 and lb2 forwarded during the fleet runs (both > 0: ECMP spread them).
    pub fleet_new_flows_per_host: Vec<[u64; 2]>,
    /// Answered connections/s with lb2 drained (one host), per round.
    pub one_host_conn_per_s: Vec<f64>,
    /// Failed connections with one host, per round.
    pub one_host_failed: Vec<usize>,
}

/// How long the router may take to show both paths again after a host comes back.
const BACK_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest wait for a path to go (well above BFD's 150 ms, well below the hold timers).
const GONE_TIMEOUT: Duration = Duration::from_secs(5);

/// A rig for the benchmarks (namespaces named `<prefix>-…`).
pub fn rig(prefix: &str) -> Result<FleetRig> {
    FleetRig::new(prefix).context("building the fleet rig")
}

/// `rounds` failovers of each kind on `rig`: odd rounds lose lb2, even ones lb1 (either way
/// the other host stays), each host brought back and BFD up again before the next round.
/// `progress` gets one line per round.
pub fn failover(rig: &mut FleetRig, rounds: u32, mut progress: impl FnMut(&str)) -> Result<FailoverReport> {
    let mut report = FailoverReport {
        timers: "BFD 50 ms x 3 on both ends; BGP connect retry 1 s, error wait 1-5 s".into(),
        ..Default::default()
    };
    let both = rig.balancer_addrs();
    for round in 0..rounds {
        for loss in [Loss::BirdStopped, Loss::LinkDown] {
            check_interrupted()?;
            let lost = (round as usize + 1) % 2;
            let ms = lose_one(rig, lost, loss)?;
            progress(&format!(
                "  round {}: {:?} of lb{}: router path gone in {ms:.1} ms",
                round + 1,
                loss,
                lost + 1
            ));
            match loss {
                Loss::BirdStopped => report.bird_stopped_ms.push(ms),
                Loss::LinkDown => report.link_down_ms.push(ms),
            }
            bring_back(rig, lost, loss, &both)?;
        }
    }
    Ok(report)
}

/// Freezes or unplugs balancer `i`; returns the ms until the router's route lost its path.
fn lose_one(rig: &mut FleetRig, i: usize, loss: Loss) -> Result<f64> {
    let keep: Vec<Ipv4Addr> =
        rig.balancer_addrs().into_iter().enumerate().filter(|(j, _)| *j != i).map(|(_, a)| a).collect();
    let start = Instant::now();
    match loss {
        Loss::BirdStopped => rig.balancers[i].bird.process().signal(libc::SIGSTOP)?,
        Loss::LinkDown => {
            rig.balancers[i].ns.ip(&["link", "set", "eth0", "down"])?;
        }
    }
    rig.wait_next_hops(&keep, GONE_TIMEOUT).context("the router dropping the lost host")?;
    Ok(start.elapsed().as_secs_f64() * 1000.0)
}

/// Brings balancer `i` back: a frozen BIRD is restarted (one merely resumed keeps sending BFD
/// packets of its old session and flaps), a link set up again; then both paths and BFD up.
fn bring_back(rig: &mut FleetRig, i: usize, loss: Loss, both: &[Ipv4Addr]) -> Result<()> {
    match loss {
        Loss::BirdStopped => {
            let b = &mut rig.balancers[i];
            b.bird.restart(&b.ns)?;
        }
        Loss::LinkDown => {
            rig.balancers[i].ns.ip(&["link", "set", "eth0", "up"])?;
        }
    }
    rig.wait_next_hops(both, BACK_TIMEOUT).context("the host coming back")?;
    rig.wait_bfd_up(both[i], BACK_TIMEOUT)?;
    // Settle: the route must hold both paths for a moment before the next round.
    let end = Instant::now() + Duration::from_millis(500);
    while Instant::now() < end {
        let mut got = rig.next_hops()?;
        got.sort();
        if got != both {
            rig.wait_next_hops(both, BACK_TIMEOUT)?;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

/// Unpaced short connections from every client address for `seconds` (at most `MAX` per run):
/// answered connections/s and failures.
pub fn unpaced(rig: &FleetRig, seconds: f64, workers: usize) -> Result<(f64, usize)> {
    const MAX: u32 = 400_000;
    let mut opts = LoadOptions::new(vip_addr());
    opts.rate_per_s = 0;
    opts.workers = workers;
    opts.max_connections = MAX;
    opts.max_duration = Duration::from_secs_f64(seconds);
    opts.source_addrs = rig.client_addrs.iter().copied().map(IpAddr::V4).collect();
    let load = LoadHandle::start(&rig.client, opts)?;
    let report = load.wait();
    ensure!(!report.is_empty(), "no connection made");
    let last = report.results.iter().map(|r| r.at).max().unwrap_or_default().as_secs_f64().max(seconds);
    Ok((report.ok() as f64 / last, report.failed()))
}

fn new_flows(rig: &FleetRig) -> Result<[u64; 2]> {
    Ok([rig.balancers[0].new_flows()?, rig.balancers[1].new_flows()?])
}

/// `rounds` pairs of measurements on `rig`: `seconds` of unpaced load (`workers` threads)
/// through both hosts, then the same with lb2 drained (the router has only lb1), then lb2
/// undrained. `progress` gets one line per round.
pub fn conn_rate(
    rig: &mut FleetRig,
    rounds: u32,
    seconds: f64,
    workers: usize,
    mut progress: impl FnMut(&str),
) -> Result<ConnRateReport> {
    let both = rig.balancer_addrs();
    let mut report = ConnRateReport { seconds, workers, ..Default::default() };
    for round in 1..=rounds {
        check_interrupted()?;
        let before = new_flows(rig)?;
        let (fleet, fleet_failed) = unpaced(rig, seconds, workers)?;
        let after = new_flows(rig)?;
        let spread = [after[0] - before[0], after[1] - before[1]];

        rig.balancers[1].host("drain")?;
        rig.wait_next_hops(&both[..1], GONE_TIMEOUT).context("lb2 withdrawn by its drain")?;
        let result = unpaced(rig, seconds, workers);
        rig.balancers[1].host("undrain")?;
        rig.wait_next_hops(&both, BACK_TIMEOUT).context("lb2 announced again")?;
        let (one, one_failed) = result?;
        progress(&format!(
            "  round {round}: fleet {fleet:.0} conn/s ({fleet_failed} failed; new flows lb1 {} lb2 {}), \
             one host {one:.0} conn/s ({one_failed} failed)",
            spread[0], spread[1]
        ));
        report.fleet_conn_per_s.push(fleet);
        report.fleet_failed.push(fleet_failed);
        report.fleet_new_flows_per_host.push(spread);
        report.one_host_conn_per_s.push(one);
        report.one_host_failed.push(one_failed);
    }
    Ok(report)
}

/// Median of `v` (0 when empty).
pub fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    match s.len() {
        0 => 0.0,
        n if n % 2 == 1 => s[n / 2],
        n => (s[n / 2 - 1] + s[n / 2]) / 2.0,
    }
}

#[cfg(test)]
mod tests {
    use super::median;

    #[test]
    fn medians() {
        assert_eq!(median(&[]), 0.0);
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
    }
}
