//! The engine: owns the data plane and the desired state, and carries out every change
//! (switch, rollback, split, reload) in the one order that keeps traffic safe:
//! write what is new off to the side (tables, backends), then make it live with ONE update of
//! the service's `SERVICES` entry, then persist the new desired state.
//!
//! Mutations are serialized by one mutex. Every request is validated completely before the
//! first map write, so a bad request changes nothing.

pub mod layout;
pub mod metrics;
pub mod state;

use crate::{
    api::{
        Control,
        model::{
            Active, ApiError, BackendView, DrainView, ErrorCode, HistoryEntry, HistoryKind, InterfaceView,
            PoolDrain, PoolView, ReloadOutcome, RollbackRequest, ServiceView, ShutdownRequest, SplitRequest,
            StatusView, SwitchMode, SwitchOutcome, SwitchRequest, Traffic, WatchState, WatchView,
        },
    },
    config::Config,
    dataplane::{Dataplane, DataplaneError, FlowReader},
    health::{HealthMonitor, HealthSink, HealthTarget},
    neighbours::NeighbourKeeper,
};
use layout::{Layout, ServiceLayout, plan, pool_table, split_table};
use lb_common::{
    maps::{
        BACKEND_UP, Backend, EndpointKey, FAMILY_V4, FAMILY_V6, MAX_SERVICES, MAX_VIPS_PER_BACKEND,
        NatBackend, NatVip, PROTO_TCP, SERVICE_DSR, SERVICE_ENABLED, Service, VipValue,
    },
    stats::{ALL_REASONS, backend_counter, backend_new_flow_counter, reason_counter},
};
use state::{PersistedState, ServiceState, WatchRecord};
use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, SocketAddr},
    path::PathBuf,
    sync::{Arc, Mutex, MutexGuard, Weak},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};
use tokio::sync::watch;

/// Address words and family as the maps store them.
pub fn addr_words(ip: IpAddr) -> ([u32; 4], u8) {
    match ip {
        IpAddr::V4(a) => ([u32::from_ne_bytes(a.octets()), 0, 0, 0], FAMILY_V4),
        IpAddr::V6(a) => {
            let o = a.octets();
            let w = |i: usize| u32::from_ne_bytes([o[i], o[i + 1], o[i + 2], o[i + 3]]);
            ([w(0), w(4), w(8), w(12)], FAMILY_V6)
        }
    }
}

/// The map key of an (address, port).
pub fn endpoint_key(addr: &SocketAddr) -> EndpointKey {
    let (words, family) = addr_words(addr.ip());
    EndpointKey { addr: words, port: addr.port().to_be(), proto: PROTO_TCP, family }
}

fn dp_err(e: DataplaneError) -> ApiError {
    ApiError::internal(format!("data plane: {e}"))
}

fn now_rfc3339() -> String {
    humantime::format_rfc3339_seconds(SystemTime::now()).to_string()
}

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

fn rfc3339_of_ms(ms: u64) -> String {
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_millis(ms)).to_string()
}

/// The clock the data plane stamps flows with (`bpf_ktime_get_coarse_ns`).
fn monotonic_coarse_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC_COARSE, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// A flow with no packet for this long is not counted as established by `drain`.
pub const DRAIN_IDLE_TIMEOUT: Duration = Duration::from_secs(300);

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

struct Inner {
    config_path: PathBuf,
    config: Config,
    dp: Dataplane,
    state: PersistedState,
    layout: Layout,
    /// Table slot holding each (service, pool)'s current table.
    pool_slots: BTreeMap<(String, String), u32>,
    /// Table slot holding a service's split table, while it serves a split.
    split_slots: BTreeMap<String, u32>,
    /// Backend indexes taken out of service (health checks).
    down: BTreeSet<u32>,
    /// Last health-check error of each backend that failed.
    health_errors: BTreeMap<u32, String>,
    /// Slots some `SERVICES` entry may still point at (adopted from an earlier daemon).
    reserved: BTreeSet<u32>,
}

/// The control plane's state and the operations on it. Implements the API's `Control`.
pub struct Engine {
    inner: Mutex<Inner>,
    started: Instant,
    adopted: bool,
    interfaces: Mutex<Vec<InterfaceView>>,
    shutdown: watch::Sender<ShutdownKind>,
    health: Mutex<Option<HealthMonitor>>,
    /// Managed neighbour entries of the backends' next hops.
    neighbours: NeighbourKeeper,
}

impl Engine {
    /// Takes over a loaded data plane (fresh or adopted) and makes it serve `config` and the
    /// persisted desired state: the active pool after a restart is the last one switched to.
    pub fn start(config_path: PathBuf, config: Config, dp: Dataplane, adopted: bool) -> anyhow::Result<Self> {
        let mut state = PersistedState::load(&config.state_file())?;
        let layout = plan(&config, &mut state)?;
        // Slots the running data plane may point at must not be written before the flip.
        let mut reserved = BTreeSet::new();
        let mut adopted_epochs = BTreeMap::new();
        if adopted {
            for id in 0..MAX_SERVICES {
                if let Ok(s) = dp.service(id) {
                    if s.flags & SERVICE_ENABLED != 0 {
                        reserved.insert(s.table);
                        adopted_epochs.insert(id, s.epoch);
                    }
                }
            }
        }
        let mut inner = Inner {
            config_path,
            config,
            dp,
            state,
            layout: Layout::default(),
            pool_slots: BTreeMap::new(),
            split_slots: BTreeMap::new(),
            down: BTreeSet::new(),
            health_errors: BTreeMap::new(),
            reserved,
        };
        let mut history = Vec::new();
        inner
            .apply_layout(layout, &adopted_epochs, "daemon start", &mut history)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        inner.reserved.clear();
        inner.state.save(&inner.config.state_file())?;
        let (shutdown, _) = watch::channel(ShutdownKind::Running);
        Ok(Self {
            inner: Mutex::new(inner),
            started: Instant::now(),
            adopted,
            interfaces: Mutex::new(Vec::new()),
            shutdown,
            health: Mutex::new(None),
            neighbours: NeighbourKeeper::new(),
        })
    }

