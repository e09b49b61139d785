//! `lb-demo` (run by `cargo xtask demo`): a guided tour of the load balancer for a newcomer, in
//! about half a minute, on a throw-away topology of network namespaces.
//!
//! It builds the standard end-to-end setup (client, balancer with the XDP program and
//! `lb-daemon`, pool-a = a1 a2, pool-b = b1 b2, service `web` on VIP 10.77.100.1:80, NAT mode),
//! sends a steady trickle of new connections from the client to the VIP and prints, every
//! 500 ms, which pool and backends answered. Meanwhile it runs the real `lbctl`: `status`,
//! `switch pool-b`, `rollback` and `history`, so the viewer sees traffic move with one command
//! and come back with another, while connections opened before the switch stay on their
//! backend (drain). It ends with a summary and exits 0 only if no connection failed and every
//! connection started after a command returned went to the pool that command chose.
//!
//! Everything is removed at the end (daemon killed, pins removed, namespaces deleted), also on
//! Ctrl-C or SIGTERM: the signal only sets a flag, every loop stops early, and the normal drop
//! of the setup cleans up; the exit code is then 130. Colours only when stdout is a terminal.

use anyhow::{Context, Result, bail};
use clap::Parser;
use lb_tests::{
    cli::{Style, Ui, check_interrupted, require_root, sleep_until, stopped},
    e2e::{self, POOL_A, POOL_B, in_pool_a, in_pool_b, web_vip},
    load::{ConnResult, LoadHandle, LoadOptions, LoadReport, LongLived},
    netns::NetNs,
};
use std::{
    collections::BTreeMap,
    net::SocketAddr,
    path::{Path, PathBuf},
    process::ExitCode,
    time::{Duration, Instant},
};

/// New connections per second from the client to the VIP.
const RATE_PER_S: u32 = 50;
/// Hard bounds of the load, whatever happens to the rest of the demo.
const LOAD_MAX_DURATION: Duration = Duration::from_secs(30);
/// At most this many connections (30 s at 50 per second).
const LOAD_MAX_CONNECTIONS: u32 = 1500;
/// One live line per tick.
const TICK: Duration = Duration::from_millis(500);
/// Connect, write and read timeout of one connection of the load.
const CONN_TIMEOUT: Duration = Duration::from_secs(1);

/// The demo's traffic: a paced, bounded run of short connections from the client namespace,
/// and how many of its results the live lines have shown.
struct LiveLoad {
    load: LoadHandle,
    shown: usize,
}

impl LiveLoad {
    fn start(client: &NetNs, target: SocketAddr) -> Result<Self> {
        let opts = LoadOptions {
            rate_per_s: RATE_PER_S,
            max_connections: LOAD_MAX_CONNECTIONS,
            max_duration: LOAD_MAX_DURATION,
            workers: 4,
            timeout: CONN_TIMEOUT,
            ..LoadOptions::new(target)
        };
        Ok(Self { load: LoadHandle::start(client, opts)?, shown: 0 })
    }

    /// Connections finished since the previous call.
    fn take_new(&mut self) -> Vec<ConnResult> {
        let new = self.load.results_from(self.shown);
        self.shown += new.len();
        new
    }
}

/// `(a1 13, a2 12)` for the backends of `pool` that answered.
fn backend_counts(by: &BTreeMap<String, usize>, pool: &[&str]) -> String {
    let parts: Vec<String> = pool.iter().filter_map(|b| by.get(*b).map(|n| format!("{b} {n}"))).collect();
    if parts.is_empty() { String::new() } else { format!("({})", parts.join(", ")) }
}

/// A 10-cell bar for a percentage.
fn bar(pct: usize) -> String {
    // Any traffic at all shows at least one cell.
    let full = if pct == 0 { 0 } else { ((pct + 5) / 10).max(1) };
    format!("{}{}", "█".repeat(full), "░".repeat(10 - full))
}

/// One live line for the answers of one tick.
fn live_line(ui: &Ui, t: Duration, answers: &[ConnResult]) -> String {
    let mut by = BTreeMap::new();
    let mut failed = 0;
    for a in answers {
        match &a.backend {
            Some(name) => *by.entry(name.clone()).or_insert(0usize) += 1,
            None => failed += 1,
        }
    }
    let total = answers.len();
    let in_a: usize = by.iter().filter(|(n, _)| in_pool_a(n)).map(|(_, c)| c).sum();
    let in_b: usize = by.iter().filter(|(n, _)| in_pool_b(n)).map(|(_, c)| c).sum();
    let pct = |n: usize| (n * 100 + total / 2).checked_div(total).unwrap_or(0);
    let (pa, pb) = (pct(in_a), pct(in_b));
    let mut line = format!(
        "  t={:>5.1}s  {} {} {:>3}% {:<16}  {} {} {:>3}% {:<16}",
        t.as_secs_f64(),
        ui.paint(Style::PoolA, "pool-a"),
        ui.paint(Style::PoolA, &bar(pa)),
        pa,
        backend_counts(&by, &POOL_A),
        ui.paint(Style::PoolB, "pool-b"),
        ui.paint(Style::PoolB, &bar(pb)),
        pb,
        backend_counts(&by, &POOL_B),
    );
    if failed > 0 {
        line += &ui.paint(Style::Bad, &format!("  FAILED {failed}"));
    }
    let other = total - in_a - in_b - failed;
    if other > 0 {
        line += &ui.paint(Style::Bad, &format!("  {other} from unknown backends"));
    }
    line.trim_end().to_string()
}

