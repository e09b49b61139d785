//! The cost of flow sync (issue 12 item 2), for `cargo xtask bench` through the `fleet-bench`
//! binary's `--case sync-rate`, on the BGP rig of [`crate::fleet_rig`] (two DSR hosts behind the
//! ECMP router):
//!
//! - unpaced new connections/s through the fleet with sync off and on, in alternating rounds
//!   of one run (each switch restarts both daemons with or without `[sync]`: the program is
//!   loaded again, so "off" has no reporting in the data plane either), compared by medians;
//!   odd rounds measure off then on, even rounds on then off, so a drift of the shared
//!   machine's load favours neither;
//! - the daemons' CPU time per new flow with sync off and on (`process_cpu_seconds_total` of
//!   both daemons over each measurement): the control-plane cost of a synced flow, steadier than
//!   a rate on a shared machine;
//! - the sync traffic: bytes of frames the hosts sent to each other (`lb_sync_sent_bytes_total`,
//!   the status's `sync.bytes_sent`) per new flow during the "on" rounds, scaled to 10,000 new
//!   flows/s, and the pings' share when idle;
//! - how long a flow takes to reach the peer: from a connection's establishment (the client's
//!   `connect` returned: its ACK is on the wire) until the other host's pinned `FLOWS` holds the
//!   entry, read directly from the map (not through the API), one connection at a time, each
//!   at a pseudo-random phase of the send interval.
//!
//! Everything stays inside the rig's namespaces and is bounded in count and time.

use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use lb_common::maps::{FLOW_ESTABLISHED, FLOW_SYNCED};
use serde::Serialize;

use crate::cli::check_interrupted;
use crate::fleet_bench::{median, unpaced};
use crate::fleet_rig::{Balancer, FleetRig, vip_addr};
use crate::fleet_switch_bench::Percentiles;
use crate::testbed::flow_key;

/// What to run.
#[derive(Clone, Copy, Debug)]
pub struct SyncRateOptions {
    /// Pairs of rounds (off, then on).
    pub rounds: u32,
    /// Seconds of load per round.
    pub seconds: f64,
    /// Client threads, each one connection at a time.
    pub workers: usize,
    /// The sync's send interval.
    pub interval: Duration,
    /// Connections timed from establishment to the peer's entry.
    pub latency_samples: u32,
}

impl Default for SyncRateOptions {
    fn default() -> Self {
        SyncRateOptions {
            rounds: 3,
            seconds: 3.0,
            workers: 8,
            interval: Duration::from_millis(100),
            latency_samples: 200,
        }
    }
}

/// What `--case sync-rate` measured.
#[derive(Clone, Debug, Default, Serialize)]
pub struct SyncRateReport {
    /// Seconds of load per round.
    pub seconds: f64,
    /// Client threads.
    pub workers: usize,
    /// The sync's send interval, ms: flows younger than about this may be lost with a host.
    pub interval_ms: u64,
    /// Answered connections/s with sync off, per round.
    pub off_conn_per_s: Vec<f64>,
    /// Failed connections with sync off, per round.
    pub off_failed: Vec<usize>,
    /// Answered connections/s with sync on, per round.
    pub on_conn_per_s: Vec<f64>,
    /// Failed connections with sync on, per round.
    pub on_failed: Vec<usize>,
    /// New flows both hosts forwarded in each "on" round.
    pub on_new_flows: Vec<u64>,
    /// Flow records both hosts' data planes reported in each "on" round (a short connection
    /// makes two: established, closed).
    pub on_records: Vec<u64>,
    /// Both daemons' CPU microseconds per new flow with sync off, per round.
    pub off_daemon_cpu_us_per_flow: Vec<f64>,
    /// Both daemons' CPU microseconds per new flow with sync on, per round.
    pub on_daemon_cpu_us_per_flow: Vec<f64>,
    /// Bytes of sync frames both hosts sent in each "on" round.
    pub on_sync_bytes: Vec<u64>,
    /// Records dropped for a peer (queue full or link down) during the "on" rounds.
    pub on_dropped: u64,
    /// Sync bytes per new flow, per "on" round.
    pub bytes_per_flow: Vec<f64>,
    /// Sync bytes/s the two hosts send each other with no traffic (pings).
    pub idle_bytes_per_s: f64,
    /// Connection to peer entry, ms.
    pub to_peer_ms: Percentiles,
    /// Samples behind `to_peer_ms`.
    pub to_peer_samples: usize,
}