    /// Attaches the program to every configured interface and lets it redirect between them.
    pub fn attach_interfaces(&self) -> anyhow::Result<()> {
        let mut inner = self.lock();
        let ifaces = inner.config.interfaces.clone();
        let mode = match inner.config.xdp_mode {
            crate::config::XdpMode::Auto => crate::dataplane::AttachMode::Auto,
            crate::config::XdpMode::Native => crate::dataplane::AttachMode::Native,
            crate::config::XdpMode::Generic => crate::dataplane::AttachMode::Generic,
        };
        let mut views = Vec::new();
        for iface in &ifaces {
            let name = std::ffi::CString::new(iface.as_str())?;
            let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
            anyhow::ensure!(ifindex != 0, "interface {iface} does not exist");
            inner.dp.allow_egress(ifindex)?;
            // Before attaching: frames to another MAC must never be forwarded.
            if let Some(mac) = crate::dataplane::interface_mac(iface)
                .map_err(|e| anyhow::anyhow!("reading the MAC address of {iface}: {e}"))?
                && !inner.dp.set_iface_mac(ifindex, mac)?
            {
                tracing::warn!(
                    iface,
                    ifindex,
                    "interface index too high for IFACE_MACS: frames to other MACs are not filtered on it"
                );
            }
            let used = inner.dp.attach(iface, mode)?;
            tracing::info!(iface, mode = used, "XDP attached");
            views.push(InterfaceView { name: iface.clone(), mode: used.to_string() });
        }
        *self.interfaces.lock().unwrap_or_else(|e| e.into_inner()) = views;
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
    pub fn shutdown_requested(&self) -> watch::Receiver<ShutdownKind> {
        self.shutdown.subscribe()
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
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
        let mut inner = self.lock();
        match reason {
            Some(r) if !up => {
                inner.health_errors.insert(index, r);
            }
            _ => {
                inner.health_errors.remove(&index);
            }
        }
        let changed = if up { inner.down.remove(&index) } else { inner.down.insert(index) };
        if changed {
            if let Err(e) = inner.rebuild_tables_with(index) {
                tracing::error!(index, error = %e, "rebuilding tables after a health change failed");
            }
        }
        inner.check_watches();
    }
}

impl Inner {
    /// The address of every configured backend.
    fn backend_addrs(&self) -> BTreeSet<IpAddr> {
        self.config
            .services
            .iter()
            .flat_map(|s| &s.pools)
            .flat_map(|p| &p.backends)
            .map(|b| b.addr.ip())
            .collect()
    }

    fn health_targets(&self) -> Vec<HealthTarget> {
        let mut out = Vec::new();
        for svc in &self.config.services {
            let Some(layout) = self.layout.service(&svc.name) else { continue };
            for pool in &svc.pools {
                let Some(pl) = layout.pool(&pool.name) else { continue };
                for b in &pl.backends {
                    out.push(HealthTarget { index: b.index, addr: b.addr, check: pool.health.clone() });
                }
            }
        }
        out
    }

    /// Healthy backends of a pool, and a description of the unhealthy ones.
    fn pool_health(&self, svc: &ServiceLayout, pool: &str) -> (u32, u32, Vec<String>) {
        let Some(p) = svc.pool(pool) else { return (0, 0, Vec::new()) };
        let mut healthy = 0;
        let mut bad = Vec::new();
        for b in &p.backends {
            if self.down.contains(&b.index) {
                let why =
                    self.health_errors.get(&b.index).map(String::as_str).unwrap_or("failing health checks");
                bad.push(format!("{} ({why})", b.addr));
            } else if b.weight > 0 {
                healthy += 1;
            }
        }
        (healthy, p.min_healthy, bad)
    }

    /// Refuses a change to pools below their `min_healthy` unless forced; returns warnings.
    fn gate(&self, svc: &ServiceLayout, target: &Active, force: bool) -> Result<Vec<String>, ApiError> {
        let pools: Vec<&str> = match target {
            Active::Pool(p) => vec![p.as_str()],
            Active::Split(ws) => ws.iter().map(|w| w.pool.as_str()).collect(),
        };
        let mut problems = Vec::new();
        for pool in pools {
            let (healthy, min, bad) = self.pool_health(svc, pool);
            if healthy < min {
                let list =
                    if bad.is_empty() { String::new() } else { format!("; unhealthy: {}", bad.join(", ")) };
                problems.push(format!("{pool} has {healthy} healthy backend(s), min_healthy is {min}{list}"));
            }
        }
        if problems.is_empty() {
            return Ok(Vec::new());
        }
        if force {
            return Ok(problems.into_iter().map(|p| format!("forced: {p}")).collect());
        }
        Err(ApiError::refused(format!(
            "{}: refused, {} (use --force to switch anyway)",
            svc.name,
            problems.join("; ")
        )))
    }

    fn watch_view(&self, service: &str) -> Option<WatchView> {
        let w = self.state.watches.get(service)?;
        let now = unix_ms(SystemTime::now());
        let remaining_s =
            if w.state == WatchState::Watching { w.until_ms.saturating_sub(now).div_ceil(1000) } else { 0 };
        Some(WatchView {
            service: service.to_string(),
            pool: w.pool.clone(),
            until: rfc3339_of_ms(w.until_ms),
            remaining_s,
            state: w.state,
            reason: w.reason.clone(),
            switch_history_id: w.switch_history_id,
            rollback_history_id: w.rollback_history_id,
        })
    }

