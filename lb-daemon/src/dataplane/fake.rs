//! An in-memory [`Maps`] for unit tests: holds what the kernel maps would hold, records every
//! write in order (so a test can assert "exactly one `SERVICES` write"), and can be told to
//! fail the next `SERVICES` writes.

use super::{
    DataplaneError, DataplaneOptions,
    maps::{FlowSource, Maps},
};
use lb_common::maps::{
    Backend, Counter, EndpointKey, FlowKey, FlowValue, MAX_BACKENDS, MAX_SERVICES, NatBackend, Service,
    Settings, VipValue,
};
use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
};

/// One map write, as the fake saw it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MapWrite {
    /// `BACKENDS[index]`.
    Backend(u32, Backend),
    /// A whole table into a `TABLES` slot (contents in [`FakeMaps::tables`]).
    Table(u32),
    /// `SERVICES[id]`.
    Service(u32, Service),
    /// `VIPS[key]`.
    Vip(EndpointKey, VipValue),
    /// A VIP removed.
    VipRemoved(EndpointKey),
    /// `NAT_BACKENDS[key]`.
    NatBackend(EndpointKey, NatBackend),
    /// A NAT backend removed.
    NatBackendRemoved(EndpointKey),
    /// Both filters rewritten (VIP count, NAT backend count).
    Filters(usize, usize),
    /// `SETTINGS` rewritten.
    Settings(Settings),
}

/// The flow table and the clock of the fake data plane, shared with its [`FlowSource`].
#[derive(Debug, Default)]
pub struct FakeFlows {
    /// The recorded flows.
    pub flows: Vec<(FlowKey, FlowValue)>,
    /// Now, on the data plane's clock.
    pub now_ns: u64,
    /// Fail the next walk.
    pub fail: bool,
}

impl FlowSource for Mutex<FakeFlows> {
    fn for_each_flow(&self, f: &mut dyn FnMut(&FlowKey, &FlowValue)) -> Result<usize, DataplaneError> {
        let flows = self.lock().unwrap();
        if flows.fail {
            return Err(DataplaneError::Map("FLOWS", "injected failure".into()));
        }
        for (k, v) in &flows.flows {
            f(k, v);
        }
        Ok(flows.flows.len())
    }

    fn now_ns(&self) -> u64 {
        self.lock().unwrap().now_ns
    }
}

/// An `EndpointKey` as an ordered map key.
type KeyBytes = ([u32; 4], u16, u8, u8);

/// In-memory maps.
#[derive(Debug)]
pub struct FakeMaps {
    /// Sizes, as the real maps would have been created with.
    pub options: DataplaneOptions,
    /// `SERVICES` entries written (unwritten ones read as zero, as in an array map).
    pub services: BTreeMap<u32, Service>,
    /// Table contents by slot.
    pub tables: BTreeMap<u32, Vec<u32>>,
    /// `BACKENDS` entries written.
    pub backends: BTreeMap<u32, Backend>,
    /// `VIPS`.
    pub vips: BTreeMap<KeyBytes, (EndpointKey, VipValue)>,
    /// `NAT_BACKENDS`.
    pub nat_backends: BTreeMap<KeyBytes, (EndpointKey, NatBackend)>,
    /// Counters by index.
    pub counters: BTreeMap<u32, Counter>,
    /// Every write, in order.
    pub writes: Vec<MapWrite>,
    /// How many of the next `SERVICES` writes fail.
    pub fail_service_writes: u32,
    /// The flow table.
    pub flows: Arc<Mutex<FakeFlows>>,
    /// `SETTINGS` as last written.
    pub settings: Settings,
}

fn key(k: &EndpointKey) -> KeyBytes {
    (k.addr, k.port, k.proto, k.family)
}

impl FakeMaps {
    /// Empty maps of the given sizes.
    pub fn new(options: DataplaneOptions) -> Self {
        Self {
            options,
            services: BTreeMap::new(),
            tables: BTreeMap::new(),
            backends: BTreeMap::new(),
            vips: BTreeMap::new(),
            nat_backends: BTreeMap::new(),
            counters: BTreeMap::new(),
            writes: Vec::new(),
            fail_service_writes: 0,
            flows: Arc::new(Mutex::new(FakeFlows::default())),
            settings: Settings::default(),
        }
    }

