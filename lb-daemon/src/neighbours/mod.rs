//! Keeps the kernel's neighbour entry of every backend's next hop resolved, so the XDP program's
//! `bpf_fib_lookup` finds a MAC address from a backend's first packet on.
//!
//! XDP cannot ask the kernel to resolve a neighbour. In `nat` mode an unresolved next hop only
//! costs a trip through the kernel's forwarding path, but in `dsr` mode the packet (still
//! addressed to the VIP) can only be dropped, and the client waits a whole SYN retransmission
//! (1 s) — right after the daemon starts, or after an operator's `ip neigh flush`. So the daemon
//! turns each next hop into a *managed* neighbour entry (`NTF_EXT_MANAGED`, Linux ≥ 5.16): the
//! kernel resolves it at once and keeps it resolved. Entries are tagged with protocol
//! [`PROTOCOL`] (`ip neigh show proto 248`); entries an operator set by hand (permanent or noarp)
//! are left alone. The keeper runs again every [`REFRESH`] to follow route changes and flushes.

pub mod netlink;

use netlink::{NUD_STATIC, NUD_VALID, Netlink, NextHop, Route};
use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
    sync::Mutex,
    time::{Duration, Instant},
};

/// The `proto` of the neighbour entries the daemon manages.
pub const PROTOCOL: u8 = 248;

/// How often the keeper checks its entries again.
pub const REFRESH: Duration = Duration::from_secs(10);

/// What one pass of [`NeighbourKeeper::keep`] did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct KeepReport {
    /// Next hops kept, by backend address.
    pub hops: BTreeMap<IpAddr, NextHop>,
    /// Entries made managed in this pass (new, flushed, or changed by hand).
    pub created: usize,
    /// Entries of next hops no backend uses any more, deleted.
    pub removed: usize,
    /// Backends whose next hop could not be kept, with the reason.
    pub problems: Vec<String>,
}

/// The next hops kept for the current set of backends.
#[derive(Default)]
pub struct NeighbourKeeper {
    kept: Mutex<BTreeMap<IpAddr, NextHop>>,
}

impl NeighbourKeeper {
    /// A keeper that keeps nothing yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Makes the next hop of every address in `backends` a managed entry, and deletes the
    /// managed entries of next hops that only backends no longer listed used. A backend whose
    /// route cannot be read this time keeps the next hop it had: a passing routing problem
    /// never removes an entry the data plane may be using.
    pub fn keep(&self, backends: &BTreeSet<IpAddr>) -> std::io::Result<KeepReport> {
        let mut nl = Netlink::open()?;
        let mut kept = self.kept.lock().unwrap_or_else(|e| e.into_inner());
        let mut report = KeepReport::default();
        for &backend in backends {
            let problem = match nl.route_to(backend) {
                Ok(Route::Via(hop)) => {
                    report.hops.insert(backend, hop);
                    continue;
                }
                Ok(Route::NotUnicast(kind)) => {
                    format!("{backend}: the route to it is not a unicast route (type {kind})")
                }
                Err(e) => format!("{backend}: no route ({e})"),
            };
            report.problems.push(problem);
            if let Some(old) = kept.get(&backend) {
                report.hops.insert(backend, *old);
            }
        }
        let wanted: BTreeSet<NextHop> = report.hops.values().copied().collect();
        for hop in &wanted {
            match nl.neighbour(hop) {
                Ok(Some(n)) if n.state & NUD_STATIC != 0 || n.managed => {}
                Ok(_) => match nl.set_managed(hop, PROTOCOL) {
                    Ok(()) => report.created += 1,
                    Err(e) => report.problems.push(format!("{} on ifindex {}: {e}", hop.addr, hop.ifindex)),
                },
                Err(e) => report.problems.push(format!("{} on ifindex {}: {e}", hop.addr, hop.ifindex)),
            }
        }
        let old: BTreeSet<NextHop> = kept.values().copied().collect();
        for hop in old.difference(&wanted) {
            if remove_if_ours(&mut nl, hop)? {
                report.removed += 1;
            }
        }
        *kept = report.hops.clone();
        Ok(report)
    }

    /// Waits up to `timeout` for every kept next hop to have a link-layer address; returns the
    /// ones that still have none.
    pub fn wait_resolved(&self, timeout: Duration) -> std::io::Result<Vec<NextHop>> {
        let hops: BTreeSet<NextHop> =
            self.kept.lock().unwrap_or_else(|e| e.into_inner()).values().copied().collect();
        let mut nl = Netlink::open()?;
        let deadline = Instant::now() + timeout;
        loop {
            let mut pending = Vec::new();
            for hop in &hops {
                let valid = nl.neighbour(hop)?.is_some_and(|n| n.state & NUD_VALID != 0);
                if !valid {
                    pending.push(*hop);
                }
            }
            if pending.is_empty() || Instant::now() >= deadline {
                return Ok(pending);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Deletes every managed entry this keeper made (when the data plane is detached).
    pub fn release(&self) -> std::io::Result<usize> {
        let mut kept = self.kept.lock().unwrap_or_else(|e| e.into_inner());
        let mut nl = Netlink::open()?;
        let hops: BTreeSet<NextHop> = kept.values().copied().collect();
        let mut removed = 0;
        for hop in &hops {
            if remove_if_ours(&mut nl, hop)? {
                removed += 1;
            }
        }
        kept.clear();
        Ok(removed)
    }
}

/// Deletes `hop`'s entry if it is a managed one with our protocol; true if it did.
fn remove_if_ours(nl: &mut Netlink, hop: &NextHop) -> std::io::Result<bool> {
    match nl.neighbour(hop)? {
        Some(n) if n.managed && n.protocol == PROTOCOL => nl.delete(hop).map(|()| true),
        _ => Ok(false),
    }
}
