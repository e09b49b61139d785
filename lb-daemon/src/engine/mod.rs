//! The engine: owns the data plane and the desired state, and carries out every change
//! (switch, rollback, split, reload, health changes) in the order that keeps traffic safe and
//! the state durable: validate everything, persist the new desired state, write what is new off
//! to the side (tables, backends), then make it live with ONE update of the service's
//! `SERVICES` entry.
//!
//! The decisions live in [`Core`] (one file per job: [`switch`], [`watch`], [`reload`],
//! [`rebuild`], [`drain`], [`view`]), which drives the data plane through the
//! [`Maps`](crate::dataplane::Maps) trait and persists through a
//! [`StateStore`](state::StateStore), so all of them are unit-tested without root. [`Engine`]
//! wraps a `Core` over the real maps with what needs a kernel or a runtime: attaching XDP,
//! health-check tasks, neighbour entries, timers. Mutations are serialized by one mutex.

pub mod backend_control;
mod control;
pub mod core;
pub mod drain;
pub mod fleet;
pub mod fleet_pending;
pub mod flow_cache;
pub mod keys;
pub mod layout;
pub mod metrics;
pub mod persist;
pub mod rebuild;
pub mod reload;
mod reload_summary;
pub mod state;
pub mod switch;
mod sync_view;
#[cfg(test)]
pub(crate) mod tests;
pub mod view;
pub mod watch;

pub use self::core::Core;
pub use drain::{BackendFlows, FlowCounts};
pub use keys::{addr_words, endpoint_key};

use crate::{
    api::model::InterfaceView,
    config::Config,
    dataplane::Dataplane,
    health::{HealthMonitor, HealthSink},
    neighbours::NeighbourKeeper,
};
use state::{PersistedState, StateFile};
use std::{
    net::IpAddr,
    path::PathBuf,
    sync::{Arc, Mutex, MutexGuard, Weak},
    time::{Duration, Instant},
};
use tokio::sync::watch as signal;

/// What `lbctl shutdown` asked for.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ShutdownKind {
    /// Keep running.
    #[default]
    Running,
    /// Exit; forwarding continues from the pinned program and maps.
    Exit,
    /// Exit, detach the program and remove the pins.
    Detach,
}

/// The control plane's state and the operations on it. Implements the API's `Control`.
pub struct Engine {
    core: Arc<Mutex<Core<Dataplane>>>,
    config_path: PathBuf,
    started: Instant,
    adopted: bool,
    interfaces: Mutex<Vec<InterfaceView>>,
    shutdown: signal::Sender<ShutdownKind>,
    health: Mutex<Option<HealthMonitor>>,
    /// Managed neighbour entries of the backends' next hops.
    neighbours: NeighbourKeeper,
    /// Problems of the host or setup, shown in the status (see [`crate::preflight`]).
    warnings: crate::preflight::Warnings,
    /// The BGP announcer (`[bgp]`), told of a reload's new `[bgp]` settings before the rest.
    bgp: std::sync::OnceLock<std::sync::Weak<crate::fleet::Fleet>>,
    /// The flow-table scan `/metrics` reports, refreshed at most every few seconds.
    flow_cache: flow_cache::FlowScanCache,
    /// With `[fleet]`: the desired state comes from etcd and changes go there.
    fleet: std::sync::OnceLock<Arc<crate::fleet::etcd::FleetNode<Dataplane>>>,
}

impl Engine {
    /// Takes over a loaded data plane (fresh or adopted) and makes it serve `config` and the
    /// persisted desired state: the active pool after a restart is the last one switched to.
    pub fn start(config_path: PathBuf, config: Config, dp: Dataplane, adopted: bool) -> anyhow::Result<Self> {
        let path = config.state_file();
        let mut state = PersistedState::load(&path)?;
        // A fleet change made live just before a crash, which the state file had not caught up with.
        fleet_pending::replay(&mut state, fleet_pending::read_pending(&path).as_ref());
        let core = Core::start(config, dp, state, Box::new(StateFile(path)), adopted, core::system_clock())?;
        let (shutdown, _) = signal::channel(ShutdownKind::Running);
        Ok(Self {
            core: Arc::new(Mutex::new(core)),
            config_path,
            started: Instant::now(),
            adopted,
            interfaces: Mutex::new(Vec::new()),
            shutdown,
            health: Mutex::new(None),
            neighbours: NeighbourKeeper::new(),
            warnings: Default::default(),
            bgp: std::sync::OnceLock::new(),
            flow_cache: Default::default(),
            fleet: Default::default(),
        })
    }

    /// The core, shared with the fleet node (which applies the fleet's desired state to it).
    pub fn shared_core(&self) -> Arc<Mutex<Core<Dataplane>>> {
        self.core.clone()
    }

    /// From now on switches, rollbacks and splits go through the fleet's etcd (`[fleet]`).
    pub fn join_fleet(&self, node: Arc<crate::fleet::etcd::FleetNode<Dataplane>>) {
        let _ = self.fleet.set(node);
    }

    /// The fleet node once the host joined its fleet (`[fleet]`): the flow sync takes its
    /// peers from the node's live hosts.
    pub fn fleet_node(&self) -> Option<&Arc<crate::fleet::etcd::FleetNode<Dataplane>>> {
        self.fleet.get()
    }

    /// The warnings shown in the status and `/v1/health`.
    pub fn warnings(&self) -> &crate::preflight::Warnings {
        &self.warnings
    }

