//! `lbctl`: the command-line client of lb-daemon's management API. It switches a service
//! between pools, rolls back, splits traffic and shows state, drain progress and history.
//!
//! A thin client: every command is one or two API requests (see `lb_daemon::client`), text
//! output is a summary of the response and `--output json` prints the response itself. After a
//! switch, `--wait`, `--wait-drained` and `--watch` poll the daemon until the change took effect
//! (see [`follow`]); the watch itself is held by the daemon, lbctl only reports on it. Exit
//! codes are stable so CI steps can branch on them (see [`exit_code`] and `lbctl --help`).

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::error::ErrorKind;
use clap::{CommandFactory, Parser, Subcommand, ValueEnum};
use lb_daemon::{api::model::*, client::*};
use serde::Serialize;
use serde::de::DeserializeOwned;

/// Shown at the end of `lbctl --help`.
const AFTER_HELP: &str = "\
Examples:
  lbctl status                         daemon, services, pools (healthy/total), watch, counters
  lbctl switch pool-b                  new flows of the (only) service go to pool-b
  lbctl --service web switch pool-b --hard
                                       ...and established flows move too
  lbctl switch pool-b --dry-run        what a switch would do (refusal, warnings); changes nothing
  lbctl rollback                       back to the previous pool (or split)
  lbctl split pool-a=90 pool-b=10      canary: 10% of new flows to pool-b
  lbctl drain-status                   established flows still on each pool
  lbctl pools                          pools with their backends, health and share
  lbctl history --limit 20             the last 20 changes and who made them
  lbctl top                            live dashboard: new flows/s and packets/s per pool and backend
  lbctl -o json status | jq '.services[].active'
  lbctl --url lb1:9180 --token-file /etc/lb/api.token status
                                       a remote daemon over TCP
  lbctl completions bash | sudo tee /etc/bash_completion.d/lbctl
                                       shell completion (also zsh, fish)

CI step (compare-and-swap, daemon-held watch with automatic rollback, wait for the old pool
to empty; fails the pipeline with 6, 8 or 9):
  lbctl switch pool-b --expect-active pool-a --watch 60s --wait-drained 5m

Exit codes:
  0  success (also when nothing had to change, and for --dry-run)
  1  daemon internal error, or an unexpected failure (bad response, timeout, watch cancelled)
  2  usage error (bad arguments)
  3  daemon unreachable (not running, wrong --socket, no permission: try sudo); also when it
     becomes unreachable during --watch/--wait (the daemon keeps watching by itself)
  4  not found (unknown service or pool)
  5  invalid request or refused (e.g. a pool below min_healthy without --force)
  6  conflict (--expect-active did not match: someone else changed the state; look and retry)
  7  unauthorized (missing or wrong token with --url)
  8  a wait timed out (--wait: no new flow reached the new pool; --wait-drained: flows left)
  9  the daemon rolled back automatically during --watch (the new pool turned unhealthy)

Durations:
  --watch, --wait, --wait-drained, --timeout and top's --interval take plain seconds (90, 0.5)
  or humantime (500ms, 60s, 2m, 1h30m).

Environment:
  LB_SOCKET  default for --socket
  LB_TOKEN   bearer token for --url when --token-file is not given
  NO_COLOR   set (to anything but the empty string): no colours. Colours are only used when the
             output goes to a terminal anyway (and TERM is not dumb)";

/// Shown at the end of `lbctl status --help`.
const STATUS_AFTER_HELP: &str = "\
Examples:
  lbctl status                          daemon (uptime, adopted state, XDP mode per interface),
                                        then per service: active pool or split, watch, pools
                                        (share, healthy/total), backends (health, packets, new
                                        flows) and the pass/drop counters
  lbctl -s web status                   only the service web
  lbctl -o json status | jq '.services[] | {name, active}'
                                        the API's JSON (GET /v1/status)
  watch -n1 lbctl status                ...or `lbctl top` for rates instead of totals";

/// Shown at the end of `lbctl top --help`.
const TOP_AFTER_HELP: &str = "\
Examples:
  lbctl top                             refresh every second until Ctrl-C
  lbctl -s web top --interval 5s        only the service web, every 5 seconds
  lbctl top --iterations 2 > top.txt    two frames (one blank line apart), then exit 0
  lbctl -o json top --interval 10s | jq -c '.services[].pools[] | {name, new_flows_per_s}'
                                        one JSON object per line and frame

Rates (new flows/s, packets/s, pass/drop reasons/s) are the difference between two successive
GET /v1/status samples divided by the time between them, so the first frame shows \"-\" (null in
JSON). A counter that went backwards (daemon restarted without its pinned state) also shows \"-\".
On a terminal the screen is cleared before each frame; otherwise frames follow one another. A
failed request ends top with the usual exit code (see `lbctl --help`).";

/// Shown at the end of `lbctl rollback --help`.
const ROLLBACK_AFTER_HELP: &str = "\
Examples:
  lbctl rollback                        back to the previous pool or split; established flows stay
  lbctl rollback --dry-run              what it would do; changes nothing
  lbctl -s web rollback --expect-active pool-b --hard
                                        only if pool-b is active (else exit 6); move all flows";

/// Shown at the end of `lbctl split --help`.
const SPLIT_AFTER_HELP: &str = "\
Examples:
  lbctl split pool-a=90 pool-b=10 --expect-active pool-a
                                        canary: 10% of new flows to pool-b, if pool-a is active
  lbctl split pool-a=50 pool-b=50 --dry-run
  lbctl switch pool-b                   end the canary: every new flow to pool-b";

/// Shown at the end of `lbctl drain-status --help`.
const DRAIN_AFTER_HELP: &str = "\
Examples:
  lbctl drain-status                    established and closing flows per pool
  lbctl -s web -o json drain-status | jq '[.pools[] | select(.share == 0) | .established] | add'
                                        flows left on the pools being drained";

/// Shown at the end of `lbctl pools --help`.
const POOLS_AFTER_HELP: &str = "\
Examples:
  lbctl pools                           each pool with its share, health and backends
  lbctl -s web -o json pools | jq '.pools[] | {name, healthy, min_healthy}'";

/// Shown at the end of `lbctl backends --help`.
const BACKENDS_AFTER_HELP: &str = "\
Examples:
  lbctl backends                        one line per backend
  lbctl backends | grep -w DOWN         the backends failing their health checks
  lbctl -o json backends | jq '.pools[].backends[] | select(.up | not) | .addr'";

/// Shown at the end of `lbctl history --help`.
const HISTORY_AFTER_HELP: &str = "\
Examples:
  lbctl history                         the last 50 changes, newest last
  lbctl -s web history --limit 5        the last 5 changes of the service web
  lbctl -o json history | jq '.[] | select(.kind == \"auto_rollback\")'";

/// Shown at the end of `lbctl reload --help`.
const RELOAD_AFTER_HELP: &str = "\
Examples:
  sudoedit /etc/lb/lb.toml && lb-daemon --config /etc/lb/lb.toml --check && lbctl reload
                                        edit, validate, apply (same as SIGHUP to lb-daemon)
  lbctl -o json reload | jq -r '.changes[]'";

/// Shown at the end of `lbctl shutdown --help`.
const SHUTDOWN_AFTER_HELP: &str = "\
Examples:
  lbctl shutdown                        stop lb-daemon (upgrade); forwarding continues and the
                                        next lb-daemon adopts the pinned state
  lbctl shutdown --detach               stop forwarding: detach XDP, remove the pinned maps";

/// Shown at the end of `lbctl completions --help`.
const COMPLETIONS_AFTER_HELP: &str = "\
Examples:
  lbctl completions bash | sudo tee /etc/bash_completion.d/lbctl > /dev/null
  source <(lbctl completions bash)      this shell only
  lbctl completions zsh > \"${fpath[1]}/_lbctl\"
  lbctl completions fish > ~/.config/fish/completions/lbctl.fish";

/// Shown at the end of `lbctl man --help`.
const MAN_AFTER_HELP: &str = "\
Examples:
  lbctl man > lbctl.1 && man ./lbctl.1
  lbctl man | sudo tee /usr/local/share/man/man1/lbctl.1 > /dev/null";

/// Shown at the end of `lbctl switch --help`.
const SWITCH_AFTER_HELP: &str = "\
Examples:
  lbctl switch pool-b                   prints e.g. `web: pool-a -> pool-b (drain), applied in 84 us`
  lbctl switch pool-b --dry-run         `would switch web: pool-a -> pool-b (drain)`; nothing changes
  lbctl switch pool-b --expect-active pool-a
                                        only if pool-a is active now, else exit 6
  lbctl switch pool-b --expect-active pool-a --watch 60s --wait-drained 5m
                                        the CI step

After the switch (not with --dry-run) lbctl can wait, polling the daemon; all run together,
--wait-drained starts once --wait is satisfied:
  --wait[=TIMEOUT]        until a new flow reached the new pool (its backends' new_flows counter
                          grew); exit 8 after TIMEOUT (default 30s). Write --wait=TIMEOUT, or put
                          --wait TIMEOUT after POOL.
  --wait-drained TIMEOUT  until the pools that now get no new flows have no established flow
                          left; exit 8 after TIMEOUT with the count left.
  --watch DURATION        the daemon watches the new pool for DURATION (whole seconds, rounded
                          up) and rolls back by itself if it falls below min_healthy; lbctl
                          follows the watch: exit 0 when it passed, 9 when the daemon rolled back,
                          1 when it was cancelled (another change), 3 when the daemon cannot be
                          reached. The watch is the daemon's: stopping lbctl does not stop it.
An automatic rollback ends all waits at once (exit 9).

JSON output (-o json): without wait flags, the switch outcome. With any of --wait,
--wait-drained, --watch: ONE object once everything finished or failed,
  {\"outcome\": <switch outcome>, \"wait\": {\"pool\", \"reached\", \"baseline\", \"new_flows\", \"elapsed_ms\"},
   \"watch\": <watch, as GET /v1/services/{name}/watch>, \"drain\": {\"drained\", \"remaining\", \"pools\",
   \"elapsed_ms\"}, \"error\": {\"exit_code\", \"message\"}}
with a key only for the flags given (null when that wait never ran) and \"error\" only on failure.";

/// Command line.
#[derive(Parser, Debug)]
#[command(
    name = "lbctl",
    version,
    about = "Control lb-daemon, the XDP load balancer: switch a service between pools, roll back, split, inspect",
    long_about = "Control lb-daemon, the XDP load balancer.\n\n\
        A service's new flows go to one active pool (or are split between pools). `switch` \
        changes the active pool with one map update; `rollback` goes back. With one service \
        configured, --service may be left out.",
    after_help = AFTER_HELP
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
    #[arg(long, short = 's', global = true, value_name = "NAME", value_parser = parse_service_name)]
    service: Option<String>,
    /// Give up on one request after this long (seconds, e.g. 10 or 0.5).
    #[arg(long, global = true, default_value = "10", value_name = "SECONDS", value_parser = parse_timeout)]
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
    #[command(after_help = STATUS_AFTER_HELP)]
    Status,
    /// Live dashboard: health, new flows/s and packets/s per pool and backend.
    ///
    /// Refreshed every --interval until Ctrl-C (or --iterations frames).
    #[command(after_help = TOP_AFTER_HELP)]
    Top {
        /// Time between two frames (e.g. 1s, 500ms, 5s; at least 100ms).
        #[arg(long, default_value = "1s", value_name = "DURATION", value_parser = parse_interval)]
        interval: Duration,
        /// Stop after this many frames (for scripts); without it, run until interrupted.
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
        iterations: Option<u64>,
    },
    /// Make POOL the active pool: new flows go there, established flows stay (unless --hard).
    #[command(after_help = SWITCH_AFTER_HELP)]
    Switch {
        /// Pool to make active.
        #[arg(value_name = "POOL")]
        pool: String,
        /// Move established flows to the new pool too (they may see resets).
        #[arg(long)]
        hard: bool,
        /// Switch even when POOL has fewer healthy backends than its min_healthy (warns).
        #[arg(long)]
        force: bool,
        /// Say what would happen (refusal, warnings) and change nothing.
        #[arg(long)]
        dry_run: bool,
        /// Only switch if this is active now (a pool, or e.g. "split pool-a=90 pool-b=10");
        /// otherwise change nothing and exit 6.
        #[arg(long, value_name = "POOL", value_parser = parse_expect_active)]
        expect_active: Option<String>,
        /// Wait until a new flow reached POOL (default 30s); exit 8 on timeout.
        #[arg(
            long,
            value_name = "TIMEOUT",
            num_args = 0..=1,
            default_missing_value = "30s",
            value_parser = parse_duration
        )]
        wait: Option<Duration>,
        /// Wait until the pools that no longer get new flows have no established flow; exit 8
        /// on timeout.
        #[arg(long, value_name = "TIMEOUT", value_parser = parse_duration)]
        wait_drained: Option<Duration>,
        /// Have the daemon watch POOL this long and roll back by itself if it falls below
        /// min_healthy; lbctl follows the watch (exit 9 on an automatic rollback).
        #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
        watch: Option<Duration>,
    },
    /// Go back to the previous active pool or split.
    #[command(after_help = ROLLBACK_AFTER_HELP)]
    Rollback {
        /// Move established flows too.
        #[arg(long)]
        hard: bool,
        /// Say what would happen and change nothing.
        #[arg(long)]
        dry_run: bool,
        /// Only roll back if this is active now; otherwise change nothing and exit 6.
        #[arg(long, value_name = "POOL", value_parser = parse_expect_active)]
        expect_active: Option<String>,
    },
    /// Share new flows between pools by percentage (at least two pools, summing to 100).
    #[command(after_help = SPLIT_AFTER_HELP)]
    Split {
        /// POOL=PERCENT pairs, e.g. pool-a=90 pool-b=10.
        #[arg(value_name = "POOL=PCT", num_args = 2.., required = true)]
        weights: Vec<String>,
        /// Split even when a pool has fewer healthy backends than its min_healthy (warns).
        #[arg(long)]
        force: bool,
        /// Say what would happen and change nothing.
        #[arg(long)]
        dry_run: bool,
        /// Only split if this is active now; otherwise change nothing and exit 6.
        #[arg(long, value_name = "POOL", value_parser = parse_expect_active)]
        expect_active: Option<String>,
    },
    /// Show established and closing flows per pool (what a drain switch leaves behind).
    #[command(after_help = DRAIN_AFTER_HELP)]
    DrainStatus,
    /// List the service's pools with their share, health and backends.
    #[command(after_help = POOLS_AFTER_HELP)]
    Pools,
    /// List every backend of the service: pool, address, weight, state, counters, last error.
    #[command(after_help = BACKENDS_AFTER_HELP)]
    Backends,
    /// Show recorded changes (switches, rollbacks, splits), newest last.
    #[command(after_help = HISTORY_AFTER_HELP)]
    History {
        /// Show at most this many entries (1-10000).
        #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..=10_000))]
        limit: u32,
    },
    /// Make the daemon re-read its config file and apply it.
    #[command(after_help = RELOAD_AFTER_HELP)]
    Reload,
    /// Stop the daemon. Forwarding continues from the pinned state unless --detach.
    #[command(after_help = SHUTDOWN_AFTER_HELP)]
    Shutdown {
        /// Also detach the XDP program and remove the pinned maps: forwarding stops.
        #[arg(long)]
        detach: bool,
    },
    /// Print a shell completion script to stdout.
    #[command(after_help = COMPLETIONS_AFTER_HELP)]
    Completions {
        /// The shell to complete in.
        #[arg(value_enum, value_name = "SHELL")]
        shell: CompletionShell,
    },
    /// Print lbctl's man page (roff) to stdout.
    #[command(hide = true, after_help = MAN_AFTER_HELP)]
    Man,
}

/// Shells `lbctl completions` writes a script for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum CompletionShell {
    /// GNU bash.
    Bash,
    /// Z shell.
    Zsh,
    /// fish.
    Fish,
}

impl From<CompletionShell> for clap_complete::Shell {
    fn from(shell: CompletionShell) -> Self {
        match shell {
            CompletionShell::Bash => clap_complete::Shell::Bash,
            CompletionShell::Zsh => clap_complete::Shell::Zsh,
            CompletionShell::Fish => clap_complete::Shell::Fish,
        }
    }
}

