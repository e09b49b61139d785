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
    /// Where the time goes, step by step, from the daemons' own log lines (see [`breakdown`]).
    #[serde(default)]
    pub steps: Vec<(String, Percentiles)>,
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
        ) + &self.steps.iter().map(|(name, p)| row(name, p)).collect::<String>()
    }
}

/// A field `name=<integer>` of a daemon log line.
fn field(line: &str, name: &str) -> Option<u64> {
    let at = line.find(&format!(" {name}="))? + name.len() + 2;
    line[at..].split(|c: char| !c.is_ascii_digit()).next()?.parse().ok()
}

/// The time of day of a log line (`2026-12-03T13:51:18.123456Z ...`), in microseconds.
fn time_of_day_us(line: &str) -> Option<u64> {
    let t = line.get(11..)?.split(['Z', ' ', '+']).next()?;
    let mut parts = t.split(':');
    let (h, m, s): (u64, u64, f64) =
        (parts.next()?.parse().ok()?, parts.next()?.parse().ok()?, parts.next()?.parse().ok()?);
    Some((h * 3600 + m * 60) * 1_000_000 + (s * 1e6) as u64)
}

/// Where a switch's time goes, from the daemons' log lines of the timed switches (their etcd
/// `revisions`): on the host that took the request, reading and deciding, the gate's read of
/// the hosts, and etcd's commit of the ONE transaction; on every host, from the end of that
/// commit to the change applied (watch delivery and the thread's turn), the pending record's
/// write and the `SERVICES` update; then, after it reported the change applied, the whole
/// state file and the applied marks. `logs[0]` is the host that took the requests.
pub fn breakdown(logs: &[String], revisions: &[i64]) -> Vec<(String, Percentiles)> {
    let us = |v: Vec<u64>| Percentiles::of(&v.into_iter().map(Duration::from_micros).collect::<Vec<_>>());
    let timed = |l: &&str| field(l, "revision").is_some_and(|r| revisions.contains(&(r as i64)));
    let lines = |log: &str, what: &str| -> Vec<String> {
        log.lines().filter(|l| l.contains(what)).filter(timed).map(String::from).collect()
    };
    let committed = logs.first().map(|l| lines(l, "fleet: change committed")).unwrap_or_default();
    let applied: Vec<String> =
        logs.iter().flat_map(|l| lines(l, "applied the fleet's desired state")).collect();
    let settled: Vec<String> = logs
        .iter()
        .flat_map(|l| {
            l.lines().filter(|l| l.contains("fleet: settled after apply") && field(l, "marks") == Some(1))
        })
        .map(String::from)
        .collect();
    let of = |v: &[String], name: &str| us(v.iter().filter_map(|l| field(l, name)).collect());
    // Commit end (lb1's clock) to applied on each host (same machine, same clock).
    let commit_end: std::collections::BTreeMap<u64, u64> =
        committed.iter().filter_map(|l| Some((field(l, "revision")?, time_of_day_us(l)?))).collect();
    let delivery: Vec<u64> = applied
        .iter()
        .filter_map(|l| {
            let done = time_of_day_us(l)?;
            let end = commit_end.get(&field(l, "revision")?)?;
            let local = field(l, "stage_us")? + field(l, "map_us")?;
            Some(done.saturating_sub(*end).saturating_sub(local))
        })
        .collect();
    vec![
        ("lb1: read + decide".into(), of(&committed, "decided_us")),
        ("lb1: gate (hosts read)".into(), of(&committed, "gate_us")),
        ("lb1: etcd txn commit".into(), of(&committed, "commit_us")),
        ("commit -> host got it (watch)".into(), us(delivery)),
        ("host: pending record write".into(), of(&applied, "stage_us")),
        ("host: SERVICES update".into(), of(&applied, "map_us")),
        ("host, after applied: state file".into(), of(&settled, "persist_us")),
        ("host, after applied: etcd marks".into(), of(&settled, "marks_us")),
    ]
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
    let mut revisions = Vec::new();
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
        revisions.push(rev);
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
        steps: breakdown(&rig.balancers.iter().map(|b| b.daemon_log()).collect::<Vec<_>>(), &revisions),
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

    #[test]
    fn breakdown_reads_the_daemons_timing_fields() {
        let lb1 = "2026-12-03T13:00:00.001000Z  INFO lb_daemon::fleet::etcd::change: fleet: change committed service=web seq=9 revision=40 decided_us=700 gate_us=800 commit_us=3000\n\
                   2026-12-03T13:00:00.003000Z  INFO lb_daemon::engine::fleet: applied the fleet's desired state service=web revision=40 stage_us=100 map_us=20\n\
                   2026-12-03T13:00:00.009000Z  INFO lb_daemon::fleet::etcd::node: fleet: settled after apply persist_us=5000 marks_us=2000 marks=1\n\
                   2026-12-03T13:00:00.000500Z  INFO lb_daemon::engine::fleet: applied the fleet's desired state service=web revision=12 stage_us=9 map_us=9";
        let steps = breakdown(&[lb1.to_string()], &[40]);
        let get = |n: &str| steps.iter().find(|(name, _)| name == n).unwrap().1.p50;
        let near = |a: f64, b: f64| (a - b).abs() < 1e-9;
        assert!(near(get("lb1: etcd txn commit"), 3.0));
        assert!(near(get("host: pending record write"), 0.1), "revision 12 is not a timed switch");
        assert!(near(get("commit -> host got it (watch)"), 1.88));
        assert!(near(get("host, after applied: state file"), 5.0));
        assert_eq!(time_of_day_us("2026-12-03T01:02:03.5Z x"), Some(3_723_500_000));
    }
}
