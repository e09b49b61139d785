//! `lbctl`: the command-line client of lb-daemon's management API. It switches a service
//! between pools, rolls back, splits traffic and shows state and history.
//!
//! A thin client: every command is one or two API requests (see `lb_daemon::client`), text
//! output is a summary of the response and `--output json` prints the response itself. Exit
//! codes are stable so CI steps can branch on them (see [`exit_code`] and `lbctl --help`).

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::error::ErrorKind;
use clap::{CommandFactory, Parser, Subcommand, ValueEnum};
use lb_daemon::{api::model::*, client::*};

/// Shown at the end of `lbctl --help`.
const AFTER_HELP: &str = "\
Examples:
  lbctl status                         daemon, services, pools and counters
  lbctl switch pool-b                  new flows of the (only) service go to pool-b
  lbctl --service web switch pool-b --hard
                                       ...and established flows move too
  lbctl rollback                       back to the previous pool (or split)
  lbctl split pool-a=90 pool-b=10      canary: 10% of new flows to pool-b
  lbctl pools                          pools with their backends and share
  lbctl history --limit 20             the last 20 changes and who made them
  lbctl -o json status | jq '.services[].active'
  lbctl --url lb1:9180 --token-file /etc/lb/api.token status
                                       a remote daemon over TCP

Exit codes:
  0  success (also when nothing had to change)
  1  daemon internal error, or an unexpected failure (bad response, timeout)
  2  usage error (bad arguments)
  3  daemon unreachable (not running, wrong --socket, no permission: try sudo)
  4  not found (unknown service or pool)
  5  invalid request or refused (e.g. a pool with too few healthy backends)
  6  conflict (the state changed underneath; look and retry)
  7  unauthorized (missing or wrong token with --url)

Environment:
  LB_SOCKET  default for --socket
  LB_TOKEN   bearer token for --url when --token-file is not given";

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
    /// Give up after this long (seconds, e.g. 10 or 0.5).
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
    /// Show the daemon, its interfaces, services and pools (--service: only that service).
    Status,
    /// Make POOL the active pool: new flows go there, established flows stay (unless --hard).
    #[command(
        after_help = "Example: lbctl switch pool-b\nPrints e.g. `web: pool-a -> pool-b (drain), applied in 84 us`."
    )]
    Switch {
        /// Pool to make active.
        #[arg(value_name = "POOL")]
        pool: String,
        /// Move established flows to the new pool too (they may see resets).
        #[arg(long)]
        hard: bool,
    },
    /// Go back to the previous active pool or split.
    Rollback {
        /// Move established flows too.
        #[arg(long)]
        hard: bool,
    },
    /// Share new flows between pools by percentage (at least two pools, summing to 100).
    #[command(after_help = "Example: lbctl split pool-a=90 pool-b=10")]
    Split {
        /// POOL=PERCENT pairs, e.g. pool-a=90 pool-b=10.
        #[arg(value_name = "POOL=PCT", num_args = 2.., required = true)]
        weights: Vec<String>,
    },
    /// List the service's pools with their share of new flows and their backends.
    Pools,
    /// List every backend of the service: pool, address, weight, state, counters.
    Backends,
    /// Show recorded changes (switches, rollbacks, splits), newest last.
    History {
        /// Show at most this many entries (1-10000).
        #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..=10_000))]
        limit: u32,
    },
    /// Make the daemon re-read its config file and apply it.
    Reload,
    /// Stop the daemon. Forwarding continues from the pinned state unless --detach.
    Shutdown {
        /// Also detach the XDP program and remove the pinned maps: forwarding stops.
        #[arg(long)]
        detach: bool,
    },
}

/// The process exit code for a failed request (see the table in `--help`).
pub fn exit_code(error: &ClientError) -> i32 {
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
    Ok(SplitRequest { weights })
}

