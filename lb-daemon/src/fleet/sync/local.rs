//! This host's side of a record: which local service, VIP counter and backend index a flow
//! from a peer maps to (and whether it may be kept at all), and the reverse for the flows this
//! host reports. Pure functions over a [`LocalView`] snapshot, so every refusal rule is
//! unit-tested without a kernel.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};

use lb_common::maps::{FLOW_ESTABLISHED, FLOW_FIN, FLOW_RST, FLOW_SYNCED, FlowKey, FlowValue, flow_ticks};

use super::wire::{WireFlow, ip_of};

/// A VIP of this host as the sync needs it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VipEntry {
    /// Service id (`SERVICES` index).
    pub service: u32,
    /// The VIP's counter index.
    pub vip_index: u32,
    /// The service's epoch in force in the data plane.
    pub epoch: u32,
    /// The service forwards in DSR mode (only DSR flows can move between hosts).
    pub dsr: bool,
    /// Every backend of every pool of the service, by address (the lowest index when an address
    /// is in several pools: any of them forwards the same).
    pub backends: HashMap<SocketAddr, u32>,
}

/// What this host serves, as the sync needs it; a snapshot refreshed every sync interval.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LocalView {
    /// VIP (address, port) → its service.
    pub vips: HashMap<SocketAddr, VipEntry>,
    /// Backend index → address, for the flows this host reports.
    pub backend_addrs: HashMap<u32, SocketAddr>,
}

/// Where the sync reads the [`LocalView`] from (the engine; a fixed view in tests).
pub trait LocalSource: Send + Sync {
    /// The current view (a failure keeps the previous one).
    fn local_view(&self) -> anyhow::Result<LocalView>;

    /// This host's flow table counted by origin (its own flows, the copies received from
    /// peers) from a scan at most a few seconds old, with the scan's age; `None` when it cannot
    /// be counted. Shown in the status so an operator sees what the sync keeps here.
    fn flow_origins(&self) -> Option<(crate::engine::BackendFlows, std::time::Duration)> {
        None
    }
}

/// Why a received record is not kept.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// Its VIP is not served here (or by a NAT service).
    UnknownService,
    /// Its backend is in none of the service's pools here.
    UnknownBackend,
    /// It was pinned under another epoch than the service's here: a hard switch happened in
    /// between on one of the two hosts; trusting it could bring a flow back across it.
    StaleEpoch,
}

impl LocalView {
    /// The record of a flow this host reports (`None` when its backend is unknown here, e.g.
    /// removed by a reload since).
    pub fn to_wire(&self, key: &FlowKey, value: &FlowValue) -> Option<WireFlow> {
        let backend = *self.backend_addrs.get(&(value.backend as u32))?;
        Some(WireFlow {
            key: *key,
            backend,
            epoch: value.epoch,
            flags: value.flags & (FLOW_FIN | FLOW_RST | FLOW_ESTABLISHED),
        })
    }

    /// The `FLOWS` entry for a peer's record, or why it is refused. `now_ns` is this host's
    /// `CLOCK_MONOTONIC_COARSE` (the entry counts as just seen).
    pub fn to_local(&self, flow: &WireFlow, now_ns: u64) -> Result<FlowValue, Refusal> {
        let vip = SocketAddr::new(ip_of(flow.key.family, &flow.key.dst), u16::from_be(flow.key.dport));
        let svc = self.vips.get(&vip).filter(|s| s.dsr).ok_or(Refusal::UnknownService)?;
        let backend = *svc.backends.get(&flow.backend).ok_or(Refusal::UnknownBackend)?;
        if flow.epoch != svc.epoch {
            return Err(Refusal::StaleEpoch);
        }
        Ok(FlowValue {
            backend: backend as u16,
            service: svc.service as u8,
            vip_index: svc.vip_index as u8,
            epoch: svc.epoch,
            client_ifindex: 0,
            last_seen: flow_ticks(now_ns),
            client_mac: [0; 6],
            lb_mac: [0; 6],
            flags: (flow.flags & (FLOW_FIN | FLOW_RST | FLOW_ESTABLISHED)) | FLOW_SYNCED,
            _pad: [0; 3],
        })
    }
}

/// Whether a received entry may replace what `FLOWS` holds for its 5-tuple: nothing, or an
/// entry received from a peer. This host's own entries always win (it saw the packets).
pub fn may_replace(existing: Option<&FlowValue>) -> bool {
    existing.is_none_or(|e| e.flags & FLOW_SYNCED != 0)
}

