//! Control-plane benchmark (`cargo xtask bench`, after the data-plane one): how fast a switch
//! takes effect and what traffic through the VIP sees while switches happen, on the standard
//! end-to-end setup (NAT mode, a fresh one per run). Per run:
//!
//! 1. 200 alternating switches through the API (`POST /v1/services/web/switch`): the daemon's
//!    own `apply_us` (request accepted → the one map update that makes it effective);
//! 2. the client-side wall time of those same API calls;
//! 3. 50 alternating `lbctl switch` runs, wall time including process start;
//! 4. an unpaced load of short connections through the VIP (4 workers, one request per
//!    connection) while `--switches` alternating `lbctl switch` runs happen 50 ms apart: new
//!    connections/s, failures, and per switch the "converge" time, from the start of the lbctl
//!    command until the last new connection (by start time) that still landed on the old pool;
//!    plus 6 long-lived connections opened before the switches, asked every 10 switches and at
//!    the end whether they still talk to their original backend (drain);
//! 5. the same load, for the same time, straight to one backend (kernel-routed by the balancer
//!    namespace, no VIP): the baseline without the balancer's XDP path.
//!
//! Prints median, min and max over `--runs` runs per number, then one JSON line with all of
//! them. Everything is bounded in time and stays inside the namespaces of the setup. SIGINT /
//! SIGTERM stop the run early and clean up (exit code 130).

use anyhow::{Context, Result, bail, ensure};
use clap::Parser;
use lb_daemon::api::model::{Active, SwitchOutcome, SwitchRequest};
use lb_tests::{
    cli::{check_interrupted, require_root, sleep_until},
    e2e::{self, in_pool_a, in_pool_b, web_vip},
    load::{LoadHandle, LoadOptions, LoadReport, LongLived, request},
};
use std::{
    collections::BTreeMap,
    net::SocketAddr,
    process::ExitCode,
    time::{Duration, Instant},
};

#[derive(Parser)]
#[command(
    about = "Switch latency and traffic through the VIP during switches (namespaces, real daemon and lbctl)"
)]
struct Args {
    /// Switches by lbctl under load per run (50 ms apart).
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=2000))]
    switches: u32,
    /// Runs (each with a fresh setup); the table shows median, min and max over them.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=50))]
    runs: u32,
}

/// Alternating switches through the API per run.
const API_SWITCHES: usize = 200;
/// Alternating `lbctl switch` runs without load per run.
const LBCTL_SWITCHES: usize = 50;
/// Long-lived connections held through the switches under load.
const LONG_LIVED: usize = 6;
/// Pause between two switches under load.
const GAP: Duration = Duration::from_millis(50);
/// Load before the first and after the last switch.
const MARGIN: Duration = Duration::from_millis(300);
/// Bound of connections per load run.
const MAX_CONNECTIONS: u32 = 200_000;
/// Backend a1, the target of the baseline load.
const DIRECT_BACKEND: &str = "10.77.2.11:8080";

/// Sleeps `d` in small steps, failing early when interrupted.
fn sleep(d: Duration) -> Result<()> {
    if sleep_until(Instant::now() + d) { Ok(()) } else { bail!("interrupted") }
}

/// One reported number.
struct Metric {
    key: &'static str,
    section: usize,
    label: &'static str,
    unit: &'static str,
    decimals: usize,
}

const SECTIONS: [&str; 5] = [
    "1. Switch via the API: request accepted -> map update (daemon's apply_us), 200 alternating switches, idle",
    "2. Round trip of that API call (client wall time of POST /v1/services/web/switch)",
    "3. `lbctl switch` wall time including process start, 50 alternating switches, idle",
    "4. Under unpaced load through the VIP (4 workers, 1 request per connection), lbctl switches 50 ms apart",
    "5. Baseline (run first, on a clean flow table): the same load for the planned time straight to a1 (10.77.2.11:8080), no VIP",
];