fn parse_service_name(s: &str) -> Result<String, String> {
    if !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b)) {
        Ok(s.to_owned())
    } else {
        Err("service names are made of a-z, 0-9, '.', '_' and '-'".into())
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
    let split = match &cli.command {
        Command::Split { weights } => match parse_split(weights) {
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

/// Writes to stdout, ignoring a closed pipe (`lbctl history | head`).
fn print_stdout(text: &str) {
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(text.as_bytes());
    if !text.is_empty() && !text.ends_with('\n') {
        let _ = out.write_all(b"\n");
    }
    let _ = out.flush();
}

/// Reports a failure: message (and a hint) on stderr; in JSON mode the API's error body on stdout.
fn report(cli: &Cli, e: &ClientError) {
    if cli.output == Output::Json
        && let ClientError::Api { error, .. } = e
        && let Ok(body) = serde_json::to_string_pretty(&error.body())
    {
        print_stdout(&body);
    }
    let hint = match e {
        ClientError::Unreachable { source, .. } => match source.kind() {
            std::io::ErrorKind::PermissionDenied => " (the API socket is root-only: try sudo)",
            std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused if cli.url.is_none() => {
                " (is lb-daemon running? the socket path is set by --socket or LB_SOCKET)"
            }
            _ => "",
        },
        ClientError::Api { error, .. } if error.code == ErrorCode::Unauthorized => {
            " (check --token-file or LB_TOKEN)"
        }
        _ => "",
    };
    eprintln!("lbctl: {e}{hint}");
}

/// Runs the command; returns what to print on stdout.
fn run(cli: &Cli, client: &Client, split: Option<SplitRequest>) -> Result<String, ClientError> {
    let json = cli.output == Output::Json;
    let service = cli.service.as_deref();
    // `/v1/services/web/switch` with --service, `/v1/switch` (the only service) without.
    let change_path = |verb: &str| match service {
        Some(s) => format!("/v1/services/{s}/{verb}"),
        None => format!("/v1/{verb}"),
    };
    match &cli.command {
        Command::Status => {
            let raw = client.get_text("/v1/status")?;
            let status: StatusView = parse(&raw)?;
            if let Some(name) = service
                && !status.services.iter().any(|s| s.name == name)
            {
                return Err(local_error(ErrorCode::NotFound, format!("no service named {name}")));
            }
            Ok(if json { pretty_json(&raw) } else { format_status(&status, service) })
        }
        Command::Switch { pool, hard } => {
            let req = SwitchRequest { pool: pool.clone(), hard: *hard };
            outcome(json, client.post_text(&change_path("switch"), &req)?)
        }
        Command::Rollback { hard } => {
            outcome(json, client.post_text(&change_path("rollback"), &RollbackRequest { hard: *hard })?)
        }
        Command::Split { .. } => {
            let req = split.unwrap_or_default();
            outcome(json, client.post_text(&change_path("split"), &req)?)
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
                (false, Command::Pools) => format_pools(&view),
                (false, _) => format_backends(&view),
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

fn parse<T: serde::de::DeserializeOwned>(raw: &str) -> Result<T, ClientError> {
    serde_json::from_str(raw)
        .map_err(|e| ClientError::Protocol(format!("unexpected response from lb-daemon: {e}")))
}

/// Prints a switch/rollback/split outcome.
fn outcome(json: bool, raw: String) -> Result<String, ClientError> {
    let o: SwitchOutcome = parse(&raw)?;
    Ok(if json { pretty_json(&raw) } else { format!("{}\n", outcome_line(&o)) })
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

/// Left-aligned columns (right-aligned where `right[i]`), two spaces apart.
fn table(rows: &[Vec<String>], right: &[bool], indent: &str) -> String {
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..cols)
        .map(|i| rows.iter().filter_map(|r| r.get(i)).map(|c| c.chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for row in rows {
        let mut line = indent.to_owned();
        for (i, cell) in row.iter().enumerate() {
            if i > 0 {
                line.push_str("  ");
            }
            let pad = widths[i].saturating_sub(cell.chars().count());
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

fn format_status(s: &StatusView, only: Option<&str>) -> String {
    let mut out = format!(
        "lb-daemon {} (instance {}), up {}{}\n",
        s.version,
        s.instance,
        humantime::format_duration(Duration::from_secs(s.uptime_s)),
        if s.adopted { ", adopted pinned state" } else { "" }
    );
    let ifaces: Vec<String> = s.interfaces.iter().map(|i| format!("{} ({})", i.name, i.mode)).collect();
    out.push_str(&format!(
        "interfaces: {}\n",
        if ifaces.is_empty() { "none".into() } else { ifaces.join(", ") }
    ));
    for svc in s.services.iter().filter(|svc| only.is_none_or(|n| n == svc.name)) {
        out.push('\n');
        out.push_str(&service_header(svc));
        let mut rows =
            vec![["POOL", "SHARE", "BACKENDS", "UP", "PACKETS", "NEW FLOWS"].map(String::from).to_vec()];
        for p in &svc.pools {
            rows.push(vec![
                p.name.clone(),
                format!("{}%", p.share),
                p.backends.len().to_string(),
                p.backends.iter().filter(|b| b.up).count().to_string(),
                p.traffic.packets.to_string(),
                p.traffic.new_flows.to_string(),
            ]);
        }
        out.push_str(&table(&rows, &[false, true, true, true, true, true], "  "));
    }
    let counters: Vec<String> =
        s.reasons.iter().filter(|(_, n)| *n > 0).map(|(r, n)| format!("{r}={n}")).collect();
    if !counters.is_empty() {
        out.push_str(&format!("\ncounters: {}\n", counters.join(" ")));
    }
    out
}

/// `service web (nat) on 192.0.2.1:80` and its active/previous line.
fn service_header(svc: &ServiceView) -> String {
    let previous = svc.previous.as_ref().map(|p| p.to_string()).unwrap_or_else(|| "none".into());
    format!(
        "service {} ({}) on {}\n  active: {}   previous: {}   epoch: {}\n",
        svc.name,
        svc.mode,
        svc.vips.join(", "),
        svc.active,
        previous,
        svc.epoch
    )
}

fn format_pools(svc: &ServiceView) -> String {
    let mut out = service_header(svc);
    for p in &svc.pools {
        let up = p.backends.iter().filter(|b| b.up).count();
        out.push_str(&format!(
            "\npool {}: share {}%, {} backends ({} up), {} packets, {} new flows\n",
            p.name,
            p.share,
            p.backends.len(),
            up,
            p.traffic.packets,
            p.traffic.new_flows
        ));
        let rows: Vec<Vec<String>> = p
            .backends
            .iter()
            .map(|b| vec![b.addr.clone(), format!("weight {}", b.weight), up_down(b.up).into()])
            .collect();
        out.push_str(&table(&rows, &[], "  "));
    }
    out
}

fn up_down(up: bool) -> &'static str {
    if up { "up" } else { "down" }
}

fn format_backends(svc: &ServiceView) -> String {
    let mut rows =
        vec![["POOL", "ADDR", "WEIGHT", "STATE", "PACKETS", "NEW FLOWS"].map(String::from).to_vec()];
    for p in &svc.pools {
        for b in &p.backends {
            rows.push(vec![
                p.name.clone(),
                b.addr.clone(),
                b.weight.to_string(),
                up_down(b.up).into(),
                b.traffic.packets.to_string(),
                b.traffic.new_flows.to_string(),
            ]);
        }
    }
    table(&rows, &[false, false, true, false, true, true], "")
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

#[cfg(test)]
mod tests {
    use super::*;

    fn args(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    fn api(code: ErrorCode) -> ClientError {
        ClientError::Api { status: code.http_status(), error: ApiError::new(code, "x") }
    }

    #[test]
    fn exit_codes() {
        let unreachable = ClientError::Unreachable {
            endpoint: "/run/lb/lb.sock".into(),
            source: std::io::Error::from(std::io::ErrorKind::NotFound),
        };
        assert_eq!(exit_code(&unreachable), 3);
        assert_eq!(exit_code(&api(ErrorCode::NotFound)), 4);
        assert_eq!(exit_code(&api(ErrorCode::InvalidRequest)), 5);
        assert_eq!(exit_code(&api(ErrorCode::Refused)), 5);
        assert_eq!(exit_code(&api(ErrorCode::Conflict)), 6);
        assert_eq!(exit_code(&api(ErrorCode::Unauthorized)), 7);
        assert_eq!(exit_code(&api(ErrorCode::Internal)), 1);
        assert_eq!(exit_code(&ClientError::Protocol("bad".into())), 1);
        // 405 and 413 carry invalid_request.
        let e = ClientError::Api { status: 405, error: ApiError::invalid("method") };
        assert_eq!(exit_code(&e), 5);
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
        assert!(matches!(cli.command, Command::Split { ref weights } if weights.len() == 2));
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

    #[test]
    fn pretty_json_matches_serde_and_keeps_order() {
        let o = SwitchOutcome {
            service: "web".into(),
            changed: true,
            before: Active::Pool("pool-a".into()),
            after: Active::Split(vec![PoolWeight { pool: "a,b:{[\"".into(), weight: 90 }]),
            mode: SwitchMode::Drain,
            epoch: 3,
            apply_us: 84,
            history_id: None,
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
    fn tables_align() {
        let rows = vec![args(&["POOL", "N"]), args(&["pool-a", "1234"]), args(&["b", "5"])];
        assert_eq!(table(&rows, &[false, true], ""), "POOL       N\npool-a  1234\nb          5\n");
    }
}
