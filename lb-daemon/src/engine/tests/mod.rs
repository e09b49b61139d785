//! Unit tests of the engine's decisions against in-memory maps and an in-memory state store:
//! no root, no kernel. Each test asserts the exact map writes a request makes.

mod adopt;
mod backend;
mod drain;
mod durability;
mod fleet_crash;
mod fleet_persist_order;
mod health;
mod metrics;
mod reload;
mod switch;
mod watch;

use super::{
    core::Core,
    state::{PersistedState, STATE_VERSION, StateStore},
};
use crate::{
    api::model::{Active, PoolWeight, SwitchRequest},
    config::Config,
    dataplane::{
        DataplaneOptions,
        fake::{FakeMaps, MapWrite},
    },
};
use lb_common::maps::{SERVICE_ENABLED, Service};
use std::sync::{
    Arc, Mutex,
    atomic::{AtomicBool, AtomicU64, Ordering},
};

/// One service, two pools of two backends (indices 0, 1 in pool-a; 2, 3 in pool-b); pool-b
/// needs both healthy.
pub const CONFIG: &str = r#"
interfaces = ["eth0"]
ring_size = 401
[[services]]
name = "web"
vips = ["192.0.2.10:80"]
active = "pool-a"
[services.pools.pool-a]
backends = ["10.0.1.1:8080", "10.0.1.2:8080"]
[services.pools.pool-b]
backends = ["10.0.2.1:8080", "10.0.2.2:8080"]
min_healthy = 2
"#;

/// A start of the wall clock (2026-11-30T00:00:00Z).
pub const T0_MS: u64 = 1_795_996_800_000;

/// A state store in memory that can be made to fail as a full disk does.
#[derive(Clone, Default)]
pub struct MemStore {
    /// Every state written, in order.
    pub saved: Arc<Mutex<Vec<PersistedState>>>,
    /// Fail every write while set.
    pub full: Arc<AtomicBool>,
    /// The fleet's pending record, as the next start would read it.
    pub pending: Arc<Mutex<Option<super::fleet_pending::FleetPending>>>,
}

impl StateStore for MemStore {
    fn save(&mut self, state: &PersistedState) -> anyhow::Result<()> {
        if self.full.load(Ordering::SeqCst) {
            anyhow::bail!("writing /var/lib/lb/lb.state.json: No space left on device (os error 28)");
        }
        self.saved.lock().unwrap().push(state.clone());
        Ok(())
    }

    fn stage_pending(&mut self, pending: &super::fleet_pending::FleetPending) -> anyhow::Result<()> {
        if self.full.load(Ordering::SeqCst) {
            anyhow::bail!(
                "writing /var/lib/lb/lb.state.json.fleet-pending: No space left on device (os error 28)"
            );
        }
        *self.pending.lock().unwrap() = Some(pending.clone());
        Ok(())
    }

    fn clear_pending(&mut self) -> anyhow::Result<()> {
        *self.pending.lock().unwrap() = None;
        Ok(())
    }

    fn handle(&self) -> Box<dyn StateStore> {
        Box::new(self.clone())
    }
}

impl MemStore {
    /// The last state written.
    pub fn last(&self) -> PersistedState {
        self.saved.lock().unwrap().last().cloned().expect("a state was written")
    }
    /// How many times the state was written.
    pub fn count(&self) -> usize {
        self.saved.lock().unwrap().len()
    }
}

/// An engine core over fake maps, its store and its clock.
pub struct Rig {
    pub core: Core<FakeMaps>,
    pub store: MemStore,
    pub clock: Arc<AtomicU64>,
}

pub fn config(text: &str) -> Config {
    Config::from_toml_str(text).expect("valid config")
}

/// Map sizes for `text`, as `lb-daemon` creates them (its ring size, 16 table slots).
pub fn options(text: &str) -> DataplaneOptions {
    DataplaneOptions { ring_size: config(text).ring_size, table_slots: 16, flow_entries: 1024 }
}

pub fn empty_state() -> PersistedState {
    PersistedState { version: STATE_VERSION, next_history_id: 1, ..PersistedState::default() }
}

impl Rig {
    /// A core started on fresh maps with `text`, its start-up writes cleared.
    pub fn new(text: &str) -> Self {
        Self::start(text, FakeMaps::new(options(text)), empty_state(), false)
    }

    /// A core started on `maps` (adopted or not) and a saved `state`.
    pub fn start(text: &str, maps: FakeMaps, state: PersistedState, adopted: bool) -> Self {
        let store = MemStore::default();
        let clock = Arc::new(AtomicU64::new(T0_MS));
        let c = clock.clone();
        let mut core = Core::start(
            config(text),
            maps,
            state,
            Box::new(store.clone()),
            adopted,
            Box::new(move || c.load(Ordering::SeqCst)),
        )
        .expect("core starts");
        core.maps.take_writes();
        Self { core, store, clock }
    }

    /// The map writes since the last call.
    pub fn writes(&mut self) -> Vec<MapWrite> {
        self.core.maps.take_writes()
    }

    /// Moves the wall clock.
    pub fn advance_ms(&self, ms: u64) {
        self.clock.fetch_add(ms, Ordering::SeqCst);
    }

    /// The slot of a pool's current table.
    pub fn slot(&self, pool: &str) -> u32 {
        self.core.pool_slots[&("web".to_string(), pool.to_string())]
    }

    /// What `SERVICES[0]` holds.
    pub fn service(&self) -> Service {
        self.core.maps.services[&0]
    }

    /// What is active for `web`.
    pub fn active(&self) -> Active {
        self.core.state.services["web"].active.clone()
    }
}

/// The `SERVICES` entry of a (NAT) service pointing at `table` with `epoch`.
pub fn svc(table: u32, epoch: u32) -> Service {
    Service { table, epoch, flags: SERVICE_ENABLED, _pad: 0 }
}

/// A plain switch request.
pub fn to(pool: &str) -> SwitchRequest {
    SwitchRequest { pool: pool.into(), ..SwitchRequest::default() }
}

/// Split weights.
pub fn weights(list: &[(&str, u32)]) -> Vec<PoolWeight> {
    list.iter().map(|(p, w)| PoolWeight { pool: p.to_string(), weight: *w }).collect()
}

/// Only the `SERVICES` writes of `writes`.
pub fn service_writes(writes: &[MapWrite]) -> Vec<(u32, Service)> {
    writes
        .iter()
        .filter_map(|w| match w {
            MapWrite::Service(id, s) => Some((*id, *s)),
            _ => None,
        })
        .collect()
}