    /// The writes since the last call, emptying the record.
    pub fn take_writes(&mut self) -> Vec<MapWrite> {
        std::mem::take(&mut self.writes)
    }

    /// The table `SERVICES[id]` points at, with its contents.
    pub fn live_table(&self, id: u32) -> &[u32] {
        let s = self.services.get(&id).copied().unwrap_or_default();
        self.tables.get(&s.table).map(Vec::as_slice).unwrap_or(&[])
    }
}

impl Maps for FakeMaps {
    fn options(&self) -> DataplaneOptions {
        self.options
    }

    fn set_backend(&mut self, index: u32, backend: &Backend) -> Result<(), DataplaneError> {
        if index >= MAX_BACKENDS {
            return Err(DataplaneError::OutOfRange(format!("backend index {index}")));
        }
        self.backends.insert(index, *backend);
        self.writes.push(MapWrite::Backend(index, *backend));
        Ok(())
    }

    fn write_table(&mut self, slot: u32, entries: &[u32]) -> Result<(), DataplaneError> {
        if slot >= self.options.table_slots || entries.len() != self.options.ring_size as usize {
            return Err(DataplaneError::OutOfRange(format!("table {slot} with {} entries", entries.len())));
        }
        self.tables.insert(slot, entries.to_vec());
        self.writes.push(MapWrite::Table(slot));
        Ok(())
    }

    fn set_service(&mut self, id: u32, service: &Service) -> Result<(), DataplaneError> {
        if self.fail_service_writes > 0 {
            self.fail_service_writes -= 1;
            return Err(DataplaneError::Map("SERVICES", "injected failure".into()));
        }
        if id >= MAX_SERVICES {
            return Err(DataplaneError::OutOfRange(format!("service {id}")));
        }
        self.services.insert(id, *service);
        self.writes.push(MapWrite::Service(id, *service));
        Ok(())
    }

    fn service(&self, id: u32) -> Result<Service, DataplaneError> {
        if id >= MAX_SERVICES {
            return Err(DataplaneError::OutOfRange(format!("service {id}")));
        }
        Ok(self.services.get(&id).copied().unwrap_or_default())
    }

    fn set_vip(&mut self, k: &EndpointKey, value: &VipValue) -> Result<(), DataplaneError> {
        self.vips.insert(key(k), (*k, *value));
        self.writes.push(MapWrite::Vip(*k, *value));
        Ok(())
    }

    fn remove_vip(&mut self, k: &EndpointKey) -> Result<(), DataplaneError> {
        self.vips.remove(&key(k));
        self.writes.push(MapWrite::VipRemoved(*k));
        Ok(())
    }

    fn vip_keys(&self) -> Vec<EndpointKey> {
        self.vips.values().map(|(k, _)| *k).collect()
    }

    fn set_nat_backend(&mut self, k: &EndpointKey, value: &NatBackend) -> Result<(), DataplaneError> {
        self.nat_backends.insert(key(k), (*k, *value));
        self.writes.push(MapWrite::NatBackend(*k, *value));
        Ok(())
    }

    fn remove_nat_backend(&mut self, k: &EndpointKey) -> Result<(), DataplaneError> {
        self.nat_backends.remove(&key(k));
        self.writes.push(MapWrite::NatBackendRemoved(*k));
        Ok(())
    }

    fn nat_backend_keys(&self) -> Vec<EndpointKey> {
        self.nat_backends.values().map(|(k, _)| *k).collect()
    }

    fn set_filters(
        &mut self,
        vips: &[([u32; 4], u16)],
        nat_backends: &[([u32; 4], u16)],
    ) -> Result<(), DataplaneError> {
        self.writes.push(MapWrite::Filters(vips.len(), nat_backends.len()));
        Ok(())
    }

    fn counter(&self, index: u32) -> Result<Counter, DataplaneError> {
        Ok(self.counters.get(&index).copied().unwrap_or_default())
    }

    fn flow_source(&self) -> Arc<dyn FlowSource> {
        self.flows.clone()
    }

    fn set_settings(&mut self, settings: &Settings) -> Result<(), DataplaneError> {
        self.settings = *settings;
        self.writes.push(MapWrite::Settings(*settings));
        Ok(())
    }

    fn cpus_in_flood(&self, _now_ns: u64) -> Result<u32, DataplaneError> {
        Ok(0)
    }
}
