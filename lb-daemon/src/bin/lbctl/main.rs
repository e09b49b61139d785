//! `lbctl`: the command-line client of lb-daemon's management API. It switches a service
//! between pools, rolls back, splits traffic and shows state, drain progress and history.
//!
//! A thin client: every command is one or two API requests (see `lb_daemon::api::client`),
//! text output is a summary of the response and `--output json` prints the response itself.
//! This file holds the command line (clap) and the dispatch; each command lives in
//! `commands/<name>.rs`, the wait/watch loop after a switch in [`follow`], text, colours and
//! JSON in [`render`], and the error type with its stable exit codes in [`failure`] (see
//! `lbctl --help`). Help epilogues are the text files under `help/`.

mod args;
mod commands;
mod endpoint;
mod failure;
#[cfg(test)]
mod fixtures;
mod fleet;
mod follow;
mod render;
mod sync;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::error::ErrorKind;
use clap::{Args, CommandFactory, Parser, Subcommand, ValueEnum};
use lb_daemon::api::client::Client;

use crate::failure::Failure;

/// A help text of `help/` (its final newline dropped: clap adds its own).
macro_rules! help {
    ($name:literal) => {
        include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/src/bin/lbctl/help/", $name, ".txt")).trim_end()
    };
}
pub(crate) use help;

/// Command line.
#[derive(Parser, Debug)]
#[command(
    name = "lbctl",
    version,
    about = "Control lb-daemon, the XDP load balancer: switch a service between pools, roll back, split, inspect",
    long_about = help!("about"),
    after_help = help!("lbctl")
)]
pub struct Cli {
    /// API Unix socket of the daemon.
    #[arg(long, global = true, env = "LB_SOCKET", default_value = "/run/lb/lb.sock", value_name = "PATH")]
    socket: PathBuf,
    /// Talk to the daemon over TCP instead of the Unix socket (needs --token-file or LB_TOKEN).
    #[arg(long, global = true, value_name = "HOST:PORT")]
    url: Option<String>,
    /// File holding the bearer token for --url.
    #[arg(long, global = true, value_name = "PATH", requires = "url")]
    token_file: Option<PathBuf>,
    /// Output format: a readable summary, or the API's JSON response.
    #[arg(long, short = 'o', global = true, value_enum, default_value_t = Output::Text, value_name = "FORMAT")]
    output: Output,
    /// Service to act on (may be left out when the daemon has exactly one).
    #[arg(long, short = 's', global = true, value_name = "NAME", value_parser = args::service_name)]
    service: Option<String>,
    /// Give up on one request after this long (seconds, e.g. 10 or 0.5).
    #[arg(long, global = true, default_value = "10", value_name = "SECONDS", value_parser = args::timeout)]
    timeout: Duration,
    /// What to do.
    #[command(subcommand)]
    command: Command,
}

/// Output format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Output {
    /// Readable summary.
    Text,
    /// The API's JSON response, pretty-printed.
    Json,
}