/// Prints one live line per tick for `ticks` ticks (aligned to the load's clock); false if
/// interrupted.
fn live(ui: &Ui, load: &mut LiveLoad, ticks: u32) -> bool {
    // Answers that finished while a command ran go into the next line, which thus shows the
    // traffic moving.
    println!();
    for _ in 0..ticks {
        let e = load.load.elapsed();
        let next_tick = (e.as_nanos() / TICK.as_nanos() + 1) as u32;
        let at = TICK * next_tick;
        if !sleep_until(load.load.started_at() + at) {
            return false;
        }
        let answers = load.take_new();
        println!("{}", live_line(ui, at, &answers));
    }
    true
}

/// Runs the real lbctl, showing the command, its output and how long it took. Returns the
/// load-clock times when it started and returned, and whether it succeeded.
fn lbctl_shown(
    ui: &Ui,
    setup: &e2e::Setup,
    load: Option<&LiveLoad>,
    args: &[&str],
) -> (Duration, Duration, bool) {
    println!(
        "\n  {} {}",
        ui.paint(Style::Dim, "$"),
        ui.paint(Style::Command, &format!("lbctl {}", args.join(" ")))
    );
    let clock = |l: Option<&LiveLoad>| l.map(|l| l.load.elapsed()).unwrap_or_default();
    let began = Instant::now();
    let started = clock(load);
    let out = setup.daemon.lbctl(args);
    let returned = clock(load);
    let took = began.elapsed();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        println!("    {line}");
    }
    for line in String::from_utf8_lossy(&out.stderr).lines() {
        println!("    {}", ui.paint(Style::Bad, line));
    }
    let ok = out.status.success();
    if ok {
        println!(
            "  {}",
            ui.paint(Style::Dim, &format!("(lbctl returned in {:.1} ms)", took.as_secs_f64() * 1e3))
        );
    } else {
        println!("  {}", ui.paint(Style::Bad, &format!("lbctl failed: {}", out.status)));
    }
    (started, returned, ok)
}

/// Asks the long-lived connections which backend they talk to; `(a1, b2)`-style text and
/// whether all still answer as `expected` (if given).
fn ask_long_lived(ll: &mut LongLived, expected: Option<&[String]>) -> (Vec<String>, bool) {
    let answers: Vec<String> =
        ll.ask().into_iter().map(|a| a.unwrap_or_else(|e| format!("error: {e}"))).collect();
    let same = expected.is_none_or(|exp| exp == answers.as_slice());
    (answers, same)
}

/// What the demo observed, for the summary and the exit code.
#[derive(Default)]
struct Checks {
    lbctl_failures: u32,
    long_lived_kept: bool,
}

