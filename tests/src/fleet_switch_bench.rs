//! Fleet switch latency (for `cargo xtask bench`, through the `fleet-bench` binary's
//! `--case switch`): on the fleet rig with etcd, from the switch request to the change applied
//! on every host, over many switches alternating pool-a and pool-b, and the spread between the
//! first and the last host to apply each.
//!
//! The request is what `lbctl switch` sends (`POST /v1/switch` on lb1's socket, timed from just
//! before it). One thread per host polls that host's `GET /v1/fleet` from before the request and
//! records each change of its applied revision with its time; once the answer names the
//! change's etcd revision, a host's "applied" time is its first sample at or past it. So the
//! figures do not depend on lbctl's own poll interval.

use crate::{
    fleet_ctl::wait_in_sync,
    fleet_rig::{FleetOptions, FleetRig},
};
use anyhow::{Context, Result, bail, ensure};
use lb_daemon::api::model::SwitchRequest;
use serde::Serialize;
use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

/// What to run.
#[derive(Clone, Copy, Debug)]
pub struct SwitchLatencyOptions {
    /// Balancer hosts (2 or 3).
    pub hosts: usize,
    /// Switches to time.
    pub switches: u32,
    /// Longest wait for one switch to be applied everywhere.
    pub timeout: Duration,
}

impl Default for SwitchLatencyOptions {
    fn default() -> Self {
        SwitchLatencyOptions { hosts: 3, switches: 100, timeout: Duration::from_secs(10) }
    }
}

/// Percentiles of one measure, in milliseconds.
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct Percentiles {
    /// Median.
    pub p50: f64,
    /// 99th percentile.
    pub p99: f64,
    /// Largest.
    pub max: f64,
}

impl Percentiles {
    /// Of `samples` (any order; empty gives zeros). Nearest-rank percentiles.
    pub fn of(samples: &[Duration]) -> Percentiles {
        if samples.is_empty() {
            return Percentiles::default();
        }
        let mut v: Vec<f64> = samples.iter().map(|d| d.as_secs_f64() * 1000.0).collect();
        v.sort_by(f64::total_cmp);
        let rank = |p: f64| v[((p / 100.0 * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1];
        Percentiles { p50: rank(50.0), p99: rank(99.0), max: v[v.len() - 1] }
    }
}

/// The figures of one run.
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct SwitchLatencyReport {
    /// Balancer hosts.
    pub hosts: usize,
    /// Switches timed.
    pub switches: usize,
    /// Request to the API's answer (the one etcd transaction committed and applied locally).
    pub answer_ms: Percentiles,
    /// Request to applied on every host.
    pub all_applied_ms: Percentiles,
    /// First to last host applying the same switch.
    pub spread_ms: Percentiles,
}

impl SwitchLatencyReport {
    /// The bench's text lines.
    pub fn text(&self) -> String {
        let row = |name: &str, p: &Percentiles| {
            format!("  {name:<34} p50 {:>7.2} ms  p99 {:>7.2} ms  max {:>7.2} ms\n", p.p50, p.p99, p.max)
        };
        format!(
            "fleet switch, {} hosts, {} switches (request by lb1's API, as lbctl sends it):\n{}{}{}",
            self.hosts,
            self.switches,
            row("request -> API answer", &self.answer_ms),
            row("request -> applied on every host", &self.all_applied_ms),
            row("first -> last host applied", &self.spread_ms),
        )
    }
}

/// (time since the start, applied revision) each time a host's applied revision changed.
type Samples = Arc<Mutex<Vec<(Duration, i64)>>>;

/// Builds a rig with etcd and `opts.hosts` hosts and times `opts.switches` switches.
pub fn switch_latency(opts: SwitchLatencyOptions) -> Result<SwitchLatencyReport> {
    let rig = FleetRig::with("fsb", FleetOptions { hosts: opts.hosts, etcd: true })?;
    wait_in_sync(&rig, Duration::from_secs(30))?;
    let start = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let samples: Vec<Samples> = rig.balancers.iter().map(|_| Samples::default()).collect();
    let mut pollers = Vec::new();
    for (b, s) in rig.balancers.iter().zip(&samples) {
        let (client, s, stop) = (b.client(), s.clone(), stop.clone());
        pollers.push(std::thread::spawn(move || {
            let mut last = i64::MIN;
            while !stop.load(Ordering::Relaxed) {
                if let Ok(v) = client.get::<serde_json::Value>("/v1/fleet")
                    && let Some(r) = v["applied_revision"].as_i64()
                    && r != last
                {
                    last = r;
                    s.lock().unwrap().push((start.elapsed(), r));
                }
                // Fine enough (each request takes a few hundred microseconds anyway), and leaves
                // the CPUs to the daemons being measured.
                std::thread::sleep(Duration::from_micros(200));
            }
        }));
    }
    let result = time_switches(&rig, &samples, start, opts);
    stop.store(true, Ordering::Relaxed);
    for p in pollers {
        let _ = p.join();
    }
    result
}

fn time_switches(
    rig: &FleetRig,
    samples: &[Samples],
    start: Instant,
    opts: SwitchLatencyOptions,
) -> Result<SwitchLatencyReport> {
    let client = rig.balancers[0].client();
    let (mut answer, mut all, mut spread) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..opts.switches {
        crate::cli::check_interrupted()?;
        let pool = if i % 2 == 0 { "pool-b" } else { "pool-a" };
        let req = SwitchRequest { pool: pool.into(), ..SwitchRequest::default() };
        let sent = start.elapsed();
        let o: serde_json::Value =
            client.post("/v1/switch", &req).with_context(|| format!("switch {i} to {pool}"))?;
        let answered = start.elapsed();
        ensure!(o["changed"] == true, "switch {i} to {pool} changed nothing: {o}");
        let rev = o["revision"]
            .as_i64()
            .context("the switch's answer has no etcd revision: is [fleet] configured?")?;
        let deadline = Instant::now() + opts.timeout;
        let applied = loop {
            let at: Vec<Option<Duration>> = samples
                .iter()
                .map(|s| s.lock().unwrap().iter().find(|(t, r)| *t >= sent && *r >= rev).map(|(t, _)| *t))
                .collect();
            if at.iter().all(Option::is_some) {
                break at.into_iter().flatten().collect::<Vec<_>>();
            }
            if Instant::now() > deadline {
                bail!(
                    "switch {i} (revision {rev}) not applied on every host within {:?}: {at:?}",
                    opts.timeout
                );
            }
            std::thread::sleep(Duration::from_micros(200));
        };
        let first = *applied.iter().min().unwrap_or(&sent);
        let last = *applied.iter().max().unwrap_or(&sent);
        answer.push(answered - sent);
        all.push(last.saturating_sub(sent));
        spread.push(last - first);
    }
    Ok(SwitchLatencyReport {
        hosts: rig.balancers.len(),
        switches: answer.len(),
        answer_ms: Percentiles::of(&answer),
        all_applied_ms: Percentiles::of(&all),
        spread_ms: Percentiles::of(&spread),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let ms = |v: &[u64]| v.iter().map(|m| Duration::from_millis(*m)).collect::<Vec<_>>();
        let p = Percentiles::of(&ms(&(1..=100).collect::<Vec<_>>()));
        assert_eq!((p.p50, p.p99, p.max), (50.0, 99.0, 100.0));
        let p = Percentiles::of(&ms(&[7, 3, 5]));
        assert_eq!((p.p50, p.p99, p.max), (5.0, 7.0, 7.0));
        assert_eq!(Percentiles::of(&[]), Percentiles::default());
    }
}