    /// Ends watches whose window passed and rolls back services whose watched pool fell below
    /// `min_healthy`.
    fn check_watches(&mut self) {
        let now = unix_ms(SystemTime::now());
        let watching: Vec<(String, WatchRecord)> = self
            .state
            .watches
            .iter()
            .filter(|(_, w)| w.state == WatchState::Watching)
            .map(|(k, w)| (k.clone(), w.clone()))
            .collect();
        let mut dirty = false;
        for (name, w) in watching {
            let Some(svc) = self.layout.service(&name).cloned() else {
                self.state.watches.remove(&name);
                dirty = true;
                continue;
            };
            let (healthy, min, bad) = self.pool_health(&svc, &w.pool);
            if healthy < min {
                let reason = format!(
                    "{}: {healthy} of {} backends healthy, min_healthy {min}: {}",
                    w.pool,
                    svc.pool(&w.pool).map(|p| p.backends.len()).unwrap_or(0),
                    bad.join(", ")
                );
                let target = self.state.services.get(&name).and_then(|s| s.previous.clone());
                let requester = format!("lb-daemon watch of switch #{}", w.switch_history_id.unwrap_or(0));
                let result = match target {
                    Some(t) => self.change(
                        Some(&name),
                        t,
                        false,
                        HistoryKind::AutoRollback,
                        &requester,
                        Instant::now(),
                        Some(reason.clone()),
                    ),
                    None => Err(ApiError::refused("nothing to roll back to")),
                };
                let rec = self.state.watches.get_mut(&name).expect("watch present");
                match result {
                    Ok(out) => {
                        tracing::warn!(service = %name, %reason, "automatic rollback");
                        rec.state = WatchState::RolledBack;
                        rec.reason = Some(reason);
                        rec.rollback_history_id = out.history_id;
                    }
                    Err(e) => {
                        tracing::error!(service = %name, error = %e, "automatic rollback failed");
                        rec.state = WatchState::Cancelled;
                        rec.reason = Some(format!("{reason}; automatic rollback failed: {e}"));
                    }
                }
                dirty = true;
            } else if now >= w.until_ms {
                tracing::info!(service = %name, pool = %w.pool, "watch passed");
                if let Some(rec) = self.state.watches.get_mut(&name) {
                    rec.state = WatchState::Passed;
                }
                dirty = true;
            }
        }
        if dirty {
            if let Err(e) = self.state.save(&self.config.state_file()) {
                tracing::error!(error = %e, "writing the state file failed");
            }
        }
    }

    /// Established and closing flows per pool of a service.
    fn drain_view(&self, svc: &ServiceLayout, counts: &FlowCounts) -> DrainView {
        let active = &self.state.services[&svc.name].active;
        DrainView {
            service: svc.name.clone(),
            idle_timeout_s: DRAIN_IDLE_TIMEOUT.as_secs(),
            pools: svc
                .pools
                .iter()
                .map(|p| PoolDrain {
                    pool: p.name.clone(),
                    share: active.share(&p.name),
                    established: p.backends.iter().map(|b| counts.of(b.index).established).sum(),
                    closing: p.backends.iter().map(|b| counts.of(b.index).closing).sum(),
                })
                .collect(),
            flows_scanned: counts.scanned,
        }
    }

    fn ring(&self) -> u32 {
        self.dp.options().ring_size
    }

    fn is_up(&self) -> impl Fn(u32) -> bool + '_ {
        move |i| !self.down.contains(&i)
    }

    fn free_slot(&self, also_taken: &BTreeSet<u32>) -> Result<u32, ApiError> {
        let taken: BTreeSet<u32> = self
            .pool_slots
            .values()
            .chain(self.split_slots.values())
            .chain(self.reserved.iter())
            .chain(also_taken.iter())
            .copied()
            .collect();
        (0..self.dp.options().table_slots)
            .find(|s| !taken.contains(s))
            .ok_or_else(|| ApiError::refused("no free Maglev table slot: too many pools for the TABLES map (restart the daemon after `lbctl shutdown --detach` to grow it)"))
    }

    fn write_table(&mut self, table: &[u32], also_taken: &BTreeSet<u32>) -> Result<u32, ApiError> {
        let slot = self.free_slot(also_taken)?;
        self.dp.write_table(slot, table).map_err(dp_err)?;
        Ok(slot)
    }

    fn service_layout(&self, name: Option<&str>) -> Result<&ServiceLayout, ApiError> {
        match name {
            Some(n) => self.layout.service(n).ok_or_else(|| {
                let names: Vec<&str> = self.layout.services.iter().map(|s| s.name.as_str()).collect();
                ApiError::not_found(format!("no service {n:?} (services: {})", names.join(", ")))
            }),
            None if self.layout.services.len() == 1 => Ok(&self.layout.services[0]),
            None => {
                let names: Vec<&str> = self.layout.services.iter().map(|s| s.name.as_str()).collect();
                Err(ApiError::invalid(format!(
                    "several services are configured; name one with --service ({})",
                    names.join(", ")
                )))
            }
        }
    }