/// A peer's address as the receiver sees its connections: same IP, any port.
pub fn same_host(a: &SocketAddr, b: &IpAddr) -> bool {
    a.ip() == *b
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fleet::sync::wire::words_of;
    use lb_common::maps::{FAMILY_V4, PROTO_TCP};

    fn view() -> LocalView {
        let b1: SocketAddr = "10.0.1.1:80".parse().unwrap();
        let b2: SocketAddr = "10.0.2.1:80".parse().unwrap();
        let entry = VipEntry {
            service: 3,
            vip_index: 5,
            epoch: 2,
            dsr: true,
            backends: HashMap::from([(b1, 7), (b2, 9)]),
        };
        LocalView {
            vips: HashMap::from([("192.0.2.10:80".parse().unwrap(), entry)]),
            backend_addrs: HashMap::from([(7, b1), (9, b2)]),
        }
    }

    fn key(vip_port: u16) -> FlowKey {
        FlowKey {
            src: words_of("198.51.100.7".parse().unwrap()),
            dst: words_of("192.0.2.10".parse().unwrap()),
            sport: 40000u16.to_be(),
            dport: vip_port.to_be(),
            proto: PROTO_TCP,
            family: FAMILY_V4,
            _pad: [0; 2],
        }
    }

    #[test]
    fn a_record_maps_to_this_hosts_indexes_and_is_marked_synced() {
        let v = view();
        let local = FlowValue {
            backend: 9,
            service: 3,
            vip_index: 5,
            epoch: 2,
            flags: FLOW_ESTABLISHED,
            ..Default::default()
        };
        let wire = v.to_wire(&key(80), &local).unwrap();
        assert_eq!(wire.backend, "10.0.2.1:80".parse().unwrap());
        let back = v.to_local(&wire, 5 << 30).unwrap();
        assert_eq!((back.backend, back.service, back.vip_index, back.epoch), (9, 3, 5, 2));
        assert_eq!(back.flags, FLOW_ESTABLISHED | FLOW_SYNCED);
        assert_eq!(back.last_seen, flow_ticks(5 << 30));
        // A synced entry is not reported as synced again.
        assert_eq!(v.to_wire(&key(80), &back).unwrap().flags, FLOW_ESTABLISHED);
    }

    #[test]
    fn unknown_services_backends_and_other_epochs_are_refused() {
        let v = view();
        let ok = v.to_wire(&key(80), &FlowValue { backend: 7, epoch: 2, ..Default::default() }).unwrap();
        assert!(v.to_local(&ok, 0).is_ok());
        assert_eq!(v.to_local(&WireFlow { key: key(443), ..ok }, 0), Err(Refusal::UnknownService));
        let elsewhere = WireFlow { backend: "10.9.9.9:80".parse().unwrap(), ..ok };
        assert_eq!(v.to_local(&elsewhere, 0), Err(Refusal::UnknownBackend));
        let port = WireFlow { backend: "10.0.1.1:81".parse().unwrap(), ..ok };
        assert_eq!(v.to_local(&port, 0), Err(Refusal::UnknownBackend));
        // Older and newer epochs alike: the two hosts disagree on a hard switch.
        assert_eq!(v.to_local(&WireFlow { epoch: 1, ..ok }, 0), Err(Refusal::StaleEpoch));
        assert_eq!(v.to_local(&WireFlow { epoch: 3, ..ok }, 0), Err(Refusal::StaleEpoch));
        // NAT services are not synced.
        let mut nat = v.clone();
        nat.vips.values_mut().for_each(|e| e.dsr = false);
        assert_eq!(nat.to_local(&ok, 0), Err(Refusal::UnknownService));
        // A flow whose backend left this host's config is not reported.
        assert!(v.to_wire(&key(80), &FlowValue { backend: 8, ..Default::default() }).is_none());
    }

    #[test]
    fn this_hosts_own_entries_are_never_replaced() {
        assert!(may_replace(None));
        assert!(may_replace(Some(&FlowValue {
            flags: FLOW_SYNCED | FLOW_ESTABLISHED,
            ..Default::default()
        })));
        assert!(!may_replace(Some(&FlowValue { flags: FLOW_ESTABLISHED, ..Default::default() })));
        assert!(!may_replace(Some(&FlowValue::default())));
    }
}
