//! `Core`: the control plane's state and the data plane it drives, through [`Maps`]. Every
//! decision (switch, rollback, split, gates, watches, reload, health rebuilds, adoption) is a
//! method of `Core` spread over this folder by job; none needs root, a kernel or a runtime, so
//! all of them are unit-tested against [`crate::dataplane::fake::FakeMaps`].
//!
//! This file holds the struct, its start (adopting what a running data plane serves) and the
//! small helpers every job shares.

use super::{
    layout::{Layout, ServiceLayout, plan},
    state::{PersistedState, StateStore},
};
use crate::{
    api::model::{ApiError, HistoryEntry},
    config::Config,
    dataplane::{DataplaneError, Maps},
    health::HealthTarget,
};
use lb_common::maps::{MAX_SERVICES, SERVICE_ENABLED};
use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

/// The wall clock, in milliseconds since the Unix epoch (a function so that tests can move it).
pub type WallClock = Box<dyn Fn() -> u64 + Send>;

/// The system's wall clock.
pub fn system_clock() -> WallClock {
    Box::new(|| unix_ms(SystemTime::now()))
}

/// The system's wall clock, shareable between threads (the fleet node's).
pub fn system_clock_sync() -> Box<dyn Fn() -> u64 + Send + Sync> {
    Box::new(|| unix_ms(SystemTime::now()))
}

pub(crate) fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

pub(crate) fn rfc3339_of_ms(ms: u64) -> String {
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_millis(ms)).to_string()
}

pub(crate) fn dp_err(e: DataplaneError) -> ApiError {
    ApiError::internal(format!("data plane: {e}"))
}

/// The desired state, the layout placed in the data plane, and the data plane.
pub struct Core<M: Maps> {
    pub(crate) config: Config,
    pub(crate) maps: M,
    pub(crate) state: PersistedState,
    pub(super) store: super::persist::Persist,
    /// The last write of `state` failed: what is on disk is older than `state`. Also set while a
    /// fleet change is live on its pending record only (see [`super::fleet_pending`]).
    pub(super) unsaved: bool,
    pub(crate) layout: Layout,
    /// Table slot holding each (service, pool)'s current table.
    pub(super) pool_slots: BTreeMap<(String, String), u32>,
    /// Table slot holding a service's split table, while it serves a split.
    pub(super) split_slots: BTreeMap<String, u32>,
    /// Backend indexes taken out of service (health checks).
    pub(crate) down: BTreeSet<u32>,
    /// Last health-check error of each backend that failed.
    pub(super) health_errors: BTreeMap<u32, String>,
    /// Slots some `SERVICES` entry may still point at (adopted from an earlier daemon).
    pub(super) reserved: BTreeSet<u32>,
    /// Backends whose runtime setting is persisted but not fully written to the data plane
    /// yet (a map write failed): repeating the request writes it.
    pub(super) backend_unapplied: BTreeSet<u32>,
    pub(super) clock: WallClock,
}

impl<M: Maps> Core<M> {
    /// Takes over `maps` (fresh, or `adopted` from an earlier daemon and still forwarding) and
    /// makes them serve `config` and the persisted desired `state`: after a restart the active
    /// pool is the last one switched to. Tables are written into slots nothing points at, each
    /// service is flipped once, and the state (new indices included) is persisted.
    pub fn start(
        config: Config,
        maps: M,
        mut state: PersistedState,
        store: Box<dyn StateStore>,
        adopted: bool,
        clock: WallClock,
    ) -> anyhow::Result<Self> {
        let layout = plan(&config, &mut state)?;
        // Slots the running data plane may point at must not be written before the flip.
        let mut reserved = BTreeSet::new();
        let mut adopted_epochs = BTreeMap::new();
        if adopted {
            for id in 0..MAX_SERVICES {
                if let Ok(s) = maps.service(id)
                    && s.flags & SERVICE_ENABLED != 0
                {
                    reserved.insert(s.table);
                    adopted_epochs.insert(id, s.epoch);
                }
            }
        }
        let mut core = Core {
            config,
            maps,
            state,
            store: super::persist::Persist::new(store),
            unsaved: false,
            layout: Layout::default(),
            pool_slots: BTreeMap::new(),
            split_slots: BTreeMap::new(),
            down: BTreeSet::new(),
            health_errors: BTreeMap::new(),
            reserved,
            backend_unapplied: BTreeSet::new(),
            clock,
        };
        let mut history = Vec::new();
        core.maps.set_settings(&core.config.flows.settings())?;
        core.apply_layout(layout, &adopted_epochs, "daemon start", &mut history)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        core.reserved.clear();
        core.persist().map_err(|e| anyhow::anyhow!("{e}"))?;
        Ok(core)
    }