/// Why lbctl failed.
#[derive(Debug)]
pub enum Failure {
    /// A request failed; whatever it asked for did not happen.
    Request(ClientError),
    /// The change was made, but a request while following it failed. `note` says what the
    /// daemon still does by itself (a watch it holds).
    Following {
        /// What failed.
        error: ClientError,
        /// E.g. "lb-daemon still holds the watch of pool-b until ...".
        note: Option<String>,
    },
    /// `--wait` or `--wait-drained` ran out of time.
    WaitTimedOut(String),
    /// The daemon rolled back by itself during `--watch`.
    RolledBack(String),
    /// Anything else: a cancelled watch, a watch that did not end, a malformed response.
    Unexpected(String),
}

impl From<ClientError> for Failure {
    fn from(error: ClientError) -> Self {
        Failure::Request(error)
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Request(e) => write!(f, "{e}"),
            Failure::Following { error, note: Some(note) } => write!(f, "{error}; {note}"),
            Failure::Following { error, note: None } => write!(f, "{error} (the change itself was made)"),
            Failure::WaitTimedOut(m) | Failure::RolledBack(m) | Failure::Unexpected(m) => write!(f, "{m}"),
        }
    }
}

/// The process exit code of a failure:
///
/// | code | meaning |
/// |------|---------|
/// | 0 | success (never returned here) |
/// | 1 | daemon internal error, or an unexpected failure (bad response, request timeout, watch cancelled) |
/// | 2 | usage error (clap exits with it before anything is sent) |
/// | 3 | daemon unreachable; also when it becomes unreachable while following a change |
/// | 4 | not found (unknown service or pool) |
/// | 5 | invalid request or refused (e.g. a pool below min_healthy without `--force`) |
/// | 6 | conflict (`--expect-active` did not match, or the service changed during `--wait-drained`) |
/// | 7 | unauthorized (TCP without the right token) |
/// | 8 | a wait (`--wait`, `--wait-drained`) timed out |
/// | 9 | the daemon rolled back automatically during `--watch` |
pub fn exit_code(failure: &Failure) -> i32 {
    match failure {
        Failure::Request(e) => client_exit_code(e),
        Failure::Following { error, .. } => match error {
            ClientError::Api { .. } => client_exit_code(error),
            // Lost contact (or a timeout) after the change: the daemon is what is unreachable.
            ClientError::Unreachable { .. } | ClientError::Protocol(_) => 3,
        },
        Failure::WaitTimedOut(_) => 8,
        Failure::RolledBack(_) => 9,
        Failure::Unexpected(_) => 1,
    }
}

/// The exit code of a failed request (see [`exit_code`]).
fn client_exit_code(error: &ClientError) -> i32 {
    match error {
        ClientError::Unreachable { .. } => 3,
        ClientError::Api { error, .. } => match error.code {
            ErrorCode::NotFound => 4,
            ErrorCode::InvalidRequest | ErrorCode::Refused => 5,
            ErrorCode::Conflict => 6,
            ErrorCode::Unauthorized => 7,
            ErrorCode::Internal => 1,
        },
        ClientError::Protocol(_) => 1,
    }
}

/// Parses `split` arguments (`POOL=PCT`, a trailing `%` allowed): at least two distinct pools,
/// each 1-100, summing to 100.
pub fn parse_split(args: &[String]) -> Result<SplitRequest, String> {
    let mut weights: Vec<PoolWeight> = Vec::with_capacity(args.len());
    for arg in args {
        let (pool, pct) =
            arg.split_once('=').ok_or_else(|| format!("{arg:?} is not POOL=PCT (e.g. pool-a=90)"))?;
        let pool = pool.trim();
        if pool.is_empty() {
            return Err(format!("{arg:?}: the pool name is missing"));
        }
        let pct = pct.trim();
        let weight: u32 = pct
            .strip_suffix('%')
            .unwrap_or(pct)
            .parse()
            .ok()
            .filter(|w| (1..=100).contains(w))
            .ok_or_else(|| format!("{arg:?}: the percentage must be a whole number from 1 to 100"))?;
        if weights.iter().any(|w| w.pool == pool) {
            return Err(format!("pool {pool} is given twice"));
        }
        weights.push(PoolWeight { pool: pool.to_owned(), weight });
    }
    if weights.len() < 2 {
        return Err("a split needs at least two pools (for one pool, use `lbctl switch POOL`)".into());
    }
    let sum: u32 = weights.iter().map(|w| w.weight).sum();
    if sum != 100 {
        return Err(format!("the percentages add up to {sum}, not 100"));
    }
    Ok(SplitRequest { weights, ..SplitRequest::default() })
}

fn parse_service_name(s: &str) -> Result<String, String> {
    if !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b)) {
        Ok(s.to_owned())
    } else {
        Err("service names are made of a-z, 0-9, '.', '_' and '-'".into())
    }
}

/// Longest accepted duration for the waits and the watch (the daemon's watch limit too).
const MAX_DURATION: Duration = Duration::from_secs(86_400);

/// A duration: plain seconds (`90`, `0.5`) or humantime (`500ms`, `60s`, `2m`, `1h30m`); more
/// than 0, at most 24 h.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let d = match s.parse::<f64>() {
        Ok(secs) if secs.is_finite() && secs > 0.0 && secs <= MAX_DURATION.as_secs_f64() => {
            Duration::from_secs_f64(secs)
        }
        Ok(_) => return Err("must be more than 0 and at most 24h".into()),
        Err(_) => humantime::parse_duration(s)
            .map_err(|_| format!("{s:?} is not a duration: expected e.g. 60s, 2m, 500ms or plain seconds"))?,
    };
    if d.is_zero() || d > MAX_DURATION {
        return Err("must be more than 0 and at most 24h".into());
    }
    Ok(d)
}

/// The `watch_s` of a `--watch` duration: whole seconds, rounded up.
pub fn watch_secs(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

fn parse_expect_active(s: &str) -> Result<String, String> {
    let s = s.trim();
    if s.is_empty() {
        Err("expected the active pool (or split, e.g. \"split pool-a=90 pool-b=10\")".into())
    } else {
        Ok(s.to_owned())
    }
}

fn parse_timeout(s: &str) -> Result<Duration, String> {
    let d = match s.trim().parse::<f64>() {
        Ok(secs) if secs.is_finite() && secs > 0.0 && secs <= 86_400.0 => Duration::from_secs_f64(secs),
        Ok(_) => return Err("must be more than 0 and at most 86400 seconds".into()),
        Err(_) => humantime::parse_duration(s).map_err(|_| "expected seconds, e.g. 10 or 0.5".to_string())?,
    };
    if d.is_zero() { Err("must be more than 0".into()) } else { Ok(d) }
}

/// `lbctl/<version> user=<user> host=<host>[ ci=<id>]`, from `env` lookups.
fn requester_from(env: impl Fn(&str) -> Option<String>, uid: u32, host: &str) -> String {
    let var = |name: &str| env(name).map(|v| v.trim().to_owned()).filter(|v| !v.is_empty());
    let user = var("SUDO_USER").or_else(|| var("USER")).unwrap_or_else(|| uid.to_string());
    let mut s = format!("lbctl/{} user={user} host={host}", env!("CARGO_PKG_VERSION"));
    if let Some(run) = var("GITHUB_RUN_ID") {
        let job = var("GITHUB_JOB").unwrap_or_else(|| "?".into());
        s.push_str(&format!(" ci=github:{run}/{job}"));
    } else if let Some(job) = var("CI_JOB_ID") {
        s.push_str(&format!(" ci=gitlab:{job}"));
    }
    s
}

fn requester() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "unknown".into());
    // SAFETY: getuid has no preconditions and cannot fail.
    let uid = unsafe { libc::getuid() };
    requester_from(|name| std::env::var(name).ok(), uid, &host)
}

/// The endpoint from the global options, or a usage error message.
fn endpoint(cli: &Cli) -> Result<Endpoint, String> {
    let Some(url) = &cli.url else { return Ok(Endpoint::Unix(cli.socket.clone())) };
    if url.starts_with("https://") {
        return Err(
            "--url: TLS is not supported; use http (HOST:PORT) over a trusted network or a tunnel".into()
        );
    }
    let addr = url.strip_prefix("http://").unwrap_or(url).trim_end_matches('/');
    if addr.is_empty() || addr.contains('/') || !addr.contains(':') {
        return Err(format!("--url {url:?}: expected HOST:PORT"));
    }
    let token = match &cli.token_file {
        Some(path) => std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read the token file {}: {e}", path.display()))?,
        None => std::env::var("LB_TOKEN").unwrap_or_default(),
    };
    let token = token.trim().to_owned();
    if token.is_empty() {
        return Err("--url needs a token: --token-file PATH or the LB_TOKEN environment variable".into());
    }
    Ok(Endpoint::Tcp { addr: addr.to_owned(), token })
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // `completions` and `man` need no daemon (nor a valid --url/token).
    if let Some(text) = offline_output(&cli.command) {
        print_stdout(&text);
        return ExitCode::SUCCESS;
    }
    let split = match &cli.command {
        Command::Split { weights, .. } => match parse_split(weights) {
            Ok(req) => Some(req),
            Err(msg) => usage_error(ErrorKind::ValueValidation, msg),
        },
        _ => None,
    };
    let endpoint = match endpoint(&cli) {
        Ok(e) => e,
        Err(msg) => usage_error(ErrorKind::ArgumentConflict, msg),
    };
    let client = Client::new(endpoint, requester(), cli.timeout);
    match run(&cli, &client, split) {
        Ok(out) => {
            print_stdout(&out);
            ExitCode::SUCCESS
        }
        Err(e) => {
            report(&cli, &e);
            ExitCode::from(exit_code(&e) as u8)
        }
    }
}

/// Prints a clap-style usage error and exits with 2.
fn usage_error(kind: ErrorKind, msg: String) -> ! {
    Cli::command().error(kind, msg).exit()
}

/// Writes to stdout; false when that failed (stdout closed: `lbctl top | head`).
fn write_stdout(text: &str) -> bool {
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes()).and_then(|()| out.flush()).is_ok()
}

/// Writes to stdout, ignoring a closed pipe (`lbctl history | head`).
fn print_stdout(text: &str) {
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(text.as_bytes());
    if !text.is_empty() && !text.ends_with('\n') {
        let _ = out.write_all(b"\n");
    }
    let _ = out.flush();
}

/// Reports a failure: message (and a hint) on stderr; in JSON mode the API's error body on
/// stdout for a failed request (a failure after a change is part of the JSON printed already).
fn report(cli: &Cli, failure: &Failure) {
    if cli.output == Output::Json
        && let Failure::Request(ClientError::Api { error, .. }) = failure
    {
        // `top` prints one JSON object per line: its error body is one line too.
        let body = if matches!(cli.command, Command::Top { .. }) {
            serde_json::to_string(&error.body())
        } else {
            serde_json::to_string_pretty(&error.body())
        };
        if let Ok(body) = body {
            print_stdout(&body);
        }
    }
    let hint = match failure {
        Failure::Request(ClientError::Unreachable { source, .. }) => match source.kind() {
            std::io::ErrorKind::PermissionDenied => " (the API socket is root-only: try sudo)",
            std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused if cli.url.is_none() => {
                " (is lb-daemon running? the socket path is set by --socket or LB_SOCKET)"
            }
            _ => "",
        },
        Failure::Request(ClientError::Api { error, .. }) if error.code == ErrorCode::Unauthorized => {
            " (check --token-file or LB_TOKEN)"
        }
        _ => "",
    };
    eprintln!("{} {failure}{hint}", Paint::for_fd(libc::STDERR_FILENO).error("lbctl:"));
}

/// What a command that needs no daemon prints (`completions`, `man`); `None` for the others.
fn offline_output(command: &Command) -> Option<String> {
    match command {
        Command::Completions { shell } => Some(completions(*shell)),
        Command::Man => Some(man_page()),
        _ => None,
    }
}

/// The completion script of `shell` for lbctl.
fn completions(shell: CompletionShell) -> String {
    let mut script = Vec::new();
    clap_complete::generate(clap_complete::Shell::from(shell), &mut Cli::command(), "lbctl", &mut script);
    String::from_utf8_lossy(&script).into_owned()
}

/// Runs the command; returns what to print on stdout (a switch that waits prints its progress
/// itself as it goes).
fn run(cli: &Cli, client: &Client, split: Option<SplitRequest>) -> Result<String, Failure> {
    let json = cli.output == Output::Json;
    let service = cli.service.as_deref();
    // `/v1/services/web/switch` with --service, `/v1/switch` (the only service) without.
    let service_path = |verb: &str| match service {
        Some(s) => format!("/v1/services/{s}/{verb}"),
        None => format!("/v1/{verb}"),
    };
    let paint = Paint::for_fd(libc::STDOUT_FILENO);
    match &cli.command {
        Command::Status => {
            let raw = client.get_text("/v1/status")?;
            let status: StatusView = parse(&raw)?;
            check_service(&status, service)?;
            Ok(if json { pretty_json(&raw) } else { render_status(&status, service, paint) })
        }
        Command::Top { interval, iterations } => {
            let opts = TopOptions {
                interval: *interval,
                iterations: *iterations,
                json,
                clear: !json && is_tty(libc::STDOUT_FILENO),
                paint,
                service: service.map(str::to_owned),
            };
            run_top(client, &opts, &mut write_stdout).map(|()| String::new())
        }
        Command::Completions { .. } | Command::Man => Ok(offline_output(&cli.command).unwrap_or_default()),
        Command::Switch { pool, hard, force, dry_run, expect_active, wait, wait_drained, watch } => {
            let req = SwitchRequest {
                pool: pool.clone(),
                hard: *hard,
                force: *force,
                dry_run: *dry_run,
                expect_active: expect_active.clone(),
                watch_s: watch.map(watch_secs),
            };
            let raw = client.post_text(&service_path("switch"), &req)?;
            let waits = Waits { new_flow: *wait, drained: *wait_drained, watch: *watch };
            if !waits.any() {
                return outcome(json, &raw, "switch");
            }
            let o: SwitchOutcome = parse(&raw)?;
            if !json {
                print_stdout(&outcome_text(&o, "switch"));
            }
            let (seen, result) = if o.dry_run {
                if !json {
                    print_stdout("dry run: nothing changed, so nothing to wait for\n");
                }
                (Followed::default(), Ok(()))
            } else if json {
                follow(client, &o, pool, waits, &PACE, &mut |_| {})
            } else {
                follow(client, &o, pool, waits, &PACE, &mut |line| print_stdout(&line))
            };
            if json {
                print_stdout(&followed_json(&raw, waits, &seen, result.as_ref().err()));
            }
            result.map(|()| String::new())
        }
        Command::Rollback { hard, dry_run, expect_active } => {
            let req =
                RollbackRequest { hard: *hard, dry_run: *dry_run, expect_active: expect_active.clone() };
            outcome(json, &client.post_text(&service_path("rollback"), &req)?, "roll back")
        }
        Command::Split { force, dry_run, expect_active, .. } => {
            let req = SplitRequest {
                force: *force,
                dry_run: *dry_run,
                expect_active: expect_active.clone(),
                ..split.unwrap_or_default()
            };
            outcome(json, &client.post_text(&service_path("split"), &req)?, "split")
        }
        Command::DrainStatus => {
            let raw = client.get_text(&service_path("drain"))?;
            let view: DrainView = parse(&raw)?;
            Ok(if json { pretty_json(&raw) } else { format_drain(&view) })
        }
        Command::Pools | Command::Backends => {
            let name = match service {
                Some(s) => s.to_owned(),
                None => only_service(client)?,
            };
            let raw = client.get_text(&format!("/v1/services/{name}"))?;
            let view: ServiceView = parse(&raw)?;
            Ok(match (json, &cli.command) {
                (true, _) => pretty_json(&raw),
                (false, Command::Pools) => render_pools(&view, paint),
                (false, _) => render_backends(&view, paint),
            })
        }
        Command::History { limit } => {
            let mut path = format!("/v1/history?limit={limit}");
            if let Some(s) = service {
                path.push_str(&format!("&service={s}"));
            }
            let raw = client.get_text(&path)?;
            let entries: Vec<HistoryEntry> = parse(&raw)?;
            Ok(if json { pretty_json(&raw) } else { format_history(&entries) })
        }
        Command::Reload => {
            let raw = client.post_text("/v1/reload", &serde_json::json!({}))?;
            let out: ReloadOutcome = parse(&raw)?;
            Ok(if json {
                pretty_json(&raw)
            } else if !out.changed {
                "config reloaded: nothing changed\n".to_owned()
            } else {
                let mut s = "config reloaded:\n".to_owned();
                for c in &out.changes {
                    s.push_str(&format!("  {c}\n"));
                }
                s
            })
        }
        Command::Shutdown { detach } => {
            let raw = client.post_text("/v1/shutdown", &ShutdownRequest { detach: *detach })?;
            Ok(if json {
                pretty_json(&raw)
            } else if *detach {
                "lb-daemon is shutting down and detaching the XDP program: forwarding stops\n".into()
            } else {
                "lb-daemon is shutting down; the XDP program stays attached and forwarding continues\n".into()
            })
        }
    }
}

