//! The flow sync as `GET /v1/status` (`sync`) and `/metrics` (`lb_sync_*`) show it.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};

use super::FlowSync;

/// The `sync` part of the status.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncView {
    /// This host's sync address.
    pub listen: String,
    /// Send interval, ms: flows younger than this may be lost with their host.
    pub interval_ms: u64,
    /// A silent peer is dropped after this, ms.
    pub peer_timeout_ms: u64,
    /// The peers' flows were received (or they are unreachable, or the wait timed out): the
    /// VIPs may be announced.
    pub ready: bool,
    /// Peers still awaited before `ready`.
    pub waiting_for: Vec<String>,
    /// Flows reported by this host's data plane.
    pub reported: u64,
    /// Flows received from peers.
    pub received: u64,
    /// Received flows written into the flow table (marked synced).
    pub inserted: u64,
    /// Received flows left out: this host has its own entry.
    pub kept_local: u64,
    /// Refused: the VIP's service is not served here.
    pub refused_unknown_service: u64,
    /// Refused: the backend is not in the service here.
    pub refused_unknown_backend: u64,
    /// Refused: pinned under another epoch (a hard switch in between).
    pub refused_stale_epoch: u64,
    /// Frames or hellos that failed authentication.
    pub auth_failures: u64,
    /// Bytes sent to peers.
    pub bytes_sent: u64,
    /// Each peer.
    pub peers: Vec<SyncPeerView>,
    /// This host's flow table by origin (a scan at most a few seconds old).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flows: Option<SyncFlows>,
}

/// This host's established flows by origin, in [`SyncView`]: its own, and the copies received
/// from peers (marked synced), counted apart as in `drain-status`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncFlows {
    /// Established flows this host recorded itself.
    pub local: u64,
    /// Established flows received from peers.
    pub synced: u64,
    /// Age of the scan, ms.
    pub scan_age_ms: u64,
}

/// One peer in [`SyncView`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncPeerView {
    /// Its sync address.
    pub addr: String,
    /// Our link to it is up.
    pub connected: bool,
    /// Milliseconds since it last acknowledged.
    pub since_ack_ms: u64,
    /// Records queued for it.
    pub queued: u64,
    /// Records sent to it.
    pub sent: u64,
    /// Records dropped for it (queue full or link down).
    pub dropped: u64,
    /// Links to it established.
    pub connects: u64,
    /// Links to it dropped.
    pub drops: u64,
    /// Flows sent to it in bulk transfers.
    pub bulk_sent: u64,
    /// It sent us its bulk transfer.
    pub bulk_received: bool,
    /// The last error of our link to it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

fn get(a: &AtomicU64) -> u64 {
    a.load(Ordering::Relaxed)
}

impl FlowSync {
    /// The status part. Counts the flow table when the cached scan is old: call it off the
    /// async runtime's threads.
    pub fn view(&self) -> SyncView {
        let c = self.counters();
        let cfg = self.config();
        SyncView {
            listen: cfg.listen.to_string(),
            interval_ms: cfg.interval.as_millis() as u64,
            peer_timeout_ms: cfg.peer_timeout.as_millis() as u64,
            ready: self.is_ready(),
            waiting_for: self.waiting_for().iter().map(ToString::to_string).collect(),
            reported: get(&c.reported),
            received: get(&c.received),
            inserted: get(&c.inserted),
            kept_local: get(&c.kept_local),
            refused_unknown_service: get(&c.refused_unknown_service),
            refused_unknown_backend: get(&c.refused_unknown_backend),
            refused_stale_epoch: get(&c.refused_stale_epoch),
            auth_failures: get(&c.auth_failures),
            bytes_sent: get(&c.bytes_sent),
            peers: self
                .peers()
                .iter()
                .map(|p| SyncPeerView {
                    addr: p.addr.to_string(),
                    connected: p.connected.load(Ordering::Relaxed),
                    since_ack_ms: p.since_ack_ms(),
                    queued: p.queued() as u64,
                    sent: get(&p.sent),
                    dropped: get(&p.dropped_full) + get(&p.dropped_down),
                    connects: get(&p.connects),
                    drops: get(&p.timeouts),
                    bulk_sent: get(&p.bulk_sent),
                    bulk_received: p.bulk_received.load(Ordering::Relaxed),
                    error: p.last_error.lock().unwrap_or_else(|e| e.into_inner()).clone(),
                })
                .collect(),
            flows: self.flow_origins().map(|(f, age)| SyncFlows {
                local: f.established,
                synced: f.synced,
                scan_age_ms: age.as_millis() as u64,
            }),
        }
    }