/// Subcommands.
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Show the daemon, its interfaces, services, pools, backends and watches (--service: only
    /// that service).
    #[command(after_help = help!("status"))]
    Status,
    /// Live dashboard: health, new flows/s and packets/s per pool and backend.
    ///
    /// Refreshed every --interval until Ctrl-C (or --iterations frames).
    #[command(after_help = help!("top"))]
    Top {
        /// Time between two frames (e.g. 1s, 500ms, 5s; at least 100ms).
        #[arg(long, default_value = "1s", value_name = "DURATION", value_parser = args::interval)]
        interval: Duration,
        /// Stop after this many frames (for scripts); without it, run until interrupted.
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
        iterations: Option<u64>,
    },
    /// Make POOL the active pool: new flows go there, established flows stay (unless --hard).
    #[command(
        after_help = help!("switch"),
        mut_args(worded(&[
            ("hard", "Move established flows to the new pool too (they may see resets)"),
            ("force", "Switch even when POOL has fewer healthy backends than its min_healthy (warns)"),
            ("dry_run", "Say what would happen (refusal, warnings) and change nothing"),
            (
                "expect_active",
                "Only switch if this is active now (a pool, or e.g. \"split pool-a=90 pool-b=10\"); \
                 otherwise change nothing and exit 6",
            ),
        ])),
    )]
    Switch {
        /// Pool to make active.
        #[arg(value_name = "POOL")]
        pool: String,
        // Drain or hard, forced or not. (a plain comment: clap would show a doc comment as help)
        #[allow(missing_docs)]
        #[command(flatten)]
        how: SwitchHow,
        // Dry run and compare-and-swap. (a plain comment: clap would show a doc comment as help)
        #[allow(missing_docs)]
        #[command(flatten)]
        change: ChangeFlags,
        // What to wait for afterwards. (a plain comment: clap would show a doc comment as help)
        #[allow(missing_docs)]
        #[command(flatten)]
        waits: WaitFlags,
    },
    /// Go back to the previous active pool or split.
    #[command(
        after_help = help!("rollback"),
        mut_args(worded(&[(
            "expect_active",
            "Only roll back if this is active now; otherwise change nothing and exit 6"
        )])),
    )]
    Rollback {
        /// Move established flows too.
        #[arg(long)]
        hard: bool,
        // Dry run and compare-and-swap. (a plain comment: clap would show a doc comment as help)
        #[allow(missing_docs)]
        #[command(flatten)]
        change: ChangeFlags,
        // Wait for every host of a fleet. (a plain comment: clap would show a doc comment as help)
        #[allow(missing_docs)]
        #[command(flatten)]
        fleet: FleetWaitFlag,
    },
    /// Share new flows between pools by percentage (at least two pools, summing to 100).
    #[command(
        after_help = help!("split"),
        mut_args(worded(&[
            ("force", "Split even when a pool has fewer healthy backends than its min_healthy (warns)"),
            ("expect_active", "Only split if this is active now; otherwise change nothing and exit 6"),
        ])),
    )]
    Split {
        /// POOL=PERCENT pairs, e.g. pool-a=90 pool-b=10.
        #[arg(value_name = "POOL=PCT", num_args = 2.., required = true)]
        weights: Vec<String>,
        // Forced or not. (a plain comment: clap would show a doc comment as help)
        #[allow(missing_docs)]
        #[command(flatten)]
        force: ForceFlag,
        // Dry run and compare-and-swap. (a plain comment: clap would show a doc comment as help)
        #[allow(missing_docs)]
        #[command(flatten)]
        change: ChangeFlags,
        // Wait for every host of a fleet. (a plain comment: clap would show a doc comment as help)
        #[allow(missing_docs)]
        #[command(flatten)]
        fleet: FleetWaitFlag,
    },
    /// Show established and closing flows per pool (what a drain switch leaves behind).
    #[command(after_help = help!("drain-status"))]
    DrainStatus,
    /// List the service's pools with their share, health and backends.
    #[command(after_help = help!("pools"))]
    Pools,
    /// List every backend of the service: pool, address, weight, state, counters, last error.
    #[command(after_help = help!("backends"))]
    Backends,
    /// Change one backend: drain, disable, enable it, or set its weight (`lbctl backends`
    /// lists them).
    #[command(after_help = help!("backend"))]
    Backend {
        /// What to do.
        #[command(subcommand)]
        action: commands::backend::BackendCommand,
    },
    /// Show recorded changes (switches, rollbacks, splits), newest last.
    #[command(after_help = help!("history"))]
    History {
        /// Show at most this many entries (1-10000).
        #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..=10_000))]
        limit: u32,
    },
    /// Make the daemon re-read its config file and apply it.
    #[command(after_help = help!("reload"))]
    Reload,
    /// Stop the daemon. Forwarding continues from the pinned state unless --detach.
    #[command(after_help = help!("shutdown"))]
    Shutdown {
        /// Also detach the XDP program and remove the pinned maps: forwarding stops.
        #[arg(long)]
        detach: bool,
    },
    /// This balancer host in a BGP fleet: maintenance (drain, undrain) and what it announces.
    ///
    /// Drain withdraws every VIP from BGP (routers send new flows to the other hosts) and keeps
    /// forwarding what still arrives; `host status` shows the flows left.
    #[command(after_help = help!("host"))]
    Host {
        /// What to do with the host.
        #[command(subcommand)]
        action: commands::host::HostAction,
    },
    /// Print a shell completion script to stdout.
    #[command(after_help = help!("completions"))]
    Completions {
        /// The shell to complete in.
        #[arg(value_enum, value_name = "SHELL")]
        shell: commands::completions::CompletionShell,
    },
    /// Print lbctl's man page (roff) to stdout.
    #[command(hide = true, after_help = help!("man"))]
    Man,
}