    /// Checks that `active` only names pools of `svc`.
    fn validate_active(svc: &ServiceLayout, active: &Active) -> Result<(), ApiError> {
        let check = |p: &str| {
            svc.pool(p).map(|_| ()).ok_or_else(|| {
                let pools: Vec<&str> = svc.pools.iter().map(|p| p.name.as_str()).collect();
                ApiError::not_found(format!(
                    "service {} has no pool {p:?} (pools: {})",
                    svc.name,
                    pools.join(", ")
                ))
            })
        };
        match active {
            Active::Pool(p) => check(p),
            Active::Split(ws) => {
                if ws.len() < 2 {
                    return Err(ApiError::invalid("a split needs at least two pools"));
                }
                let mut seen = BTreeSet::new();
                for w in ws {
                    check(&w.pool)?;
                    if !seen.insert(&w.pool) {
                        return Err(ApiError::invalid(format!("pool {} appears twice in the split", w.pool)));
                    }
                    if w.weight == 0 || w.weight > 100 {
                        return Err(ApiError::invalid(format!(
                            "weight of {} must be 1..=100, got {}",
                            w.pool, w.weight
                        )));
                    }
                }
                let sum: u32 = ws.iter().map(|w| w.weight).sum();
                if sum != 100 {
                    return Err(ApiError::invalid(format!(
                        "split weights must sum to 100, they sum to {sum}"
                    )));
                }
                Ok(())
            }
        }
    }

    /// Writes a table for `active` if it needs one (a split) and returns the slot new flows
    /// should use.
    fn slot_for(&mut self, svc: &ServiceLayout, active: &Active) -> Result<u32, ApiError> {
        match active {
            Active::Pool(p) => self
                .pool_slots
                .get(&(svc.name.clone(), p.clone()))
                .copied()
                .ok_or_else(|| ApiError::internal(format!("no table for {}/{p}", svc.name))),
            Active::Split(ws) => {
                let table = split_table(svc, ws, self.ring(), &self.is_up())
                    .map_err(|e| ApiError::internal(e.to_string()))?;
                // The current split slot (if any) is live: write the new one beside it.
                self.write_table(&table, &BTreeSet::new())
            }
        }
    }

    fn flags_of(svc: &ServiceLayout) -> u32 {
        SERVICE_ENABLED | if svc.dsr { SERVICE_DSR } else { 0 }
    }

    /// Points `svc`'s `SERVICES` entry at the table for `active` (writing a split table first
    /// if needed): the one update that makes a change live.
    fn point(&mut self, svc: &ServiceLayout, active: &Active, epoch: u32) -> Result<(), ApiError> {
        let slot = self.slot_for(svc, active)?;
        self.dp
            .set_service(svc.id, &Service { table: slot, epoch, flags: Self::flags_of(svc), _pad: 0 })
            .map_err(dp_err)?;
        // The previous split table (if any) is no longer referenced.
        match active {
            Active::Split(_) => {
                self.split_slots.insert(svc.name.clone(), slot);
            }
            Active::Pool(_) => {
                self.split_slots.remove(&svc.name);
            }
        }
        Ok(())
    }

    /// Makes `active` live for `svc`. Returns (epoch, microseconds from `started` to the
    /// update).
    fn make_live(
        &mut self,
        svc: &ServiceLayout,
        active: &Active,
        hard: bool,
        started: Instant,
    ) -> Result<(u32, u64), ApiError> {
        let current = self.state.services.get(&svc.name).map(|s| s.epoch).unwrap_or(1);
        let epoch = if hard { current.wrapping_add(1).max(1) } else { current };
        self.point(svc, active, epoch)?;
        Ok((epoch, started.elapsed().as_micros() as u64))
    }

    /// The common path of switch, rollback, split and automatic rollback.
    #[allow(clippy::too_many_arguments)]
    fn change(
        &mut self,
        service: Option<&str>,
        target: Active,
        hard: bool,
        kind: HistoryKind,
        requester: &str,
        started: Instant,
        reason: Option<String>,
    ) -> Result<SwitchOutcome, ApiError> {
        self.change_with(service, target, hard, kind, requester, started, reason, &ChangeOptions::default())
    }

