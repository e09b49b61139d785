//! Fleet switch latency (for `cargo xtask bench`, through the `fleet-bench` binary's
//! `--case switch`): on the fleet rig with etcd, from the switch request to the change applied
//! on every host, over many switches alternating pool-a and pool-b, and the spread between the
//! first and the last host to apply each.
//!
//! The request is what `lbctl switch` sends (`POST /v1/switch` on lb1's socket, timed from just
//! before it). A host applied the switch when its `SERVICES` update returned: its daemon logs
//! that line with the change's etcd revision, and the machine has one clock, so the figures
//! depend on no poll interval (polling every host's API every few hundred microseconds, as an
//! earlier version did, took CPU from the daemons being timed). The next switch starts once lb1's
//! `GET /v1/fleet` shows every host applied it (their statuses in etcd, what `--wait-fleet`
//! waits for), polled every millisecond; that time is reported too, and so is the floor: one
//! etcd transaction of the same shape, timed on the same etcd after each switch.
//!
//! Two series on one rig: back to back, each switch starting while the hosts still write the
//! previous one's state file and applied marks; then paced, as a pipeline's switches are.

use crate::{
    fleet_ctl::wait_in_sync,
    fleet_rig::{FleetOptions, FleetRig},
};
use anyhow::{Context, Result, bail, ensure};
use lb_daemon::api::model::SwitchRequest;
use serde::Serialize;
use std::{
    collections::BTreeMap,
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
    /// Pause before each switch of the second series (none when zero). The first series runs
    /// its switches back to back: each starts while the hosts still write the previous one's
    /// state file and applied marks, which a pipeline's switches, seconds apart, never do.
    pub pace: Duration,
}

