//! Counting the flow table for `drain-status`, `--wait-drained` and `/metrics`: per backend,
//! the flows still established and those closing. A flow that saw FIN or RST is closing; a flow
//! with no packet for longer than `drain_idle_timeout` is dead (its client, or the balancer
//! host that carried it, went away without closing it) and counts as neither, so waiting for a
//! drain never waits on the dead. Neither does a handshake that never completed and is older
//! than `flows.handshake_timeout`: the data plane no longer trusts that entry either.
//!
//! Entries received from the fleet's other hosts (flow sync, `FLOW_SYNCED`) are counted apart
//! ([`BackendFlows::synced`]): they are copies of connections other hosts carry, kept so that a
//! connection ECMP moves here keeps its backend. Counted as established they would make every
//! host of a fleet report (and `--wait-drained` or `host drain --wait` wait on) its peers'
//! connections too, until they went idle here (a copy sees no packet unless its connection
//! moves here). A connection that does move here loses the mark on its first packet here (the
//! data plane clears it) and from then on counts as this host's own.

use super::{core::Core, layout::ServiceLayout};
use crate::{
    api::model::{ApiError, DrainView, PoolDrain},
    dataplane::{FlowSource, Maps},
};
use lb_common::maps::{FLOW_ESTABLISHED, FLOW_FIN, FLOW_RST, FLOW_SYNCED};
use std::{collections::BTreeMap, sync::Arc, time::Duration};

/// Established and closing flows of one backend.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BackendFlows {
    /// Seen within the idle timeout and not closed.
    pub established: u64,
    /// Saw a FIN or RST.
    pub closing: u64,
    /// Received from a peer (flow sync) and alive by the same rules as `established`; not in
    /// `established` nor `closing` (a closed copy is not counted at all).
    pub synced: u64,
}

/// How long a flow may go without a packet and still count, from the config.
#[derive(Clone, Copy, Debug)]
pub struct FlowTimeouts {
    /// `drain_idle_timeout`: an open flow idle longer is dead.
    pub idle: Duration,
    /// `flows.handshake_timeout`: a flow whose handshake never completed, idle longer, is dead.
    pub handshake: Duration,
}

/// Flow-table counts by backend index, from one scan.
#[derive(Debug, Default)]
pub struct FlowCounts {
    by_backend: BTreeMap<u32, BackendFlows>,
    scanned: u64,
}

impl FlowCounts {
    /// Counts the flow table (a 1M-entry table takes ~0.3 s: do it without holding the engine).
    /// An error, never a partial count: `--wait-drained` must not see a pool drained that is
    /// not. `last_seen_ns` is the data plane's coarse monotonic clock, rewritten at most once a
    /// second; `source.now_ns()` reads the same clock.
    pub fn scan(source: &dyn FlowSource, timeouts: FlowTimeouts) -> Result<Self, ApiError> {
        let mut counts = FlowCounts::default();
        let now = source.now_ns();
        let idle = timeouts.idle.as_nanos() as u64;
        let handshake = timeouts.handshake.as_nanos() as u64;
        let scanned = source
            .for_each_flow(&mut |_, f| {
                let c = counts.by_backend.entry(u32::from(f.backend)).or_default();
                let synced = f.flags & FLOW_SYNCED != 0;
                if f.flags & (FLOW_FIN | FLOW_RST) != 0 {
                    if !synced {
                        c.closing += 1;
                    }
                } else if f.idle_ns(now) <= idle
                    && (f.flags & FLOW_ESTABLISHED != 0 || f.idle_ns(now) <= handshake)
                {
                    if synced {
                        c.synced += 1;
                    } else {
                        c.established += 1;
                    }
                }
            })
            .map_err(|e| ApiError::internal(format!("data plane: counting FLOWS: {e}")))?;
        counts.scanned = scanned as u64;
        Ok(counts)
    }

    /// Entries the scan walked (the flow table's occupancy).
    pub fn entries(&self) -> u64 {
        self.scanned
    }

    /// Counts of every backend together (what the flow sync's status shows).
    pub fn total(&self) -> BackendFlows {
        self.by_backend.values().fold(BackendFlows::default(), |a, b| BackendFlows {
            established: a.established + b.established,
            closing: a.closing + b.closing,
            synced: a.synced + b.synced,
        })
    }

    /// Counts of one backend (zero when it has no flow).
    pub fn of(&self, backend: u32) -> BackendFlows {
        self.by_backend.get(&backend).copied().unwrap_or_default()
    }
}

impl<M: Maps> Core<M> {
    /// What a flow count needs, taken under the engine's lock: the flow table and the
    /// timeouts. The count itself runs without the lock.
    pub fn flow_scan(&self) -> (Arc<dyn FlowSource>, FlowTimeouts) {
        let timeouts = FlowTimeouts {
            idle: self.config.drain_idle_timeout,
            handshake: self.config.flows.handshake_timeout,
        };
        (self.maps.flow_source(), timeouts)
    }

    /// Established and closing flows per pool of a service.
    pub fn drain_view(&self, service: Option<&str>, counts: &FlowCounts) -> Result<DrainView, ApiError> {
        let svc: &ServiceLayout = self.service_layout(service)?;
        let active = &self.state.services[&svc.name].active;
        Ok(DrainView {
            service: svc.name.clone(),
            idle_timeout_s: self.config.drain_idle_timeout.as_secs(),
            pools: svc
                .pools
                .iter()
                .map(|p| PoolDrain {
                    pool: p.name.clone(),
                    share: active.share(&p.name),
                    established: p.backends.iter().map(|b| counts.of(b.index).established).sum(),
                    closing: p.backends.iter().map(|b| counts.of(b.index).closing).sum(),
                    synced: p.backends.iter().map(|b| counts.of(b.index).synced).sum(),
                })
                .collect(),
            flows_scanned: counts.scanned,
        })
    }
}
