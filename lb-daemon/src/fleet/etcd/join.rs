//! Joining the fleet at daemon start: the etcd store, the node over the engine's core, and the
//! node's own thread (the store's calls block on the runtime, so they run off it). The thread
//! stops — and must, before the runtime is dropped — when the returned [`FleetThread`] is.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::thread::JoinHandle;

use anyhow::Context;
use tokio::runtime::Handle;

use super::client::EtcdStore;
use super::config::FleetConfig;
use super::node::FleetNode;
use crate::engine::Engine;
use crate::fleet::Fleet;

/// The running fleet node's thread; stops it on drop.
pub struct FleetThread {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Drop for FleetThread {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Makes `engine` a member of the fleet `cfg` names: changes go to etcd from now on, and the
/// node applies etcd's desired state (first at once, then from its watch). `bgp`, when set,
/// tells which VIPs this host announces; `api` is the host's TCP API address, if any.
pub fn join(
    cfg: &FleetConfig,
    engine: &Arc<Engine>,
    bgp: Option<&Arc<Fleet>>,
    handle: &Handle,
    api: Option<String>,
) -> anyhow::Result<FleetThread> {
    let store = EtcdStore::new(cfg, handle.clone()).context("setting up the etcd client ([fleet])")?;
    let node = Arc::new(FleetNode::new(
        &cfg.cluster,
        &cfg.host,
        engine.shared_core(),
        Arc::new(store),
        cfg.lease_ttl,
        cfg.dial_timeout,
        api,
        crate::engine::core::system_clock_sync(),
    ));
    if let Some(bgp) = bgp {
        let weak: Weak<Fleet> = Arc::downgrade(bgp);
        node.set_announced(Box::new(move || {
            weak.upgrade()
                .map(|b| b.view().announced.iter().map(|a| a.to_string()).collect())
                .unwrap_or_default()
        }));
    }
    tracing::info!(cluster = %cfg.cluster, host = %cfg.host, endpoints = ?cfg.endpoints, "fleet: desired state shared through etcd");
    engine.join_fleet(node.clone());
    let stop = Arc::new(AtomicBool::new(false));
    let thread = std::thread::Builder::new()
        .name("lb-fleet".into())
        .spawn({
            let stop = stop.clone();
            move || node.run(&stop)
        })
        .context("starting the fleet thread")?;
    Ok(FleetThread { stop, thread: Some(thread) })
}
