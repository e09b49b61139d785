//! Fleet benchmark (`cargo xtask bench`, after the control-plane one), on the BGP rig of
//! `lb_tests::fleet_rig` (ECMP router with BIRD, 2 balancer hosts with lb-daemon and BIRD, BFD
//! 50 ms × 3):
//!
//! - `failover`: a host frozen (SIGSTOP of its BIRD) or its link down, until the router's
//!   kernel route lost its path (`lb_tests::fleet_bench::failover`);
//! - `conn-rate`: unpaced short connections through the VIP with both hosts, then with one
//!   drained (`lb_tests::fleet_bench::conn_rate`);
//! - `switch`: on a rig of 3 hosts sharing their desired state in etcd, a switch request until
//!   it is applied on every host, and the spread between the first and the last host
//!   (`lb_tests::fleet_switch_bench::switch_latency`; its own rig, built after the BGP one is
//!   gone).
//! - `sync-rate`: flow sync's cost, on its own two-host rig: new connections/s with sync off
//!   and on in alternating rounds, the sync bytes per new flow (scaled to 10,000 new flows/s),
//!   and the time from a connection's establishment to its entry on the peer
//!   (`lb_tests::fleet_sync_bench::sync_rate`).
//!
//! Prints one line per round and a summary (medians, min, max), or with `--json` one JSON
//! document. SIGINT / SIGTERM stop early and clean up (exit code 130).

use anyhow::Result;
use clap::{Parser, ValueEnum};
use lb_tests::cli::require_root;
use lb_tests::fleet_bench::{self, ConnRateReport, FailoverReport, median};
use lb_tests::fleet_switch_bench::{SwitchLatencyOptions, SwitchLatencyReport, switch_latency};
use lb_tests::fleet_sync_bench::{SyncRateOptions, SyncRateReport, sync_rate};
use std::process::ExitCode;

/// Which measurements to run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Case {
    /// Host failover time (BFD).
    Failover,
    /// Connections/s through the fleet vs one host.
    ConnRate,
    /// Fleet switch (etcd): request to applied on every host, 3 hosts.
    Switch,
    /// Flow sync's cost: conn/s with sync off vs on, sync bytes per flow, flow-to-peer time.
    SyncRate,
    /// All of them.
    All,
}

#[derive(Parser)]
#[command(
    about = "Fleet (BGP) failover time and connections/s through 2 hosts vs 1 (namespaces, BIRD, lb-daemon)"
)]
struct Args {
    /// What to measure.
    #[arg(long, value_enum, default_value_t = Case::All)]
    case: Case,
    /// Failover rounds (each: one SIGSTOP and one link down).
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=50))]
    failovers: u32,
    /// Connection-rate rounds (each: fleet, then one host).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=20))]
    rate_rounds: u32,
    /// Seconds of load per connection-rate measurement.
    #[arg(long, default_value_t = 3.0)]
    seconds: f64,
    /// Client threads of the connection-rate load.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u16).range(1..=64))]
    workers: u16,
    /// Switches timed by `--case switch` (alternating pool-b and pool-a).
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    switches: u32,
    /// Sync-rate rounds (each: sync off, then on).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=20))]
    sync_rounds: u32,
    /// Send interval of the flow sync in `--case sync-rate`, ms.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(10..=5000))]
    sync_interval_ms: u64,
    /// Connections timed from establishment to their entry on the peer (`--case sync-rate`).
    #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    sync_samples: u32,
    /// Print one JSON document instead of text.
    #[arg(long)]
    json: bool,
}