    #[allow(clippy::too_many_arguments)]
    fn change_with(
        &mut self,
        service: Option<&str>,
        target: Active,
        hard: bool,
        kind: HistoryKind,
        requester: &str,
        started: Instant,
        reason: Option<String>,
        opts: &ChangeOptions,
    ) -> Result<SwitchOutcome, ApiError> {
        let svc = self.service_layout(service)?.clone();
        Self::validate_active(&svc, &target)?;
        let st = self
            .state
            .services
            .get(&svc.name)
            .cloned()
            .ok_or_else(|| ApiError::internal("service without state"))?;
        if let Some(expected) = &opts.expect_active {
            if st.active.to_string() != *expected {
                let last = self.state.history.iter().rev().find(|h| h.service == svc.name);
                let by =
                    last.map(|h| format!(" (changed at {} by {})", h.time, h.requester)).unwrap_or_default();
                return Err(ApiError::new(
                    ErrorCode::Conflict,
                    format!(
                        "{}: expected {expected} to be active, but {} is{by}; nothing changed",
                        svc.name, st.active
                    ),
                ));
            }
        }
        let mode = if hard { SwitchMode::Hard } else { SwitchMode::Drain };
        let unchanged = st.active == target && !hard;
        let warnings = if kind == HistoryKind::Rollback || kind == HistoryKind::AutoRollback || unchanged {
            Vec::new()
        } else {
            self.gate(&svc, &target, opts.force)?
        };
        let outcome = |changed: bool,
                       epoch: u32,
                       apply_us: u64,
                       history_id: Option<u64>,
                       warnings: Vec<String>,
                       watch: Option<WatchView>| SwitchOutcome {
            service: svc.name.clone(),
            changed,
            before: st.active.clone(),
            after: target.clone(),
            mode,
            epoch,
            apply_us,
            history_id,
            dry_run: opts.dry_run,
            warnings,
            watch,
        };
        if unchanged {
            return Ok(outcome(false, st.epoch, 0, None, warnings, self.watch_view(&svc.name)));
        }
        if opts.dry_run {
            let epoch = if hard { st.epoch.wrapping_add(1).max(1) } else { st.epoch };
            return Ok(outcome(true, epoch, 0, None, warnings, None));
        }
        let (epoch, apply_us) = self.make_live(&svc, &target, hard, started)?;
        // Rollback returns to what was active before this change, so pressing it twice comes
        // back to where one started.
        self.state.services.insert(
            svc.name.clone(),
            ServiceState { id: svc.id, active: target.clone(), previous: Some(st.active.clone()), epoch },
        );
        let id = self.state.record(HistoryEntry {
            id: 0,
            time: now_rfc3339(),
            service: svc.name.clone(),
            kind,
            from: st.active.clone(),
            to: target.clone(),
            mode,
            requester: requester.to_string(),
            reason: reason.clone().or_else(|| (!warnings.is_empty()).then(|| warnings.join("; "))),
        });
        tracing::info!(service = %svc.name, from = %st.active, to = %target, mode = ?mode, kind = ?kind, requester, apply_us, "switched");
        // A change by someone ends the running watch; the automatic rollback ends it itself.
        if kind != HistoryKind::AutoRollback {
            if let Some(w) = self.state.watches.get_mut(&svc.name) {
                if w.state == WatchState::Watching {
                    w.state = WatchState::Cancelled;
                    w.reason = Some(format!("superseded by change #{id}"));
                }
            }
        }
        if let (Some(secs), Active::Pool(pool)) = (opts.watch_s, &target) {
            self.state.watches.insert(
                svc.name.clone(),
                WatchRecord {
                    pool: pool.clone(),
                    until_ms: unix_ms(SystemTime::now()) + secs * 1000,
                    state: WatchState::Watching,
                    reason: None,
                    switch_history_id: Some(id),
                    rollback_history_id: None,
                },
            );
        }
        if let Err(e) = self.state.save(&self.config.state_file()) {
            // The data plane already serves the change; say loudly that it is not persisted.
            tracing::error!(error = %e, "state file not written: a restart would come back to the previous state");
            return Err(ApiError::internal(format!("switched, but writing the state file failed: {e:#}")));
        }
        let watch = self.watch_view(&svc.name).filter(|_| opts.watch_s.is_some());
        Ok(outcome(true, epoch, apply_us, Some(id), warnings, watch))
    }

    /// Rebuilds the tables of every pool holding `index` after a health change, flipping the
    /// services that serve them.
    fn rebuild_tables_with(&mut self, index: u32) -> Result<(), ApiError> {
        let affected: Vec<(ServiceLayout, String)> = self
            .layout
            .services
            .iter()
            .flat_map(|s| {
                s.pools
                    .iter()
                    .filter(|p| p.backends.iter().any(|b| b.index == index))
                    .map(move |p| (s.clone(), p.name.clone()))
            })
            .collect();
        for (svc, pool) in affected {
            let p = svc.pool(&pool).expect("pool from layout").clone();
            let table =
                pool_table(&p, self.ring(), &self.is_up()).map_err(|e| ApiError::internal(e.to_string()))?;
            // Written beside the current table, which stays live until the flip below.
            let slot = self.write_table(&table, &BTreeSet::new())?;
            self.pool_slots.insert((svc.name.clone(), pool.clone()), slot);
            let st = self.state.services[&svc.name].clone();
            if st.active.share(&pool) > 0 {
                self.point(&svc, &st.active, st.epoch)?;
            }
        }
        Ok(())
    }