impl SyncRateReport {
    /// Median conn/s with sync on over the median with it off.
    pub fn ratio(&self) -> f64 {
        let off = median(&self.off_conn_per_s);
        if off > 0.0 { median(&self.on_conn_per_s) / off } else { 0.0 }
    }

    /// Median sync bytes per new flow.
    pub fn median_bytes_per_flow(&self) -> f64 {
        median(&self.bytes_per_flow)
    }

    /// The summary lines.
    pub fn text(&self) -> String {
        let per_10k = self.median_bytes_per_flow() * 10_000.0;
        format!(
            "  sync off: {:.0} conn/s (median of {:?}; failed {:?})\n  \
             sync on:  {:.0} conn/s (median of {:?}; failed {:?})\n  \
             with sync on: {:.1}% of the rate without (the issue asks >= 90%)\n  \
             daemons' CPU per new flow: {:.1} us with sync off, {:.1} us with sync on (medians)\n  \
             sync traffic: {:.1} bytes per new flow (frames the hosts send each other, per round {:?}), \
             {:.0} kB/s = {:.2} Mbit/s per 10,000 new flows/s; {} records dropped; idle (pings): {:.0} B/s\n  \
             sync interval {} ms; connection established -> entry on the peer: p50 {:.1} ms, p99 {:.1} ms, \
             max {:.1} ms (n={})\n",
            median(&self.off_conn_per_s),
            self.off_conn_per_s.iter().map(|v| v.round()).collect::<Vec<_>>(),
            self.off_failed,
            median(&self.on_conn_per_s),
            self.on_conn_per_s.iter().map(|v| v.round()).collect::<Vec<_>>(),
            self.on_failed,
            100.0 * self.ratio(),
            median(&self.off_daemon_cpu_us_per_flow),
            median(&self.on_daemon_cpu_us_per_flow),
            self.median_bytes_per_flow(),
            self.bytes_per_flow.iter().map(|v| (v * 10.0).round() / 10.0).collect::<Vec<_>>(),
            per_10k / 1000.0,
            per_10k * 8.0 / 1e6,
            self.on_dropped,
            self.idle_bytes_per_s,
            self.interval_ms,
            self.to_peer_ms.p50,
            self.to_peer_ms.p99,
            self.to_peer_ms.max,
            self.to_peer_samples,
        )
    }
}

/// Longest wait for the router to show both hosts again after the daemons restart.
const BACK_TIMEOUT: Duration = Duration::from_secs(30);

/// Sums a counter of the `sync` status member over both hosts.
fn sync_sum(rig: &FleetRig, name: &str) -> Result<u64> {
    let mut n = 0;
    for b in &rig.balancers {
        n += b.sync_view()?[name].as_u64().unwrap_or(0);
    }
    Ok(n)
}

/// Records dropped for every peer of both hosts.
fn dropped(rig: &FleetRig) -> Result<u64> {
    let mut n = 0;
    for b in &rig.balancers {
        let v = b.sync_view()?;
        n += v["peers"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|p| p["dropped"].as_u64().unwrap_or(0))
            .sum::<u64>();
    }
    Ok(n)
}

fn new_flows(rig: &FleetRig) -> Result<u64> {
    rig.balancers.iter().map(Balancer::new_flows).sum()
}