    /// Appends the `lb_sync_*` metrics (Prometheus text format).
    pub fn render_metrics(&self, out: &mut String) {
        let c = self.counters();
        let mut family = |name: &str, kind: &str, help: &str, rows: &[(String, u64)]| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for (labels, v) in rows {
                let _ = writeln!(out, "{name}{labels} {v}");
            }
        };
        let plain = |v: u64| vec![(String::new(), v)];
        family(
            "lb_sync_ready",
            "gauge",
            "1 once the peers' flows were received (VIPs may be announced).",
            &plain(self.is_ready() as u64),
        );
        family(
            "lb_sync_records_total",
            "counter",
            "Flow records by stage: reported by this host's data plane, received from peers, inserted into the flow table.",
            &[
                ("{stage=\"reported\"}".into(), get(&c.reported)),
                ("{stage=\"received\"}".into(), get(&c.received)),
                ("{stage=\"inserted\"}".into(), get(&c.inserted)),
                ("{stage=\"kept_local\"}".into(), get(&c.kept_local)),
                ("{stage=\"bulk_received\"}".into(), get(&c.bulk_received)),
            ],
        );
        family(
            "lb_sync_refused_total",
            "counter",
            "Received flow records refused, by reason.",
            &[
                ("{reason=\"unknown_service\"}".into(), get(&c.refused_unknown_service)),
                ("{reason=\"unknown_backend\"}".into(), get(&c.refused_unknown_backend)),
                ("{reason=\"stale_epoch\"}".into(), get(&c.refused_stale_epoch)),
            ],
        );
        family(
            "lb_sync_auth_failures_total",
            "counter",
            "Hellos or frames that failed authentication.",
            &plain(get(&c.auth_failures)),
        );
        family(
            "lb_sync_unknown_peer_connections_total",
            "counter",
            "Connections from addresses that are not peers.",
            &plain(get(&c.unknown_peers)),
        );
        family(
            "lb_sync_insert_errors_total",
            "counter",
            "Failed flow lookups or batch inserts.",
            &plain(get(&c.insert_errors)),
        );
        family(
            "lb_sync_sent_bytes_total",
            "counter",
            "Bytes of frames sent to peers.",
            &plain(get(&c.bytes_sent)),
        );
        let peers = self.peers();
        let rows = |f: &dyn Fn(&super::peers::PeerState) -> u64| -> Vec<(String, u64)> {
            peers.iter().map(|p| (format!("{{peer=\"{}\"}}", p.addr), f(p))).collect()
        };
        family(
            "lb_sync_peer_up",
            "gauge",
            "1 while the link to the peer is up.",
            &rows(&|p| p.connected.load(Ordering::Relaxed) as u64),
        );
        family("lb_sync_peer_queued", "gauge", "Records queued for the peer.", &rows(&|p| p.queued() as u64));
        family("lb_sync_peer_sent_total", "counter", "Records sent to the peer.", &rows(&|p| get(&p.sent)));
        family(
            "lb_sync_peer_bulk_sent_total",
            "counter",
            "Flows sent to the peer in bulk transfers.",
            &rows(&|p| get(&p.bulk_sent)),
        );
        let mut dropped = Vec::new();
        for p in &peers {
            dropped.push((format!("{{peer=\"{}\",reason=\"queue_full\"}}", p.addr), get(&p.dropped_full)));
            dropped.push((format!("{{peer=\"{}\",reason=\"link_down\"}}", p.addr), get(&p.dropped_down)));
        }
        family("lb_sync_peer_dropped_total", "counter", "Records dropped for the peer, by reason.", &dropped);
        family(
            "lb_sync_peer_drops_total",
            "counter",
            "Links to the peer dropped (silent past peer_timeout, or failed).",
            &rows(&|p| get(&p.timeouts)),
        );
    }
}