/// Everything measured, as `--json` prints it.
#[derive(serde::Serialize, Default)]
struct Output {
    #[serde(skip_serializing_if = "Option::is_none")]
    failover: Option<FailoverReport>,
    #[serde(skip_serializing_if = "Option::is_none")]
    conn_rate: Option<ConnRateReport>,
    #[serde(skip_serializing_if = "Option::is_none")]
    switch: Option<SwitchLatencyReport>,
    #[serde(skip_serializing_if = "Option::is_none")]
    sync_rate: Option<SyncRateReport>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    if let Err(code) = require_root("fleet-bench", "network namespaces, XDP, BIRD") {
        return code;
    }
    if !(0.5..=30.0).contains(&args.seconds) {
        eprintln!("fleet-bench: --seconds must be between 0.5 and 30");
        return ExitCode::from(2);
    }
    if let Err(e) = lb_tests::interrupt::install() {
        eprintln!("fleet-bench: {e:#}");
        return ExitCode::from(1);
    }
    match bench(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("fleet-bench: {e:#}");
            ExitCode::from(if lb_tests::interrupt::requested() { 130 } else { 1 })
        }
    }
}

fn stats(v: &[f64]) -> String {
    let min = v.iter().copied().fold(f64::INFINITY, f64::min);
    let max = v.iter().copied().fold(0.0, f64::max);
    format!("median {:.1}, min {min:.1}, max {max:.1} (n={})", median(v), v.len())
}

fn bench(args: &Args) -> Result<()> {
    let say = |line: &str| {
        if !args.json {
            println!("{line}");
        }
    };
    let mut out = Output::default();
    if matches!(args.case, Case::Failover | Case::ConnRate | Case::All) {
        bgp_cases(args, &mut out, say)?;
    }
    if matches!(args.case, Case::SyncRate | Case::All) {
        // Its own two-host rig; the ones above are gone by now.
        say(&format!(
            "flow sync cost, 2 hosts, {} round(s) of sync off then on ({} workers, {} s each), interval {} ms:",
            args.sync_rounds, args.workers, args.seconds, args.sync_interval_ms
        ));
        let mut rig = fleet_bench::rig("fsr")?;
        let opts = SyncRateOptions {
            rounds: args.sync_rounds,
            seconds: args.seconds,
            workers: args.workers as usize,
            interval: std::time::Duration::from_millis(args.sync_interval_ms),
            latency_samples: args.sync_samples,
        };
        let r = sync_rate(&mut rig, opts, &say)?;
        say(r.text().trim_end());
        out.sync_rate = Some(r);
    }
    if matches!(args.case, Case::Switch | Case::All) {
        // Its own rig (3 hosts, etcd); the BGP rig above is gone by now.
        say(&format!(
            "fleet switch (etcd), 3 hosts, {} switch(es) back to back, then as many paced:",
            args.switches
        ));
        let r = switch_latency(SwitchLatencyOptions { switches: args.switches, ..Default::default() })?;
        say(r.text().trim_end());
        out.switch = Some(r);
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&out)?);
    }
    Ok(())
}

/// The BGP rig's cases (failover, connection rate) on one rig, dropped on return.
fn bgp_cases(args: &Args, out: &mut Output, say: impl Fn(&str)) -> Result<()> {
    say(
        "Fleet benchmark: router (BIRD, ECMP merge paths, L4 hash) + 2 balancer hosts (lb-daemon + BIRD, BFD 50 ms x 3), DSR",
    );
    let mut rig = fleet_bench::rig("fbn")?;
    if matches!(args.case, Case::Failover | Case::All) {
        say(&format!("host failover, {} round(s):", args.failovers));
        let r = fleet_bench::failover(&mut rig, args.failovers, &say)?;
        say(&format!("  SIGSTOP of a host's BIRD -> router path gone: {} ms", stats(&r.bird_stopped_ms)));
        say(&format!("  link down of a host      -> router path gone: {} ms", stats(&r.link_down_ms)));
        out.failover = Some(r);
    }
    if matches!(args.case, Case::ConnRate | Case::All) {
        say(&format!(
            "connections/s (unpaced, {} workers, {} s per measurement), {} round(s):",
            args.workers, args.seconds, args.rate_rounds
        ));
        let r =
            fleet_bench::conn_rate(&mut rig, args.rate_rounds, args.seconds, args.workers as usize, &say)?;
        say(&format!("  fleet (2 hosts): {} conn/s", stats(&r.fleet_conn_per_s)));
        say(&format!("  one host:        {} conn/s", stats(&r.one_host_conn_per_s)));
        out.conn_rate = Some(r);
    }
    Ok(())
}
