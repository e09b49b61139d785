//! Flow-state sync between the balancer hosts of a fleet, so that a connection ECMP moves to
//! another host (its host lost, drained, or a host added) keeps its backend there, also after
//! a drain switch (when re-hashing would send it to the new pool and reset it).
//!
//! Path of a flow: the XDP program reports it when its handshake completes and when it closes
//! (`FLOW_EVENTS` ring buffer) → [`ring`] reads the ring every few ms and queues a record per
//! peer → [`sender`] sends each peer's queue every `interval` on a TCP connection of its own
//! (authenticated frames, [`wire`]), after a bulk transfer of the current flows when the
//! connection opens → the peer's [`receiver`] maps each record to its own indexes ([`local`]),
//! refuses (and counts) unknown services or backends and other epochs, and writes the rest
//! into its `FLOWS` with batch updates, marked `FLOW_SYNCED`. A peer silent for `peer_timeout`
//! is dropped and re-synced (bulk) when it answers again. Completely inert without `[sync]`.
//!
//! Why TCP: records must arrive (a lost record is a connection reset later), the bulk
//! transfer is megabytes, and TCP's flow control plus a bounded queue in front of it is exactly
//! the "drop and count when a peer is slow" behaviour wanted; one connection per peer and
//! direction keeps each side simple (the sender writes records, the receiver writes ACKs).
//!
//! - [`config`]: the `[sync]` table. [`peers`]: the peer list ([`PeerSource`]) and each
//!   peer's queue. [`fleet_peers`]: with `[fleet]`, the peers are the live hosts in etcd.
//!   [`view`]: the `sync` part of the status and the `lb_sync_*` metrics.

pub mod config;
pub mod fleet_peers;
pub mod local;
pub mod peers;
pub mod receiver;
pub mod ring;
pub mod sender;
pub mod view;
pub mod wire;

pub use config::SyncConfig;
pub use fleet_peers::{FleetPeers, SyncMembers};
pub use local::{LocalSource, LocalView};
pub use peers::{PeerSource, StaticPeers};
pub use view::SyncView;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use crate::dataplane::{FlowReader, FlowWriter};
use peers::PeerState;

/// Counters of the whole sync (per-peer ones are in [`PeerState`]).
#[derive(Default)]
pub struct Counters {
    /// Records read from the data plane's ring.
    pub reported: AtomicU64,
    /// Ring records whose backend is unknown here (reported by no one).
    pub unreported: AtomicU64,
    /// Records received from peers.
    pub received: AtomicU64,
    /// Records written into `FLOWS`.
    pub inserted: AtomicU64,
    /// Received records left out: this host has its own entry for the 5-tuple.
    pub kept_local: AtomicU64,
    /// Refused: VIP not served here (or by a NAT service).
    pub refused_unknown_service: AtomicU64,
    /// Refused: backend in no pool of the service here.
    pub refused_unknown_backend: AtomicU64,
    /// Refused: pinned under another epoch than the service's here.
    pub refused_stale_epoch: AtomicU64,
    /// Batch writes into `FLOWS` that failed.
    pub insert_errors: AtomicU64,
    /// Connections refused for a bad hello or frame tag, or a sequence error.
    pub auth_failures: AtomicU64,
    /// Connections from addresses that are not peers.
    pub unknown_peers: AtomicU64,
    /// Bytes of frames sent.
    pub bytes_sent: AtomicU64,
    /// Flows received in bulk transfers.
    pub bulk_received: AtomicU64,
}

/// The running flow sync of this host.
pub struct FlowSync {
    cfg: SyncConfig,
    key: wire::Key,
    source: Box<dyn PeerSource>,
    local: Arc<dyn LocalSource>,
    view: Mutex<Arc<LocalView>>,
    peers: Mutex<Vec<Arc<PeerState>>>,
    /// IPs of peers that completed a bulk transfer to us (kept across their link's lifetime).
    counters: Counters,
    reader: FlowReader,
    writer: FlowWriter,
    started: Instant,
    ready: AtomicBool,
}

impl FlowSync {
    /// Starts the sync when `cfg` is set: reads the key (a bad one fails the start), binds the
    /// listener, then runs the ring reader (its own thread), the receiver and one sender per
    /// peer on `handle`.
    #[allow(clippy::too_many_arguments)]
    pub fn start(
        cfg: Option<SyncConfig>,
        source: Box<dyn PeerSource>,
        local: Arc<dyn LocalSource>,
        ring: Option<aya::maps::RingBuf<aya::maps::MapData>>,
        reader: FlowReader,
        writer: FlowWriter,
        handle: &tokio::runtime::Handle,
    ) -> anyhow::Result<Option<Arc<FlowSync>>> {
        use anyhow::Context;
        let Some(cfg) = cfg else { return Ok(None) };
        let key = wire::Key::new(cfg.read_key()?);
        let ring = ring.context("the data plane's FLOW_EVENTS ring buffer is not available")?;
        let view = local.local_view().unwrap_or_default();
        let listener = {
            let _guard = handle.enter();
            let std = std::net::TcpListener::bind(cfg.listen)
                .with_context(|| format!("sync.listen: cannot listen on {}", cfg.listen))?;
            std.set_nonblocking(true)?;
            tokio::net::TcpListener::from_std(std)?
        };
        tracing::info!(listen = %cfg.listen, peers = ?source.peers(), interval = ?cfg.interval, "flow sync started");
        let sync = Arc::new(FlowSync {
            key,
            source,
            local,
            view: Mutex::new(Arc::new(view)),
            peers: Mutex::new(Vec::new()),
            counters: Counters::default(),
            reader,
            writer,
            started: Instant::now(),
            ready: AtomicBool::new(false),
            cfg,
        });
        sync.refresh(handle);
        ring::spawn(Arc::downgrade(&sync), ring);
        handle.spawn(receiver::serve(Arc::downgrade(&sync), listener));
        let weak = Arc::downgrade(&sync);
        let h = handle.clone();
        handle.spawn(async move {
            loop {
                let Some(sync) = weak.upgrade() else { return };
                let interval = sync.cfg.interval;
                sync.refresh(&h);
                drop(sync);
                tokio::time::sleep(interval).await;
            }
        });
        Ok(Some(sync))
    }