impl Default for SwitchLatencyOptions {
    fn default() -> Self {
        SwitchLatencyOptions {
            hosts: 3,
            switches: 100,
            timeout: Duration::from_secs(10),
            pace: Duration::from_millis(100),
        }
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
    /// Switches timed per series.
    pub switches: usize,
    /// Back to back first, then paced.
    pub series: Vec<SwitchSeries>,
}

/// The figures of one series of switches.
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct SwitchSeries {
    /// Pause before each switch (0: back to back).
    pub pace_ms: u64,
    /// The floor, side by side: one transaction of the same shape (three compares, two puts)
    /// committed on the same etcd by the daemon's own etcd client from lb1's namespace, with no
    /// daemon logic around it, once after each switch was applied everywhere.
    pub etcd_txn_ms: Percentiles,
    /// Request to the API's answer (the one etcd transaction committed and applied locally).
    pub answer_ms: Percentiles,
    /// Request to applied on every host: the last host's log line written when its `SERVICES`
    /// update returned (the moment new connections move), on the machine's one clock.
    pub all_applied_ms: Percentiles,
    /// Request to lb1's fleet view showing every host applied it (each host's status written
    /// to etcd and watched back), polled every millisecond: what `--wait-fleet` waits for.
    pub api_seen_ms: Percentiles,
    /// First to last host applying the same switch (their log lines).
    pub spread_ms: Percentiles,
    /// Where the time goes, step by step, from the daemons' own log lines (see [`breakdown`]).
    pub steps: Vec<(String, Percentiles)>,
}

impl SwitchLatencyReport {
    /// The bench's text lines.
    pub fn text(&self) -> String {
        let row = |name: &str, p: &Percentiles| {
            format!("  {name:<36} p50 {:>7.2} ms  p99 {:>7.2} ms  max {:>7.2} ms\n", p.p50, p.p99, p.max)
        };
        let mut out = String::new();
        for s in &self.series {
            let how = match s.pace_ms {
                0 => "back to back".to_string(),
                ms => format!("each {ms} ms after the previous one was applied"),
            };
            out += &format!(
                "fleet switch, {} hosts, {} switches {how} (request by lb1's API, as lbctl sends it):\n",
                self.hosts, self.switches
            );
            out += &row("etcd txn alone (floor, side by side)", &s.etcd_txn_ms);
            out += &row("request -> API answer", &s.answer_ms);
            out += &row("request -> applied on every host", &s.all_applied_ms);
            out += &row("request -> lb1's fleet view says all", &s.api_seen_ms);
            out += &row("first -> last host applied", &s.spread_ms);
            out += &s.steps.iter().map(|(name, p)| row(name, p)).collect::<String>();
        }
        out
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
/// write and the `SERVICES` update; then, after it reported the change applied, its status
/// with the applied mark (one etcd write) and the whole state file. `logs[0]` is the host that
/// took the requests.
pub fn breakdown(logs: &[String], revisions: &[i64]) -> Vec<(String, Percentiles)> {
    let us = |v: Vec<u64>| Percentiles::of(&v.into_iter().map(Duration::from_micros).collect::<Vec<_>>());
    let timed = |l: &&str| field(l, "revision").is_some_and(|r| revisions.contains(&(r as i64)));
    let lines = |log: &str, what: &str| -> Vec<String> {
        log.lines().filter(|l| l.contains(what)).filter(timed).map(String::from).collect()
    };
    let committed = logs.first().map(|l| lines(l, "fleet: change committed")).unwrap_or_default();
    let applied: Vec<String> =
        logs.iter().flat_map(|l| lines(l, "applied the fleet's desired state")).collect();
    let published: Vec<String> =
        logs.iter().flat_map(|l| lines(l, "fleet: status and applied marks written")).collect();
    let persisted: Vec<String> =
        logs.iter().flat_map(|l| lines(l, "fleet: state file written after apply")).collect();
    let of = |v: &[String], name: &str| us(v.iter().filter_map(|l| field(l, name)).collect());
    // Commit end (lb1's clock) to applied on each host (same machine, same clock).
    let commit_end: BTreeMap<u64, u64> =
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
        ("host, after applied: status + marks".into(), of(&published, "publish_us")),
        ("host, after applied: state file".into(), of(&persisted, "persist_us")),
    ]
}

/// The time of day now, in microseconds (UTC, as the daemons' log lines).
fn now_time_of_day_us() -> u64 {
    let since_epoch = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    (since_epoch.as_micros() % (86_400 * 1_000_000)) as u64
}

/// `later - earlier` in microseconds of two times of day, across midnight too.
fn day_diff_us(later: u64, earlier: u64) -> u64 {
    const DAY: u64 = 86_400 * 1_000_000;
    (later + DAY - earlier) % DAY
}

/// When each host's log says it applied each revision (the `SERVICES` update returned), as a
/// time of day in microseconds, in `logs`' order: read once for every switch of a series.
pub fn applied_at(logs: &[String]) -> Vec<BTreeMap<u64, u64>> {
    logs.iter()
        .map(|log| {
            log.lines()
                .filter(|l| l.contains("applied the fleet's desired state"))
                .filter_map(|l| Some((field(l, "revision")?, time_of_day_us(l)?)))
                .collect()
        })
        .collect()
}

/// Builds a rig with etcd and `opts.hosts` hosts and times `opts.switches` switches back to
/// back, then as many again each `opts.pace` after the previous one was applied everywhere.
pub fn switch_latency(opts: SwitchLatencyOptions) -> Result<SwitchLatencyReport> {
    let rig = FleetRig::with("fsb", FleetOptions { hosts: opts.hosts, etcd: true })?;
    wait_in_sync(&rig, Duration::from_secs(30))?;
    let floor = Floor::connect(&rig)?;
    let mut series = vec![time_switches(&rig, &floor, Duration::ZERO, 0, opts)?];
    if !opts.pace.is_zero() {
        series.push(time_switches(&rig, &floor, opts.pace, opts.switches, opts)?);
    }
    Ok(SwitchLatencyReport { hosts: rig.balancers.len(), switches: opts.switches as usize, series })
}

/// One series: `opts.switches` switches alternating pool-b and pool-a, each `pace` after the
/// previous one was seen applied on every host.
fn time_switches(
    rig: &FleetRig,
    floor: &Floor,
    pace: Duration,
    first: u32,
    opts: SwitchLatencyOptions,
) -> Result<SwitchSeries> {
    let client = rig.balancers[0].client();
    let (mut timed, mut txns) = (Vec::new(), Vec::new());
    for i in 0..opts.switches {
        crate::cli::check_interrupted()?;
        std::thread::sleep(pace);
        // The rig starts on pool-a; `first` counts the switches of the earlier series.
        let pool = if (first + i).is_multiple_of(2) { "pool-b" } else { "pool-a" };
        let req = SwitchRequest { pool: pool.into(), ..SwitchRequest::default() };
        let sent_at = now_time_of_day_us();
        let sent = Instant::now();
        let o: serde_json::Value =
            client.post("/v1/switch", &req).with_context(|| format!("switch {i} to {pool}"))?;
        let answered = sent.elapsed();
        ensure!(o["changed"] == true, "switch {i} to {pool} changed nothing: {o}");
        let rev = o["revision"]
            .as_i64()
            .context("the switch's answer has no etcd revision: is [fleet] configured?")?;
        // As `lbctl switch --wait-fleet` waits: lb1's fleet view (every live host's status, as
        // published in etcd) polled until every host applied it, here every millisecond. The
        // next switch starts then.
        let deadline = sent + opts.timeout;
        let api_seen = loop {
            let v: serde_json::Value = client.get("/v1/fleet").unwrap_or_default();
            let applied: Vec<i64> = v["hosts"]
                .as_array()
                .map(|hs| hs.iter().filter_map(|h| h["applied_revision"].as_i64()).collect())
                .unwrap_or_default();
            if applied.len() == opts.hosts && applied.iter().all(|r| *r >= rev) {
                break sent.elapsed();
            }
            if Instant::now() > deadline {
                bail!("switch {i} (revision {rev}) not applied on every host within {:?}: {v}", opts.timeout);
            }
            std::thread::sleep(Duration::from_millis(1));
        };
        timed.push(Timed { rev, sent_at, answered, api_seen });
        txns.push(floor.txn(&format!("{first}-{i}"))?);
    }
    let logs: Vec<String> = rig.balancers.iter().map(|b| b.daemon_log()).collect();
    let applied = applied_at(&logs);
    let (mut all, mut spread) = (Vec::new(), Vec::new());
    for t in &timed {
        let at: Vec<u64> = applied
            .iter()
            .map(|host| host.get(&(t.rev as u64)).copied())
            .collect::<Option<_>>()
            .with_context(|| format!("a host's log does not say it applied revision {}", t.rev))?;
        let (first, last) = (at.iter().min().copied().unwrap_or(0), at.iter().max().copied().unwrap_or(0));
        all.push(Duration::from_micros(day_diff_us(last, t.sent_at)));
        spread.push(Duration::from_micros(day_diff_us(last, first)));
    }
    let revisions: Vec<i64> = timed.iter().map(|t| t.rev).collect();
    Ok(SwitchSeries {
        pace_ms: pace.as_millis() as u64,
        etcd_txn_ms: Percentiles::of(&txns),
        answer_ms: Percentiles::of(&timed.iter().map(|t| t.answered).collect::<Vec<_>>()),
        all_applied_ms: Percentiles::of(&all),
        api_seen_ms: Percentiles::of(&timed.iter().map(|t| t.api_seen).collect::<Vec<_>>()),
        spread_ms: Percentiles::of(&spread),
        steps: breakdown(&logs, &revisions),
    })
}

/// The daemon's etcd client on lb1's etcd connection, for the floor: a transaction of a switch's
/// shape on keys outside the cluster's prefix, which no daemon watches.
struct Floor {
    store: lb_daemon::fleet::etcd::client::EtcdStore,
    prefix: String,
    // Drives the store's connection; dropped after it.
    _rt: tokio::runtime::Runtime,
}

impl Floor {
    /// Connects from lb1's namespace (the connection's socket stays there).
    fn connect(rig: &FleetRig) -> Result<Floor> {
        use lb_daemon::fleet::etcd::store::DesiredStore;
        let config = lb_daemon::config::Config::load(&rig.balancers[0].config_path())?;
        let fleet = config.fleet.context("lb1's config has no [fleet]")?;
        let prefix = format!("/bench/{}/", rig.cluster);
        rig.balancers[0].ns.run_in(move || -> Result<Floor> {
            let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build()?;
            let store = lb_daemon::fleet::etcd::client::EtcdStore::new(&fleet, rt.handle().clone())?;
            store.get(&prefix).map_err(|e| anyhow::anyhow!("etcd from lb1: {e}"))?;
            Ok(Floor { store, prefix, _rt: rt })
        })?
    }