    /// Writes the state; on failure remembers that the disk is behind (a later request retries).
    pub(super) fn persist(&mut self) -> Result<(), ApiError> {
        match self.store.save(&self.state) {
            Ok(()) => {
                self.unsaved = false;
                Ok(())
            }
            Err(e) => {
                self.unsaved = true;
                tracing::error!(error = %format!("{e:#}"), "state file not written: a restart would come back to an older state");
                Err(ApiError::internal(format!("writing the state file failed: {e:#}")))
            }
        }
    }

    /// Now, as RFC 3339 (history entries).
    pub(super) fn now_rfc3339(&self) -> String {
        rfc3339_of_ms((self.clock)())
    }

    /// The configuration being served.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The address of every configured backend.
    pub fn backend_addrs(&self) -> BTreeSet<IpAddr> {
        self.config
            .services
            .iter()
            .flat_map(|s| &s.pools)
            .flat_map(|p| &p.backends)
            .map(|b| b.addr.ip())
            .collect()
    }

    /// What the health monitor checks: every backend of every pool, with its pool's check.
    pub fn health_targets(&self) -> Vec<HealthTarget> {
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

    /// History entries, oldest first, the last `limit` of them (of one service when named).
    pub fn history(&self, service: Option<&str>, limit: usize) -> Result<Vec<HistoryEntry>, ApiError> {
        if let Some(name) = service {
            self.service_layout(Some(name))?;
        }
        let matching: Vec<HistoryEntry> =
            self.state.history.iter().filter(|h| service.is_none_or(|s| h.service == s)).cloned().collect();
        let skip = matching.len().saturating_sub(limit);
        Ok(matching.into_iter().skip(skip).collect())
    }

    /// Healthy in-service backends of a pool (not drained or disabled by an operator, weight
    /// above 0), its `min_healthy`, and a description of the others.
    pub(super) fn pool_health(&self, svc: &ServiceLayout, pool: &str) -> (u32, u32, Vec<String>) {
        let Some(p) = svc.pool(pool) else { return (0, 0, Vec::new()) };
        let out = self.admin_out();
        let mut healthy = 0;
        let mut bad = Vec::new();
        for b in &p.backends {
            if self.down.contains(&b.index) {
                let why =
                    self.health_errors.get(&b.index).map(String::as_str).unwrap_or("failing health checks");
                bad.push(format!("{} ({why})", b.addr));
            } else if let Some(admin) = out.get(&b.index) {
                bad.push(format!("{} ({admin} by an operator)", b.addr));
            } else if b.weight > 0 {
                healthy += 1;
            }
        }
        (healthy, p.min_healthy, bad)
    }

    /// The service named `name`, or the only one when no name is given.
    pub(crate) fn service_layout(&self, name: Option<&str>) -> Result<&ServiceLayout, ApiError> {
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

    pub(super) fn ring(&self) -> u32 {
        self.maps.options().ring_size
    }

    pub(super) fn is_up(&self) -> impl Fn(u32) -> bool + '_ {
        // Backends an operator drained or disabled take no new flows either.
        let out = self.admin_out();
        move |i| !self.down.contains(&i) && !out.contains_key(&i)
    }

    /// Slots the `SERVICES` entries point at now.
    pub(super) fn live_slots(&self) -> BTreeSet<u32> {
        let mut live: BTreeSet<u32> = self.reserved.clone();
        for svc in &self.layout.services {
            if let Ok(s) = self.maps.service(svc.id)
                && s.flags & SERVICE_ENABLED != 0
            {
                live.insert(s.table);
            }
        }
        live
    }

    /// The lowest table slot no service, pool table or `also_taken` holds.
    pub(super) fn free_slot(&self, also_taken: &BTreeSet<u32>) -> Result<u32, ApiError> {
        let taken: BTreeSet<u32> = self
            .pool_slots
            .values()
            .chain(self.split_slots.values())
            .chain(self.reserved.iter())
            .chain(also_taken.iter())
            .copied()
            .collect();
        (0..self.maps.options().table_slots)
            .find(|s| !taken.contains(s))
            .ok_or_else(|| ApiError::refused("no free Maglev table slot: too many pools for the TABLES map (restart the daemon after `lbctl shutdown --detach` to grow it)"))
    }

    /// Writes `table` into a slot no service points at (nor `also_taken`); returns the slot.
    pub(super) fn write_table(&mut self, table: &[u32], also_taken: &BTreeSet<u32>) -> Result<u32, ApiError> {
        let slot = self.free_slot(also_taken)?;
        self.maps.write_table(slot, table).map_err(dp_err)?;
        Ok(slot)
    }
}