    /// Checks the attachments against the kernel every second: re-attaches a lost program,
    /// re-creates removed pins (see [`crate::dataplane::links`]).
    pub fn check_links(&self) {
        let mut core = self.lock();
        core.maps.check_links();
        *self.interfaces.lock().unwrap_or_else(|e| e.into_inner()) = core.maps.interfaces();
    }

    /// Attaches the program to every configured interface and lets it redirect between them.
    pub fn attach_interfaces(&self) -> anyhow::Result<()> {
        let mut core = self.lock();
        let ifaces = core.config.interfaces.clone();
        let mode = match core.config.xdp_mode {
            crate::config::XdpMode::Auto => crate::dataplane::AttachMode::Auto,
            crate::config::XdpMode::Native => crate::dataplane::AttachMode::Native,
            crate::config::XdpMode::Generic => crate::dataplane::AttachMode::Generic,
        };
        let mut warnings = Vec::new();
        for iface in &ifaces {
            let ifindex = nix::net::if_::if_nametoindex(iface.as_str())
                .map_err(|_| anyhow::anyhow!("interface {iface} does not exist"))?;
            core.maps.allow_egress(ifindex)?;
            // Before attaching: frames to another MAC must never be forwarded.
            if let Some(mac) = crate::dataplane::interface_mac(iface)
                .map_err(|e| anyhow::anyhow!("reading the MAC address of {iface}: {e}"))?
                && !core.maps.set_iface_mac(ifindex, mac)?
            {
                tracing::warn!(
                    iface,
                    ifindex,
                    "interface index too high for IFACE_MACS: frames to other MACs are not filtered on it"
                );
            }
            warnings.extend(core.maps.attach(iface, mode)?);
        }
        self.warnings.set("xdp", warnings);
        *self.interfaces.lock().unwrap_or_else(|e| e.into_inner()) = core.maps.interfaces();
        crate::preflight::check_forwarding(&core.config, &self.warnings);
        Ok(())
    }

    /// Keeps the next hop of every configured backend resolved (see [`crate::neighbours`]) and
    /// waits up to `wait` for them to resolve. Problems are logged, never fatal: a backend
    /// without a next hop fails its health checks like an unreachable one.
    pub fn keep_neighbours(&self, wait: Duration) {
        let backends = self.lock().backend_addrs();
        match self.neighbours.keep(&backends) {
            Ok(report) => {
                for problem in &report.problems {
                    tracing::warn!(problem, "backend next hop not kept resolved");
                }
                if report.created + report.removed > 0 {
                    tracing::info!(
                        created = report.created,
                        removed = report.removed,
                        hops = report.hops.len(),
                        "managed neighbour entries updated"
                    );
                }
            }
            Err(e) => tracing::warn!(error = %e, "managing neighbour entries failed"),
        }
        if wait.is_zero() {
            return;
        }
        let started = Instant::now();
        match self.neighbours.wait_resolved(wait) {
            Ok(pending) if pending.is_empty() => {
                tracing::info!(waited_ms = started.elapsed().as_millis() as u64, "backend next hops resolved")
            }
            Ok(pending) => {
                let unresolved: Vec<IpAddr> = pending.iter().map(|h| h.addr).collect();
                tracing::warn!(?unresolved, "backend next hops not resolved yet")
            }
            Err(e) => tracing::warn!(error = %e, "reading neighbour entries failed"),
        }
    }

    /// Deletes the managed neighbour entries (when detaching).
    pub fn release_neighbours(&self) {
        match self.neighbours.release() {
            Ok(n) => tracing::info!(removed = n, "managed neighbour entries removed"),
            Err(e) => tracing::warn!(error = %e, "removing managed neighbour entries failed"),
        }
    }

    /// A receiver that changes when shutdown is requested.
    pub fn shutdown_requested(&self) -> signal::Receiver<ShutdownKind> {
        self.shutdown.subscribe()
    }

    fn lock(&self) -> MutexGuard<'_, Core<Dataplane>> {
        self.core.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Starts the health checks of every backend and the watch timer on `handle`. Health
    /// changes rebuild tables and may trigger an automatic rollback.
    pub fn start_background(self: &Arc<Self>, handle: tokio::runtime::Handle) {
        let weak: Weak<Engine> = Arc::downgrade(self);
        let sink: HealthSink = Arc::new(move |index, up, reason| {
            if let Some(engine) = weak.upgrade() {
                engine.on_health(index, up, reason);
            }
        });
        let monitor = HealthMonitor::start(handle.clone(), sink);
        monitor.set_targets(self.lock().health_targets());
        *self.health.lock().unwrap_or_else(|e| e.into_inner()) = Some(monitor);
        let weak = Arc::downgrade(self);
        handle.spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(200));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(engine) = weak.upgrade() else { return };
                let _ = tokio::task::spawn_blocking(move || engine.lock().check_watches()).await;
            }
        });
        let weak = Arc::downgrade(self);
        handle.spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(engine) = weak.upgrade() else { return };
                let _ = tokio::task::spawn_blocking(move || engine.check_links()).await;
            }
        });
        let weak = Arc::downgrade(self);
        handle.spawn(async move {
            let mut tick = tokio::time::interval(crate::neighbours::REFRESH);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await; // the first tick is immediate; start-up already did a pass
            loop {
                tick.tick().await;
                let Some(engine) = weak.upgrade() else { return };
                let _ = tokio::task::spawn_blocking(move || engine.keep_neighbours(Duration::ZERO)).await;
            }
        });
    }

    /// A health transition from the monitor.
    pub fn on_health(&self, index: u32, up: bool, reason: Option<String>) {
        self.lock().on_health(index, up, reason);
    }
}
