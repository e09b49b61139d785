//! `lb-demo-fleet` (run by `cargo xtask demo-fleet`): the back button for a fleet, in about
//! half a minute, on a throw-away rig of network namespaces (`lb_tests::fleet_rig` with etcd).
//!
//! A router running BIRD with ECMP spreads a client's connections over two balancer hosts
//! (lb-daemon + BIRD each, DSR), which share their desired state in etcd. With live traffic
//! going on, it prints every second how many new flows each host forwarded and which pool
//! answered, and runs the real `lbctl`: `switch pool-b --wait-fleet` on lb1 moves both hosts,
//! `rollback --wait-fleet` on lb2 moves both back, then lb1 is drained for maintenance (its
//! route withdrawn, traffic goes on through lb2) and undrained. It exits 0 only if no
//! connection failed and every connection started after a command returned went to the pool
//! that command chose.
//!
//! Everything is removed at the end (daemons, BIRDs, etcd killed, pins removed, namespaces
//! deleted), also on Ctrl-C or SIGTERM: the signal only sets a flag, the steps stop early, and
//! the drop of the rig cleans up; the exit code is then 130.

use anyhow::{Context, Result};
use lb_tests::{
    cli::{Style, Ui, check_interrupted, require_root, sleep_until, stopped},
    fleet_ctl::{active, lbctl, wait_in_sync},
    fleet_rig::{FleetOptions, FleetRig, vip_addr},
    load::{ConnResult, LoadHandle, LoadOptions, LoadReport},
};
use std::{
    collections::BTreeMap,
    process::ExitCode,
    time::{Duration, Instant},
};

/// New connections per second from the client to the VIP.
const RATE_PER_S: u32 = 100;
/// Hard bounds of the load, whatever happens to the rest of the demo.
const LOAD_MAX_DURATION: Duration = Duration::from_secs(45);
/// At most this many connections (45 s at 100 per second).
const LOAD_MAX_CONNECTIONS: u32 = 4500;
/// One live line per tick.
const TICK: Duration = Duration::from_secs(1);
/// Longest wait for the fleet to settle or a route to change.
const SETTLE: Duration = Duration::from_secs(30);

fn main() -> ExitCode {
    if let Err(code) =
        require_root("lb-demo-fleet", "it creates network namespaces and attaches XDP programs")
    {
        return code;
    }
    if let Err(e) = lb_tests::interrupt::install() {
        eprintln!("lb-demo-fleet: {e:#}");
        return ExitCode::from(1);
    }
    let ui = Ui::new();
    match run(&ui) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(_) if stopped() => {
            println!("\ninterrupted: cleaning up");
            ExitCode::from(130)
        }
        Err(e) => {
            eprintln!("lb-demo-fleet: {e:#}");
            ExitCode::from(1)
        }
    }
}

/// The live traffic and what the ticks have shown of it.
struct Live {
    load: LoadHandle,
    shown: usize,
    flows: Vec<u64>,
}

impl Live {
    /// Sleeps one tick, then prints what happened in it: new flows per host, answers per pool.
    fn tick(&mut self, rig: &FleetRig, ui: &Ui) -> Result<()> {
        if !sleep_until(Instant::now() + TICK) {
            check_interrupted()?;
        }
        let answers: Vec<ConnResult> = self.load.results_from(self.shown);
        self.shown += answers.len();
        let flows: Vec<u64> = rig.balancers.iter().map(|b| b.new_flows().unwrap_or(0)).collect();
        let hosts: Vec<String> = rig
            .balancers
            .iter()
            .zip(flows.iter().zip(&self.flows))
            .map(|(b, (now, before))| format!("{} {:>3}", b.host, now.saturating_sub(*before)))
            .collect();
        self.flows = flows;
        println!(
            "  t={:>5.1}s  new flows per host: {}   {}",
            self.load.elapsed().as_secs_f64(),
            hosts.join("  "),
            answered(&answers, ui)
        );
        Ok(())
    }

    fn ticks(&mut self, n: usize, rig: &FleetRig, ui: &Ui) -> Result<()> {
        for _ in 0..n {
            self.tick(rig, ui)?;
        }
        Ok(())
    }
}

/// `pool-a 51 (a1 26, a2 25)  pool-b 0` for a tick's answers, and the failures.
fn answered(answers: &[ConnResult], ui: &Ui) -> String {
    let mut by: BTreeMap<String, usize> = BTreeMap::new();
    let failed = answers.iter().filter(|a| a.backend.is_none()).count();
    for name in answers.iter().filter_map(|a| a.backend.clone()) {
        *by.entry(name).or_default() += 1;
    }
    let pool = |prefix: char, name: &str, style: Style| {
        let members: Vec<String> =
            by.iter().filter(|(b, _)| b.starts_with(prefix)).map(|(b, n)| format!("{b} {n}")).collect();
        let total: usize = by.iter().filter(|(b, _)| b.starts_with(prefix)).map(|(_, n)| n).sum();
        let detail = if members.is_empty() { String::new() } else { format!(" ({})", members.join(", ")) };
        ui.paint(style, &format!("{name} {total:>3}{detail}"))
    };
    let mut line = format!("{}  {}", pool('a', "pool-a", Style::PoolA), pool('b', "pool-b", Style::PoolB));
    if failed > 0 {
        line += &ui.paint(Style::Bad, &format!("  FAILED {failed}"));
    }
    line
}