/// Restarts both daemons with the configs of `base` plus, when `on`, a `[sync]` table each
/// (the other host as peer); waits until the router has both paths again (and the sync is
/// linked).
fn set_sync(rig: &mut FleetRig, base: &[String], on: bool, interval: Duration) -> Result<()> {
    let addrs: Vec<SocketAddr> = rig.balancers.iter().map(Balancer::sync_addr).collect();
    for (b, config) in rig.balancers.iter_mut().zip(base) {
        std::fs::write(b.config_path(), config)?;
        if on {
            let peers: Vec<SocketAddr> = addrs.iter().copied().filter(|a| *a != b.sync_addr()).collect();
            b.write_sync_table(&peers, interval, "")?;
        }
        b.restart_daemon()?;
    }
    if on {
        rig.wait_sync_linked(Duration::from_secs(20))?;
    }
    let both = rig.balancer_addrs();
    rig.wait_next_hops(&both, BACK_TIMEOUT).context("both hosts announcing after the restart")?;
    // Settle: both paths must hold for a moment before measuring.
    let end = Instant::now() + Duration::from_millis(500);
    while Instant::now() < end {
        rig.wait_next_hops(&both, BACK_TIMEOUT)?;
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

/// The measurements of the module documentation on `rig` (a two-host rig without sync; its
/// daemons are left with sync on). `progress` gets one line per round.
pub fn sync_rate(
    rig: &mut FleetRig,
    opts: SyncRateOptions,
    mut progress: impl FnMut(&str),
) -> Result<SyncRateReport> {
    ensure!(rig.balancers.len() == 2, "the sync-rate bench runs on two hosts");
    let base: Vec<String> =
        rig.balancers.iter().map(|b| std::fs::read_to_string(b.config_path())).collect::<Result<_, _>>()?;
    ensure!(base.iter().all(|c| !c.contains("[sync]")), "the rig's daemons must start without [sync]");
    let mut report = SyncRateReport {
        seconds: opts.seconds,
        workers: opts.workers,
        interval_ms: opts.interval.as_millis() as u64,
        ..Default::default()
    };
    for round in 1..=opts.rounds {
        check_interrupted()?;
        let order = if round % 2 == 1 { [false, true] } else { [true, false] };
        let mut line = format!("  round {round}:");
        for on in order {
            set_sync(rig, &base, on, opts.interval)?;
            let m = measure(rig, opts)?;
            let cpu_us = if m.flows > 0 { m.cpu_s * 1e6 / m.flows as f64 } else { 0.0 };
            if on {
                let per_flow = if m.flows > 0 { m.bytes as f64 / m.flows as f64 } else { 0.0 };
                line += &format!(
                    " sync on {:.0} conn/s ({} failed; {} new flows, {} records, {} sync bytes = {per_flow:.1} B/flow, \
                     daemons {cpu_us:.1} us CPU/flow)",
                    m.rate, m.failed, m.flows, m.records, m.bytes
                );
                report.on_conn_per_s.push(m.rate);
                report.on_failed.push(m.failed);
                report.on_new_flows.push(m.flows);
                report.on_records.push(m.records);
                report.on_sync_bytes.push(m.bytes);
                report.on_dropped += m.dropped;
                report.bytes_per_flow.push(per_flow);
                report.on_daemon_cpu_us_per_flow.push(cpu_us);
            } else {
                line += &format!(
                    " sync off {:.0} conn/s ({} failed; daemons {cpu_us:.1} us CPU/flow);",
                    m.rate, m.failed
                );
                report.off_conn_per_s.push(m.rate);
                report.off_failed.push(m.failed);
                report.off_daemon_cpu_us_per_flow.push(cpu_us);
            }
        }
        progress(&line);
    }
    // Leave the daemons with sync on for the measurements below.
    if opts.rounds.is_multiple_of(2) {
        set_sync(rig, &base, true, opts.interval)?;
    }

    // Idle: only pings.
    let idle = Duration::from_secs(2);
    let before = sync_sum(rig, "bytes_sent")?;
    std::thread::sleep(idle);
    report.idle_bytes_per_s = (sync_sum(rig, "bytes_sent")? - before) as f64 / idle.as_secs_f64();

    let samples = to_peer(rig, opts.latency_samples, opts.interval, &mut progress)?;
    report.to_peer_samples = samples.len();
    report.to_peer_ms = Percentiles::of(&samples);
    Ok(report)
}

/// One measurement's figures (both hosts; sync counters read as 0 without `[sync]`).
struct Measured {
    rate: f64,
    failed: usize,
    flows: u64,
    records: u64,
    bytes: u64,
    dropped: u64,
    cpu_s: f64,
}

/// Both daemons' CPU seconds so far (their `process_cpu_seconds_total`).
fn daemon_cpu(rig: &FleetRig) -> Result<f64> {
    let mut total = 0.0;
    for b in &rig.balancers {
        let text = b.client().get_text("/metrics")?;
        let v = text
            .lines()
            .find_map(|l| l.strip_prefix("process_cpu_seconds_total "))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .context("no process_cpu_seconds_total in /metrics")?;
        total += v;
    }
    Ok(total)
}

fn counters(rig: &FleetRig) -> Result<[u64; 4]> {
    Ok([new_flows(rig)?, sync_sum(rig, "reported")?, sync_sum(rig, "bytes_sent")?, dropped(rig)?])
}

/// `opts.seconds` of unpaced load, with the counters around it.
fn measure(rig: &FleetRig, opts: SyncRateOptions) -> Result<Measured> {
    let (c0, cpu0) = (counters(rig)?, daemon_cpu(rig)?);
    let (rate, failed) = unpaced(rig, opts.seconds, opts.workers)?;
    // Let the last interval's records go out before reading the counters.
    std::thread::sleep(opts.interval * 3);
    let (c1, cpu1) = (counters(rig)?, daemon_cpu(rig)?);
    Ok(Measured {
        rate,
        failed,
        flows: c1[0] - c0[0],
        records: c1[1] - c0[1],
        bytes: c1[2] - c0[2],
        dropped: c1[3] - c0[3],
        cpu_s: cpu1 - cpu0,
    })
}

/// `n` connections, one at a time: for each, the time from its establishment until the host
/// that did not forward it holds its entry (received by sync).
fn to_peer(
    rig: &FleetRig,
    n: u32,
    interval: Duration,
    progress: &mut impl FnMut(&str),
) -> Result<Vec<Duration>> {
    const TIMEOUT: Duration = Duration::from_secs(2);
    let maps = rig.balancers.iter().map(Balancer::pinned_flows).collect::<Result<Vec<_>>>()?;
    let vip = vip_addr();
    let mut samples = Vec::new();
    let mut missed = 0usize;
    // A fixed pseudo-random sequence of pauses, uniform over one send interval: each sample
    // starts right after the previous one was seen on the peer (just after a send), so without
    // them every connection would start at the same phase of the interval.
    let mut seed: u32 = 0x2545_f491;
    for _ in 0..n {
        check_interrupted()?;
        let stream: TcpStream =
            rig.client.run_in(|| TcpStream::connect_timeout(&vip, Duration::from_secs(1)))??;
        let established = Instant::now();
        let key = flow_key(stream.local_addr()?, vip);
        let mut got = None;
        while established.elapsed() < TIMEOUT {
            let entries: Vec<_> = maps.iter().map(|m| m.get(&key, 0).ok()).collect();
            // The peer's entry: received by sync, established and open (an entry of an earlier
            // connection on the same 5-tuple, from the load above, is closed).
            let on_peer = entries
                .iter()
                .flatten()
                .any(|v| v.flags & FLOW_SYNCED != 0 && v.flags & FLOW_ESTABLISHED != 0 && !v.is_closed());
            if on_peer {
                got = Some(established.elapsed());
                break;
            }
            std::thread::sleep(Duration::from_micros(200));
        }
        drop(stream);
        match got {
            Some(d) => samples.push(d),
            None => missed += 1,
        }
        seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
        let pause_us = u64::from(seed >> 8) % (interval.as_micros() as u64).max(1);
        std::thread::sleep(Duration::from_micros(pause_us));
    }
    progress(&format!(
        "  to the peer: {} of {n} connections timed ({missed} not on the peer within {TIMEOUT:?})",
        samples.len()
    ));
    ensure!(missed * 100 <= n as usize, "{missed} of {n} connections never reached the peer");
    Ok(samples)
}
