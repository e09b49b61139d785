//! `lb-daemon`: loads the XDP data plane (embedded in this binary), attaches it, adopts what an
//! earlier daemon pinned, and serves the management API until told to stop.
//!
//! Stopping with SIGTERM/SIGINT (or `lbctl shutdown`) leaves the program attached and the maps
//! pinned: forwarding continues, and the next daemon adopts them. `lbctl shutdown --detach`
//! detaches the program and removes the pins. SIGHUP reloads the config.

use anyhow::{Context, Result};
use clap::{Parser, ValueEnum};
use lb_daemon::{
    api::{
        Control,
        server::{ApiLimits, ServeOptions, serve_notifying},
    },
    config::Config,
    dataplane::{Dataplane, DataplaneOptions, PinDir},
    engine::{Engine, ShutdownKind},
    fleet::Fleet,
    lock::InstanceLock,
    preflight, service_manager,
};
use std::{path::PathBuf, process::ExitCode, sync::Arc, time::Duration};
use tokio::signal::unix::{SignalKind, signal};

#[derive(Clone, Copy, Debug, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

/// The load balancer daemon.
#[derive(Parser, Debug)]
#[command(
    version,
    about = "XDP L4 load balancer daemon: serves VIPs from named pools and switches between them",
    after_help = "Examples:\n  lb-daemon --config /etc/lb/lb.toml\n  lb-daemon --config ./lb.toml --check      # validate and exit\n\nDrive it with `lbctl` (see `lbctl --help`)."
)]
struct Args {
    /// Config file (TOML).
    #[arg(long, env = "LB_CONFIG", default_value = "/etc/lb/lb.toml")]
    config: PathBuf,
    /// Validate the config and exit (0 when valid).
    #[arg(long)]
    check: bool,
    /// Print a complete, commented example config and exit.
    #[arg(long)]
    print_example_config: bool,
    /// Print the man page lb-daemon(8) (roff) and exit (`cargo xtask man` writes it).
    #[arg(long, hide = true)]
    print_man_page: bool,
    /// Log format: `text` for people, `json` (one object per line) for log pipelines.
    #[arg(long, value_enum, env = "LB_LOG_FORMAT", default_value = "text")]
    log_format: LogFormat,
    /// Log filter (tracing syntax, e.g. `info` or `lb_daemon=debug`).
    #[arg(long, env = "LB_LOG", default_value = "info")]
    log_level: String,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let filter = tracing_subscriber::EnvFilter::try_new(&args.log_level).unwrap_or_else(|_| "info".into());
    // Colours only for a person at a terminal: not in journald, files or pipes.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    match args.log_format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
    let json = matches!(args.log_format, LogFormat::Json);
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        // Once: as a log record for log pipelines, else as a plain line.
        Err(e) if json => {
            tracing::error!("{e:#}");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("lb-daemon: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Mounts bpffs at `path` unless one is there already; returns whether it mounted one.
fn ensure_bpffs(path: &std::path::Path) -> Result<bool> {
    use nix::{
        mount::{MsFlags, mount},
        sys::statfs::{BPF_FS_MAGIC, statfs},
    };
    std::fs::create_dir_all(path).with_context(|| format!("creating {}", path.display()))?;
    if statfs(path).is_ok_and(|st| st.filesystem_type() == BPF_FS_MAGIC) {
        return Ok(false);
    }
    mount(Some("bpf"), path, Some("bpf"), MsFlags::empty(), None::<&str>)
        .with_context(|| format!("mounting bpffs on {}", path.display()))?;
    tracing::info!(path = %path.display(), "mounted bpffs");
    Ok(true)
}

fn run(args: Args) -> Result<()> {
    if args.print_example_config {
        print!("{}", lb_daemon::config::EXAMPLE_CONFIG);
        return Ok(());
    }
    if args.print_man_page {
        print!("{}", lb_daemon::man::daemon_page(<Args as clap::CommandFactory>::command()));
        return Ok(());
    }
    let config = Config::load(&args.config)?;
    let host = config.check_host()?;
    for warning in &host.warnings {
        tracing::warn!("{warning}");
    }
    if args.check {
        // With [fleet]: etcd refusing the TLS files or credentials fails the check, naming the
        // setting; an etcd not reachable from here is only a warning (checks run on build hosts).
        if let Some(fleet) = &config.fleet {
            use lb_daemon::fleet::etcd::client::{Reach, reach};
            match reach(fleet)? {
                Reach::Ok => {}
                Reach::Unreachable(why) => {
                    tracing::warn!("[fleet]: etcd not reachable from here, not checked: {why}")
                }
                Reach::Refused(why) => anyhow::bail!(
                    "{}: [fleet]: etcd at {} refused this host's settings: {why}",
                    args.config.display(),
                    fleet.endpoints.join(", ")
                ),
            }
        }
        println!("{}: valid", args.config.display());
        return Ok(());
    }
    lb_daemon::dataplane::require_real_objects()?;
    require_privileges()?;
    match preflight::raise_nofile_limit() {
        Ok((before, after)) if after > before => tracing::info!(before, after, "raised the open-file limit"),
        Ok((limit, _)) => tracing::info!(limit, "open-file limit"),
        Err(e) => tracing::warn!("cannot raise the open-file limit: {e}"),
    }
    let mounted_bpffs = ensure_bpffs(&config.bpffs)?;
    let bpffs_warning =
        preflight::bpffs_warning(&config.bpffs, preflight::bpffs_is_hosts(&config.bpffs), mounted_bpffs);
    if let Some(w) = &bpffs_warning {
        tracing::warn!("{w}");
    }
    // One daemon per instance, before anything is adopted or written.
    let _lock = InstanceLock::acquire(
        &config.instance,
        &config.state_dir.join(format!("{}.lock", config.instance)),
        &config.pin_dir(),
    )?;
    let pools: u32 = config.services.iter().map(|s| s.pools.len() as u32).sum();
    let options = DataplaneOptions {
        ring_size: config.ring_size,
        table_slots: (2 * (pools + config.services.len() as u32)).max(16),
        flow_entries: config.flow_table_size,
    };
    let pins = PinDir(config.pin_dir());
    // The data plane reports flows to the flow sync only when there is one.
    lb_daemon::dataplane::set_flow_reports(config.sync.is_some());
    let (mut dp, adopted) = Dataplane::open_pinned(
        options,
        pins.clone(),
        &config.state_dir.join(format!("{}.dataplane.json", config.instance)),
    )?;
    tracing::info!(instance = %config.instance, adopted, pins = %pins.0.display(), "data plane loaded");
    let mut serve_opts = ServeOptions {
        unix_socket: config.api.unix_socket.clone(),
        tcp: config.api.tcp.zip(host.token),
        limits: ApiLimits::default(),
        fleet: None,
        read_token: host.read_token,
        metrics: config.api.metrics,
        sync: None,
    };
    let (bgp, state_dir, instance) = (config.bgp.clone(), config.state_dir.clone(), config.instance.clone());
    let (fleet_cfg, api_tcp) = (config.fleet.clone(), config.api.tcp.map(|a| a.to_string()));
    // The flow sync's handles on the maps, taken before the engine owns the data plane.
    let sync_cfg = config.sync.clone();
    let sync_maps = match &sync_cfg {
        Some(_) => Some((dp.take_flow_events(), dp.flow_reader(), dp.flow_writer()?)),
        None => None,
    };
    let engine = match Engine::start(args.config.clone(), config, dp, adopted) {
        Ok(engine) => Arc::new(engine),
        Err(e) => return Err(forget_fresh_pins(e, adopted, &pins, None)),
    };
    engine.warnings().set("bpffs", bpffs_warning.into_iter().collect());
    // A fresh data plane waits (bounded) for the backends' next hops, so the first packets
    // after attaching find a MAC address; an adopted one is forwarding already.
    engine.keep_neighbours(if adopted { Duration::ZERO } else { Duration::from_secs(2) });
    if let Err(e) = engine.attach_interfaces() {
        return Err(forget_fresh_pins(e, adopted, &pins, Some(engine)));
    }
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    engine.start_background(runtime.handle().clone());
    // BGP announcements (only with [bgp]): from now on, the data plane being attached.
    let control: Arc<dyn Control> = engine.clone();
    // Flow sync (only with [sync]); a joining host announces once it has its peers' flows.
    let sync = match (sync_cfg, sync_maps) {
        (Some(cfg), Some((ring, reader, writer))) => {
            // With [fleet] the peers are the live hosts in etcd (plus any static ones).
            let peers: Box<dyn lb_daemon::fleet::sync::PeerSource> = if fleet_cfg.is_some() {
                let members: Arc<dyn lb_daemon::fleet::sync::SyncMembers> = engine.clone();
                Box::new(lb_daemon::fleet::sync::FleetPeers::new(&members, cfg.peers.clone()))
            } else {
                Box::new(lb_daemon::fleet::sync::StaticPeers(cfg.peers.clone()))
            };
            let local: Arc<dyn lb_daemon::fleet::sync::LocalSource> = engine.clone();
            lb_daemon::fleet::sync::FlowSync::start(
                Some(cfg),
                peers,
                local,
                ring,
                reader,
                writer,
                runtime.handle(),
            )?
        }
        _ => None,
    };
    let gate = sync.clone().map(|s| s as Arc<dyn lb_daemon::fleet::host::AnnounceGate>);
    let mut fleet = Fleet::start_gated(bgp, &state_dir, &instance, &control, runtime.handle(), gate)?;
    if let Some(fleet) = &fleet {
        engine.set_bgp_announcer(fleet);
    }
    drop(control);
    serve_opts.fleet = fleet.clone();
    let sync_listen = sync.as_ref().map(|s| s.config().listen);
    serve_opts.sync = sync;
    // Shared desired state (only with [fleet]): from now on changes go through etcd.
    let fleet_thread = match &fleet_cfg {
        Some(cfg) => {
            Some(lb_daemon::fleet::etcd::join::join(cfg, &engine, fleet.as_ref(), runtime.handle(), api_tcp)?)
        }
        None => None,
    };
    // The other hosts learn this host's sync address from its status in etcd.
    if let (Some(addr), Some(node)) = (sync_listen, engine.fleet_node()) {
        node.set_sync_addr(addr);
    }
    let kind = runtime.block_on(async {
        let mut requested = engine.shutdown_requested();
        let stop = {
            let mut requested = requested.clone();
            async move {
                let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
                let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
                tokio::select! {
                    _ = term.recv() => tracing::info!("SIGTERM: exiting, forwarding continues from the pinned state"),
                    _ = int.recv() => tracing::info!("SIGINT: exiting, forwarding continues from the pinned state"),
                    _ = requested.changed() => {}
                }
                service_manager::stopping();
            }
        };
        let reloader = engine.clone();
        tokio::spawn(async move {
            let mut hup = signal(SignalKind::hangup()).expect("SIGHUP handler");
            while hup.recv().await.is_some() {
                let engine = reloader.clone();
                // The reload logs its outcome itself, as for `lbctl reload` (requester "SIGHUP").
                if let Err(e) = tokio::task::spawn_blocking(move || engine.reload("SIGHUP")).await {
                    tracing::error!(error = %e, "SIGHUP reload panicked");
                }
            }
        });
        tracing::info!(socket = %serve_opts.unix_socket.display(), "serving the management API");
        // READY=1 (systemd `Type=notify`): the program is attached (above) and the API listens.
        let ready = format!("forwarding; API on {}", serve_opts.unix_socket.display());
        let listening = move || service_manager::ready(&ready);
        let result = serve_notifying(engine.clone() as Arc<dyn Control>, serve_opts, stop, listening).await;
        let kind = *requested.borrow_and_update();
        result.map(|()| kind)
    })?;
    // The fleet thread calls into the runtime: it stops first.
    drop(fleet_thread);
    drop(runtime);
    if kind == ShutdownKind::Detach {
        // Routers stop sending here before forwarding stops.
        if let Some(fleet) = fleet.take() {
            fleet.withdraw_for_detach();
        }
        engine.release_neighbours();
        // The engine holds the program and, after adoption, the link: release them first.
        if Arc::try_unwrap(engine).is_err() {
            tracing::warn!("engine still referenced while detaching");
        }
        Dataplane::remove_pins(&pins)?;
        tracing::warn!("program detached and pins removed: forwarding stopped");
    }
    Ok(())
}

/// After a failed start: a data plane this daemon created (not adopted) is not forwarding
/// anything yet, so its pins and neighbour entries are removed rather than left for a later
/// daemon to adopt; an adopted one stays as it was. Returns `error`.
fn forget_fresh_pins(
    error: anyhow::Error,
    adopted: bool,
    pins: &PinDir,
    engine: Option<Arc<Engine>>,
) -> anyhow::Error {
    if adopted {
        return error;
    }
    if let Some(engine) = engine {
        engine.release_neighbours();
        drop(engine);
    }
    if let Err(e) = Dataplane::remove_pins(pins) {
        tracing::warn!(pins = %pins.0.display(), "could not remove the pins of the failed start: {e:#}");
    }
    error
}

/// Fails with a clear message unless this process may load and attach BPF programs: it needs
/// CAP_BPF (or CAP_SYS_ADMIN on older kernels) and CAP_NET_ADMIN, which root has. Without
/// this check a normal user meets "failed to create map SERVICES".
fn require_privileges() -> Result<()> {
    const CAP_NET_ADMIN: u32 = 12;
    const CAP_SYS_ADMIN: u32 = 21;
    const CAP_BPF: u32 = 39;
    let status = std::fs::read_to_string("/proc/self/status").context("reading /proc/self/status")?;
    let effective = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .context("no CapEff line in /proc/self/status")?;
    let has = |cap: u32| effective & (1 << cap) != 0;
    let mut missing = Vec::new();
    if !has(CAP_BPF) && !has(CAP_SYS_ADMIN) {
        missing.push("CAP_BPF");
    }
    if !has(CAP_NET_ADMIN) {
        missing.push("CAP_NET_ADMIN");
    }
    anyhow::ensure!(
        missing.is_empty(),
        "lb-daemon needs root (CAP_BPF and CAP_NET_ADMIN) to load and attach the XDP program; \
         running as uid {} without {}",
        nix::unistd::geteuid(),
        missing.join(" and ")
    );
    Ok(())
}