/// Runs `lbctl <args>` against host `i`, printing the command and its output.
fn run_lbctl(rig: &FleetRig, i: usize, args: &[&str], ui: &Ui) -> Result<()> {
    let b = &rig.balancers[i];
    println!("{}", ui.paint(Style::Command, &format!("  [{}]$ lbctl {}", b.host, args.join(" "))));
    let t0 = Instant::now();
    let out = lbctl(b, args);
    let took = t0.elapsed();
    for line in
        String::from_utf8_lossy(&out.stdout).lines().chain(String::from_utf8_lossy(&out.stderr).lines())
    {
        println!("    {line}");
    }
    anyhow::ensure!(out.status.success(), "lbctl {args:?} on {} failed: {}", b.host, out.status);
    println!("{}", ui.paint(Style::Dim, &format!("    (returned after {} ms)", took.as_millis())));
    Ok(())
}

fn active_line(rig: &FleetRig) -> String {
    let parts: Vec<String> = rig
        .balancers
        .iter()
        .map(|b| format!("{}: {}", b.host, active(b).unwrap_or_else(|e| format!("? ({e})"))))
        .collect();
    format!("  active pool per host: {}", parts.join(", "))
}

/// Connections of `report` started in `[from, to)` that were not answered by `prefix`'s pool.
fn off_pool(report: &LoadReport, from: Duration, to: Duration, prefix: char) -> usize {
    report
        .results
        .iter()
        .filter(|r| r.at >= from && r.at < to)
        .filter(|r| !r.backend.as_deref().is_some_and(|b| b.starts_with(prefix)))
        .count()
}

fn run(ui: &Ui) -> Result<bool> {
    ui.heading("Setting up: router (BIRD, ECMP) + 2 balancer hosts (lb-daemon + BIRD, XDP, DSR) + etcd");
    println!("  pool-a = a1 a2, pool-b = b1 b2, service web on VIP {}", vip_addr());
    let rig =
        FleetRig::with("dfl", FleetOptions { hosts: 2, etcd: true }).context("building the fleet rig")?;
    check_interrupted()?;
    let rev = wait_in_sync(&rig, SETTLE)?;
    println!(
        "  router's route to the VIP: next hops {:?}; both hosts in sync at etcd revision {rev}",
        rig.next_hops()?
    );
    println!("{}", active_line(&rig));

    ui.heading(&format!("Live traffic: {RATE_PER_S} new connections/s from the client, spread by ECMP"));
    let opts = LoadOptions {
        rate_per_s: RATE_PER_S,
        max_connections: LOAD_MAX_CONNECTIONS,
        max_duration: LOAD_MAX_DURATION,
        source_addrs: rig.client_addrs.iter().copied().map(std::net::IpAddr::V4).collect(),
        ..LoadOptions::new(vip_addr())
    };
    let flows = rig.balancers.iter().map(|b| b.new_flows().unwrap_or(0)).collect();
    let mut live = Live { load: LoadHandle::start(&rig.client, opts)?, shown: 0, flows };
    live.ticks(3, &rig, ui)?;

    ui.heading("One switch for the whole fleet, through lb1: returns once every host applied it");
    run_lbctl(&rig, 0, &["switch", "pool-b", "--wait-fleet", "10s"], ui)?;
    let switched = live.load.elapsed();
    println!("{}", active_line(&rig));
    live.ticks(3, &rig, ui)?;

    ui.heading("The back button, through lb2");
    let rolling = live.load.elapsed();
    run_lbctl(&rig, 1, &["rollback", "--wait-fleet", "10s"], ui)?;
    let rolled = live.load.elapsed();
    println!("{}", active_line(&rig));
    live.ticks(3, &rig, ui)?;

    ui.heading("Maintenance: drain lb1 (its route is withdrawn; what still arrives is forwarded)");
    run_lbctl(&rig, 0, &["host", "drain"], ui)?;
    let t0 = Instant::now();
    rig.wait_next_hops(&[rig.balancers[1].addr], SETTLE)?;
    println!(
        "    router down to one next hop ({}) after {} ms",
        rig.balancers[1].addr,
        t0.elapsed().as_millis()
    );
    live.ticks(3, &rig, ui)?;
    run_lbctl(&rig, 0, &["host", "undrain"], ui)?;
    rig.wait_next_hops(&rig.balancer_addrs(), SETTLE)?;
    println!("    both next hops back");
    live.ticks(2, &rig, ui)?;

    let report = live.load.stop();
    ui.heading("Summary");
    let after_switch = off_pool(&report, switched, rolling, 'b');
    let after_rollback = off_pool(&report, rolled, Duration::MAX, 'a');
    let ok = report.failed() == 0 && after_switch == 0 && after_rollback == 0;
    println!("  {} connections, {} failed", report.len(), report.failed());
    println!("  started after the switch returned and not answered by pool-b: {after_switch}");
    println!("  started after the rollback returned and not answered by pool-a: {after_rollback}");
    let verdict = if ok { ui.paint(Style::Good, "OK") } else { ui.paint(Style::Bad, "FAILED") };
    println!("  {verdict}; cleaning up");
    Ok(ok)
}