    /// Makes the data plane serve `layout`: backends, tables, services, VIPs, NAT backends and
    /// filters. Used at start (adopting whatever was pinned) and on reload.
    fn apply_layout(
        &mut self,
        layout: Layout,
        adopted_epochs: &BTreeMap<u32, u32>,
        why: &str,
        history: &mut Vec<String>,
    ) -> Result<(), ApiError> {
        // 1. Backends: new and kept ones up; retired ones down (their flows re-balance).
        let new_indices = layout.backend_indices();
        for svc in &layout.services {
            for (_, b) in svc.backends() {
                let (addr, family) = addr_words(b.addr.ip());
                self.dp
                    .set_backend(
                        b.index,
                        &Backend { addr, port: b.addr.port().to_be(), family, flags: BACKEND_UP },
                    )
                    .map_err(dp_err)?;
            }
        }
        for retired in self.layout.backend_indices().difference(&new_indices) {
            self.dp.set_backend(*retired, &Backend::default()).map_err(dp_err)?;
        }
        // 2. Tables of every pool, in slots nothing points at.
        let live: BTreeSet<u32> = self.live_slots();
        self.pool_slots.clear();
        for svc in &layout.services {
            for pool in &svc.pools {
                let table = pool_table(pool, self.ring(), &self.is_up())
                    .map_err(|e| ApiError::internal(e.to_string()))?;
                let slot = self.write_table(&table, &live)?;
                self.pool_slots.insert((svc.name.clone(), pool.name.clone()), slot);
            }
        }
        self.split_slots.retain(|name, _| layout.service(name).is_some());
        let old_split_slots = std::mem::take(&mut self.split_slots);
        // 3. Services: one flip each, to the desired active pool.
        for svc in &layout.services {
            let previous_state = self.state.services.get(&svc.name).cloned();
            let configured = Active::Pool(svc.configured_active.clone());
            let mut active =
                previous_state.as_ref().map(|s| s.active.clone()).unwrap_or_else(|| configured.clone());
            if Self::validate_active(svc, &active).is_err() {
                history.push(format!("{}: {} no longer exists, serving {}", svc.name, active, configured));
                self.state.record(HistoryEntry {
                    id: 0,
                    time: now_rfc3339(),
                    service: svc.name.clone(),
                    kind: HistoryKind::Reload,
                    from: active.clone(),
                    to: configured.clone(),
                    mode: SwitchMode::Drain,
                    requester: why.to_string(),
                    reason: Some("the active pool was removed from the config".into()),
                });
                active = configured;
            }
            let epoch = adopted_epochs
                .get(&svc.id)
                .copied()
                .or(previous_state.as_ref().map(|s| s.epoch))
                .unwrap_or(1);
            let previous =
                previous_state.and_then(|s| s.previous).filter(|p| Self::validate_active(svc, p).is_ok());
            self.state.services.insert(
                svc.name.clone(),
                ServiceState { id: svc.id, active: active.clone(), previous, epoch },
            );
            let slot = match &active {
                Active::Pool(p) => self.pool_slots[&(svc.name.clone(), p.clone())],
                Active::Split(ws) => {
                    let table = split_table(svc, ws, self.ring(), &self.is_up())
                        .map_err(|e| ApiError::internal(e.to_string()))?;
                    let mut taken = live.clone();
                    taken.extend(old_split_slots.values());
                    let slot = self.write_table(&table, &taken)?;
                    self.split_slots.insert(svc.name.clone(), slot);
                    slot
                }
            };
            self.dp
                .set_service(svc.id, &Service { table: slot, epoch, flags: Self::flags_of(svc), _pad: 0 })
                .map_err(dp_err)?;
        }
        // Services that are gone: disabled (their flows stop matching) and their VIPs removed.
        let kept_ids: BTreeSet<u32> = layout.services.iter().map(|s| s.id).collect();
        for old in &self.layout.services {
            if !kept_ids.contains(&old.id) {
                self.dp.set_service(old.id, &Service::default()).map_err(dp_err)?;
            }
        }
        for id in adopted_epochs.keys().filter(|id| !kept_ids.contains(id)) {
            self.dp.set_service(*id, &Service::default()).map_err(dp_err)?;
        }
        // 4. VIPs.
        let mut vip_keys = BTreeSet::new();
        for svc in &layout.services {
            for vip in &svc.vips {
                let key = endpoint_key(&vip.addr);
                self.dp.set_vip(&key, &VipValue { service: svc.id, vip_index: vip.index }).map_err(dp_err)?;
                vip_keys.insert(key_bytes(&key));
            }
        }
        for key in self.dp.vip_keys() {
            if !vip_keys.contains(&key_bytes(&key)) {
                self.dp.remove_vip(&key).map_err(dp_err)?;
            }
        }
        // 5. NAT backends and the filters.
        let mut nat: BTreeMap<SocketAddr, Vec<SocketAddr>> = BTreeMap::new();
        for svc in layout.services.iter().filter(|s| !s.dsr) {
            for (_, b) in svc.backends() {
                let vips = nat.entry(b.addr).or_default();
                for v in &svc.vips {
                    if !vips.contains(&v.addr) {
                        vips.push(v.addr);
                    }
                }
            }
        }
        let mut nat_keys = BTreeSet::new();
        for (backend, vips) in &nat {
            if vips.len() > MAX_VIPS_PER_BACKEND {
                return Err(ApiError::invalid(format!(
                    "backend {backend} serves {} NAT VIPs, at most {MAX_VIPS_PER_BACKEND}",
                    vips.len()
                )));
            }
            let mut value = NatBackend::default();
            for (slot, vip) in value.vips.iter_mut().zip(vips) {
                *slot = NatVip { addr: addr_words(vip.ip()).0, port: vip.port().to_be(), _pad: 0 };
            }
            value.count = vips.len() as u32;
            let key = endpoint_key(backend);
            self.dp.set_nat_backend(&key, &value).map_err(dp_err)?;
            nat_keys.insert(key_bytes(&key));
        }
        for key in self.dp.nat_backend_keys() {
            if !nat_keys.contains(&key_bytes(&key)) {
                self.dp.remove_nat_backend(&key).map_err(dp_err)?;
            }
        }
        let vip_list: Vec<([u32; 4], u16)> = layout
            .services
            .iter()
            .flat_map(|s| s.vips.iter().map(|v| (addr_words(v.addr.ip()).0, v.addr.port().to_be())))
            .collect();
        let nat_list: Vec<([u32; 4], u16)> =
            nat.keys().map(|a| (addr_words(a.ip()).0, a.port().to_be())).collect();
        self.dp.set_filters(&vip_list, &nat_list).map_err(dp_err)?;
        self.layout = layout;
        Ok(())
    }

    /// Slots the `SERVICES` entries point at now.
    fn live_slots(&self) -> BTreeSet<u32> {
        let mut live: BTreeSet<u32> = self.reserved.clone();
        for svc in &self.layout.services {
            if let Ok(s) = self.dp.service(svc.id) {
                if s.flags & SERVICE_ENABLED != 0 {
                    live.insert(s.table);
                }
            }
        }
        live
    }

    fn traffic(&self, index: u32) -> Traffic {
        let c = self.dp.counter(backend_counter(index)).unwrap_or_default();
        let n = self.dp.counter(backend_new_flow_counter(index)).unwrap_or_default();
        Traffic { packets: c.packets, bytes: c.bytes, new_flows: n.packets }
    }

