//! Who the peers are ([`PeerSource`]: from the config now, from the fleet's membership in etcd
//! later) and what this host knows of each ([`PeerState`]: its outbound link, its queue, what
//! it sent us).

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Instant;

use super::wire::WireFlow;

/// Where the list of peers comes from. Asked every sync interval: peers may come and go.
pub trait PeerSource: Send + Sync {
    /// The sync addresses of the other hosts of the fleet (not this one).
    fn peers(&self) -> Vec<SocketAddr>;

    /// The list is known (a static list always; the fleet's once etcd was read): until then a
    /// starting host does not count itself ready, as it cannot know whom to wait for.
    fn known(&self) -> bool {
        true
    }
}

/// The peers listed in the config's `[sync] peers`.
pub struct StaticPeers(pub Vec<SocketAddr>);

impl PeerSource for StaticPeers {
    fn peers(&self) -> Vec<SocketAddr> {
        self.0.clone()
    }
}

/// The outbound link to one peer and its bounded queue of records, with its counters.
pub struct PeerState {
    /// The peer's sync address.
    pub addr: SocketAddr,
    /// Records waiting for the next send.
    queue: Mutex<VecDeque<WireFlow>>,
    limit: usize,
    /// The link is up (hello exchanged), so records are queued.
    pub connected: AtomicBool,
    /// The peer is still in the peer list (its link task stops when not).
    pub wanted: AtomicBool,
    /// An attempt to reach it failed since the last success (counts as "not waiting for it"
    /// for readiness).
    pub unreachable: AtomicBool,
    /// It sent us its bulk transfer (on its own link to us) since this daemon started.
    pub bulk_received: AtomicBool,
    /// Milliseconds since [`PeerState::epoch`] of its last ACK.
    pub last_ack_ms: AtomicU64,
    /// Records sent to it.
    pub sent: AtomicU64,
    /// Records dropped: its queue was full (slow peer).
    pub dropped_full: AtomicU64,
    /// Records dropped: not connected (they are covered by the bulk transfer on reconnect).
    pub dropped_down: AtomicU64,
    /// Links established.
    pub connects: AtomicU64,
    /// Links dropped for silence (no ACK within `peer_timeout`) or errors.
    pub timeouts: AtomicU64,
    /// Flows sent in bulk transfers.
    pub bulk_sent: AtomicU64,
    /// The last error of its link.
    pub last_error: Mutex<Option<String>>,
    epoch: Instant,
}

impl PeerState {
    /// A peer not connected yet, with a queue of at most `limit` records.
    pub fn new(addr: SocketAddr, limit: usize) -> Self {
        Self {
            addr,
            queue: Mutex::new(VecDeque::new()),
            limit,
            connected: AtomicBool::new(false),
            wanted: AtomicBool::new(true),
            unreachable: AtomicBool::new(false),
            bulk_received: AtomicBool::new(false),
            last_ack_ms: AtomicU64::new(0),
            sent: AtomicU64::new(0),
            dropped_full: AtomicU64::new(0),
            dropped_down: AtomicU64::new(0),
            connects: AtomicU64::new(0),
            timeouts: AtomicU64::new(0),
            bulk_sent: AtomicU64::new(0),
            last_error: Mutex::new(None),
            epoch: Instant::now(),
        }
    }

    /// Queues a record, or drops and counts it (queue full, or not connected).
    pub fn push(&self, flow: WireFlow) {
        if !self.connected.load(Ordering::Relaxed) {
            self.dropped_down.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let mut q = self.queue.lock().unwrap_or_else(|e| e.into_inner());
        if q.len() >= self.limit {
            drop(q);
            self.dropped_full.fetch_add(1, Ordering::Relaxed);
            return;
        }
        q.push_back(flow);
    }

    /// Takes up to `most` queued records.
    pub fn take(&self, most: usize) -> Vec<WireFlow> {
        let mut q = self.queue.lock().unwrap_or_else(|e| e.into_inner());
        let n = q.len().min(most);
        q.drain(..n).collect()
    }

    /// Records queued.
    pub fn queued(&self) -> usize {
        self.queue.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// Empties the queue (link lost, or a bulk transfer about to cover it), counting the
    /// records as dropped.
    pub fn clear(&self) {
        let n = {
            let mut q = self.queue.lock().unwrap_or_else(|e| e.into_inner());
            let n = q.len();
            q.clear();
            n
        };
        self.dropped_down.fetch_add(n as u64, Ordering::Relaxed);
    }

    /// Milliseconds since this state was created (the clock of `last_ack_ms`).
    pub fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// Notes an ACK now.
    pub fn acked(&self) {
        self.last_ack_ms.store(self.now_ms(), Ordering::Relaxed);
    }

    /// Milliseconds since the last ACK.
    pub fn since_ack_ms(&self) -> u64 {
        self.now_ms().saturating_sub(self.last_ack_ms.load(Ordering::Relaxed))
    }

    /// Records the link's error.
    pub fn set_error(&self, e: Option<String>) {
        *self.last_error.lock().unwrap_or_else(|e| e.into_inner()) = e;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lb_common::maps::FlowKey;

    fn flow() -> WireFlow {
        WireFlow { key: FlowKey::default(), backend: "10.0.0.1:80".parse().unwrap(), epoch: 1, flags: 4 }
    }

    #[test]
    fn the_queue_is_bounded_and_drops_are_counted() {
        let p = PeerState::new("10.0.0.2:7946".parse().unwrap(), 3);
        p.push(flow());
        assert_eq!((p.queued(), p.dropped_down.load(Ordering::Relaxed)), (0, 1), "not connected: dropped");
        p.connected.store(true, Ordering::Relaxed);
        for _ in 0..5 {
            p.push(flow());
        }
        assert_eq!((p.queued(), p.dropped_full.load(Ordering::Relaxed)), (3, 2));
        assert_eq!(p.take(2).len(), 2);
        assert_eq!(p.queued(), 1);
        p.clear();
        assert_eq!((p.queued(), p.dropped_down.load(Ordering::Relaxed)), (0, 2));
    }
}