/// Prints the topology, then runs the tour on `setup`. Returns whether everything held.
fn tour(ui: &Ui, setup: &e2e::Setup) -> Result<bool> {
    let vip = web_vip();
    let topo = &setup.topo;
    let spec = |n: &str| topo.backend_spec(n).socket_addr();
    ui.heading("The topology (one network namespace per box, all on one Linux bridge)");
    println!(
        "
    client   {client_ns}
             10.77.1.2: opens TCP connections to the VIP {vip}
                │
                ▼
    balancer {lb_ns}
             eth0 10.77.1.1 / 10.77.2.1: the XDP program on eth0 picks a backend for every
             new flow (Maglev table of the active pool) and rewrites VIP → backend (NAT);
             lb-daemon owns the BPF maps and serves the API that lbctl talks to
                │
                ├── {pa}  a1 {a1}   a2 {a2}   (active)
                └── {pb}  b1 {b1}   b2 {b2}

    A switch is one update of the service's entry in a BPF map: new flows go to the other
    pool at once; established flows stay on their backend (drain).",
        client_ns = ui.paint(Style::Dim, &format!("(netns {})", topo.client().name())),
        lb_ns = ui.paint(Style::Dim, &format!("(netns {})", topo.balancer().name())),
        pa = ui.paint(Style::PoolA, "pool-a"),
        pb = ui.paint(Style::PoolB, "pool-b"),
        a1 = spec("a1"),
        a2 = spec("a2"),
        b1 = spec("b1"),
        b2 = spec("b2"),
    );

    let config_path = setup.daemon.config_path();
    ui.heading(&format!("The daemon's config file: {}", config_path.display()));
    let config = std::fs::read_to_string(&config_path).context("reading the config file")?;
    for line in config.lines() {
        println!("    {}", ui.paint(Style::Dim, line));
    }
    println!("\n  (every lbctl below really runs as `lbctl --socket {} …`)", setup.daemon.socket().display());
    check_interrupted()?;

    ui.heading(&format!(
        "Traffic: {RATE_PER_S} new connections/s from the client to {vip}, one line per 500 ms"
    ));
    let mut load = LiveLoad::start(topo.client(), vip)?;
    let mut checks = Checks { long_lived_kept: true, ..Checks::default() };
    if !live(ui, &mut load, 8) {
        bail!("interrupted");
    }

    // Two connections that stay open through the switch and the rollback.
    let mut ll = LongLived::open(topo.client(), vip, 4).context("opening four long-lived connections")?;
    let (before, _) = ask_long_lived(&mut ll, None);
    println!(
        "\n  four long-lived connections opened now talk to {} — watch them through the switch",
        ui.paint(Style::Bold, &before.join(", "))
    );
    if !live(ui, &mut load, 2) {
        bail!("interrupted");
    }

    let (_, _, ok) = lbctl_shown(ui, setup, Some(&load), &["status"]);
    checks.lbctl_failures += u32::from(!ok);
    check_interrupted()?;

    let (switch_started, switch_returned, ok) = lbctl_shown(ui, setup, Some(&load), &["switch", "pool-b"]);
    checks.lbctl_failures += u32::from(!ok);
    if !live(ui, &mut load, 16) {
        bail!("interrupted");
    }
    let (now, same) = ask_long_lived(&mut ll, Some(&before));
    checks.long_lived_kept &= same;
    println!(
        "\n  the long-lived connections still talk to {} {}",
        ui.paint(Style::Bold, &now.join(", ")),
        if same {
            ui.paint(Style::Good, "(drain: established flows stay)")
        } else {
            ui.paint(Style::Bad, "(moved or broken!)")
        }
    );

    let (rollback_started, rollback_returned, ok) = lbctl_shown(ui, setup, Some(&load), &["rollback"]);
    checks.lbctl_failures += u32::from(!ok);
    if !live(ui, &mut load, 12) {
        bail!("interrupted");
    }
    let (now, same) = ask_long_lived(&mut ll, Some(&before));
    checks.long_lived_kept &= same;
    println!(
        "\n  the long-lived connections still talk to {} {}",
        ui.paint(Style::Bold, &now.join(", ")),
        if same {
            ui.paint(Style::Good, "(never moved)")
        } else {
            ui.paint(Style::Bad, "(moved or broken!)")
        }
    );
    let all = load.load.stop();
    drop(ll);
    check_interrupted()?;

    let (_, _, ok) = lbctl_shown(ui, setup, None, &["history"]);
    checks.lbctl_failures += u32::from(!ok);

    summary(ui, &all, &checks, [switch_started, switch_returned, rollback_started, rollback_returned])
}

/// Prints the summary; true if every check held.
fn summary(ui: &Ui, all: &LoadReport, checks: &Checks, times: [Duration; 4]) -> Result<bool> {
    let [switch_started, switch_returned, rollback_started, rollback_returned] = times;
    ui.heading("Summary");
    let failed: Vec<&ConnResult> = all.failures().collect();
    let per: Vec<String> = all.by_backend().iter().map(|(b, n)| format!("{b} {n}")).collect();
    println!(
        "  connections: {}   failed: {}",
        all.len(),
        if failed.is_empty() {
            ui.paint(Style::Good, "0")
        } else {
            ui.paint(Style::Bad, &failed.len().to_string())
        }
    );
    println!("  answered by: {}", per.join(", "));
    for f in failed.iter().take(3) {
        let why = f.error.as_deref().unwrap_or_default();
        println!("    {}", ui.paint(Style::Bad, &format!("at {:.3}s: {why}", f.at.as_secs_f64())));
    }

    // Connections that started after a command returned must all follow it.
    let phase = |from: Duration, to: Duration, wanted: fn(&str) -> bool, pool: &str| -> bool {
        let inside: Vec<&ConnResult> = all.results.iter().filter(|a| a.at >= from && a.at < to).collect();
        let right = inside.iter().filter(|a| a.backend.as_deref().is_some_and(wanted)).count();
        let ok = right == inside.len() && !inside.is_empty();
        let mark = if ok { ui.paint(Style::Good, "✓") } else { ui.paint(Style::Bad, "✗") };
        println!("  {right:>4} of {:>4} new connections went to {pool}  {mark}", inside.len());
        ok
    };
    println!("\n  started before `switch pool-b`:");
    let a1 = phase(Duration::ZERO, switch_started, in_pool_a, "pool-a");
    println!("  started after `switch pool-b` returned, before `rollback`:");
    let b = phase(switch_returned, rollback_started, in_pool_b, "pool-b");
    println!("  started after `rollback` returned:");
    let a2 = phase(rollback_returned, Duration::MAX, in_pool_a, "pool-a");
    let kept = checks.long_lived_kept;
    println!(
        "\n  long-lived connections kept their backend through switch and rollback: {}",
        if kept { ui.paint(Style::Good, "yes") } else { ui.paint(Style::Bad, "no") }
    );
    let all_ok = failed.is_empty() && a1 && b && a2 && kept && checks.lbctl_failures == 0;
    println!(
        "\n  {}",
        if all_ok {
            ui.paint(Style::Good, "All good: one command moved new traffic to pool-b, one command brought it back, no connection failed.")
        } else {
            ui.paint(Style::Bad, "Something did not hold (see above).")
        }
    );
    Ok(all_ok)
}