    /// Re-reads the local view and the peer list: starts a sender for a new peer, stops the
    /// one of a peer gone.
    fn refresh(self: &Arc<Self>, handle: &tokio::runtime::Handle) {
        match self.local.local_view() {
            Ok(v) => *self.view.lock().unwrap_or_else(|e| e.into_inner()) = Arc::new(v),
            Err(e) => {
                tracing::warn!(error = %e, "flow sync: reading the local services failed; keeping the last view")
            }
        }
        // Locked first: readiness (which reads the peers) never sees a known source with the
        // peers of before.
        let mut peers = self.peers.lock().unwrap_or_else(|e| e.into_inner());
        let wanted = self.source.peers();
        peers.retain(|p| {
            let keep = wanted.contains(&p.addr);
            if !keep {
                p.wanted.store(false, Ordering::Relaxed);
                tracing::info!(peer = %p.addr, "flow sync: peer removed");
            }
            keep
        });
        for addr in wanted {
            if addr != self.cfg.listen && !peers.iter().any(|p| p.addr == addr) {
                let peer = Arc::new(PeerState::new(addr, self.cfg.queue_limit));
                peers.push(peer.clone());
                handle.spawn(sender::run(Arc::downgrade(self), peer));
            }
        }
        drop(peers);
        self.update_ready();
    }

    /// The current local view.
    pub fn local_view(&self) -> Arc<LocalView> {
        self.view.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The current peers.
    pub fn peers(&self) -> Vec<Arc<PeerState>> {
        self.peers.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The peer whose address has `ip`, if it is one.
    pub fn peer_by_ip(&self, ip: std::net::IpAddr) -> Option<Arc<PeerState>> {
        self.peers().into_iter().find(|p| local::same_host(&p.addr, &ip))
    }

    /// The counters.
    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// The config in force.
    pub fn config(&self) -> &SyncConfig {
        &self.cfg
    }

    /// The peers this host still waits for before it may announce its VIPs: connected or
    /// connecting peers that have not sent their bulk transfer. Empty once ready (latched).
    pub fn waiting_for(&self) -> Vec<SocketAddr> {
        if self.ready.load(Ordering::Relaxed) {
            return Vec::new();
        }
        self.peers()
            .iter()
            .filter(|p| !p.bulk_received.load(Ordering::Relaxed) && !p.unreachable.load(Ordering::Relaxed))
            .map(|p| p.addr)
            .collect()
    }

    /// Ready: every peer sent its flows or is unreachable, or `ready_timeout` passed. Once
    /// ready, always ready (a peer restarting later must not withdraw this host's VIPs).
    pub fn is_ready(&self) -> bool {
        self.update_ready();
        self.ready.load(Ordering::Relaxed)
    }

    /// Ready at once: a restarted daemon that adopted a forwarding data plane (its host
    /// announces already; withdrawing it to wait for the peers would move its flows away).
    pub fn mark_ready(&self, why: &str) {
        if !self.ready.swap(true, Ordering::Relaxed) {
            tracing::info!(why, "flow sync ready");
        }
    }

    fn update_ready(&self) {
        if self.ready.load(Ordering::Relaxed) {
            return;
        }
        let timed_out = self.started.elapsed() >= self.cfg.ready_timeout;
        if timed_out || (self.source.known() && self.waiting_for().is_empty()) {
            self.ready.store(true, Ordering::Relaxed);
            tracing::info!(
                timed_out,
                waited_ms = self.started.elapsed().as_millis() as u64,
                "flow sync ready: peers' flows received"
            );
        }
    }

    /// Queues a record for every connected peer.
    pub fn fan_out(&self, flow: wire::WireFlow) {
        for p in self.peers.lock().unwrap_or_else(|e| e.into_inner()).iter() {
            p.push(flow);
        }
    }

    /// The reader of `FLOWS` for bulk transfers.
    pub fn flow_reader(&self) -> &FlowReader {
        &self.reader
    }

    /// The writer of `FLOWS` for received records.
    pub fn flow_writer(&self) -> &FlowWriter {
        &self.writer
    }

    /// This host's flows by origin (see [`LocalSource::flow_origins`]).
    pub fn flow_origins(&self) -> Option<(crate::engine::BackendFlows, std::time::Duration)> {
        self.local.flow_origins()
    }

    /// The fleet key.
    pub fn key(&self) -> &wire::Key {
        &self.key
    }
}

impl crate::fleet::host::AnnounceGate for FlowSync {
    fn not_ready(&self) -> Option<&'static str> {
        (!self.is_ready()).then_some("the flow sync waits for its peers' flows (a bulk transfer each)")
    }
}