    fn service_view(&self, svc: &ServiceLayout) -> ServiceView {
        let st = &self.state.services[&svc.name];
        let pools = svc
            .pools
            .iter()
            .map(|p| {
                let backends: Vec<BackendView> = p
                    .backends
                    .iter()
                    .map(|b| BackendView {
                        addr: b.addr.to_string(),
                        weight: b.weight,
                        index: b.index,
                        up: !self.down.contains(&b.index),
                        last_error: self.health_errors.get(&b.index).cloned(),
                        traffic: self.traffic(b.index),
                    })
                    .collect();
                let traffic = backends.iter().fold(Traffic::default(), |a, b| Traffic {
                    packets: a.packets + b.traffic.packets,
                    bytes: a.bytes + b.traffic.bytes,
                    new_flows: a.new_flows + b.traffic.new_flows,
                });
                let (healthy, min_healthy, _) = self.pool_health(svc, &p.name);
                PoolView {
                    name: p.name.clone(),
                    share: st.active.share(&p.name),
                    min_healthy,
                    healthy,
                    backends,
                    traffic,
                }
            })
            .collect();
        ServiceView {
            name: svc.name.clone(),
            mode: if svc.dsr { "dsr" } else { "nat" }.into(),
            vips: svc.vips.iter().map(|v| v.addr.to_string()).collect(),
            active: st.active.clone(),
            previous: st.previous.clone(),
            epoch: st.epoch,
            pools,
            watch: self.watch_view(&svc.name),
        }
    }
}

/// Established and closing flows of one backend.
#[derive(Clone, Copy, Debug, Default)]
pub struct BackendFlows {
    /// Seen within `DRAIN_IDLE_TIMEOUT` and not closed.
    pub established: u64,
    /// Saw a FIN or RST.
    pub closing: u64,
}

/// Flow-table counts by backend index, from one scan.
#[derive(Debug, Default)]
pub struct FlowCounts {
    by_backend: BTreeMap<u32, BackendFlows>,
    scanned: u64,
}

impl FlowCounts {
    /// Counts the flow table without holding the engine (a 1M-entry table takes ~0.3 s). An
    /// error, never a partial count: `--wait-drained` must not see a pool drained that is not.
    fn scan(reader: &FlowReader) -> Result<Self, ApiError> {
        let mut counts = FlowCounts::default();
        let now = monotonic_coarse_ns();
        let idle = DRAIN_IDLE_TIMEOUT.as_nanos() as u64;
        let scanned = reader
            .for_each(|_, f| {
                let c = counts.by_backend.entry(f.backend).or_default();
                if f.flags & (lb_common::maps::FLOW_FIN | lb_common::maps::FLOW_RST) != 0 {
                    c.closing += 1;
                } else if now.saturating_sub(f.last_seen_ns) <= idle {
                    c.established += 1;
                }
            })
            .map_err(|e| ApiError::internal(format!("data plane: counting FLOWS: {e}")))?;
        counts.scanned = scanned as u64;
        Ok(counts)
    }

    /// Counts of one backend (zero when it has no flow).
    pub fn of(&self, backend: u32) -> BackendFlows {
        self.by_backend.get(&backend).copied().unwrap_or_default()
    }
}

/// Options of a user-requested change.
#[derive(Default)]
struct ChangeOptions {
    force: bool,
    dry_run: bool,
    expect_active: Option<String>,
    watch_s: Option<u64>,
}

/// Bytes of a key, for set membership (the map types do not implement `Ord`).
fn key_bytes(k: &EndpointKey) -> ([u32; 4], u16, u8, u8) {
    (k.addr, k.port, k.proto, k.family)
}

impl Control for Engine {
    fn status(&self) -> Result<StatusView, ApiError> {
        let inner = self.lock();
        let services = inner.layout.services.iter().map(|s| inner.service_view(s)).collect();
        let reasons = ALL_REASONS
            .iter()
            .map(|r| {
                (r.name().to_string(), inner.dp.counter(reason_counter(*r)).map(|c| c.packets).unwrap_or(0))
            })
            .collect();
        Ok(StatusView {
            instance: inner.config.instance.clone(),
            version: env!("CARGO_PKG_VERSION").into(),
            uptime_s: self.started.elapsed().as_secs(),
            adopted: self.adopted,
            interfaces: self.interfaces.lock().unwrap_or_else(|e| e.into_inner()).clone(),
            services,
            reasons,
        })
    }

    fn service(&self, name: Option<&str>) -> Result<ServiceView, ApiError> {
        let inner = self.lock();
        let svc = inner.service_layout(name)?;
        Ok(inner.service_view(svc))
    }

    fn switch(
        &self,
        service: Option<&str>,
        req: &SwitchRequest,
        requester: &str,
    ) -> Result<SwitchOutcome, ApiError> {
        let started = Instant::now();
        let mut inner = self.lock();
        if req.watch_s.is_some_and(|s| s == 0 || s > 86_400) {
            return Err(ApiError::invalid("watch must be 1 s to 24 h"));
        }
        let opts = ChangeOptions {
            force: req.force,
            dry_run: req.dry_run,
            expect_active: req.expect_active.clone(),
            watch_s: req.watch_s,
        };
        inner.change_with(
            service,
            Active::Pool(req.pool.clone()),
            req.hard,
            HistoryKind::Switch,
            requester,
            started,
            None,
            &opts,
        )
    }

    fn rollback(
        &self,
        service: Option<&str>,
        req: &RollbackRequest,
        requester: &str,
    ) -> Result<SwitchOutcome, ApiError> {
        let started = Instant::now();
        let mut inner = self.lock();
        let name = inner.service_layout(service)?.name.clone();
        let target = inner.state.services[&name].previous.clone().ok_or_else(|| {
            ApiError::refused(format!("{name} has nothing to roll back to: no earlier switch is recorded"))
        })?;
        let opts = ChangeOptions {
            dry_run: req.dry_run,
            expect_active: req.expect_active.clone(),
            ..ChangeOptions::default()
        };
        inner.change_with(
            Some(&name),
            target,
            req.hard,
            HistoryKind::Rollback,
            requester,
            started,
            None,
            &opts,
        )
    }

