//! Accepts the peers' links and keeps what they send: each record is mapped to this host's
//! indexes ([`super::local`]), refused and counted when its service or backend is unknown here
//! or its epoch differs, left out when this host has its own entry for the 5-tuple, and the
//! rest is written into `FLOWS` with one batch update per frame. Every frame is acknowledged,
//! which is how the sender knows this host is alive.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};

use anyhow::Context;
use lb_common::maps::{FlowKey, FlowValue};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};

use super::local::{LocalView, Refusal, may_replace};
use super::wire::{self, Hello, Kind, WireFlow};
use super::{Counters, FlowSync};
use crate::dataplane::FlowWriter;
use crate::dataplane::maps::monotonic_coarse_ns;

/// Accepts links until the sync stops.
pub async fn serve(sync: Weak<FlowSync>, listener: TcpListener) {
    loop {
        let accepted = listener.accept().await;
        let Some(s) = sync.upgrade() else { return };
        match accepted {
            Ok((stream, from)) => {
                let weak = sync.clone();
                tokio::spawn(async move {
                    let Some(s) = weak.upgrade() else { return };
                    if let Err(e) = connection(&s, stream, from).await {
                        tracing::warn!(%from, error = %format!("{e:#}"), "flow sync: link from peer closed");
                    }
                });
            }
            Err(e) => {
                tracing::warn!(error = %e, "flow sync: accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        }
        drop(s);
    }
}

async fn connection(sync: &Arc<FlowSync>, stream: TcpStream, from: SocketAddr) -> anyhow::Result<()> {
    let Some(peer) = sync.peer_by_ip(from.ip()) else {
        sync.counters().unknown_peers.fetch_add(1, Ordering::Relaxed);
        anyhow::bail!("{from} is not a peer of this host");
    };
    stream.set_nodelay(true)?;
    let timeout = sync.config().peer_timeout;
    let (mut rd, mut wr) = stream.into_split();
    let key = sync.key();
    let first =
        tokio::time::timeout(timeout, wire::read_frame(&mut rd)).await.context("no hello in time")??;
    let theirs = key.check_client_hello(&first).inspect_err(|_| {
        sync.counters().auth_failures.fetch_add(1, Ordering::Relaxed);
    })?;
    let ours = Hello::new(&sync.config().listen.to_string())?;
    wr.write_all(&key.server_hello(&theirs, &ours)).await?;
    let mut session = key.session(&theirs, &ours, false);
    tracing::info!(peer = %peer.addr, %from, "flow sync: link from peer up");
    let mut bulk = 0u64;
    loop {
        // The sender writes at least a PING every interval; silence means it is gone.
        let f = tokio::time::timeout(timeout, wire::read_frame(&mut rd))
            .await
            .context("the peer sent nothing within peer_timeout")??;
        if let Err(e) = session.open(&f) {
            sync.counters().auth_failures.fetch_add(1, Ordering::Relaxed);
            return Err(e).context("a frame from the peer");
        }
        match f.kind {
            Kind::Flows => {
                let flows = wire::decode_flows(&f.payload)?;
                if !peer.bulk_received.load(Ordering::Relaxed) {
                    bulk += flows.len() as u64;
                }
                let s = sync.clone();
                tokio::task::spawn_blocking(move || insert(&s, &flows)).await?;
            }
            Kind::BulkDone => {
                let n = wire::u64_payload(&f.payload)?;
                sync.counters().bulk_received.fetch_add(bulk, Ordering::Relaxed);
                // Logged before the flag is set: the flag makes the host ready to announce, so
                // in the log this line always comes before the announcement it allows.
                if !peer.bulk_received.load(Ordering::SeqCst) {
                    tracing::info!(peer = %peer.addr, flows = n, "flow sync: bulk transfer from peer received");
                    peer.bulk_received.store(true, Ordering::SeqCst);
                }
            }
            Kind::Ping => {}
            Kind::Hello | Kind::Ack => anyhow::bail!("unexpected {:?} frame", f.kind),
        }
        wr.write_all(&session.seal(Kind::Ack, &f.seq.to_be_bytes())).await?;
    }
}

/// Keeps what may be kept of `flows` (see the module documentation); returns how many were
/// written.
pub fn insert(sync: &FlowSync, flows: &[WireFlow]) -> usize {
    insert_into(sync.flow_writer(), &sync.local_view(), sync.counters(), flows)
}

/// [`insert`] with its parts: the `FLOWS` writer, the local view, the counters to update.
pub fn insert_into(writer: &FlowWriter, view: &LocalView, c: &Counters, flows: &[WireFlow]) -> usize {
    c.received.fetch_add(flows.len() as u64, Ordering::Relaxed);
    let now = monotonic_coarse_ns();
    let mut keys: Vec<FlowKey> = Vec::with_capacity(flows.len());
    let mut values: Vec<FlowValue> = Vec::with_capacity(flows.len());
    for f in flows {
        let value = match view.to_local(f, now) {
            Ok(v) => v,
            Err(r) => {
                match r {
                    Refusal::UnknownService => &c.refused_unknown_service,
                    Refusal::UnknownBackend => &c.refused_unknown_backend,
                    Refusal::StaleEpoch => &c.refused_stale_epoch,
                }
                .fetch_add(1, Ordering::Relaxed);
                continue;
            }
        };
        match writer.get(&f.key) {
            Ok(existing) if !may_replace(existing.as_ref()) => {
                c.kept_local.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(error = %e, "flow sync: flow lookup failed");
                c.insert_errors.fetch_add(1, Ordering::Relaxed);
                continue;
            }
        }
        keys.push(f.key);
        values.push(value);
    }
    match writer.update_batch(&keys, &values) {
        Ok(n) => {
            c.inserted.fetch_add(n as u64, Ordering::Relaxed);
            n
        }
        Err((n, e)) => {
            c.inserted.fetch_add(n as u64, Ordering::Relaxed);
            c.insert_errors.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(error = %e, written = n, of = keys.len(), "flow sync: batch insert failed");
            n
        }
    }
}
