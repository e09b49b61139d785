//! Peers from the fleet's membership in etcd (`[fleet]` with `[sync]`): every host publishes
//! its sync address in its host status (under its lease), so the peers of a host are the live
//! hosts other than itself — a host that joins is synced with, one whose lease expires is
//! dropped, without editing any config. Static `[sync] peers`, if any, are added.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, Weak};

use super::PeerSource;
use crate::dataplane::Maps;
use crate::engine::Engine;
use crate::fleet::etcd::FleetNode;

/// Something that knows the fleet's live hosts' sync addresses (other than this host's).
pub trait SyncMembers: Send + Sync {
    /// The other live hosts' sync addresses; `None` while not known (this host not in the
    /// fleet yet, or not reaching etcd).
    fn sync_members(&self) -> Option<Vec<SocketAddr>>;
}

impl<M: Maps + Send + 'static> SyncMembers for FleetNode<M> {
    fn sync_members(&self) -> Option<Vec<SocketAddr>> {
        self.sync_peers()
    }
}

/// The engine joins its fleet after the sync starts (the sync gates the BGP announcer, which
/// the fleet node reports on), so it is asked at every refresh.
impl SyncMembers for Engine {
    fn sync_members(&self) -> Option<Vec<SocketAddr>> {
        self.fleet_node().and_then(|n| n.sync_peers())
    }
}

/// The [`PeerSource`] of a host in a fleet: the live members' sync addresses, plus the static
/// `[sync] peers`. While etcd cannot be read it keeps the last members it knew (an etcd outage
/// must not cut the sync). Holds its members weakly: the sync must not keep the engine alive.
pub struct FleetPeers {
    members: Weak<dyn SyncMembers>,
    statics: Vec<SocketAddr>,
    last: Mutex<Option<Vec<SocketAddr>>>,
}

impl FleetPeers {
    /// Peers from `members` plus `statics`.
    pub fn new(members: &Arc<dyn SyncMembers>, statics: Vec<SocketAddr>) -> Self {
        Self { members: Arc::downgrade(members), statics, last: Mutex::new(None) }
    }
}

impl PeerSource for FleetPeers {
    fn peers(&self) -> Vec<SocketAddr> {
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(now) = self.members.upgrade().and_then(|m| m.sync_members()) {
            *last = Some(now);
        }
        let mut out = self.statics.clone();
        for a in last.iter().flatten() {
            if !out.contains(a) {
                out.push(*a);
            }
        }
        out
    }

    fn known(&self) -> bool {
        self.last.lock().unwrap_or_else(|e| e.into_inner()).is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataplane::fake::FakeMaps;
    use crate::engine::tests::{CONFIG, Rig};
    use crate::fleet::etcd::memory::MemStore;
    use std::sync::atomic::Ordering;
    use std::time::Duration;

    struct Host {
        node: Arc<FleetNode<FakeMaps>>,
    }

    fn host(store: &MemStore, id: u32, name: &str, sync: Option<&str>) -> Host {
        let rig = Rig::new(CONFIG);
        let clock = rig.clock.clone();
        let node = Arc::new(FleetNode::new(
            "edge1",
            name,
            Arc::new(Mutex::new(rig.core)),
            Arc::new(store.client(id)),
            Duration::from_secs(2),
            Duration::ZERO,
            None,
            Box::new(move || clock.load(Ordering::SeqCst)),
        ));
        if let Some(a) = sync {
            node.set_sync_addr(a.parse().unwrap());
        }
        Host { node }
    }

    fn addrs(list: &[&str]) -> Vec<SocketAddr> {
        list.iter().map(|a| a.parse().unwrap()).collect()
    }

    fn source(h: &Host) -> (Arc<dyn SyncMembers>, FleetPeers) {
        let members: Arc<dyn SyncMembers> = h.node.clone();
        let peers = FleetPeers::new(&members, Vec::new());
        (members, peers)
    }

    #[test]
    fn peers_are_the_other_live_hosts_that_publish_a_sync_address() {
        let store = MemStore::default();
        let a = host(&store, 1, "lb-a", Some("10.0.0.1:7946"));
        let b = host(&store, 2, "lb-b", Some("10.0.0.2:7946"));
        let c = host(&store, 3, "lb-c", None);
        let (_keep, peers) = source(&a);
        assert_eq!(peers.peers(), Vec::<SocketAddr>::new(), "before etcd is read: no peers");
        assert!(!peers.known(), "not known before etcd is read");
        for h in [&a, &b, &c] {
            h.node.step(Duration::ZERO);
        }
        a.node.step(Duration::ZERO);
        assert_eq!(peers.peers(), addrs(&["10.0.0.2:7946"]), "not itself, not a host without [sync]");
        assert!(peers.known());

        let d = host(&store, 4, "lb-d", Some("10.0.0.4:7946"));
        d.node.step(Duration::ZERO);
        a.node.step(Duration::ZERO);
        assert_eq!(peers.peers(), addrs(&["10.0.0.2:7946", "10.0.0.4:7946"]), "a joining host");

        // lb-b's lease expires (host lost): it is no peer any more.
        store.expire_lease(2);
        a.node.step(Duration::ZERO);
        assert_eq!(peers.peers(), addrs(&["10.0.0.4:7946"]), "a lost host is dropped");

        // etcd unreachable: the last members are kept.
        store.set_down(true);
        a.node.step(Duration::ZERO);
        assert_eq!(peers.peers(), addrs(&["10.0.0.4:7946"]), "an etcd outage keeps the peers");
    }

    #[test]
    fn static_peers_are_kept_and_nothing_is_known_without_the_fleet() {
        let store = MemStore::default();
        let a = host(&store, 1, "lb-a", Some("10.0.0.1:7946"));
        let b = host(&store, 2, "lb-b", Some("10.0.0.2:7946"));
        let members: Arc<dyn SyncMembers> = a.node.clone();
        let peers = FleetPeers::new(&members, addrs(&["10.0.0.9:7946", "10.0.0.2:7946"]));
        b.node.step(Duration::ZERO);
        a.node.step(Duration::ZERO);
        assert_eq!(peers.peers(), addrs(&["10.0.0.9:7946", "10.0.0.2:7946"]), "no duplicate");
        let dead: Arc<dyn SyncMembers> = host(&store, 3, "lb-c", None).node;
        let orphan = FleetPeers::new(&dead, addrs(&["10.0.0.9:7946"]));
        drop(dead);
        assert_eq!(orphan.peers(), addrs(&["10.0.0.9:7946"]), "members gone: the static peers only");
        assert!(!orphan.known());
    }
}
