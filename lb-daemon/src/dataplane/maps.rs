//! The `Maps` trait: every map access the engine makes, so that its decisions (switch,
//! rollback, split, gates, watches, reload diffs, health rebuilds, adoption) run against the
//! real aya maps in production ([`Dataplane`]) and against an in-memory fake in unit tests,
//! which need no root and can assert the exact map writes.

use super::{DataplaneError, DataplaneOptions, handle::Dataplane};
use lb_common::maps::{
    Backend, Counter, EndpointKey, FlowKey, FlowValue, NatBackend, Service, Settings, VipValue,
};
use std::sync::Arc;

/// A view of `FLOWS` that can be read without holding the engine (counting a million flows takes
/// a third of a second; a switch must not wait for it).
pub trait FlowSource: Send + Sync {
    /// Calls `f` with every recorded flow; returns how many there were. An error, never a
    /// partial walk presented as complete.
    fn for_each_flow(&self, f: &mut dyn FnMut(&FlowKey, &FlowValue)) -> Result<usize, DataplaneError>;

    /// Now, on the clock the data plane stamps `FlowValue::last_seen_ns` with
    /// (`bpf_ktime_get_coarse_ns`, i.e. `CLOCK_MONOTONIC_COARSE`).
    fn now_ns(&self) -> u64;
}

/// The map operations of the control plane. Writes take `&mut self`: the engine serializes
/// them under its lock.
pub trait Maps: Send {
    /// Sizes the maps were created with.
    fn options(&self) -> DataplaneOptions;
    /// Writes backend `index`.
    fn set_backend(&mut self, index: u32, backend: &Backend) -> Result<(), DataplaneError>;
    /// Writes a whole Maglev table into slot `slot`.
    fn write_table(&mut self, slot: u32, entries: &[u32]) -> Result<(), DataplaneError>;
    /// Writes service `id`: the one update a switch, rollback or split makes.
    fn set_service(&mut self, id: u32, service: &Service) -> Result<(), DataplaneError>;
    /// Reads service `id`.
    fn service(&self, id: u32) -> Result<Service, DataplaneError>;
    /// Adds or replaces a VIP.
    fn set_vip(&mut self, key: &EndpointKey, value: &VipValue) -> Result<(), DataplaneError>;
    /// Removes a VIP (absent is fine).
    fn remove_vip(&mut self, key: &EndpointKey) -> Result<(), DataplaneError>;
    /// Every key of `VIPS`.
    fn vip_keys(&self) -> Vec<EndpointKey>;
    /// Sets the VIPs whose replies a NAT backend carries.
    fn set_nat_backend(&mut self, key: &EndpointKey, value: &NatBackend) -> Result<(), DataplaneError>;
    /// Removes a NAT backend (absent is fine).
    fn remove_nat_backend(&mut self, key: &EndpointKey) -> Result<(), DataplaneError>;
    /// Every key of `NAT_BACKENDS`.
    fn nat_backend_keys(&self) -> Vec<EndpointKey>;
    /// Rewrites both bit filters from the full lists of VIP and NAT backend (address, port).
    fn set_filters(
        &mut self,
        vips: &[([u32; 4], u16)],
        nat_backends: &[([u32; 4], u16)],
    ) -> Result<(), DataplaneError>;
    /// A counter summed over CPUs (index as in `lb_common::stats`).
    fn counter(&self, index: u32) -> Result<Counter, DataplaneError>;
    /// A reader of `FLOWS` usable without `self`.
    fn flow_source(&self) -> Arc<dyn FlowSource>;
    /// Writes the data plane's tunables (`SETTINGS`: flood-mode limit, stale-entry timeouts).
    fn set_settings(&mut self, settings: &Settings) -> Result<(), DataplaneError>;
    /// How many CPUs are in flood mode at `now_ns` (`CLOCK_MONOTONIC_COARSE`).
    fn cpus_in_flood(&self, now_ns: u64) -> Result<u32, DataplaneError>;
}

impl FlowSource for super::FlowReader {
    fn for_each_flow(&self, f: &mut dyn FnMut(&FlowKey, &FlowValue)) -> Result<usize, DataplaneError> {
        self.for_each(|k, v| f(k, v)).map_err(|e| DataplaneError::Map("FLOWS", format!("batch lookup: {e}")))
    }

    fn now_ns(&self) -> u64 {
        monotonic_coarse_ns()
    }
}

/// `CLOCK_MONOTONIC_COARSE`: the clock behind `bpf_ktime_get_coarse_ns`.
pub fn monotonic_coarse_ns() -> u64 {
    // This clock id exists on every Linux the daemon runs on; a failure would read as time zero.
    let ts = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC_COARSE)
        .unwrap_or_else(|_| nix::sys::time::TimeSpec::new(0, 0));
    ts.tv_sec() as u64 * 1_000_000_000 + ts.tv_nsec() as u64
}

impl Maps for Dataplane {
    fn options(&self) -> DataplaneOptions {
        Dataplane::options(self)
    }
    fn set_backend(&mut self, index: u32, backend: &Backend) -> Result<(), DataplaneError> {
        Dataplane::set_backend(self, index, backend)
    }
    fn write_table(&mut self, slot: u32, entries: &[u32]) -> Result<(), DataplaneError> {
        Dataplane::write_table(self, slot, entries)
    }
    fn set_service(&mut self, id: u32, service: &Service) -> Result<(), DataplaneError> {
        Dataplane::set_service(self, id, service)
    }
    fn service(&self, id: u32) -> Result<Service, DataplaneError> {
        Dataplane::service(self, id)
    }
    fn set_vip(&mut self, key: &EndpointKey, value: &VipValue) -> Result<(), DataplaneError> {
        Dataplane::set_vip(self, key, value)
    }
    fn remove_vip(&mut self, key: &EndpointKey) -> Result<(), DataplaneError> {
        Dataplane::remove_vip(self, key)
    }
    fn vip_keys(&self) -> Vec<EndpointKey> {
        Dataplane::vip_keys(self)
    }
    fn set_nat_backend(&mut self, key: &EndpointKey, value: &NatBackend) -> Result<(), DataplaneError> {
        Dataplane::set_nat_backend(self, key, value)
    }
    fn remove_nat_backend(&mut self, key: &EndpointKey) -> Result<(), DataplaneError> {
        Dataplane::remove_nat_backend(self, key)
    }
    fn nat_backend_keys(&self) -> Vec<EndpointKey> {
        Dataplane::nat_backend_keys(self)
    }
    fn set_filters(
        &mut self,
        vips: &[([u32; 4], u16)],
        nat_backends: &[([u32; 4], u16)],
    ) -> Result<(), DataplaneError> {
        Dataplane::set_filters(self, vips, nat_backends)
    }
    fn counter(&self, index: u32) -> Result<Counter, DataplaneError> {
        Dataplane::counter(self, index)
    }
    fn set_settings(&mut self, settings: &Settings) -> Result<(), DataplaneError> {
        Dataplane::set_settings(self, settings)
    }
    fn cpus_in_flood(&self, now_ns: u64) -> Result<u32, DataplaneError> {
        Dataplane::cpus_in_flood(self, now_ns)
    }
    fn flow_source(&self) -> Arc<dyn FlowSource> {
        Arc::new(self.flow_reader())
    }
}