/// Words the help of shared flags (`--hard`, `--force`, `--dry-run`, `--expect-active`) for
/// one command: `(arg id, help)` pairs. Through clap's `mut_args`, which keeps their order.
fn worded(helps: &'static [(&'static str, &'static str)]) -> impl FnMut(clap::Arg) -> clap::Arg {
    move |a| match helps.iter().find(|(id, _)| a.get_id() == *id) {
        Some((_, help)) => a.help(*help),
        None => a,
    }
}

/// `--hard` and `--force` of `switch` (rollback has only `--hard`, split only `--force`).
#[derive(Args, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SwitchHow {
    /// Move established flows too.
    #[arg(long)]
    pub hard: bool,
    // Forced or not. (a plain comment: clap would show a doc comment as help)
    #[allow(missing_docs)]
    #[command(flatten)]
    pub force: ForceFlag,
}

/// `--force`: change even when a pool has fewer healthy backends than its min_healthy.
#[derive(Args, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ForceFlag {
    /// Change even when a pool has fewer healthy backends than its min_healthy (warns).
    #[arg(long)]
    pub force: bool,
}

/// The flags every change (switch, rollback, split) takes; each command words their help.
#[derive(Args, Clone, Debug, Default, PartialEq, Eq)]
pub struct ChangeFlags {
    /// Say what would happen and change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Only change if this is active now; otherwise change nothing and exit 6.
    #[arg(long, value_name = "POOL", value_parser = args::expect_active)]
    pub expect_active: Option<String>,
}

/// What `switch` waits for after the change (see [`follow`]).
#[derive(Args, Clone, Copy, Debug, PartialEq, Eq)]
pub struct WaitFlags {
    /// Wait until a new flow reached POOL (default 30s); exit 8 on timeout.
    #[arg(
        long,
        value_name = "TIMEOUT",
        num_args = 0..=1,
        default_missing_value = "30s",
        value_parser = args::duration
    )]
    pub wait: Option<Duration>,
    /// Wait until the pools that no longer get new flows have no established flow; exit 8
    /// on timeout.
    #[arg(long, value_name = "TIMEOUT", value_parser = args::duration)]
    pub wait_drained: Option<Duration>,
    /// Have the daemon watch POOL this long and roll back by itself if it falls below
    /// min_healthy; lbctl follows the watch (exit 9 on an automatic rollback).
    #[arg(long, value_name = "DURATION", value_parser = args::duration)]
    pub watch: Option<Duration>,
    /// While waiting, keep polling a daemon that does not answer (a restart) this long before
    /// giving up with exit 3.
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = args::duration)]
    pub retry_for: Duration,
    // In a fleet, every host first. (a plain comment: clap would show a doc comment as help)
    #[allow(missing_docs)]
    #[command(flatten)]
    pub fleet: FleetWaitFlag,
}

/// `--wait-fleet` of every change (switch, rollback, split).
#[derive(Args, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FleetWaitFlag {
    /// In a fleet: wait until every live host applied the change (default 30s); exit 8 on
    /// timeout, naming the hosts that did not.
    #[arg(
        long,
        value_name = "TIMEOUT",
        num_args = 0..=1,
        default_missing_value = "30s",
        value_parser = args::duration
    )]
    pub wait_fleet: Option<Duration>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // `completions` and `man` need no daemon (nor a valid --url/token).
    if let Some(text) = commands::offline_output(&cli.command) {
        render::print_stdout(&text);
        return ExitCode::SUCCESS;
    }
    let split = match &cli.command {
        Command::Split { weights, .. } => match args::split(weights) {
            Ok(req) => Some(req),
            Err(msg) => usage_error(ErrorKind::ValueValidation, msg),
        },
        _ => None,
    };
    let endpoint = match endpoint::from_cli(cli.url.as_deref(), &cli.socket, cli.token_file.as_deref()) {
        Ok(e) => e,
        Err(msg) => usage_error(ErrorKind::ArgumentConflict, msg),
    };
    let client = Client::new(endpoint, endpoint::requester(), cli.timeout);
    match run(&cli, &client, split) {
        Ok(out) => {
            render::print_stdout(&out);
            ExitCode::SUCCESS
        }
        Err(e) => {
            let one_line = matches!(cli.command, Command::Top { .. });
            failure::report(&e, cli.output == Output::Json, one_line, cli.url.is_none());
            ExitCode::from(e.exit_code() as u8)
        }
    }
}