const METRICS: &[Metric] = &[
    Metric { key: "apply_us_p50", section: 0, label: "p50", unit: "us", decimals: 0 },
    Metric { key: "apply_us_p99", section: 0, label: "p99", unit: "us", decimals: 0 },
    Metric { key: "apply_us_max", section: 0, label: "max", unit: "us", decimals: 0 },
    Metric { key: "api_rtt_us_p50", section: 1, label: "p50", unit: "us", decimals: 0 },
    Metric { key: "api_rtt_us_p99", section: 1, label: "p99", unit: "us", decimals: 0 },
    Metric { key: "lbctl_ms_p50", section: 2, label: "p50", unit: "ms", decimals: 2 },
    Metric { key: "lbctl_ms_p99", section: 2, label: "p99", unit: "ms", decimals: 2 },
    Metric {
        key: "vip_conn_per_s",
        section: 3,
        label: "new connections/s through the VIP",
        unit: "conn/s",
        decimals: 0,
    },
    Metric { key: "vip_connections", section: 3, label: "connections made", unit: "", decimals: 0 },
    Metric { key: "vip_failed", section: 3, label: "failed connections", unit: "", decimals: 0 },
    Metric {
        key: "lbctl_load_ms_p50",
        section: 3,
        label: "lbctl switch wall time p50",
        unit: "ms",
        decimals: 2,
    },
    Metric {
        key: "lbctl_load_ms_p99",
        section: 3,
        label: "lbctl switch wall time p99",
        unit: "ms",
        decimals: 2,
    },
    Metric {
        key: "converge_ms_median",
        section: 3,
        label: "converge, median over switches",
        unit: "ms",
        decimals: 2,
    },
    Metric {
        key: "converge_ms_max",
        section: 3,
        label: "converge, max over switches",
        unit: "ms",
        decimals: 2,
    },
    Metric {
        key: "old_pool_after_return",
        section: 3,
        label: "new conns on the old pool after lbctl returned",
        unit: "",
        decimals: 0,
    },
    Metric {
        key: "long_lived_kept",
        section: 3,
        label: "long-lived connections kept (of 6)",
        unit: "",
        decimals: 0,
    },
    Metric {
        key: "direct_conn_per_s",
        section: 4,
        label: "new connections/s straight to a1",
        unit: "conn/s",
        decimals: 0,
    },
    Metric { key: "direct_failed", section: 4, label: "failed connections", unit: "", decimals: 0 },
    Metric { key: "vip_vs_direct", section: 4, label: "ratio VIP / direct", unit: "", decimals: 3 },
    Metric {
        key: "direct_after_vip_failed_pct",
        section: 4,
        label: "direct to a1 after the VIP load: failed",
        unit: "%",
        decimals: 1,
    },
];

/// Nearest-rank percentile of unsorted values (`p` in 0..=100); 0 for none.
fn percentile(values: &[f64], p: f64) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let rank = ((p / 100.0) * v.len() as f64).ceil() as usize;
    v[rank.clamp(1, v.len()) - 1]
}

/// Median (mean of the middle two for an even count), min and max.
fn stats(values: &[f64]) -> (f64, f64, f64) {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    let median = if !n.is_multiple_of(2) { v[n / 2] } else { (v[n / 2 - 1] + v[n / 2]) / 2.0 };
    (median, v[0], v[n - 1])
}