/// `not_found` when `--service` names a service the status does not have.
fn check_service(status: &StatusView, only: Option<&str>) -> Result<(), ClientError> {
    match only {
        Some(name) if !status.services.iter().any(|s| s.name == name) => {
            Err(local_error(ErrorCode::NotFound, format!("no service named {name}")))
        }
        _ => Ok(()),
    }
}

/// The only service's name, or an error naming the choices.
fn only_service(client: &Client) -> Result<String, ClientError> {
    let services: Vec<ServiceView> = client.get("/v1/services")?;
    match services.as_slice() {
        [one] => Ok(one.name.clone()),
        [] => Err(local_error(ErrorCode::NotFound, "the daemon has no services".into())),
        many => {
            let names: Vec<&str> = many.iter().map(|s| s.name.as_str()).collect();
            Err(local_error(
                ErrorCode::InvalidRequest,
                format!("the daemon has several services ({}): pick one with --service", names.join(", ")),
            ))
        }
    }
}

/// An error found by lbctl itself, shaped like the daemon's.
fn local_error(code: ErrorCode, message: String) -> ClientError {
    ClientError::Api { status: code.http_status(), error: ApiError::new(code, message) }
}

fn parse<T: DeserializeOwned>(raw: &str) -> Result<T, ClientError> {
    serde_json::from_str(raw)
        .map_err(|e| ClientError::Protocol(format!("unexpected response from lb-daemon: {e}")))
}

/// Prints a switch/rollback/split outcome (`verb` as in "would switch").
fn outcome(json: bool, raw: &str, verb: &str) -> Result<String, Failure> {
    let o: SwitchOutcome = parse(raw)?;
    Ok(if json { pretty_json(raw) } else { outcome_text(&o, verb) })
}

fn mode_name(mode: SwitchMode) -> &'static str {
    match mode {
        SwitchMode::Drain => "drain",
        SwitchMode::Hard => "hard",
    }
}

/// `web: pool-a -> pool-b (drain), applied in 84 us` or `web: pool-b already active, nothing changed`.
fn outcome_line(o: &SwitchOutcome) -> String {
    if o.changed {
        format!(
            "{}: {} -> {} ({}), applied in {} us",
            o.service,
            o.before,
            o.after,
            mode_name(o.mode),
            o.apply_us
        )
    } else {
        format!("{}: {} already active, nothing changed", o.service, o.after)
    }
}

/// The outcome line (`would switch web: pool-a -> pool-b (drain)` for a dry run), then one
/// `warning:` line per warning.
fn outcome_text(o: &SwitchOutcome, verb: &str) -> String {
    let mut s = match (o.dry_run, o.changed) {
        (false, _) => outcome_line(o),
        (true, true) => {
            format!("would {verb} {}: {} -> {} ({})", o.service, o.before, o.after, mode_name(o.mode))
        }
        (true, false) => format!("{}: {} already active, nothing would change", o.service, o.after),
    };
    s.push('\n');
    for w in &o.warnings {
        s.push_str(&format!("warning: {w}\n"));
    }
    s
}

/// Poll intervals of [`follow`] (tests go faster).
#[derive(Clone, Copy, Debug)]
struct Pace {
    /// `--wait`: the service's counters.
    new_flow: Duration,
    /// `--wait-drained`: the drain view.
    drain: Duration,
    /// `--watch`: the watch.
    watch: Duration,
    /// How long past its window a watch may still be reported running.
    watch_grace: Duration,
    /// Shortest time between two drain progress lines.
    drain_report: Duration,
    /// How long polls may fail in a row (daemon restarting, busy) before lbctl gives up.
    patience: Duration,
}

const PACE: Pace = Pace {
    new_flow: Duration::from_millis(100),
    drain: Duration::from_millis(250),
    watch: Duration::from_millis(200),
    watch_grace: Duration::from_secs(10),
    drain_report: Duration::from_secs(1),
    patience: Duration::from_secs(2),
};

/// What to wait for after a switch.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Waits {
    /// `--wait`: timeout for a new flow to reach the new pool.
    new_flow: Option<Duration>,
    /// `--wait-drained`: timeout for the old pools to empty.
    drained: Option<Duration>,
    /// `--watch`: the daemon's watch window.
    watch: Option<Duration>,
}

impl Waits {
    fn any(&self) -> bool {
        self.new_flow.is_some() || self.drained.is_some() || self.watch.is_some()
    }
}

/// What `--wait` saw.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
struct NewFlowReport {
    /// The new pool.
    pool: String,
    /// Whether a new flow reached it.
    reached: bool,
    /// Its backends' `new_flows` right after the switch.
    baseline: u64,
    /// ... and at the last look.
    new_flows: u64,
    /// Since the switch.
    elapsed_ms: u64,
}

/// What `--wait-drained` saw.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
struct DrainReport {
    /// Whether the pools drained.
    drained: bool,
    /// Established flows left on them at the last look.
    remaining: u64,
    /// The pools waited for (those with share 0 after the switch), at the last look.
    pools: Vec<PoolDrain>,
    /// Since the wait started.
    elapsed_ms: u64,
}

/// What the waits saw, for `--output json`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Followed {
    wait: Option<NewFlowReport>,
    watch: Option<WatchView>,
    drain: Option<DrainReport>,
}

/// The one JSON document of a switch with waits: the outcome as the daemon sent it (every field,
/// in its order), a key per wait asked for (null when it never ran) and `error` on failure.
fn followed_json(raw_outcome: &str, waits: Waits, seen: &Followed, failure: Option<&Failure>) -> String {
    fn compact<T: Serialize>(v: &T) -> String {
        serde_json::to_string(v).unwrap_or_else(|_| "null".into())
    }
    let outcome = raw_outcome.trim();
    let mut members =
        vec![("outcome", if outcome.is_empty() { "null".to_owned() } else { outcome.to_owned() })];
    if waits.new_flow.is_some() {
        members.push(("wait", compact(&seen.wait)));
    }
    if waits.watch.is_some() {
        members.push(("watch", compact(&seen.watch)));
    }
    if waits.drained.is_some() {
        members.push(("drain", compact(&seen.drain)));
    }
    if let Some(f) = failure {
        members.push((
            "error",
            compact(&serde_json::json!({ "exit_code": exit_code(f), "message": f.to_string() })),
        ));
    }
    let body: Vec<String> = members.iter().map(|(k, v)| format!("\"{k}\":{v}")).collect();
    pretty_json(&format!("{{{}}}", body.join(",")))
}

/// Where [`follow`] reads the daemon's state (the client; a script in tests).
trait Daemon {
    fn fetch(&self, path: &str) -> Result<String, ClientError>;
}

impl Daemon for Client {
    fn fetch(&self, path: &str) -> Result<String, ClientError> {
        self.get_text(path)
    }
}

/// Polls, tolerating a daemon that does not answer for up to `patience` in a row.
struct Contact {
    failing_since: Option<Instant>,
    patience: Duration,
}

impl Contact {
    /// The answer; `Ok(None)` when the daemon did not answer and lbctl should try again.
    /// `note` goes with an error when the daemon still does something by itself.
    fn poll<T: DeserializeOwned>(
        &mut self,
        daemon: &dyn Daemon,
        path: &str,
        note: Option<&str>,
    ) -> Result<Option<T>, Failure> {
        let failed = |error| Failure::Following { error, note: note.map(str::to_owned) };
        match daemon.fetch(path) {
            Ok(raw) => {
                self.failing_since = None;
                serde_json::from_str(&raw).map(Some).map_err(|e| {
                    Failure::Unexpected(format!("unexpected response from lb-daemon to GET {path}: {e}"))
                })
            }
            Err(e @ ClientError::Api { .. }) => Err(failed(e)),
            Err(e) => {
                let since = *self.failing_since.get_or_insert_with(Instant::now);
                if since.elapsed() >= self.patience { Err(failed(e)) } else { Ok(None) }
            }
        }
    }
}

/// The watch being followed.
struct WatchFollow {
    /// History id of the switch it watches.
    switch_id: Option<u64>,
    /// After this, a watch still running is an error.
    deadline: Instant,
    next: Instant,
    /// What an error says the daemon still does.
    note: String,
}

/// A `--wait` in progress.
struct FlowFollow {
    timeout: Duration,
    deadline: Instant,
    next: Instant,
    baseline: Option<u64>,
}

/// A `--wait-drained` in progress.
struct DrainFollow {
    timeout: Duration,
    started: Instant,
    deadline: Instant,
    next: Instant,
    /// The pools with share 0 at the first look.
    pools: Option<Vec<String>>,
    /// Last count printed and when.
    said: Option<(u64, Instant)>,
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// `1.2s`, `42s`, `5m`: a short readable duration.
fn short(d: Duration) -> String {
    if d < Duration::from_secs(10) {
        format!("{:.1}s", d.as_secs_f64())
    } else {
        humantime::format_duration(Duration::from_secs(d.as_secs())).to_string()
    }
}

fn flows(n: u64) -> String {
    format!("{n} established flow{}", if n == 1 { "" } else { "s" })
}

/// Follows a switch to `pool` (outcome `o`) through the waits asked for, telling progress to
/// `say`: a new flow reaching the pool (`--wait`), then the other pools draining
/// (`--wait-drained`), and all along the daemon's watch (`--watch`), which outranks the rest:
/// an automatic rollback ends everything with [`Failure::RolledBack`]. Returns what it saw
/// (for `--output json`) and how it ended.
fn follow(
    daemon: &dyn Daemon,
    o: &SwitchOutcome,
    pool: &str,
    waits: Waits,
    pace: &Pace,
    say: &mut dyn FnMut(String),
) -> (Followed, Result<(), Failure>) {
    let mut seen = Followed::default();
    let result = follow_into(daemon, o, pool, waits, pace, say, &mut seen);
    (seen, result)
}

fn follow_into(
    daemon: &dyn Daemon,
    o: &SwitchOutcome,
    pool: &str,
    waits: Waits,
    pace: &Pace,
    say: &mut dyn FnMut(String),
    seen: &mut Followed,
) -> Result<(), Failure> {
    let start = Instant::now();
    let svc = o.service.as_str();
    let service_path = format!("/v1/services/{svc}");
    let drain_path = format!("/v1/services/{svc}/drain");
    let watch_path = format!("/v1/services/{svc}/watch");
    let mut contact = Contact { failing_since: None, patience: pace.patience };

    let mut watch = waits.watch.and_then(|window| {
        let follow = |switch_id: Option<u64>, window: Duration, until: &str| WatchFollow {
            switch_id,
            deadline: start + window + pace.watch_grace,
            next: start,
            note: format!(
                "lb-daemon still holds the watch of {pool} (until {until}) and rolls back by itself if \
                 {pool} falls below min_healthy; check with `lbctl status`"
            ),
        };
        let until = |w: &Option<WatchView>| w.as_ref().map(|w| w.until.clone()).unwrap_or_else(|| "its end".into());
        if o.changed {
            seen.watch = o.watch.clone();
            let window = Duration::from_secs(watch_secs(window));
            say(format!(
                "watching {pool} for {} (until {}): lb-daemon rolls back to {} by itself if {pool} falls below \
                 min_healthy; stopping lbctl does not stop the watch",
                humantime::format_duration(window),
                until(&o.watch),
                o.before
            ));
            Some(follow(o.history_id, window, &until(&o.watch)))
        } else if let Some(w) = o.watch.as_ref().filter(|w| w.state == WatchState::Watching && w.pool == pool) {
            // Already active and still watched since an earlier switch: follow that watch.
            seen.watch = Some(w.clone());
            say(format!("{pool} is already active and watched by lb-daemon until {}; following that watch", w.until));
            Some(follow(w.switch_history_id, Duration::from_secs(w.remaining_s), &w.until))
        } else {
            say(format!("{svc}: {pool} was already active, so no watch was started"));
            None
        }
    });
    let mut flow = waits.new_flow.map(|timeout| FlowFollow {
        timeout,
        deadline: start + timeout,
        next: start,
        baseline: None,
    });
    let mut drain_timeout = waits.drained;
    let mut drain: Option<DrainFollow> = None;

    loop {
        // The watch first: an automatic rollback outranks everything else.
        let note = watch.as_ref().map(|w| w.note.clone());
        if let Some(w) = watch.as_mut()
            && Instant::now() >= w.next
        {
            let now = Instant::now();
            w.next = now + pace.watch;
            if let Some(view) = contact.poll::<Option<WatchView>>(daemon, &watch_path, note.as_deref())?
                && judge_watch(w, view, o, pool, now, seen, say)?
            {
                watch = None;
            }
        }
        let note = watch.as_ref().map(|w| w.note.clone());
        let with_note = |msg: String| match &note {
            Some(n) => format!("{msg}; {n}"),
            None => msg,
        };

        if let Some(f) = flow.as_mut()
            && Instant::now() >= f.next
        {
            let now = Instant::now();
            let mut reached = false;
            if let Some(view) = contact.poll::<ServiceView>(daemon, &service_path, note.as_deref())? {
                let n = pool_new_flows(&view, pool);
                let baseline = *f.baseline.get_or_insert(n);
                reached = n > baseline;
                let elapsed = now.duration_since(start);
                seen.wait = Some(NewFlowReport {
                    pool: pool.to_owned(),
                    reached,
                    baseline,
                    new_flows: n,
                    elapsed_ms: ms(elapsed),
                });
                if reached {
                    say(format!("new flows reach {pool} ({} within {})", n - baseline, short(elapsed)));
                }
            }
            if reached {
                flow = None;
            } else if now >= f.deadline {
                return Err(Failure::WaitTimedOut(with_note(format!(
                    "no new flow reached {pool} within {}",
                    humantime::format_duration(f.timeout)
                ))));
            } else {
                f.next = (now + pace.new_flow).min(f.deadline);
            }
        }

        // --wait-drained starts once --wait is satisfied.
        if flow.is_none()
            && let Some(timeout) = drain_timeout.take()
        {
            let now = Instant::now();
            drain = Some(DrainFollow {
                timeout,
                started: now,
                deadline: now + timeout,
                next: now,
                pools: None,
                said: None,
            });
        }
        if let Some(d) = drain.as_mut()
            && Instant::now() >= d.next
        {
            let now = Instant::now();
            let mut drained = false;
            if let Some(view) = contact.poll::<DrainView>(daemon, &drain_path, note.as_deref())? {
                let first = d.pools.is_none();
                let names = d.pools.get_or_insert_with(|| {
                    view.pools.iter().filter(|p| p.share == 0).map(|p| p.pool.clone()).collect()
                });
                let pools: Vec<PoolDrain> =
                    view.pools.iter().filter(|p| names.contains(&p.pool)).cloned().collect();
                let remaining: u64 = pools.iter().map(|p| p.established).sum();
                let label = if names.is_empty() { "the other pools".to_owned() } else { names.join(", ") };
                let elapsed = now.duration_since(d.started);
                drained = remaining == 0;
                seen.drain =
                    Some(DrainReport { drained, remaining, pools: pools.clone(), elapsed_ms: ms(elapsed) });
                if let Some(back) = pools.iter().find(|p| p.share > 0) {
                    if let Some(w) = watch.as_mut() {
                        // Most likely the daemon rolled back: let the watch say so first.
                        w.next = now;
                        d.next = now + pace.drain;
                        continue;
                    }
                    return Err(Failure::Following {
                        error: local_error(
                            ErrorCode::Conflict,
                            format!(
                                "{} gets new flows again ({}%): {svc} was changed meanwhile (see `lbctl history`)",
                                back.pool, back.share
                            ),
                        ),
                        note: None,
                    });
                }
                if drained {
                    say(if first {
                        format!("{label}: no established flows left")
                    } else {
                        format!("{label} drained after {}", short(elapsed))
                    });
                } else if first {
                    say(format!(
                        "waiting for {label} to drain: {} (timeout {})",
                        flows(remaining),
                        humantime::format_duration(d.timeout)
                    ));
                    d.said = Some((remaining, now));
                } else if d
                    .said
                    .is_none_or(|(n, at)| n != remaining && now.duration_since(at) >= pace.drain_report)
                {
                    say(format!("  {label}: {} left", flows(remaining)));
                    d.said = Some((remaining, now));
                }
            }
            if drained {
                drain = None;
            } else if now >= d.deadline {
                let names = d.pools.as_ref().map(|n| n.join(", ")).unwrap_or_else(|| "the old pools".into());
                let msg = match &seen.drain {
                    Some(r) => format!(
                        "{names} still {} {} after {} (see `lbctl drain-status`)",
                        if d.pools.as_ref().is_some_and(|n| n.len() > 1) { "have" } else { "has" },
                        flows(r.remaining),
                        humantime::format_duration(d.timeout)
                    ),
                    None => format!(
                        "could not count the established flows within {}",
                        humantime::format_duration(d.timeout)
                    ),
                };
                return Err(Failure::WaitTimedOut(with_note(msg)));
            } else {
                d.next = (now + pace.drain).min(d.deadline);
            }
        }

        let next =
            [watch.as_ref().map(|w| w.next), flow.as_ref().map(|f| f.next), drain.as_ref().map(|d| d.next)]
                .into_iter()
                .flatten()
                .min();
        match next {
            Some(at) => std::thread::sleep(at.saturating_duration_since(Instant::now())),
            None if drain_timeout.is_none() => return Ok(()),
            None => {}
        }
    }
}

/// One look at the watch: `Ok(true)` when it passed, `Ok(false)` while it runs.
fn judge_watch(
    w: &WatchFollow,
    view: Option<WatchView>,
    o: &SwitchOutcome,
    pool: &str,
    now: Instant,
    seen: &mut Followed,
    say: &mut dyn FnMut(String),
) -> Result<bool, Failure> {
    let svc = o.service.as_str();
    let Some(view) = view else {
        return Err(Failure::Unexpected(format!(
            "lb-daemon holds no watch of {svc} any more: was its state reset? (see `lbctl status`)"
        )));
    };
    if view.switch_history_id != w.switch_id {
        say(format!("watch of {pool} ended: superseded"));
        return Err(Failure::Unexpected(format!(
            "the watch of {pool} ended early: {svc} was changed again (lb-daemon now reports the watch of switch #{}); \
             see `lbctl history`",
            view.switch_history_id.map(|id| id.to_string()).unwrap_or_else(|| "?".into())
        )));
    }
    seen.watch = Some(view.clone());
    match view.state {
        WatchState::Watching if now >= w.deadline => Err(Failure::Unexpected(format!(
            "lb-daemon still reports the watch of {pool} running after its end ({}); it keeps holding it, \
             see `lbctl status`",
            view.until
        ))),
        WatchState::Watching => Ok(false),
        WatchState::Passed => {
            say(format!("watch of {pool} passed: it stayed healthy until {}", view.until));
            Ok(true)
        }
        WatchState::RolledBack => {
            say(format!("watch of {pool} ended: lb-daemon rolled back to {}", o.before));
            let id = |id: Option<u64>| id.map(|id| format!("#{id}")).unwrap_or_else(|| "#?".into());
            Err(Failure::RolledBack(format!(
                "lb-daemon rolled back {svc} from {pool} to {} automatically: {} (rollback {} in the history, \
                 switch {})",
                o.before,
                view.reason.as_deref().unwrap_or("no reason given"),
                id(view.rollback_history_id),
                id(view.switch_history_id),
            )))
        }
        WatchState::Cancelled => {
            say(format!("watch of {pool} ended: cancelled"));
            Err(Failure::Unexpected(format!(
                "the watch of {pool} was cancelled: {}",
                view.reason.as_deref().unwrap_or("no reason given")
            )))
        }
    }
}

/// The `new_flows` counters of `pool`'s backends, summed.
fn pool_new_flows(view: &ServiceView, pool: &str) -> u64 {
    view.pools.iter().filter(|p| p.name == pool).flat_map(|p| &p.backends).map(|b| b.traffic.new_flows).sum()
}

/// Re-indents compact JSON the way `serde_json::to_string_pretty` does, keeping the order and
/// every field of the daemon's response.
fn pretty_json(raw: &str) -> String {
    fn newline(out: &mut String, indent: usize) {
        out.push('\n');
        for _ in 0..indent {
            out.push_str("  ");
        }
    }
    let chars: Vec<char> = raw.trim().chars().collect();
    let mut out = String::with_capacity(raw.len() * 2);
    let (mut indent, mut in_string, mut escaped) = (0usize, false, false);
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        i += 1;
        if in_string {
            out.push(c);
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                in_string = false;
            }
            continue;
        }
        match c {
            '"' => {
                in_string = true;
                out.push(c);
            }
            '{' | '[' => {
                let close = if c == '{' { '}' } else { ']' };
                let mut j = i;
                while j < chars.len() && chars[j].is_whitespace() {
                    j += 1;
                }
                out.push(c);
                if chars.get(j) == Some(&close) {
                    out.push(close);
                    i = j + 1;
                } else {
                    indent += 1;
                    newline(&mut out, indent);
                }
            }
            '}' | ']' => {
                indent = indent.saturating_sub(1);
                newline(&mut out, indent);
                out.push(c);
            }
            ',' => {
                out.push(',');
                newline(&mut out, indent);
            }
            ':' => out.push_str(": "),
            c if c.is_whitespace() => {}
            c => out.push(c),
        }
    }
    out.push('\n');
    out
}