/// Namespaces and pins of a setup, to check after it is dropped that they are gone.
struct Leftovers {
    namespaces: Vec<String>,
    pins: PathBuf,
}

impl Leftovers {
    fn report(&self, ui: &Ui) {
        let ns_left: Vec<&String> =
            self.namespaces.iter().filter(|n| Path::new("/var/run/netns").join(n).exists()).collect();
        let pins_left = self.pins.exists();
        if ns_left.is_empty() && !pins_left {
            println!(
                "{}",
                ui.paint(
                    Style::Dim,
                    &format!(
                        "cleaned up: daemon stopped, {} namespaces deleted, {} removed",
                        self.namespaces.len(),
                        self.pins.display()
                    )
                )
            );
        } else {
            println!(
                "{}",
                ui.paint(
                    Style::Bad,
                    &format!("cleanup incomplete: namespaces {ns_left:?}, pins left: {pins_left}")
                )
            );
        }
    }
}

/// Builds the setup, runs the tour, drops the setup (cleanup) and checks it is gone.
fn run(ui: &Ui) -> Result<bool> {
    println!(
        "{}",
        ui.paint(
            Style::Bold,
            "lb-demo: switching a service between two deployment pools with one command, and back"
        )
    );
    println!(
        "{}",
        ui.paint(Style::Dim, "setting up network namespaces, 4 backends and lb-daemon (a few seconds)…")
    );
    let began = Instant::now();
    let setup = e2e::setup("demo", "nat").context("building the demo topology")?;
    println!("{}", ui.paint(Style::Dim, &format!("ready in {:.1} s", began.elapsed().as_secs_f64())));
    let leftovers = Leftovers { namespaces: setup.topo.namespace_names(), pins: setup.daemon.pin_dir() };
    let result = tour(ui, &setup);
    if result.is_err() || stopped() {
        // Keep the daemon's view for a failed run.
        if !stopped() {
            let log = setup.daemon.log();
            let tail: Vec<&str> = log.lines().rev().take(10).collect();
            for line in tail.into_iter().rev() {
                eprintln!("  daemon: {line}");
            }
        }
    }
    println!();
    drop(setup);
    leftovers.report(ui);
    result
}

/// The command line: no options, but `--help` says what the demo does before it does it.
#[derive(Parser)]
#[command(
    name = "lb-demo",
    about = "A guided tour of the load balancer in about half a minute (run by `cargo xtask demo`)",
    long_about = "A guided tour of the load balancer in about half a minute (run by `cargo xtask demo`).\n\n\
        Builds throw-away network namespaces (a client, the balancer with lb-daemon, pool-a and \
        pool-b), sends a trickle of connections to the VIP and shows which pool answers while it \
        runs `lbctl switch pool-b` and `lbctl rollback`. Everything is removed at the end, also \
        on Ctrl-C. Exits 0 only if no connection failed. Needs root."
)]
struct Args {}

fn main() -> ExitCode {
    let Args {} = Args::parse();
    let ui = Ui::new();
    if let Err(code) = require_root("lb-demo", "it creates network namespaces and loads an XDP program") {
        return code;
    }
    if let Err(e) = lb_tests::interrupt::install() {
        eprintln!("lb-demo: {e:#}");
        return ExitCode::from(1);
    }
    let result = run(&ui);
    if stopped() {
        eprintln!("lb-demo: interrupted");
        return ExitCode::from(130);
    }
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("lb-demo: {e:#}");
            ExitCode::from(1)
        }
    }
}