    /// Times one transaction of a switch's shape: three compares (the desired state, the history
    /// entry and the watch record; here keys that are absent), two puts of a switch's sizes.
    fn txn(&self, name: &str) -> Result<Duration> {
        use lb_daemon::fleet::etcd::store::{Compare, DesiredStore, Txn};
        let key = |what: &str| format!("{}{name}/{what}", self.prefix);
        let (a, b) = (key("desired"), key("history"));
        let txn = Txn {
            compares: vec![
                Compare::ModRevision(a.clone(), 0),
                Compare::ModRevision(b.clone(), 0),
                Compare::ModRevision(key("watch"), 0),
            ],
            puts: vec![(a, "d".repeat(120)), (b, "h".repeat(300))],
        };
        let t = Instant::now();
        let done = self.store.commit(&txn).map_err(|e| anyhow::anyhow!("floor transaction: {e}"))?;
        let took = t.elapsed();
        ensure!(done.is_some(), "floor transaction {name}: a compare failed");
        Ok(took)
    }
}

/// One timed switch.
struct Timed {
    /// Its etcd revision.
    rev: i64,
    /// When the request was sent (time of day, microseconds).
    sent_at: u64,
    /// Request to the API's answer.
    answered: Duration,
    /// Request to lb1's fleet view showing it applied everywhere (polled).
    api_seen: Duration,
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
                   2026-12-03T13:00:00.005000Z  INFO lb_daemon::fleet::etcd::status: fleet: status and applied marks written revision=40 marks=1 publish_us=2000\n\
                   2026-12-03T13:00:00.009000Z  INFO lb_daemon::fleet::etcd::node: fleet: state file written after apply revision=40 persist_us=5000\n\
                   2026-12-03T13:00:00.000500Z  INFO lb_daemon::engine::fleet: applied the fleet's desired state service=web revision=12 stage_us=9 map_us=9";
        let steps = breakdown(&[lb1.to_string()], &[40]);
        let get = |n: &str| steps.iter().find(|(name, _)| name == n).unwrap().1.p50;
        let near = |a: f64, b: f64| (a - b).abs() < 1e-9;
        assert!(near(get("lb1: etcd txn commit"), 3.0));
        assert!(near(get("host: pending record write"), 0.1), "revision 12 is not a timed switch");
        assert!(near(get("commit -> host got it (watch)"), 1.88));
        assert!(near(get("host, after applied: state file"), 5.0));
        assert!(near(get("host, after applied: status + marks"), 2.0));
        assert_eq!(time_of_day_us("2026-12-03T01:02:03.5Z x"), Some(3_723_500_000));
    }
}