/// Prints a clap-style usage error and exits with 2.
fn usage_error(kind: ErrorKind, msg: String) -> ! {
    Cli::command().error(kind, msg).exit()
}

/// Runs the command; returns what to print on stdout (a switch that waits prints its progress
/// itself as it goes).
fn run(
    cli: &Cli,
    client: &Client,
    split: Option<lb_daemon::api::model::SplitRequest>,
) -> Result<String, Failure> {
    use commands::*;
    let json = cli.output == Output::Json;
    let service = cli.service.as_deref();
    match &cli.command {
        Command::Status => status::run(client, service, json),
        Command::Top { interval, iterations } => top::run(client, service, json, *interval, *iterations),
        Command::Completions { .. } | Command::Man => Ok(offline_output(&cli.command).unwrap_or_default()),
        Command::Switch { pool, how, change, waits } => {
            switch::run(client, service, json, pool, *how, change, *waits)
        }
        Command::Rollback { hard, change, fleet } => {
            rollback::run(client, service, json, *hard, change, fleet.wait_fleet)
        }
        Command::Split { force, change, fleet, .. } => split::run(
            client,
            service,
            json,
            split.unwrap_or_default(),
            force.force,
            change,
            fleet.wait_fleet,
        ),
        Command::DrainStatus => drain_status::run(client, service, json),
        Command::Pools => pools::run(client, service, json),
        Command::Backends => backends::run(client, service, json),
        Command::Backend { action } => backend::run(client, service, json, action),
        Command::History { limit } => history::run(client, service, json, *limit),
        Command::Reload => reload::run(client, json),
        Command::Shutdown { detach } => shutdown::run(client, json, *detach),
        Command::Host { action } => host::run(client, json, *action),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn switch_flags_parse() {
        let switch = |a: &[&str]| match Cli::try_parse_from(a).map(|c| c.command) {
            Ok(Command::Switch { pool, how, change, waits, .. }) => (
                pool,
                how.hard,
                how.force.force,
                change.dry_run,
                change.expect_active,
                waits.wait,
                waits.wait_drained,
                waits.watch,
            ),
            other => panic!("{a:?}: {other:?}"),
        };
        let s = |n: u64| Some(Duration::from_secs(n));
        let ci = switch(&[
            "lbctl",
            "switch",
            "pool-b",
            "--expect-active",
            "pool-a",
            "--watch",
            "60s",
            "--wait-drained",
            "5m",
        ]);
        assert_eq!(ci, ("pool-b".into(), false, false, false, Some("pool-a".into()), None, s(300), s(60)));
        // --wait alone means 30s; its value may follow with a space (after POOL) or `=`.
        assert_eq!(switch(&["lbctl", "switch", "pool-b", "--wait"]).5, s(30));
        assert_eq!(switch(&["lbctl", "switch", "pool-b", "--wait", "10s"]).5, s(10));
        assert_eq!(switch(&["lbctl", "switch", "--wait=2m", "pool-b"]).5, s(120));
        let both = switch(&[
            "lbctl",
            "switch",
            "pool-b",
            "--wait",
            "--watch",
            "1m",
            "--force",
            "--dry-run",
            "--hard",
        ]);
        assert_eq!((both.1, both.2, both.3, both.5, both.7), (true, true, true, s(30), s(60)));
        assert_eq!(switch(&["lbctl", "switch", "pool-b"]).5, None);
        for bad in [
            &["lbctl", "switch", "pool-b", "--watch", "0s"][..],
            &["lbctl", "switch", "pool-b", "--watch"],
            &["lbctl", "switch", "pool-b", "--wait-drained", "soon"],
            &["lbctl", "switch", "pool-b", "--expect-active", ""],
            &["lbctl", "switch", "pool-b", "--wait", "10s", "extra"],
            &["lbctl", "switch", "pool-b", "--retry-for", "0"],
            &["lbctl", "rollback", "--force"],
            &["lbctl", "split", "a=50", "b=50", "--hard"],
        ] {
            assert!(Cli::try_parse_from(bad).is_err(), "{bad:?}");
        }
        // --retry-for: 30s unless given.
        let retry = |a: &[&str]| match Cli::try_parse_from(a).unwrap().command {
            Command::Switch { waits, .. } => waits.retry_for,
            other => panic!("{other:?}"),
        };
        assert_eq!(retry(&["lbctl", "switch", "pool-b", "--watch", "1m"]), Duration::from_secs(30));
        assert_eq!(retry(&["lbctl", "switch", "pool-b", "--retry-for", "2m"]), Duration::from_secs(120));
        let cli =
            Cli::try_parse_from(["lbctl", "rollback", "--dry-run", "--expect-active", "pool-b", "--hard"])
                .unwrap();
        assert!(matches!(
            cli.command,
            Command::Rollback {
                hard: true,
                change: ChangeFlags { dry_run: true, expect_active: Some(ref p) },
                fleet: FleetWaitFlag { wait_fleet: None },
            }
                if p == "pool-b"
        ));
        let cli = Cli::try_parse_from([
            "lbctl",
            "split",
            "pool-a=90",
            "pool-b=10",
            "--force",
            "--dry-run",
            "--expect-active",
            "split pool-a=50 pool-b=50",
        ])
        .unwrap();
        assert!(matches!(
            cli.command,
            Command::Split {
                force: ForceFlag { force: true },
                change: ChangeFlags { dry_run: true, expect_active: Some(ref e) },
                ref weights,
                ..
            } if e == "split pool-a=50 pool-b=50" && weights.len() == 2
        ));
        let cli = Cli::try_parse_from(["lbctl", "-o", "json", "drain-status", "-s", "web"]).unwrap();
        assert!(matches!(cli.command, Command::DrainStatus));
    }

    #[test]
    fn wait_fleet_on_every_change() {
        let fleet = |a: &[&str]| match Cli::try_parse_from(a).map(|c| c.command) {
            Ok(
                Command::Switch { waits: WaitFlags { fleet, .. }, .. }
                | Command::Rollback { fleet, .. }
                | Command::Split { fleet, .. },
            ) => fleet.wait_fleet,
            other => panic!("{a:?}: {other:?}"),
        };
        let s = |n: u64| Some(Duration::from_secs(n));
        assert_eq!(fleet(&["lbctl", "switch", "pool-b", "--wait-fleet"]), s(30));
        assert_eq!(fleet(&["lbctl", "switch", "pool-b", "--wait-fleet", "5s", "--wait"]), s(5));
        assert_eq!(fleet(&["lbctl", "switch", "pool-b"]), None);
        assert_eq!(fleet(&["lbctl", "rollback", "--wait-fleet=1m"]), s(60));
        assert_eq!(fleet(&["lbctl", "split", "a=50", "b=50", "--wait-fleet", "10"]), s(10));
        assert!(Cli::try_parse_from(["lbctl", "switch", "pool-b", "--wait-fleet", "0"]).is_err());
        assert!(Cli::try_parse_from(["lbctl", "status", "--wait-fleet"]).is_err());
    }

    #[test]
    fn shared_flags_keep_each_command_s_wording() {
        let mut cmd = Cli::command();
        cmd.build();
        let help = |sub: &str, arg: &str| {
            let sub = cmd.find_subcommand(sub).unwrap();
            let a = sub.get_arguments().find(|a| a.get_id() == arg).unwrap();
            a.get_help().unwrap().to_string()
        };
        assert!(help("switch", "expect_active").starts_with("Only switch if this is active now (a pool"));
        assert!(help("rollback", "expect_active").starts_with("Only roll back if"));
        assert!(help("split", "expect_active").starts_with("Only split if"));
        assert_eq!(help("switch", "dry_run"), "Say what would happen (refusal, warnings) and change nothing");
        assert_eq!(help("split", "dry_run"), "Say what would happen and change nothing");
        assert!(help("switch", "force").starts_with("Switch even when POOL"));
        assert!(help("split", "force").starts_with("Split even when a pool"));
        assert_eq!(help("rollback", "hard"), "Move established flows too");
    }

    #[test]
    fn split_syntax_errors_are_usage_errors_and_cli_parses() {
        let cli = Cli::try_parse_from(["lbctl", "-s", "web", "split", "a=60", "b=40", "-o", "json"]).unwrap();
        assert_eq!(cli.service.as_deref(), Some("web"));
        assert_eq!(cli.output, Output::Json);
        assert!(matches!(cli.command, Command::Split { ref weights, .. } if weights.len() == 2));
        assert!(Cli::try_parse_from(["lbctl", "split", "a=100"]).is_err());
        assert!(Cli::try_parse_from(["lbctl", "--service", "Web Site", "status"]).is_err());
        assert!(Cli::try_parse_from(["lbctl", "--timeout", "0", "status"]).is_err());
        assert!(Cli::try_parse_from(["lbctl", "--token-file", "/t", "status"]).is_err());
        assert!(Cli::try_parse_from(["lbctl", "history", "--limit", "0"]).is_err());
        let cli = Cli::try_parse_from(["lbctl", "--timeout", "0.5", "switch", "pool-b", "--hard"]).unwrap();
        assert_eq!(cli.timeout, Duration::from_millis(500));
        Cli::command().debug_assert();
    }

    #[test]
    fn top_completions_and_man_parse() {
        let cli = Cli::try_parse_from(["lbctl", "top"]).unwrap();
        assert!(
            matches!(cli.command, Command::Top { interval, iterations: None } if interval == Duration::from_secs(1))
        );
        let cli =
            Cli::try_parse_from(["lbctl", "-s", "web", "top", "--interval", "500ms", "--iterations", "3"])
                .unwrap();
        assert!(matches!(
            cli.command,
            Command::Top { interval, iterations: Some(3) } if interval == Duration::from_millis(500)
        ));
        for bad in [
            &["lbctl", "top", "--interval", "50ms"][..],
            &["lbctl", "top", "--interval", "0"],
            &["lbctl", "top", "--iterations", "0"],
            &["lbctl", "completions"],
            &["lbctl", "completions", "tcsh"],
        ] {
            assert!(Cli::try_parse_from(bad).is_err(), "{bad:?}");
        }
        let cli = Cli::try_parse_from(["lbctl", "completions", "zsh"]).unwrap();
        assert!(matches!(
            cli.command,
            Command::Completions { shell: commands::completions::CompletionShell::Zsh }
        ));
        assert!(matches!(Cli::try_parse_from(["lbctl", "man"]).unwrap().command, Command::Man));
        assert!(commands::offline_output(&Command::Status).is_none());
    }

    #[test]
    fn every_subcommand_has_examples_in_its_help() {
        let mut cmd = Cli::command();
        cmd.build();
        for sub in cmd.get_subcommands().filter(|s| s.get_name() != "help") {
            let help = sub.get_after_help().map(|h| h.to_string()).unwrap_or_default();
            assert!(help.starts_with("Example"), "{}: {help:?}", sub.get_name());
            assert!(
                help.contains(&format!("lbctl {}", sub.get_name())) || help.contains("lbctl -"),
                "{}",
                sub.get_name()
            );
            assert!(!help.ends_with('\n'), "{}", sub.get_name());
        }
        let top = help!("lbctl");
        assert!(top.contains("lbctl top"));
        // The exit codes are listed.
        for line in ["  8  a wait timed out", "  9  the daemon rolled back automatically during --watch"] {
            assert!(top.contains(line), "{line}");
        }
        assert!(top.contains("lbctl switch pool-b --expect-active pool-a --watch 60s --wait-drained 5m"));
    }
}