fn micros(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

fn millis(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Target of the `i`-th alternating switch, starting from pool-a active.
fn target(i: usize) -> &'static str {
    if i.is_multiple_of(2) { "pool-b" } else { "pool-a" }
}

/// One `lbctl switch` under load, on the load's clock.
struct TimedSwitch {
    target: &'static str,
    started: Duration,
    returned: Duration,
}

/// Unpaced load options, bounded.
fn unpaced(target: SocketAddr, sources: &[std::net::IpAddr], max_duration: Duration) -> LoadOptions {
    let mut opts = LoadOptions::new(target);
    opts.rate_per_s = 0;
    opts.workers = 4;
    opts.max_connections = MAX_CONNECTIONS;
    opts.max_duration = max_duration;
    opts.source_addrs = sources.to_vec();
    opts
}

/// Runs a load to its end (its `max_duration`), failing early when interrupted.
fn run_for(client: &lb_tests::netns::NetNs, opts: LoadOptions) -> Result<LoadReport> {
    let load = LoadHandle::start(client, opts)?;
    while !load.is_finished() {
        if lb_tests::interrupt::requested() {
            drop(load);
            bail!("interrupted");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(load.wait())
}

/// Runs `lbctl switch <pool>`, failing with its output unless it exits 0.
fn lbctl_switch(setup: &e2e::Setup, pool: &str) -> Result<()> {
    let out = setup.daemon.lbctl(&["switch", pool]);
    if !out.status.success() {
        bail!(
            "lbctl switch {pool} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// Per switch: converge time and how many new connections started after lbctl returned (and
/// before the next switch) still landed on the old pool.
fn converge(report: &LoadReport, switches: &[TimedSwitch]) -> (Vec<f64>, usize) {
    let mut converge_ms = Vec::with_capacity(switches.len());
    let mut late = 0;
    for (i, sw) in switches.iter().enumerate() {
        let end = switches.get(i + 1).map_or(Duration::MAX, |n| n.started);
        let old: fn(&str) -> bool = if sw.target == "pool-b" { in_pool_a } else { in_pool_b };
        let from = report.results.partition_point(|r| r.at < sw.started);
        let to = report.results.partition_point(|r| r.at < end);
        let mut last_old = None;
        for r in &report.results[from..to] {
            if r.backend.as_deref().is_some_and(old) {
                last_old = Some(r.at);
                if r.at >= sw.returned {
                    late += 1;
                }
            }
        }
        converge_ms.push(last_old.map_or(0.0, |t| millis(t - sw.started)));
    }
    (converge_ms, late)
}

/// Asks the long-lived connections and clears `kept[i]` for each that no longer answers with
/// its original backend.
fn check_long_lived(ll: &mut LongLived, original: &[String], kept: &mut [bool]) {
    for (i, answer) in ll.ask().into_iter().enumerate() {
        if answer.as_ref().ok() != original.get(i) {
            kept[i] = false;
        }
    }
}

/// One run on a fresh setup: every metric by key.
fn run_once(args: &Args, run: u32) -> Result<BTreeMap<&'static str, f64>> {
    let mut m = BTreeMap::new();
    let s = e2e::setup("cpb", "nat").context("setup")?;
    let vip = web_vip();
    let client_ns = s.topo.client();
    let first = request(client_ns, vip).context("first request through the VIP")?;
    ensure!(in_pool_a(&first), "pool-a should serve first, got {first}");

    // 1 + 2: switches through the API.
    let api = s.daemon.client();
    let mut apply = Vec::with_capacity(API_SWITCHES);
    let mut rtt = Vec::with_capacity(API_SWITCHES);
    for i in 0..API_SWITCHES {
        check_interrupted()?;
        let req = SwitchRequest { pool: target(i).into(), ..SwitchRequest::default() };
        let t = Instant::now();
        let out: SwitchOutcome = api
            .post("/v1/services/web/switch", &req)
            .map_err(|e| anyhow::anyhow!("API switch to {}: {e}", target(i)))?;
        rtt.push(micros(t.elapsed()));
        ensure!(out.changed, "API switch to {} changed nothing", target(i));
        apply.push(out.apply_us as f64);
    }
    m.insert("apply_us_p50", percentile(&apply, 50.0));
    m.insert("apply_us_p99", percentile(&apply, 99.0));
    m.insert("apply_us_max", percentile(&apply, 100.0));
    m.insert("api_rtt_us_p50", percentile(&rtt, 50.0));
    m.insert("api_rtt_us_p99", percentile(&rtt, 99.0));

    // 3: lbctl, idle.
    let mut lbctl = Vec::with_capacity(LBCTL_SWITCHES);
    for i in 0..LBCTL_SWITCHES {
        check_interrupted()?;
        let t = Instant::now();
        lbctl_switch(&s, target(i))?;
        lbctl.push(millis(t.elapsed()));
    }
    m.insert("lbctl_ms_p50", percentile(&lbctl, 50.0));
    m.insert("lbctl_ms_p99", percentile(&lbctl, 99.0));
    // Both loops made an even number of switches: pool-a is active again.
    let status = s.daemon.status().context("status")?;
    let active = status.services.iter().find(|svc| svc.name == "web").map(|svc| svc.active.clone());
    ensure!(active == Some(Active::Pool("pool-a".into())), "pool-a should be active, got {active:?}");

    let n = args.switches as usize;
    // 5 first: the baseline, straight to one backend, while the flow table holds no traffic
    // through the VIP yet (afterwards a backend's direct replies can match stale VIP flows of
    // the same client address and port; see `direct_after_vip` below). It runs for the time
    // the switches under load are planned to take.
    check_interrupted()?;
    let planned = MARGIN * 2 + (GAP + Duration::from_millis(5)) * n as u32;
    let direct: SocketAddr = DIRECT_BACKEND.parse().expect("constant address");
    let base = run_for(client_ns, unpaced(direct, &s.topo.client_ips(false), planned))?;
    ensure!(
        base.len() < MAX_CONNECTIONS as usize,
        "the baseline hit its connection bound: raise MAX_CONNECTIONS"
    );
    let direct_cps = base.ok() as f64 / planned.as_secs_f64();
    m.insert("direct_conn_per_s", direct_cps);
    m.insert("direct_failed", base.failed() as f64);
    if base.failed() > 0 {
        eprintln!("  run {run}, baseline: {}", base.summary());
    }

    // 4: switches under load, long-lived connections held through them.
    let mut ll = LongLived::open(client_ns, vip, LONG_LIVED).context("long-lived connections")?;
    let original: Vec<String> = ll
        .ask()
        .into_iter()
        .collect::<Result<_, _>>()
        .map_err(|e| anyhow::anyhow!("long-lived connection before the switches: {e}"))?;
    let mut kept = vec![true; LONG_LIVED];
    // Generous bound: the run stops the load itself right after the last switch.
    let bound = MARGIN * 2 + (GAP + Duration::from_millis(250)) * n as u32 + Duration::from_secs(5);
    let load = LoadHandle::start(client_ns, unpaced(vip, &s.topo.client_ips(false), bound))?;
    let mut switches = Vec::with_capacity(n);
    let mut lbctl_load = Vec::with_capacity(n);
    let outcome = (|| -> Result<()> {
        sleep(MARGIN)?;
        for i in 0..n {
            check_interrupted()?;
            let t = Instant::now();
            let started = load.elapsed();
            lbctl_switch(&s, target(i))?;
            let returned = load.elapsed();
            lbctl_load.push(millis(t.elapsed()));
            switches.push(TimedSwitch { target: target(i), started, returned });
            if i % 10 == 9 {
                check_long_lived(&mut ll, &original, &mut kept);
            }
            sleep(GAP)?;
        }
        sleep(MARGIN)
    })();
    let duration = load.elapsed();
    let report = load.stop();
    outcome?;
    check_long_lived(&mut ll, &original, &mut kept);
    drop(ll);
    ensure!(
        report.len() < MAX_CONNECTIONS as usize,
        "the load hit its connection bound: raise MAX_CONNECTIONS"
    );
    let (converge_ms, late) = converge(&report, &switches);
    let vip_cps = report.ok() as f64 / duration.as_secs_f64();
    m.insert("vip_conn_per_s", vip_cps);
    m.insert("vip_connections", report.len() as f64);
    m.insert("vip_failed", report.failed() as f64);
    m.insert("lbctl_load_ms_p50", percentile(&lbctl_load, 50.0));
    m.insert("lbctl_load_ms_p99", percentile(&lbctl_load, 99.0));
    m.insert("converge_ms_median", stats(&converge_ms).0);
    m.insert("converge_ms_max", stats(&converge_ms).2);
    m.insert("old_pool_after_return", late as f64);
    m.insert("long_lived_kept", kept.iter().filter(|k| **k).count() as f64);
    m.insert("vip_vs_direct", if direct_cps > 0.0 { vip_cps / direct_cps } else { 0.0 });
    if report.failed() > 0 {
        eprintln!("  run {run}, under load: {}", report.summary());
        for f in report.failures().take(10) {
            // Which switch came last before the failed connection started, and how long before.
            let last = switches.iter().rposition(|sw| sw.started <= f.at);
            let since = last.map_or("before the first switch".to_string(), |i| {
                format!(
                    "{:.2} ms after the start of switch {} (to {})",
                    millis(f.at - switches[i].started),
                    i + 1,
                    switches[i].target
                )
            });
            eprintln!(
                "    failed at {:.4} s ({since}), took {:.2} ms: {}",
                f.at.as_secs_f64(),
                millis(f.took),
                f.error.as_deref().unwrap_or("")
            );
        }
    }
    if let Ok(status) = s.daemon.status() {
        let counters: Vec<String> =
            status.reasons.iter().filter(|(_, v)| *v > 0).map(|(k, v)| format!("{k}={v}")).collect();
        eprintln!("  run {run}, data-plane counters: {}", counters.join(" "));
    }

    // Diagnostic: one second of direct connections to a1 after the VIP traffic.
    check_interrupted()?;
    let after = run_for(client_ns, unpaced(direct, &s.topo.client_ips(false), Duration::from_secs(1)))?;
    m.insert("direct_after_vip_failed_pct", 100.0 * after.failed() as f64 / after.len().max(1) as f64);
    Ok(m)
}

fn fmt(v: f64, decimals: usize) -> String {
    format!("{v:.decimals$}")
}

fn main() -> ExitCode {
    let args = Args::parse();
    if let Err(code) = require_root("controlplane-bench", "network namespaces, XDP") {
        return code;
    }
    if let Err(e) = lb_tests::interrupt::install() {
        eprintln!("controlplane-bench: {e:#}");
        return ExitCode::from(1);
    }
    match bench(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("controlplane-bench: {e:#}");
            ExitCode::from(if lb_tests::interrupt::requested() { 130 } else { 1 })
        }
    }
}

fn bench(args: &Args) -> Result<()> {
    println!(
        "Control-plane benchmark: {} run(s), each on a fresh setup (namespaces: client, balancer, 2+2 backends; NAT); \
         {API_SWITCHES} API switches, {LBCTL_SWITCHES} lbctl switches, then {} lbctl switches under load",
        args.runs, args.switches
    );
    let mut runs = Vec::new();
    for run in 1..=args.runs {
        let began = Instant::now();
        let m = run_once(args, run).with_context(|| format!("run {run}"))?;
        println!(
            "  run {run}: apply p50 {} us, API p50 {} us, lbctl p50 {} ms; under load {} conn/s, {} failed, \
             converge median {} ms / max {} ms, long-lived {}/{LONG_LIVED}; direct {} conn/s ({:.1} s)",
            fmt(m["apply_us_p50"], 0),
            fmt(m["api_rtt_us_p50"], 0),
            fmt(m["lbctl_ms_p50"], 2),
            fmt(m["vip_conn_per_s"], 0),
            m["vip_failed"],
            fmt(m["converge_ms_median"], 2),
            fmt(m["converge_ms_max"], 2),
            m["long_lived_kept"],
            fmt(m["direct_conn_per_s"], 0),
            began.elapsed().as_secs_f64()
        );
        runs.push(m);
    }

    println!("\nMedian, min and max over {} run(s)", runs.len());
    let mut json = serde_json::Map::new();
    for (section, title) in SECTIONS.iter().enumerate() {
        println!("\n{title}");
        println!("  {:<48} {:>10} {:>10} {:>10}  unit", "", "median", "min", "max");
        for metric in METRICS.iter().filter(|m| m.section == section) {
            let values: Vec<f64> = runs.iter().map(|r| r[metric.key]).collect();
            let (median, min, max) = stats(&values);
            println!(
                "  {:<48} {:>10} {:>10} {:>10}  {}",
                metric.label,
                fmt(median, metric.decimals),
                fmt(min, metric.decimals),
                fmt(max, metric.decimals),
                metric.unit
            );
            json.insert(
                metric.key.to_string(),
                serde_json::json!({ "median": median, "min": min, "max": max, "runs": values }),
            );
        }
    }
    let apply_p50 = stats(&runs.iter().map(|r| r["apply_us_p50"]).collect::<Vec<_>>()).0;
    println!("\nTarget: apply p50 < 1000 us: {}", if apply_p50 < 1000.0 { "met" } else { "NOT met" });
    let line = serde_json::json!({
        "bench": "controlplane",
        "runs": args.runs,
        "switches_under_load": args.switches,
        "api_switches": API_SWITCHES,
        "lbctl_switches": LBCTL_SWITCHES,
        "long_lived": LONG_LIVED,
        "metrics": json,
    });
    println!("\n{line}");
    Ok(())
}