/// Characters a terminal shows of `s`: ANSI escape sequences (colours) take no room.
fn visible_width(s: &str) -> usize {
    let (mut n, mut escape) = (0, false);
    for c in s.chars() {
        if escape {
            escape = !c.is_ascii_alphabetic();
        } else if c == '\x1b' {
            escape = true;
        } else {
            n += 1;
        }
    }
    n
}

/// Left-aligned columns (right-aligned where `right[i]`), two spaces apart; cells may be
/// coloured (see [`Paint`]).
fn table(rows: &[Vec<String>], right: &[bool], indent: &str) -> String {
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..cols)
        .map(|i| rows.iter().filter_map(|r| r.get(i)).map(|c| visible_width(c)).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for row in rows {
        let mut line = indent.to_owned();
        for (i, cell) in row.iter().enumerate() {
            if i > 0 {
                line.push_str("  ");
            }
            let pad = widths[i].saturating_sub(visible_width(cell));
            if right.get(i).copied().unwrap_or(false) {
                line.push_str(&" ".repeat(pad));
                line.push_str(cell);
            } else {
                line.push_str(cell);
                if i + 1 < row.len() {
                    line.push_str(&" ".repeat(pad));
                }
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// `lbctl status` as text: the daemon (version, uptime, adopted state, XDP mode per interface),
/// then per service its header (active pool or split, watch), pools (share, health, counters),
/// backends (health, counters) and the down backends with their errors; then the non-zero
/// pass/drop/forward counters.
fn render_status(s: &StatusView, only: Option<&str>, paint: Paint) -> String {
    let mut out = format!(
        "lb-daemon {} (instance {}): uptime {}, {}\n",
        s.version,
        s.instance,
        humantime::format_duration(Duration::from_secs(s.uptime_s)),
        if s.adopted {
            "adopted pinned state (forwarding survived a restart)"
        } else {
            "started fresh (no pinned state adopted)"
        }
    );
    out.push_str(&format!("interfaces: {}\n", interfaces_line(&s.interfaces, paint)));
    for w in &s.warnings {
        out.push_str(&format!("{} {w}\n", paint.red("warning:")));
    }
    for svc in s.services.iter().filter(|svc| only.is_none_or(|n| n == svc.name)) {
        out.push('\n');
        out.push_str(&service_header(svc, paint));
        let mut rows = vec![["POOL", "SHARE", "HEALTHY", "PACKETS", "NEW FLOWS"].map(String::from).to_vec()];
        for p in &svc.pools {
            rows.push(vec![
                p.name.clone(),
                format!("{}%", p.share),
                pool_health(p, paint),
                p.traffic.packets.to_string(),
                p.traffic.new_flows.to_string(),
            ]);
        }
        out.push_str(&table(&rows, &[false, true, false, true, true], "  "));
        let mut rows = vec![["POOL", "BACKEND", "STATE", "PACKETS", "NEW FLOWS"].map(String::from).to_vec()];
        for p in &svc.pools {
            for b in &p.backends {
                rows.push(vec![
                    p.name.clone(),
                    b.addr.clone(),
                    up_down(b.up, paint),
                    b.traffic.packets.to_string(),
                    b.traffic.new_flows.to_string(),
                ]);
            }
        }
        if rows.len() > 1 {
            out.push_str(&table(&rows, &[false, false, false, true, true], "  "));
        }
        let down: Vec<String> = svc
            .pools
            .iter()
            .flat_map(|p| p.backends.iter().filter(|b| !b.up).map(move |b| (p, b)))
            .map(|(p, b)| format!("  {} {} {}{}", paint.red("DOWN"), p.name, b.addr, last_error(b)))
            .collect();
        for line in down {
            out.push_str(&line);
            out.push('\n');
        }
    }
    let counters: Vec<String> =
        s.reasons.iter().filter(|(_, n)| *n > 0).map(|(r, n)| format!("{r}={n}")).collect();
    if !counters.is_empty() {
        out.push_str(&format!("\ncounters: {}\n", counters.join(" ")));
    }
    out
}

/// `eth0 (XDP native), eth1 (XDP generic)` (generic, the slow fallback, in yellow), or `none`.
fn interfaces_line(interfaces: &[InterfaceView], paint: Paint) -> String {
    if interfaces.is_empty() {
        return "none".into();
    }
    let each = |i: &InterfaceView| {
        let mode = format!("XDP {}", i.mode);
        let mode = if i.mode == "native" { mode } else { paint.yellow(&mode) };
        format!("{} ({mode})", i.name)
    };
    interfaces.iter().map(each).collect::<Vec<_>>().join(", ")
}

/// `2/3 (min 2)`, with `below min` when a switch to the pool would be refused.
fn pool_health(p: &PoolView, paint: Paint) -> String {
    health_text(p.healthy, p.backends.len(), p.min_healthy, paint)
}

/// `healthy/total (min N)`, then ` below min` (red) when `healthy < min_healthy`.
fn health_text(healthy: u32, total: usize, min_healthy: u32, paint: Paint) -> String {
    let below = if healthy < min_healthy { format!(" {}", paint.red("below min")) } else { String::new() };
    format!("{healthy}/{total} (min {min_healthy}){below}")
}

/// `: connect: connection refused` when the backend has a last health-check error.
fn last_error(b: &BackendView) -> String {
    b.last_error.as_deref().map(|e| format!(": {e}")).unwrap_or_default()
}

/// `service web (nat) on 192.0.2.1:80`, its active/previous line and its watch.
fn service_header(svc: &ServiceView, paint: Paint) -> String {
    let previous = svc.previous.as_ref().map(|p| p.to_string()).unwrap_or_else(|| "none".into());
    let mut s = format!(
        "service {} ({}) on {}\n  active: {}   previous: {}   epoch: {}\n",
        paint.bold(&svc.name),
        svc.mode,
        svc.vips.join(", "),
        paint.bold(&svc.active.to_string()),
        previous,
        svc.epoch
    );
    if let Some(w) = &svc.watch {
        s.push_str(&format!("  {}\n", paint.watch(w.state, &watch_line(w))));
    }
    s
}

/// A watch in one line.
fn watch_line(w: &WatchView) -> String {
    let switch = w.switch_history_id.map(|id| format!(" of switch #{id}")).unwrap_or_default();
    let reason = w.reason.as_deref().map(|r| format!(": {r}")).unwrap_or_default();
    match w.state {
        WatchState::Watching => format!(
            "watch{switch}: {} watched for {} more (until {}); rolls back by itself below min_healthy",
            w.pool,
            humantime::format_duration(Duration::from_secs(w.remaining_s)),
            w.until
        ),
        WatchState::Passed => format!("last watch{switch}: {} passed (until {})", w.pool, w.until),
        WatchState::RolledBack => format!(
            "last watch{switch}: {} rolled back automatically{}{reason}",
            w.pool,
            w.rollback_history_id.map(|id| format!(" (#{id})")).unwrap_or_default()
        ),
        WatchState::Cancelled => format!("last watch{switch}: {} cancelled{reason}", w.pool),
    }
}

/// `lbctl pools` as text.
fn render_pools(svc: &ServiceView, paint: Paint) -> String {
    let mut out = service_header(svc, paint);
    for p in &svc.pools {
        out.push_str(&format!(
            "\npool {}: share {}%, healthy {}, {} packets, {} new flows\n",
            paint.bold(&p.name),
            p.share,
            pool_health(p, paint),
            p.traffic.packets,
            p.traffic.new_flows
        ));
        let rows: Vec<Vec<String>> = p
            .backends
            .iter()
            .map(|b| {
                let mut row = vec![b.addr.clone(), format!("weight {}", b.weight), up_down(b.up, paint)];
                if let Some(e) = &b.last_error {
                    row.push(e.clone());
                }
                row
            })
            .collect();
        out.push_str(&table(&rows, &[], "  "));
    }
    out
}

/// `up` (green) or `DOWN` (red).
fn up_down(up: bool, paint: Paint) -> String {
    if up { paint.green("up") } else { paint.red("DOWN") }
}

/// `lbctl backends` as text.
fn render_backends(svc: &ServiceView, paint: Paint) -> String {
    let mut rows = vec![
        ["POOL", "ADDR", "WEIGHT", "STATE", "PACKETS", "NEW FLOWS", "LAST ERROR"].map(String::from).to_vec(),
    ];
    for p in &svc.pools {
        for b in &p.backends {
            rows.push(vec![
                p.name.clone(),
                b.addr.clone(),
                b.weight.to_string(),
                up_down(b.up, paint),
                b.traffic.packets.to_string(),
                b.traffic.new_flows.to_string(),
                b.last_error.clone().unwrap_or_default(),
            ]);
        }
    }
    table(&rows, &[false, false, true, false, true, true], "")
}

fn format_drain(d: &DrainView) -> String {
    let mut out = format!(
        "service {}: flows per pool ({} flows scanned; idle over {} not counted as established)\n",
        d.service,
        d.flows_scanned,
        humantime::format_duration(Duration::from_secs(d.idle_timeout_s))
    );
    let mut rows = vec![["POOL", "SHARE", "ESTABLISHED", "CLOSING"].map(String::from).to_vec()];
    for p in &d.pools {
        rows.push(vec![
            p.pool.clone(),
            format!("{}%", p.share),
            p.established.to_string(),
            p.closing.to_string(),
        ]);
    }
    out.push_str(&table(&rows, &[false, true, true, true], "  "));
    out
}

fn format_history(entries: &[HistoryEntry]) -> String {
    if entries.is_empty() {
        return "no recorded changes\n".into();
    }
    let mut out = String::new();
    for e in entries {
        let kind = match e.kind {
            HistoryKind::Switch => "switch",
            HistoryKind::Rollback => "rollback",
            HistoryKind::Split => "split",
            HistoryKind::Reload => "reload",
            HistoryKind::AutoRollback => "auto-rollback",
        };
        out.push_str(&format!(
            "#{} {} {} {}: {} -> {} ({}) by {}\n",
            e.id,
            e.time,
            e.service,
            kind,
            e.from,
            e.to,
            mode_name(e.mode),
            e.requester
        ));
        if let Some(reason) = &e.reason {
            out.push_str(&format!("    reason: {reason}\n"));
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Colours.

/// Whether to colour a stream: only when it is a terminal (`is_tty`) and colours were not
/// turned off (`no_color`: `NO_COLOR` set to a non-empty value, or `TERM=dumb`).
pub fn colour_wanted(is_tty: bool, no_color: bool) -> bool {
    is_tty && !no_color
}

/// Whether the environment turns colours off: `NO_COLOR` (non-empty) or `TERM=dumb`.
fn no_color_env() -> bool {
    std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty())
        || std::env::var_os("TERM").is_some_and(|t| t == "dumb")
}

/// Whether the file descriptor is a terminal.
fn is_tty(fd: libc::c_int) -> bool {
    // SAFETY: isatty only inspects the descriptor; an invalid one yields 0.
    unsafe { libc::isatty(fd) == 1 }
}

/// ANSI colours for one output stream, or plain text when they are off.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Paint {
    /// Whether to emit escape sequences.
    on: bool,
}

impl Paint {
    /// No colours.
    #[cfg(test)]
    const OFF: Paint = Paint { on: false };

    /// Colours for the stream `fd` (stdout or stderr), as [`colour_wanted`] decides.
    fn for_fd(fd: libc::c_int) -> Paint {
        Paint { on: colour_wanted(is_tty(fd), no_color_env()) }
    }

    fn wrap(self, sgr: &str, text: &str) -> String {
        if self.on { format!("\x1b[{sgr}m{text}\x1b[0m") } else { text.to_owned() }
    }

    fn bold(self, text: &str) -> String {
        self.wrap("1", text)
    }

    fn red(self, text: &str) -> String {
        self.wrap("31", text)
    }

    fn green(self, text: &str) -> String {
        self.wrap("32", text)
    }

    fn yellow(self, text: &str) -> String {
        self.wrap("33", text)
    }

    /// The `lbctl:` prefix of an error line.
    fn error(self, text: &str) -> String {
        self.wrap("1;31", text)
    }

    /// Text about a watch, coloured by its state.
    fn watch(self, state: WatchState, text: &str) -> String {
        match state {
            WatchState::Watching => self.yellow(text),
            WatchState::Passed => self.green(text),
            WatchState::RolledBack => self.red(text),
            WatchState::Cancelled => text.to_owned(),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// `lbctl top`.

/// Shortest `--interval` of `top`.
const MIN_INTERVAL: Duration = Duration::from_millis(100);

/// `top --interval`: a duration as [`parse_duration`] takes it, at least 100ms.
pub fn parse_interval(s: &str) -> Result<Duration, String> {
    let d = parse_duration(s)?;
    if d < MIN_INTERVAL { Err("must be at least 100ms".into()) } else { Ok(d) }
}

/// One frame of `lbctl top`: one `GET /v1/status` sample, with per-second rates since the
/// sample before (`null` in the first frame). `--output json` prints it as one line.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct TopFrame {
    /// 1 for the first frame.
    pub frame: u64,
    /// Seconds between the previous sample and this one; `None` in the first frame.
    pub elapsed_s: Option<f64>,
    /// Instance name.
    pub instance: String,
    /// Daemon version.
    pub version: String,
    /// Seconds since the daemon started.
    pub uptime_s: u64,
    /// Whether the daemon adopted pinned state.
    pub adopted: bool,
    /// Interfaces and their XDP mode.
    pub interfaces: Vec<InterfaceView>,
    /// Services (only `--service` when given).
    pub services: Vec<TopService>,
    /// Counters by reason with a non-zero total, highest rate first.
    pub reasons: Vec<TopReason>,
}

/// A service in a [`TopFrame`].
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct TopService {
    /// Name.
    pub name: String,
    /// Active pool or split.
    pub active: Active,
    /// Current epoch.
    pub epoch: u32,
    /// The watch of the last switch, if any.
    pub watch: Option<WatchView>,
    /// Pools, in config order.
    pub pools: Vec<TopPool>,
}

/// A pool in a [`TopFrame`].
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct TopPool {
    /// Name.
    pub name: String,
    /// Percentage of new flows it gets.
    pub share: u32,
    /// Healthy backends.
    pub healthy: u32,
    /// All backends.
    pub total: u32,
    /// Fewest healthy backends a switch to it accepts without `--force`.
    pub min_healthy: u32,
    /// New flows per second (its backends together).
    pub new_flows_per_s: Option<f64>,
    /// Packets per second (its backends together).
    pub packets_per_s: Option<f64>,
    /// Its backends.
    pub backends: Vec<TopBackend>,
}

/// A backend in a [`TopFrame`].
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct TopBackend {
    /// `ip:port`.
    pub addr: String,
    /// Whether it passes its health checks.
    pub up: bool,
    /// New flows per second.
    pub new_flows_per_s: Option<f64>,
    /// Packets per second.
    pub packets_per_s: Option<f64>,
    /// Last health-check error.
    pub last_error: Option<String>,
}

/// A pass/drop/forward reason in a [`TopFrame`].
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct TopReason {
    /// Reason name, e.g. `drop_no_backend`.
    pub name: String,
    /// Packets counted since the counters were created.
    pub total: u64,
    /// Packets per second.
    pub per_s: Option<f64>,
}

/// Per-second rate of a counter that went from `before` to `after` in `elapsed` (rounded to
/// 0.001); `None` without an earlier value, without elapsed time, or when the counter went
/// backwards (it was reset).
pub fn rate(before: Option<u64>, after: u64, elapsed: Duration) -> Option<f64> {
    let before = before?;
    let secs = elapsed.as_secs_f64();
    if secs <= 0.0 || after < before {
        return None;
    }
    Some(((after - before) as f64 / secs * 1000.0).round() / 1000.0)
}

/// Frame number `frame` of `lbctl top` from the sample `cur` and, after the first, the sample
/// before it with the time between the two: rates are the counters' differences per second,
/// matched by service name, pool name and backend address (`None` for what the earlier sample
/// lacks). Only the service `only` when given.
pub fn top_frame(
    prev: Option<(&StatusView, Duration)>,
    cur: &StatusView,
    only: Option<&str>,
    frame: u64,
) -> TopFrame {
    let elapsed = prev.map(|(_, d)| d).unwrap_or_default();
    let prev_service = |name: &str| prev.and_then(|(p, _)| p.services.iter().find(|s| s.name == name));
    let services = cur
        .services
        .iter()
        .filter(|svc| only.is_none_or(|n| n == svc.name))
        .map(|svc| {
            let before = prev_service(&svc.name);
            let pools = svc
                .pools
                .iter()
                .map(|p| {
                    let before = before.and_then(|s| s.pools.iter().find(|q| q.name == p.name));
                    let backends = p
                        .backends
                        .iter()
                        .map(|b| {
                            let before = before
                                .and_then(|q| q.backends.iter().find(|c| c.addr == b.addr))
                                .map(|c| c.traffic);
                            TopBackend {
                                addr: b.addr.clone(),
                                up: b.up,
                                new_flows_per_s: rate(
                                    before.map(|t| t.new_flows),
                                    b.traffic.new_flows,
                                    elapsed,
                                ),
                                packets_per_s: rate(before.map(|t| t.packets), b.traffic.packets, elapsed),
                                last_error: b.last_error.clone(),
                            }
                        })
                        .collect();
                    let traffic = before.map(|q| q.traffic);
                    TopPool {
                        name: p.name.clone(),
                        share: p.share,
                        healthy: p.healthy,
                        total: u32::try_from(p.backends.len()).unwrap_or(u32::MAX),
                        min_healthy: p.min_healthy,
                        new_flows_per_s: rate(traffic.map(|t| t.new_flows), p.traffic.new_flows, elapsed),
                        packets_per_s: rate(traffic.map(|t| t.packets), p.traffic.packets, elapsed),
                        backends,
                    }
                })
                .collect();
            TopService {
                name: svc.name.clone(),
                active: svc.active.clone(),
                epoch: svc.epoch,
                watch: svc.watch.clone(),
                pools,
            }
        })
        .collect();
    let mut reasons: Vec<TopReason> = cur
        .reasons
        .iter()
        .filter(|(_, total)| *total > 0)
        .map(|(name, total)| {
            let before = prev.and_then(|(p, _)| p.reasons.iter().find(|(n, _)| n == name)).map(|(_, n)| *n);
            TopReason { name: name.clone(), total: *total, per_s: rate(before, *total, elapsed) }
        })
        .collect();
    // Highest rate first (unknown rates last), then the highest total.
    reasons.sort_by(|a, b| {
        b.per_s.unwrap_or(-1.0).total_cmp(&a.per_s.unwrap_or(-1.0)).then(b.total.cmp(&a.total))
    });
    TopFrame {
        frame,
        elapsed_s: prev.map(|(_, d)| (d.as_secs_f64() * 1000.0).round() / 1000.0),
        instance: cur.instance.clone(),
        version: cur.version.clone(),
        uptime_s: cur.uptime_s,
        adopted: cur.adopted,
        interfaces: cur.interfaces.clone(),
        services,
        reasons,
    }
}

/// A rate for a table cell: `-` when unknown, else `0.5`, `950.0`, `12.3k`, `4.1M`.
fn fmt_rate(rate: Option<f64>) -> String {
    match rate {
        None => "-".into(),
        Some(r) if r < 1e3 => format!("{r:.1}"),
        Some(r) if r < 1e6 => format!("{:.1}k", r / 1e3),
        Some(r) if r < 1e9 => format!("{:.1}M", r / 1e6),
        Some(r) => format!("{:.1}G", r / 1e9),
    }
}

/// How many pass/drop reasons a text frame shows.
const TOP_REASONS: usize = 5;

/// A [`TopFrame`] as text: a header line, interfaces, per service its active pool, epoch and
/// watch and a table of pools with their backends, then the busiest pass/drop reasons.
fn render_top(f: &TopFrame, interval: Duration, interactive: bool, paint: Paint) -> String {
    let mut out = format!(
        "lb-daemon {} (instance {}): uptime {}{}   every {}, frame {}{}\n",
        f.version,
        f.instance,
        humantime::format_duration(Duration::from_secs(f.uptime_s)),
        if f.adopted { ", adopted pinned state" } else { "" },
        humantime::format_duration(interval),
        f.frame,
        if interactive { "   (Ctrl-C to quit)" } else { "" }
    );
    out.push_str(&format!("interfaces: {}\n", interfaces_line(&f.interfaces, paint)));
    for svc in &f.services {
        let watch = match &svc.watch {
            None => "none".to_owned(),
            Some(w) => paint.watch(
                w.state,
                &match w.state {
                    WatchState::Watching => format!(
                        "{} watched, {} left",
                        w.pool,
                        humantime::format_duration(Duration::from_secs(w.remaining_s))
                    ),
                    WatchState::Passed => format!("{} passed", w.pool),
                    WatchState::RolledBack => format!("{} rolled back", w.pool),
                    WatchState::Cancelled => format!("{} cancelled", w.pool),
                },
            ),
        };
        out.push_str(&format!(
            "\n{}  active: {}   epoch: {}   watch: {watch}\n",
            paint.bold(&format!("service {}", svc.name)),
            paint.bold(&svc.active.to_string()),
            svc.epoch
        ));
        let mut rows = vec![
            ["POOL / BACKEND", "SHARE", "HEALTHY", "NEW FLOWS/S", "PACKETS/S", "LAST ERROR"]
                .map(String::from)
                .to_vec(),
        ];
        for p in &svc.pools {
            rows.push(vec![
                paint.bold(&p.name),
                format!("{}%", p.share),
                health_text(p.healthy, p.total as usize, p.min_healthy, paint),
                fmt_rate(p.new_flows_per_s),
                fmt_rate(p.packets_per_s),
                String::new(),
            ]);
            for b in &p.backends {
                rows.push(vec![
                    format!("  {}", b.addr),
                    String::new(),
                    up_down(b.up, paint),
                    fmt_rate(b.new_flows_per_s),
                    fmt_rate(b.packets_per_s),
                    b.last_error.clone().unwrap_or_default(),
                ]);
            }
        }
        out.push_str(&table(&rows, &[false, true, false, true, true, false], "  "));
    }
    let busiest: Vec<String> = f
        .reasons
        .iter()
        .filter(|r| r.name.starts_with("pass_") || r.name.starts_with("drop_"))
        .filter(|r| r.per_s.is_some_and(|x| x > 0.0))
        .take(TOP_REASONS)
        .map(|r| {
            let name = if r.name.starts_with("drop_") { paint.red(&r.name) } else { r.name.clone() };
            format!("{name} {}/s", fmt_rate(r.per_s))
        })
        .collect();
    let reasons = if f.elapsed_s.is_none() {
        "- (rates from the next frame on)".to_owned()
    } else if busiest.is_empty() {
        "none".to_owned()
    } else {
        busiest.join("  ")
    };
    out.push_str(&format!("\npass/drop: {reasons}\n"));
    out
}

/// How `lbctl top` runs.
#[derive(Clone, Debug)]
struct TopOptions {
    /// Time between two samples.
    interval: Duration,
    /// Stop after this many frames.
    iterations: Option<u64>,
    /// One JSON line per frame instead of text.
    json: bool,
    /// Clear the screen before each text frame (stdout is a terminal).
    clear: bool,
    /// Colours of the text frames.
    paint: Paint,
    /// Only this service.
    service: Option<String>,
}

/// Samples `GET /v1/status` every `interval` and hands each frame to `emit` (which returns
/// false when the output is gone: top then ends with success). Ends after `iterations` frames,
/// on a failed request (its error), or never (Ctrl-C).
fn run_top(
    daemon: &dyn Daemon,
    opts: &TopOptions,
    emit: &mut dyn FnMut(&str) -> bool,
) -> Result<(), Failure> {
    let mut prev: Option<(StatusView, Instant)> = None;
    let mut next = Instant::now();
    let mut frame = 0u64;
    loop {
        let raw = daemon.fetch("/v1/status")?;
        let at = Instant::now();
        let cur: StatusView = parse(&raw)?;
        check_service(&cur, opts.service.as_deref())?;
        frame += 1;
        let f = top_frame(
            prev.as_ref().map(|(s, t)| (s, at.duration_since(*t))),
            &cur,
            opts.service.as_deref(),
            frame,
        );
        let text = if opts.json {
            let mut line = serde_json::to_string(&f)
                .map_err(|e| Failure::Unexpected(format!("cannot write a frame as JSON: {e}")))?;
            line.push('\n');
            line
        } else {
            let body = render_top(&f, opts.interval, opts.clear, opts.paint);
            if opts.clear {
                format!("\x1b[H\x1b[2J{body}")
            } else if frame > 1 {
                format!("\n{body}")
            } else {
                body
            }
        };
        if !emit(&text) || opts.iterations.is_some_and(|n| frame >= n) {
            return Ok(());
        }
        prev = Some((cur, at));
        next += opts.interval;
        let now = Instant::now();
        if next > now {
            std::thread::sleep(next - now);
        } else {
            // The request took longer than the interval: no catching up.
            next = now;
        }
    }
}

// ---------------------------------------------------------------------------------------------
// `lbctl man`.

/// Escapes a line of text for roff: backslashes, hyphens (so options copy as ASCII) and a
/// leading `.` or `'` (which would start a request).
fn roff_escape(line: &str) -> String {
    let s = line.replace('\\', "\\e").replace('-', "\\-");
    if s.starts_with('.') || s.starts_with('\'') { format!("\\&{s}") } else { s }
}

/// The label of an argument in the man page: `\fB\-s\fR, \fB\-\-service\fR \fINAME\fR`.
fn man_arg_label(a: &clap::Arg) -> String {
    let value = a
        .get_value_names()
        .and_then(|v| v.first())
        .map(|v| v.to_string())
        .unwrap_or_else(|| a.get_id().as_str().to_uppercase());
    if a.is_positional() {
        return format!("\\fI{}\\fR", roff_escape(&value));
    }
    let mut names = Vec::new();
    if let Some(c) = a.get_short() {
        names.push(format!("\\fB\\-{c}\\fR"));
    }
    if let Some(l) = a.get_long() {
        names.push(format!("\\fB\\-\\-{}\\fR", roff_escape(l)));
    }
    let mut label = names.join(", ");
    if a.get_action().takes_values() {
        if a.get_num_args().is_some_and(|n| n.min_values() == 0) {
            label.push_str(&format!(" [\\fI{}\\fR]", roff_escape(&value)));
        } else {
            label.push_str(&format!(" \\fI{}\\fR", roff_escape(&value)));
        }
    }
    label
}

/// The COMMANDS section: per visible subcommand its synopsis, description, arguments (with
/// defaults and choices) and the examples of its `--help`.
fn man_commands(cmd: &clap::Command) -> String {
    let mut out = String::from(".SH COMMANDS\n");
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        let args: Vec<&clap::Arg> = sub
            .get_arguments()
            .filter(|a| {
                !a.is_hide_set() && !a.is_global_set() && !["help", "version"].contains(&a.get_id().as_str())
            })
            .collect();
        let mut synopsis = format!("lbctl {}", sub.get_name());
        if args.iter().any(|a| !a.is_positional()) {
            synopsis.push_str(" [OPTIONS]");
        }
        for a in args.iter().filter(|a| a.is_positional()) {
            let value =
                a.get_value_names().and_then(|v| v.first()).map(|v| v.to_string()).unwrap_or_default();
            let many = a.get_num_args().is_some_and(|n| n.max_values() > 1);
            synopsis.push_str(&format!(" {value}{}", if many { "..." } else { "" }));
        }
        out.push_str(&format!(".SS \"{}\"\n", roff_escape(&synopsis)));
        if let Some(about) = sub.get_long_about().or_else(|| sub.get_about()) {
            for line in about.to_string().lines() {
                out.push_str(&roff_escape(line));
                out.push('\n');
            }
        }
        for a in &args {
            out.push_str(&format!(".TP\n{}\n", man_arg_label(a)));
            let help = a.get_long_help().or_else(|| a.get_help()).map(|h| h.to_string()).unwrap_or_default();
            let mut help = help.split_whitespace().collect::<Vec<_>>().join(" ");
            if !help.is_empty() && !help.ends_with('.') {
                help.push('.');
            }
            let choices: Vec<String> = a
                .get_possible_values()
                .iter()
                .filter(|v| !v.is_hide_set())
                .map(|v| v.get_name().to_owned())
                .collect();
            if !choices.is_empty() && a.get_action().takes_values() {
                help.push_str(&format!(" One of: {}.", choices.join(", ")));
            }
            let defaults: Vec<String> =
                a.get_default_values().iter().map(|v| v.to_string_lossy().into_owned()).collect();
            if !defaults.is_empty() && a.get_action().takes_values() {
                help.push_str(&format!(" [default: {}]", defaults.join(", ")));
            }
            out.push_str(&roff_escape(&help));
            out.push('\n');
        }
        if let Some(after) = sub.get_after_long_help().or_else(|| sub.get_after_help()) {
            out.push_str(".PP\n.nf\n");
            for line in after.to_string().lines() {
                out.push_str(&roff_escape(line));
                out.push('\n');
            }
            out.push_str(".fi\n");
        }
    }
    out
}

/// `lbctl --help`'s epilogue as man sections: each heading line (`Examples:`, `Exit codes:`,
/// ...) starts a section (`EXAMPLES`, `EXIT STATUS`, ...) whose lines are kept as they are.
fn man_epilogue(text: &str) -> String {
    let mut out = String::new();
    let mut open = false;
    for line in text.lines() {
        let heading = !line.starts_with(' ') && line.ends_with(':') && line.split_whitespace().count() <= 2;
        if heading {
            if open {
                out.push_str(".fi\n");
            }
            let name = line.trim_end_matches(':');
            let title = if name == "Exit codes" { "EXIT STATUS".to_owned() } else { name.to_uppercase() };
            out.push_str(&format!(".SH \"{title}\"\n.nf\n"));
            open = true;
        } else if open {
            out.push_str(&roff_escape(line));
            out.push('\n');
        }
    }
    if open {
        out.push_str(".fi\n");
    }
    out
}

/// lbctl's man page (roff, section 1): clap_mangen's title, name, synopsis, description and
/// global options, then COMMANDS (every subcommand with its options and examples) and the
/// sections of `lbctl --help`'s epilogue (EXAMPLES, DURATIONS, EXIT STATUS, ENVIRONMENT).
fn man_page() -> String {
    let cmd = Cli::command();
    let man = clap_mangen::Man::new(cmd.clone());
    let mut head: Vec<u8> = Vec::new();
    // Writing into a Vec cannot fail.
    let _ = man.render_title(&mut head);
    let _ = man.render_name_section(&mut head);
    let _ = man.render_synopsis_section(&mut head);
    let _ = man.render_description_section(&mut head);
    let _ = man.render_options_section(&mut head);
    let mut page = String::from_utf8_lossy(&head).into_owned();
    page.push_str(&man_commands(&cmd));
    page.push_str(&man_epilogue(AFTER_HELP));
    let mut tail: Vec<u8> = Vec::new();
    let _ = man.render_version_section(&mut tail);
    page.push_str(&String::from_utf8_lossy(&tail));
    page
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;

    // The text views without colours.
    fn format_status(s: &StatusView, only: Option<&str>) -> String {
        render_status(s, only, Paint::OFF)
    }

    fn format_pools(svc: &ServiceView) -> String {
        render_pools(svc, Paint::OFF)
    }

    fn format_backends(svc: &ServiceView) -> String {
        render_backends(svc, Paint::OFF)
    }

    fn args(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    fn api(code: ErrorCode) -> ClientError {
        ClientError::Api { status: code.http_status(), error: ApiError::new(code, "x") }
    }

    fn unreachable() -> ClientError {
        ClientError::Unreachable {
            endpoint: "/run/lb/lb.sock".into(),
            source: std::io::Error::from(std::io::ErrorKind::ConnectionRefused),
        }
    }

    #[test]
    fn exit_codes() {
        let code = |e: ClientError| exit_code(&Failure::from(e));
        assert_eq!(code(unreachable()), 3);
        assert_eq!(code(api(ErrorCode::NotFound)), 4);
        assert_eq!(code(api(ErrorCode::InvalidRequest)), 5);
        assert_eq!(code(api(ErrorCode::Refused)), 5);
        assert_eq!(code(api(ErrorCode::Conflict)), 6);
        assert_eq!(code(api(ErrorCode::Unauthorized)), 7);
        assert_eq!(code(api(ErrorCode::Internal)), 1);
        assert_eq!(code(ClientError::Protocol("bad".into())), 1);
        // 405 and 413 carry invalid_request.
        assert_eq!(code(ClientError::Api { status: 405, error: ApiError::invalid("method") }), 5);
    }

    #[test]
    fn exit_codes_of_waits_and_watches() {
        assert_eq!(exit_code(&Failure::WaitTimedOut("no new flow reached pool-b within 30s".into())), 8);
        assert_eq!(exit_code(&Failure::RolledBack("rolled back".into())), 9);
        assert_eq!(exit_code(&Failure::Unexpected("cancelled".into())), 1);
        // Losing the daemon after the change is "unreachable", whatever the transport said.
        let lost = |error| exit_code(&Failure::Following { error, note: Some("watch".into()) });
        assert_eq!(lost(unreachable()), 3);
        assert_eq!(lost(ClientError::Protocol("lb-daemon did not answer within 10s".into())), 3);
        // The daemon's own answers keep their codes.
        assert_eq!(lost(api(ErrorCode::NotFound)), 4);
        assert_eq!(lost(api(ErrorCode::Conflict)), 6);
        let e =
            Failure::Following { error: unreachable(), note: Some("lb-daemon still holds the watch".into()) };
        assert!(e.to_string().ends_with("; lb-daemon still holds the watch"), "{e}");
        let e = Failure::Following { error: unreachable(), note: None };
        assert!(e.to_string().contains("the change itself was made"), "{e}");
        // The help lists them.
        for line in ["  8  a wait timed out", "  9  the daemon rolled back automatically during --watch"] {
            assert!(AFTER_HELP.contains(line), "{line}");
        }
        assert!(
            AFTER_HELP.contains("lbctl switch pool-b --expect-active pool-a --watch 60s --wait-drained 5m")
        );
    }

    #[test]
    fn durations() {
        let ok = |s: &str| parse_duration(s).unwrap();
        assert_eq!(ok("60s"), Duration::from_secs(60));
        assert_eq!(ok("2m"), Duration::from_secs(120));
        assert_eq!(ok("500ms"), Duration::from_millis(500));
        assert_eq!(ok("1h30m"), Duration::from_secs(5400));
        assert_eq!(ok("90"), Duration::from_secs(90));
        assert_eq!(ok(" 0.5 "), Duration::from_millis(500));
        assert_eq!(ok("24h"), Duration::from_secs(86_400));
        for bad in ["", "0", "0s", "-1", "-5s", "abc", "5 parsecs", "NaN", "inf", "25h", "86401"] {
            assert!(parse_duration(bad).is_err(), "{bad:?}");
        }
        assert!(parse_duration("ten").unwrap_err().contains("60s"));
        assert_eq!(watch_secs(Duration::from_millis(500)), 1);
        assert_eq!(watch_secs(Duration::from_secs(60)), 60);
        assert_eq!(watch_secs(Duration::from_millis(60_001)), 61);
    }

    #[test]
    fn switch_flags_parse() {
        let switch = |a: &[&str]| match Cli::try_parse_from(a).map(|c| c.command) {
            Ok(Command::Switch { pool, hard, force, dry_run, expect_active, wait, wait_drained, watch }) => {
                (pool, hard, force, dry_run, expect_active, wait, wait_drained, watch)
            }
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
        ] {
            assert!(Cli::try_parse_from(bad).is_err(), "{bad:?}");
        }
        let cli =
            Cli::try_parse_from(["lbctl", "rollback", "--dry-run", "--expect-active", "pool-b", "--hard"])
                .unwrap();
        assert!(matches!(
            cli.command,
            Command::Rollback { hard: true, dry_run: true, expect_active: Some(ref p) } if p == "pool-b"
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
            Command::Split { force: true, dry_run: true, expect_active: Some(ref e), ref weights }
                if e == "split pool-a=50 pool-b=50" && weights.len() == 2
        ));
        let cli = Cli::try_parse_from(["lbctl", "-o", "json", "drain-status", "-s", "web"]).unwrap();
        assert!(matches!(cli.command, Command::DrainStatus));
    }

    #[test]
    fn split_arguments() {
        let req = parse_split(&args(&["pool-a=90", "pool-b=10%"])).unwrap();
        assert_eq!(
            req.weights,
            vec![
                PoolWeight { pool: "pool-a".into(), weight: 90 },
                PoolWeight { pool: "pool-b".into(), weight: 10 }
            ]
        );
        assert!(!req.force && !req.dry_run && req.expect_active.is_none());
        let three = parse_split(&args(&["a=50", "b=25", "c=25"])).unwrap();
        assert_eq!(three.weights.len(), 3);
        for bad in [
            &["pool-a=90"][..],
            &["pool-a=90", "pool-b"],
            &["pool-a=90", "=10"],
            &["pool-a=90", "pool-b=ten"],
            &["pool-a=100", "pool-b=0"],
            &["pool-a=90", "pool-b=20"],
            &["pool-a=50", "pool-a=50"],
            &["pool-a=-10", "pool-b=110"],
            &[],
        ] {
            assert!(parse_split(&args(bad)).is_err(), "{bad:?}");
        }
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
    fn requester_names_user_host_and_ci() {
        let env = |vars: &'static [(&'static str, &'static str)]| {
            move |name: &str| vars.iter().find(|(k, _)| *k == name).map(|(_, v)| v.to_string())
        };
        let v = env!("CARGO_PKG_VERSION");
        assert_eq!(
            requester_from(env(&[("USER", "root"), ("SUDO_USER", "alice")]), 0, "edge1"),
            format!("lbctl/{v} user=alice host=edge1")
        );
        assert_eq!(requester_from(env(&[]), 1000, "h"), format!("lbctl/{v} user=1000 host=h"));
        assert_eq!(
            requester_from(env(&[("USER", "ci"), ("GITHUB_RUN_ID", "77"), ("GITHUB_JOB", "deploy")]), 0, "h"),
            format!("lbctl/{v} user=ci host=h ci=github:77/deploy")
        );
        assert_eq!(
            requester_from(env(&[("USER", "ci"), ("CI_JOB_ID", "42")]), 0, "h"),
            format!("lbctl/{v} user=ci host=h ci=gitlab:42")
        );
    }

    fn status_view(services: Vec<ServiceView>, reasons: &[(&str, u64)]) -> StatusView {
        StatusView {
            instance: "lb".into(),
            version: "0.1.0".into(),
            uptime_s: 5,
            adopted: true,
            interfaces: vec![InterfaceView {
                name: "eth0".into(),
                mode: "native".into(),
                ..Default::default()
            }],
            services,
            reasons: reasons.iter().map(|(n, c)| (n.to_string(), *c)).collect(),
            warnings: vec![],
        }
    }

    /// `web` (see [`service`]) whose every counter was multiplied by `k` and whose pools'
    /// traffic is the sum of their backends'.
    fn counted(k: u64) -> ServiceView {
        let mut svc = service(0, 4, None);
        for p in &mut svc.pools {
            for b in &mut p.backends {
                b.traffic.packets *= k;
                b.traffic.new_flows *= k;
            }
            p.traffic = Traffic {
                packets: p.backends.iter().map(|b| b.traffic.packets).sum(),
                bytes: 0,
                new_flows: p.backends.iter().map(|b| b.traffic.new_flows).sum(),
            };
        }
        svc
    }

    #[test]
    fn rates_from_two_status_samples() {
        assert_eq!(rate(Some(100), 300, Duration::from_secs(2)), Some(100.0));
        assert_eq!(rate(Some(0), 1, Duration::from_secs(3)), Some(0.333));
        assert_eq!(rate(None, 300, Duration::from_secs(2)), None, "no earlier sample");
        assert_eq!(rate(Some(300), 100, Duration::from_secs(2)), None, "counter reset");
        assert_eq!(rate(Some(1), 2, Duration::ZERO), None);

        let before =
            status_view(vec![counted(1)], &[("pass_not_vip", 10), ("drop_no_backend", 4), ("fwd_tx", 0)]);
        let mut after =
            status_view(vec![counted(3)], &[("pass_not_vip", 30), ("drop_no_backend", 34), ("fwd_tx", 0)]);
        // A backend added since the first sample has no rate yet.
        after.services[0].pools[1].backends.push(backend("10.0.1.3:8080", true, 7, None));

        let first = top_frame(None, &before, None, 1);
        assert_eq!((first.frame, first.elapsed_s), (1, None));
        let pool_b = &first.services[0].pools[1];
        assert_eq!((pool_b.new_flows_per_s, pool_b.packets_per_s), (None, None));
        assert_eq!((pool_b.healthy, pool_b.total, pool_b.min_healthy), (2, 2, 1));

        let f = top_frame(Some((&before, Duration::from_secs(2))), &after, None, 2);
        assert_eq!((f.frame, f.elapsed_s), (2, Some(2.0)));
        let svc = &f.services[0];
        assert_eq!((svc.name.as_str(), svc.epoch, &svc.active), ("web", 3, &Active::Pool("pool-b".into())));
        // pool-a: new flows 5 -> 15, packets 20 -> 60, over 2 s.
        let a = &svc.pools[0];
        assert_eq!((a.new_flows_per_s, a.packets_per_s), (Some(5.0), Some(20.0)));
        assert_eq!(a.backends[1].new_flows_per_s, Some(0.0));
        assert_eq!(a.backends[1].last_error.as_deref(), Some("connect: connection refused"));
        // pool-b: backends 2 -> 6 new flows and 10 -> 30 packets each; the pool's rates come
        // from its own counters (the daemon's sum), 4 -> 12 new flows.
        let b = &svc.pools[1];
        assert_eq!(
            b.backends.iter().map(|x| x.new_flows_per_s).collect::<Vec<_>>(),
            [Some(2.0), Some(2.0), None]
        );
        assert_eq!(b.backends[0].packets_per_s, Some(10.0));
        assert_eq!((b.new_flows_per_s, b.packets_per_s), (Some(4.0), Some(20.0)));
        // Non-zero reasons only, busiest first.
        let reasons: Vec<(&str, Option<f64>)> =
            f.reasons.iter().map(|r| (r.name.as_str(), r.per_s)).collect();
        assert_eq!(reasons, [("drop_no_backend", Some(15.0)), ("pass_not_vip", Some(10.0))]);
        // --service, and what JSON mode prints.
        assert!(top_frame(None, &after, Some("other"), 1).services.is_empty());
        let json: serde_json::Value = serde_json::to_value(&f).unwrap();
        assert_eq!(json["services"][0]["pools"][0]["new_flows_per_s"], 5.0);
        assert_eq!(json["services"][0]["pools"][1]["backends"][2]["packets_per_s"], serde_json::Value::Null);
        assert_eq!(serde_json::to_value(&first).unwrap()["elapsed_s"], serde_json::Value::Null);

        let text = render_top(&first, Duration::from_secs(1), false, Paint::OFF);
        assert!(text.contains("pass/drop: - (rates from the next frame on)"), "{text}");
        assert!(text.contains("service web  active: pool-b   epoch: 3   watch: none"), "{text}");
        let text = render_top(&f, Duration::from_secs(1), false, Paint::OFF);
        assert!(
            text.contains("  pool-a              0%  1/2 (min 2) below min          5.0       20.0\n"),
            "{text}"
        );
        assert!(text.contains("    10.0.0.2:8080         DOWN                           0.0       10.0  connect: connection refused\n"), "{text}");
        assert!(
            text.contains("    10.0.1.3:8080         up                               -          -\n"),
            "{text}"
        );
        assert!(text.contains("pass/drop: drop_no_backend 15.0/s  pass_not_vip 10.0/s\n"), "{text}");
        assert!(!text.contains('\x1b'));
        assert_eq!(
            [None, Some(0.25), Some(999.94), Some(12_345.0), Some(4_100_000.0)].map(fmt_rate),
            ["-", "0.2", "999.9", "12.3k", "4.1M"]
        );
    }

    #[test]
    fn top_frames_json_lines_and_text_blocks() {
        let statuses = [1, 2, 3].map(|k| serde_json::to_string(&status_view(vec![counted(k)], &[])).unwrap());
        let daemon = scripted(move |path, n| match path {
            "/v1/status" => Ok(statuses[n.min(2)].clone()),
            other => panic!("unexpected GET {other}"),
        });
        let opts = TopOptions {
            interval: Duration::from_millis(5),
            iterations: Some(3),
            json: true,
            clear: false,
            paint: Paint::OFF,
            service: None,
        };
        let mut out = String::new();
        run_top(&daemon, &opts, &mut |t| {
            out.push_str(t);
            true
        })
        .unwrap();
        let frames: Vec<serde_json::Value> = out.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert_eq!(frames.len(), 3, "{out}");
        assert_eq!(frames[0]["services"][0]["pools"][1]["new_flows_per_s"], serde_json::Value::Null);
        for f in &frames[1..] {
            assert!(f["elapsed_s"].as_f64().unwrap() > 0.0, "{f}");
            assert!(f["services"][0]["pools"][1]["new_flows_per_s"].as_f64().unwrap() > 0.0, "{f}");
        }
        assert_eq!(frames[2]["frame"], 3);

        // Text, not a terminal: blocks one blank line apart, no escape sequences.
        let text_opts = TopOptions { json: false, iterations: Some(2), ..opts.clone() };
        let mut blocks = Vec::new();
        run_top(&daemon, &text_opts, &mut |t| {
            blocks.push(t.to_owned());
            true
        })
        .unwrap();
        assert_eq!(blocks.len(), 2);
        assert!(
            blocks[0].starts_with("lb-daemon 0.1.0 (instance lb)") && blocks[1].starts_with("\nlb-daemon")
        );
        assert!(blocks.iter().all(|b| !b.contains('\x1b')));
        // A terminal: the screen is cleared before each frame.
        let mut frames = Vec::new();
        run_top(&daemon, &TopOptions { clear: true, ..text_opts.clone() }, &mut |t| {
            frames.push(t.to_owned());
            true
        })
        .unwrap();
        assert!(frames.iter().all(|f| f.starts_with("\x1b[H\x1b[2Jlb-daemon")), "{frames:?}");
        // The output going away ends top (successfully) at once.
        let mut calls = 0;
        run_top(&daemon, &TopOptions { iterations: None, ..text_opts.clone() }, &mut |_| {
            calls += 1;
            false
        })
        .unwrap();
        assert_eq!(calls, 1);
        // A failed request or an unknown --service ends it with the usual exit code.
        let gone = scripted(|_, _| Err(unreachable()));
        assert_eq!(exit_code(&run_top(&gone, &text_opts, &mut |_| true).unwrap_err()), 3);
        let other = TopOptions { service: Some("other".into()), ..text_opts };
        assert_eq!(exit_code(&run_top(&daemon, &other, &mut |_| true).unwrap_err()), 4);
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
        assert!(matches!(cli.command, Command::Completions { shell: CompletionShell::Zsh }));
        assert!(matches!(Cli::try_parse_from(["lbctl", "man"]).unwrap().command, Command::Man));
        assert!(offline_output(&Command::Status).is_none());
    }

    #[test]
    fn completion_scripts() {
        let bash = completions(CompletionShell::Bash);
        assert!(bash.contains("lbctl"), "{bash}");
        assert!(bash.contains("complete -F _lbctl"), "{bash}");
        for word in ["switch", "top", "completions", "--wait-drained", "--iterations"] {
            assert!(bash.contains(word), "{word}");
        }
        assert!(completions(CompletionShell::Zsh).starts_with("#compdef lbctl"));
        assert!(completions(CompletionShell::Fish).contains("complete -c lbctl"));
    }

    #[test]
    fn man_page_renders() {
        let page = man_page();
        assert!(page.starts_with(".TH") || page.contains(".SH NAME"), "{page}");
        assert!(page.contains(".TH lbctl 1"), "{page}");
        for section in
            [".SH SYNOPSIS", ".SH OPTIONS", ".SH COMMANDS", ".SH \"EXIT STATUS\"", ".SH \"ENVIRONMENT\""]
        {
            assert!(page.contains(section), "{section}");
        }
        assert!(page.contains(".SS \"lbctl top [OPTIONS]\""), "{page}");
        assert!(page.contains(".SS \"lbctl split [OPTIONS] POOL=PCT...\""), "{page}");
        assert!(page.contains("\\fB\\-\\-interval\\fR \\fIDURATION\\fR"), "{page}");
        assert!(page.contains("[default: 1s]"), "{page}");
        assert!(page.contains("One of: bash, zsh, fish."), "{page}");
        assert!(page.contains("  9  the daemon rolled back automatically during \\-\\-watch"), "{page}");
        // The hidden `man` itself is not listed; no line starts a roff request by accident.
        assert!(!page.contains("lbctl man"), "{page}");
        for line in page.lines().filter(|l| l.starts_with('.') || l.starts_with('\'')) {
            let request = line[1..].split_whitespace().next().unwrap_or("");
            assert!(
                ["TH", "SH", "SS", "TP", "PP", "nf", "fi", "RS", "RE", "IP", "ie", "el", "br"]
                    .contains(&request),
                "{line}"
            );
        }
        assert_eq!(roff_escape(".hidden \\ -x"), "\\&.hidden \\e \\-x");
    }

    #[test]
    fn colours_only_on_a_terminal_without_no_color() {
        assert!(!colour_wanted(false, false), "not a terminal");
        assert!(!colour_wanted(false, true));
        assert!(!colour_wanted(true, true), "NO_COLOR");
        assert!(colour_wanted(true, false));
        let on = Paint { on: true };
        assert_eq!(on.green("up"), "\x1b[32mup\x1b[0m");
        assert_eq!(up_down(false, on), "\x1b[31mDOWN\x1b[0m");
        assert_eq!(Paint::OFF.red("DOWN"), "DOWN");
        assert_eq!(visible_width(&on.bold("web")), 3);
        // Coloured cells align like plain ones.
        let rows =
            vec![args(&["STATE", "N"]), vec![on.green("up"), "1".into()], vec![on.red("DOWN"), "22".into()]];
        let plain =
            table(&[args(&["STATE", "N"]), args(&["up", "1"]), args(&["DOWN", "22"])], &[false, true], "");
        let strip = |s: &str| {
            let mut out = String::new();
            let mut escape = false;
            for c in s.chars() {
                if escape {
                    escape = !c.is_ascii_alphabetic();
                } else if c == '\x1b' {
                    escape = true;
                } else {
                    out.push(c);
                }
            }
            out
        };
        assert_eq!(strip(&table(&rows, &[false, true], "")), plain);
        let svc = service(0, 4, Some(watch_view(WatchState::RolledBack, 7)));
        let coloured = render_pools(&svc, on);
        assert!(coloured.contains("service \x1b[1mweb\x1b[0m (nat)"), "{coloured}");
        assert!(coloured.contains("\x1b[31mlast watch of switch #7"), "{coloured}");
        assert_eq!(strip(&coloured), format_pools(&svc));
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
        }
        assert!(AFTER_HELP.contains("lbctl top"));
    }

    #[test]
    fn status_shows_backends_interfaces_and_adoption() {
        let mut status = status_view(vec![counted(2)], &[("pass_not_vip", 3), ("fwd_tx", 0)]);
        status.interfaces.push(InterfaceView {
            name: "eth1".into(),
            mode: "generic".into(),
            ..Default::default()
        });
        status.uptime_s = 3_700;
        let text = format_status(&status, None);
        assert!(
            text.starts_with("lb-daemon 0.1.0 (instance lb): uptime 1h 1m 40s, adopted pinned state"),
            "{text}"
        );
        assert!(text.contains("interfaces: eth0 (XDP native), eth1 (XDP generic)\n"), "{text}");
        assert!(text.contains("  active: pool-b   previous: pool-a   epoch: 3\n"), "{text}");
        assert!(text.contains("  POOL    BACKEND        STATE  PACKETS  NEW FLOWS\n"), "{text}");
        assert!(text.contains("  pool-a  10.0.0.1:8080  up          20         10\n"), "{text}");
        assert!(text.contains("  pool-a  10.0.0.2:8080  DOWN        20          0\n"), "{text}");
        assert!(text.contains("  pool-b  10.0.1.2:8080  up          20          4\n"), "{text}");
        assert!(text.contains("counters: pass_not_vip=3\n"), "{text}");
        status.adopted = false;
        assert!(format_status(&status, None).contains("started fresh"));
    }

    fn switched() -> SwitchOutcome {
        SwitchOutcome {
            service: "web".into(),
            changed: true,
            before: Active::Pool("pool-a".into()),
            after: Active::Pool("pool-b".into()),
            mode: SwitchMode::Drain,
            epoch: 3,
            apply_us: 84,
            history_id: Some(7),
            dry_run: false,
            warnings: vec![],
            watch: None,
        }
    }

    #[test]
    fn pretty_json_matches_serde_and_keeps_order() {
        let o = SwitchOutcome {
            after: Active::Split(vec![PoolWeight { pool: "a,b:{[\"".into(), weight: 90 }]),
            history_id: None,
            warnings: vec!["forced: b".into()],
            ..switched()
        };
        let compact = serde_json::to_string(&o).unwrap();
        assert_eq!(pretty_json(&compact), serde_json::to_string_pretty(&o).unwrap() + "\n");
        let empty = serde_json::json!({ "a": [], "b": {}, "c": [1, [2]] });
        assert_eq!(pretty_json(&empty.to_string()), serde_json::to_string_pretty(&empty).unwrap() + "\n");
        assert_eq!(outcome_line(&o), "web: pool-a -> split a,b:{[\"=90 (drain), applied in 84 us");
        let same = SwitchOutcome { changed: false, after: Active::Pool("pool-b".into()), ..o };
        assert_eq!(outcome_line(&same), "web: pool-b already active, nothing changed");
    }

    #[test]
    fn dry_run_and_warnings_text() {
        let dry = SwitchOutcome {
            dry_run: true,
            apply_us: 0,
            history_id: None,
            warnings: vec!["forced: pool-b has 0 healthy backend(s), min_healthy is 1".into()],
            ..switched()
        };
        assert_eq!(
            outcome_text(&dry, "switch"),
            "would switch web: pool-a -> pool-b (drain)\n\
             warning: forced: pool-b has 0 healthy backend(s), min_healthy is 1\n"
        );
        let same = SwitchOutcome { changed: false, warnings: vec![], ..dry };
        assert_eq!(outcome_text(&same, "roll back"), "web: pool-b already active, nothing would change\n");
        assert_eq!(outcome_text(&switched(), "switch"), "web: pool-a -> pool-b (drain), applied in 84 us\n");
    }

    #[test]
    fn tables_align() {
        let rows = vec![args(&["POOL", "N"]), args(&["pool-a", "1234"]), args(&["b", "5"])];
        assert_eq!(table(&rows, &[false, true], ""), "POOL       N\npool-a  1234\nb          5\n");
    }

    fn backend(addr: &str, up: bool, new_flows: u64, error: Option<&str>) -> BackendView {
        BackendView {
            addr: addr.into(),
            weight: 1,
            index: 0,
            up,
            last_error: error.map(String::from),
            traffic: Traffic { packets: 10, bytes: 1000, new_flows },
        }
    }

    /// `web` with pool-a (share `share_a`) and pool-b, whose backends saw `b_flows` new flows.
    fn service(share_a: u32, b_flows: u64, watch: Option<WatchView>) -> ServiceView {
        let pool = |name: &str, share: u32, min_healthy: u32, backends: Vec<BackendView>| PoolView {
            name: name.into(),
            share,
            min_healthy,
            healthy: backends.iter().filter(|b| b.up).count() as u32,
            traffic: Traffic::default(),
            backends,
        };
        ServiceView {
            name: "web".into(),
            mode: "nat".into(),
            vips: vec!["192.0.2.1:80".into()],
            active: Active::Pool(if share_a == 100 { "pool-a" } else { "pool-b" }.into()),
            previous: Some(Active::Pool("pool-a".into())),
            epoch: 3,
            pools: vec![
                pool(
                    "pool-a",
                    share_a,
                    2,
                    vec![
                        backend("10.0.0.1:8080", true, 5, None),
                        backend("10.0.0.2:8080", false, 0, Some("connect: connection refused")),
                    ],
                ),
                pool(
                    "pool-b",
                    100 - share_a,
                    1,
                    vec![
                        backend("10.0.1.1:8080", true, b_flows / 2, None),
                        backend("10.0.1.2:8080", true, b_flows - b_flows / 2, None),
                    ],
                ),
            ],
            watch,
        }
    }

    fn watch_view(state: WatchState, switch_id: u64) -> WatchView {
        WatchView {
            service: "web".into(),
            pool: "pool-b".into(),
            until: "2030-01-01T00:01:00Z".into(),
            remaining_s: if state == WatchState::Watching { 42 } else { 0 },
            state,
            reason: match state {
                WatchState::RolledBack => Some("pool-b: 0 of 2 backends healthy, min_healthy 1".into()),
                WatchState::Cancelled => Some("superseded by change #9".into()),
                _ => None,
            },
            switch_history_id: Some(switch_id),
            rollback_history_id: (state == WatchState::RolledBack).then_some(8),
        }
    }

    fn drain_view(share_a: u32, established_a: u64) -> DrainView {
        DrainView {
            service: "web".into(),
            idle_timeout_s: 120,
            pools: vec![
                PoolDrain { pool: "pool-a".into(), share: share_a, established: established_a, closing: 1 },
                PoolDrain { pool: "pool-b".into(), share: 100 - share_a, established: 30, closing: 0 },
            ],
            flows_scanned: 99,
        }
    }

    #[test]
    fn status_pools_backends_and_drain_text() {
        let svc = service(0, 4, Some(watch_view(WatchState::Watching, 7)));
        let pools = format_pools(&svc);
        assert!(pools.contains("pool pool-a: share 0%, healthy 1/2 (min 2) below min,"), "{pools}");
        assert!(pools.contains("pool pool-b: share 100%, healthy 2/2 (min 1),"), "{pools}");
        assert!(pools.contains("10.0.0.2:8080  weight 1  DOWN  connect: connection refused\n"), "{pools}");
        assert!(pools.contains("10.0.0.1:8080  weight 1  up\n"), "{pools}");
        assert!(
            pools.contains("watch of switch #7: pool-b watched for 42s more (until 2030-01-01T00:01:00Z)"),
            "{pools}"
        );
        let backends = format_backends(&svc);
        assert!(backends.lines().next().unwrap().ends_with("LAST ERROR"), "{backends}");
        assert!(backends.contains("DOWN") && backends.contains("connect: connection refused"), "{backends}");
        let status = StatusView {
            instance: "lb".into(),
            version: "0.1.0".into(),
            uptime_s: 5,
            adopted: false,
            interfaces: vec![],
            services: vec![service(100, 0, Some(watch_view(WatchState::RolledBack, 7)))],
            reasons: vec![],
            warnings: vec!["IPv4 forwarding is off on eth0".into()],
        };
        let text = format_status(&status, None);
        assert!(text.contains("\nwarning: IPv4 forwarding is off on eth0\n"), "{text}");
        assert!(text.contains("POOL    SHARE  HEALTHY"), "{text}");
        assert!(text.contains("1/2 (min 2) below min"), "{text}");
        assert!(text.contains("DOWN pool-a 10.0.0.2:8080: connect: connection refused"), "{text}");
        assert!(
            text.contains("last watch of switch #7: pool-b rolled back automatically (#8): pool-b: 0 of 2"),
            "{text}"
        );
        let drain = format_drain(&drain_view(0, 4));
        assert_eq!(
            drain,
            "service web: flows per pool (99 flows scanned; idle over 2m not counted as established)\n  \
             POOL    SHARE  ESTABLISHED  CLOSING\n  \
             pool-a     0%            4        1\n  \
             pool-b   100%           30        0\n"
        );
    }

    /// Answers [`follow`]'s polls from a function of the path and how often it was asked.
    struct Scripted<F: Fn(&str, usize) -> Result<String, ClientError>> {
        answer: F,
        calls: RefCell<Vec<String>>,
    }

    impl<F: Fn(&str, usize) -> Result<String, ClientError>> Daemon for Scripted<F> {
        fn fetch(&self, path: &str) -> Result<String, ClientError> {
            let n = self.calls.borrow().iter().filter(|p| *p == path).count();
            self.calls.borrow_mut().push(path.to_owned());
            (self.answer)(path, n)
        }
    }

    fn scripted<F: Fn(&str, usize) -> Result<String, ClientError>>(answer: F) -> Scripted<F> {
        Scripted { answer, calls: RefCell::new(Vec::new()) }
    }

    fn json<T: Serialize>(v: &T) -> Result<String, ClientError> {
        Ok(serde_json::to_string(v).unwrap())
    }

    const FAST: Pace = Pace {
        new_flow: Duration::from_millis(2),
        drain: Duration::from_millis(2),
        watch: Duration::from_millis(2),
        watch_grace: Duration::from_millis(300),
        drain_report: Duration::ZERO,
        patience: Duration::from_millis(40),
    };

    fn run_follow(
        daemon: &dyn Daemon,
        o: &SwitchOutcome,
        waits: Waits,
    ) -> (Followed, Result<(), Failure>, Vec<String>) {
        let mut said = Vec::new();
        let (seen, result) = follow(daemon, o, "pool-b", waits, &FAST, &mut |l| said.push(l));
        (seen, result, said)
    }

    fn ms_(n: u64) -> Option<Duration> {
        Some(Duration::from_millis(n))
    }

    #[test]
    fn follow_passes_when_flows_arrive_the_old_pool_drains_and_the_watch_passes() {
        let daemon = scripted(|path, n| match path {
            "/v1/services/web" => json(&service(0, if n < 3 { 10 } else { 12 }, None)),
            "/v1/services/web/drain" => json(&drain_view(0, [3, 3, 2, 1].get(n).copied().unwrap_or(0))),
            "/v1/services/web/watch" => {
                json(&Some(watch_view(if n < 20 { WatchState::Watching } else { WatchState::Passed }, 7)))
            }
            other => panic!("unexpected GET {other}"),
        });
        let o = SwitchOutcome { watch: Some(watch_view(WatchState::Watching, 7)), ..switched() };
        let waits =
            Waits { new_flow: ms_(5000), drained: ms_(5000), watch: Some(Duration::from_millis(1500)) };
        let (seen, result, said) = run_follow(&daemon, &o, waits);
        result.unwrap();
        assert_eq!(seen.wait.as_ref().map(|w| (w.reached, w.baseline, w.new_flows)), Some((true, 10, 12)));
        let drain = seen.drain.unwrap();
        assert!(
            drain.drained
                && drain.remaining == 0
                && drain.pools.len() == 1
                && drain.pools[0].pool == "pool-a"
        );
        assert_eq!(seen.watch.unwrap().state, WatchState::Passed);
        assert!(said[0].starts_with("watching pool-b for 2s (until 2030-01-01T00:01:00Z)"), "{said:?}");
        assert!(said[0].contains("stopping lbctl does not stop the watch"), "{said:?}");
        for want in [
            "new flows reach pool-b (2 within",
            "waiting for pool-a to drain: 3 established flows (timeout 5s)",
            "  pool-a: 2 established flows left",
            "pool-a drained after",
            "watch of pool-b passed",
        ] {
            assert!(said.iter().any(|l| l.starts_with(want)), "{want:?} in {said:?}");
        }
        // --wait-drained started only once a new flow reached pool-b.
        let calls = daemon.calls.borrow();
        let first_drain = calls.iter().position(|p| p.ends_with("/drain")).unwrap();
        let services_before = calls[..first_drain].iter().filter(|p| *p == "/v1/services/web").count();
        assert_eq!(services_before, 4, "{calls:?}");
    }

    #[test]
    fn follow_exits_9_when_the_daemon_rolls_back() {
        let daemon = scripted(|path, n| match path {
            "/v1/services/web" => json(&service(if n < 2 { 0 } else { 100 }, 10, None)),
            "/v1/services/web/drain" => json(&drain_view(0, 5)),
            "/v1/services/web/watch" => {
                json(&Some(watch_view(if n < 4 { WatchState::Watching } else { WatchState::RolledBack }, 7)))
            }
            other => panic!("unexpected GET {other}"),
        });
        let waits = Waits { new_flow: ms_(5000), drained: ms_(5000), watch: Some(Duration::from_secs(60)) };
        let (seen, result, said) = run_follow(&daemon, &switched(), waits);
        let e = result.unwrap_err();
        assert_eq!(exit_code(&e), 9, "{e}");
        let msg = e.to_string();
        assert!(msg.contains("rolled back web from pool-b to pool-a automatically"), "{msg}");
        assert!(msg.contains("pool-b: 0 of 2 backends healthy, min_healthy 1"), "{msg}");
        assert!(msg.contains("rollback #8") && msg.contains("switch #7"), "{msg}");
        assert_eq!(seen.watch.unwrap().rollback_history_id, Some(8));
        assert_eq!(said.last().unwrap(), "watch of pool-b ended: lb-daemon rolled back to pool-a");
    }

    #[test]
    fn follow_prefers_the_rollback_over_a_pool_that_gets_flows_again() {
        // The drain view sees pool-a active again before the watch says why.
        let daemon = || {
            scripted(|path, n| match path {
                "/v1/services/web/drain" => json(&drain_view(if n < 1 { 0 } else { 100 }, 5)),
                "/v1/services/web/watch" => json(&Some(watch_view(
                    if n < 2 { WatchState::Watching } else { WatchState::RolledBack },
                    7,
                ))),
                other => panic!("unexpected GET {other}"),
            })
        };
        let waits = Waits { drained: ms_(5000), watch: Some(Duration::from_secs(60)), ..Waits::default() };
        let d = daemon();
        let (_, result, _) = run_follow(&d, &switched(), waits);
        assert_eq!(exit_code(&result.unwrap_err()), 9);
        let calls = d.calls.borrow();
        assert_eq!(calls.iter().filter(|p| p.ends_with("/drain")).count(), 2, "{calls:?}");
        // Without a watch it is someone else's change: a conflict.
        let (_, result, _) =
            run_follow(&daemon(), &switched(), Waits { drained: ms_(5000), ..Waits::default() });
        let e = result.unwrap_err();
        assert_eq!(exit_code(&e), 6, "{e}");
        assert!(e.to_string().contains("pool-a gets new flows again (100%)"), "{e}");
    }

    #[test]
    fn follow_times_out_with_8() {
        let daemon = scripted(|path, _| match path {
            "/v1/services/web" => json(&service(0, 10, None)),
            "/v1/services/web/drain" => json(&drain_view(0, 4)),
            other => panic!("unexpected GET {other}"),
        });
        let (seen, result, _) =
            run_follow(&daemon, &switched(), Waits { new_flow: ms_(60), ..Waits::default() });
        let e = result.unwrap_err();
        assert_eq!((exit_code(&e), e.to_string()), (8, "no new flow reached pool-b within 60ms".to_owned()));
        assert_eq!(seen.wait.map(|w| w.reached), Some(false));

        let (seen, result, said) =
            run_follow(&daemon, &switched(), Waits { drained: ms_(60), ..Waits::default() });
        let e = result.unwrap_err();
        assert_eq!(exit_code(&e), 8);
        assert_eq!(
            e.to_string(),
            "pool-a still has 4 established flows after 60ms (see `lbctl drain-status`)"
        );
        assert_eq!(seen.drain.map(|d| (d.drained, d.remaining)), Some((false, 4)));
        // One line when it starts; the count never dropped, so no more.
        assert_eq!(said, vec!["waiting for pool-a to drain: 4 established flows (timeout 60ms)".to_owned()]);
    }

    #[test]
    fn follow_exits_3_when_the_daemon_goes_away_during_the_watch() {
        let daemon = scripted(|path, n| match (path, n) {
            ("/v1/services/web/watch", 0) => json(&Some(watch_view(WatchState::Watching, 7))),
            _ => Err(unreachable()),
        });
        let started = Instant::now();
        let (_, result, _) = run_follow(
            &daemon,
            &switched(),
            Waits { watch: Some(Duration::from_secs(60)), ..Waits::default() },
        );
        let e = result.unwrap_err();
        assert_eq!(exit_code(&e), 3, "{e}");
        assert!(started.elapsed() >= FAST.patience, "retried for a while first");
        let msg = e.to_string();
        assert!(msg.starts_with("cannot reach lb-daemon at /run/lb/lb.sock"), "{msg}");
        assert!(msg.contains("lb-daemon still holds the watch of pool-b"), "{msg}");
        // A short outage is ridden out.
        let daemon = scripted(|path, n| match (path, n) {
            ("/v1/services/web/watch", 1 | 2) => Err(unreachable()),
            ("/v1/services/web/watch", n) => {
                json(&Some(watch_view(if n < 5 { WatchState::Watching } else { WatchState::Passed }, 7)))
            }
            _ => Err(unreachable()),
        });
        let (_, result, _) = run_follow(
            &daemon,
            &switched(),
            Waits { watch: Some(Duration::from_secs(60)), ..Waits::default() },
        );
        result.unwrap();
    }

    #[test]
    fn follow_exits_1_when_the_watch_is_cancelled_superseded_or_stuck() {
        let cancelled = scripted(|_, _| json(&Some(watch_view(WatchState::Cancelled, 7))));
        let watch = Waits { watch: Some(Duration::from_secs(1)), ..Waits::default() };
        let e = run_follow(&cancelled, &switched(), watch).1.unwrap_err();
        assert_eq!(exit_code(&e), 1);
        assert_eq!(e.to_string(), "the watch of pool-b was cancelled: superseded by change #9");
        let superseded = scripted(|_, _| json(&Some(watch_view(WatchState::Watching, 9))));
        let e = run_follow(&superseded, &switched(), watch).1.unwrap_err();
        assert_eq!(exit_code(&e), 1);
        assert!(e.to_string().contains("switch #9"), "{e}");
        let gone = scripted(|_, _| json(&None::<WatchView>));
        assert_eq!(exit_code(&run_follow(&gone, &switched(), watch).1.unwrap_err()), 1);
        // Still "watching" well after the window plus the grace.
        let stuck = scripted(|_, _| json(&Some(watch_view(WatchState::Watching, 7))));
        let short_watch = Waits { watch: ms_(1), ..Waits::default() };
        let e = run_follow(&stuck, &switched(), short_watch).1.unwrap_err();
        assert_eq!(exit_code(&e), 1);
        assert!(e.to_string().contains("still reports the watch of pool-b running"), "{e}");
    }

    #[test]
    fn follow_without_a_change_starts_no_watch() {
        let daemon = scripted(|path, _| panic!("unexpected GET {path}"));
        let same = SwitchOutcome { changed: false, history_id: None, ..switched() };
        let (seen, result, said) =
            run_follow(&daemon, &same, Waits { watch: Some(Duration::from_secs(60)), ..Waits::default() });
        result.unwrap();
        assert_eq!(seen, Followed::default());
        assert_eq!(said, vec!["web: pool-b was already active, so no watch was started".to_owned()]);
        // ...but follows the earlier switch's watch when it still runs.
        let daemon = scripted(|_, n| {
            json(&Some(watch_view(if n < 2 { WatchState::Watching } else { WatchState::Passed }, 5)))
        });
        let same = SwitchOutcome { watch: Some(watch_view(WatchState::Watching, 5)), ..same };
        let (seen, result, _) =
            run_follow(&daemon, &same, Waits { watch: Some(Duration::from_secs(60)), ..Waits::default() });
        result.unwrap();
        assert_eq!(seen.watch.unwrap().state, WatchState::Passed);
    }

    #[test]
    fn one_json_document_with_the_waits_asked_for() {
        let raw = serde_json::to_string(&switched()).unwrap();
        let seen = Followed { watch: Some(watch_view(WatchState::RolledBack, 7)), ..Followed::default() };
        let waits = Waits { new_flow: ms_(30_000), watch: Some(Duration::from_secs(60)), ..Waits::default() };
        let failure = Failure::RolledBack("rolled back".into());
        let text = followed_json(&raw, waits, &seen, Some(&failure));
        let doc: serde_json::Value = serde_json::from_str(&text).unwrap();
        let mut keys: Vec<&str> = doc.as_object().unwrap().keys().map(String::as_str).collect();
        keys.sort();
        assert_eq!(keys, ["error", "outcome", "wait", "watch"]);
        // In this order, the outcome as the daemon sent it.
        let at = |k: &str| text.find(&format!("\n  \"{k}\": ")).unwrap();
        assert!(
            at("outcome") < at("wait") && at("wait") < at("watch") && at("watch") < at("error"),
            "{text}"
        );
        assert!(
            text.starts_with("{\n  \"outcome\": {\n    \"service\": \"web\",\n    \"changed\": true,"),
            "{text}"
        );
        assert_eq!(doc["outcome"]["history_id"], 7);
        assert_eq!(doc["wait"], serde_json::Value::Null);
        assert_eq!(doc["watch"]["state"], "rolled_back");
        assert_eq!(doc["error"], serde_json::json!({ "exit_code": 9, "message": "rolled back" }));
        let seen = Followed {
            drain: Some(DrainReport { drained: true, remaining: 0, pools: vec![], elapsed_ms: 5 }),
            ..Followed::default()
        };
        let waits = Waits { drained: ms_(1000), ..Waits::default() };
        let doc: serde_json::Value = serde_json::from_str(&followed_json(&raw, waits, &seen, None)).unwrap();
        assert_eq!(doc.as_object().unwrap().len(), 2);
        assert_eq!(
            (doc["drain"]["drained"].as_bool(), doc["drain"]["remaining"].as_u64()),
            (Some(true), Some(0))
        );
    }
}