    fn split(
        &self,
        service: Option<&str>,
        req: &SplitRequest,
        requester: &str,
    ) -> Result<SwitchOutcome, ApiError> {
        let started = Instant::now();
        let mut inner = self.lock();
        let opts = ChangeOptions {
            force: req.force,
            dry_run: req.dry_run,
            expect_active: req.expect_active.clone(),
            watch_s: None,
        };
        inner.change_with(
            service,
            Active::Split(req.weights.clone()),
            false,
            HistoryKind::Split,
            requester,
            started,
            None,
            &opts,
        )
    }

    fn history(&self, service: Option<&str>, limit: usize) -> Result<Vec<HistoryEntry>, ApiError> {
        let inner = self.lock();
        if let Some(name) = service {
            inner.service_layout(Some(name))?;
        }
        let matching: Vec<HistoryEntry> =
            inner.state.history.iter().filter(|h| service.is_none_or(|s| h.service == s)).cloned().collect();
        let skip = matching.len().saturating_sub(limit);
        Ok(matching.into_iter().skip(skip).collect())
    }

    fn reload(&self, requester: &str) -> Result<ReloadOutcome, ApiError> {
        let mut inner = self.lock();
        let new = Config::load(&inner.config_path)
            .map_err(|e| ApiError::invalid(format!("config not reloaded, nothing changed: {e}")))?;
        let old = &inner.config;
        let mut needs_restart = Vec::new();
        if new.instance != old.instance {
            needs_restart.push("instance");
        }
        if new.bpffs != old.bpffs {
            needs_restart.push("bpffs");
        }
        if new.state_dir != old.state_dir {
            needs_restart.push("state_dir");
        }
        if new.interfaces != old.interfaces {
            needs_restart.push("interfaces");
        }
        if new.xdp_mode != old.xdp_mode {
            needs_restart.push("xdp_mode");
        }
        if new.ring_size != old.ring_size {
            needs_restart.push("ring_size");
        }
        if new.flow_table_size != old.flow_table_size {
            needs_restart.push("flow_table_size");
        }
        if new.api != old.api {
            needs_restart.push("api");
        }
        if !needs_restart.is_empty() {
            return Err(ApiError::refused(format!(
                "config not reloaded, nothing changed: changing {} needs a daemon restart",
                needs_restart.join(", ")
            )));
        }
        let mut changes = Vec::new();
        for s in &new.services {
            match old.service(&s.name) {
                None => changes.push(format!("service {} added", s.name)),
                Some(o) if o != s => changes.push(format!("service {} changed", s.name)),
                _ => {}
            }
        }
        for s in &old.services {
            if new.service(&s.name).is_none() {
                changes.push(format!("service {} removed", s.name));
            }
        }
        if changes.is_empty() {
            return Ok(ReloadOutcome { changed: false, changes });
        }
        let mut state = inner.state.clone();
        let layout = plan(&new, &mut state)
            .map_err(|e| ApiError::refused(format!("config not reloaded, nothing changed: {e}")))?;
        // Enough table slots for every new pool table beside the live ones?
        let needed: usize =
            layout.services.iter().map(|s| s.pools.len() + 1).sum::<usize>() + inner.live_slots().len();
        if needed > inner.dp.options().table_slots as usize {
            return Err(ApiError::refused(format!(
                "config not reloaded, nothing changed: it needs {needed} Maglev table slots, the running data plane has {}",
                inner.dp.options().table_slots
            )));
        }
        let snapshot = inner.state.clone();
        inner.state = state;
        let mut notes = Vec::new();
        if let Err(e) = inner.apply_layout(layout, &BTreeMap::new(), requester, &mut notes) {
            inner.state = snapshot;
            return Err(e);
        }
        changes.extend(notes);
        inner.config = new;
        tracing::info!(requester, changes = ?changes, "config reloaded");
        if let Some(m) = self.health.lock().unwrap_or_else(|e| e.into_inner()).as_ref() {
            m.set_targets(inner.health_targets());
        }
        inner.state.save(&inner.config.state_file()).map_err(|e| ApiError::internal(format!("{e:#}")))?;
        drop(inner);
        self.keep_neighbours(Duration::ZERO);
        Ok(ReloadOutcome { changed: true, changes })
    }

    fn shutdown(&self, req: &ShutdownRequest, requester: &str) -> Result<(), ApiError> {
        tracing::warn!(requester, detach = req.detach, "shutdown requested");
        let _ = self.shutdown.send(if req.detach { ShutdownKind::Detach } else { ShutdownKind::Exit });
        Ok(())
    }

    fn drain(&self, service: Option<&str>) -> Result<DrainView, ApiError> {
        let reader = {
            let inner = self.lock();
            inner.service_layout(service)?;
            inner.dp.flow_reader()
        };
        let counts = FlowCounts::scan(&reader)?;
        let inner = self.lock();
        let svc = inner.service_layout(service)?;
        Ok(inner.drain_view(svc, &counts))
    }

    fn watch(&self, service: Option<&str>) -> Result<Option<WatchView>, ApiError> {
        let inner = self.lock();
        let name = inner.service_layout(service)?.name.clone();
        Ok(inner.watch_view(&name))
    }

    fn metrics(&self) -> Result<String, ApiError> {
        let reader = self.lock().dp.flow_reader();
        let flows = FlowCounts::scan(&reader)?;
        let inner = self.lock();
        Ok(metrics::render(&inner.layout, &inner.state, &inner.dp, &inner.down, &flows))
    }
}
