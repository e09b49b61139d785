//! The link to one peer: connect, authenticate, send a bulk transfer of this host's current
//! flows, then every `interval` the records queued for the peer (or a PING when there are
//! none). A peer that acknowledges nothing for `peer_timeout` (or fails) is dropped: its queue
//! is emptied and the link starts over, with a new bulk transfer, once the peer answers.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::Duration;

use anyhow::Context;
use lb_common::maps::{FLOW_ESTABLISHED, FlowKey, FlowValue};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use super::FlowSync;
use super::peers::PeerState;
use super::wire::{self, Hello, Kind, MAX_RECORDS_PER_FRAME, WireFlow};

/// Pause between attempts to reach a peer that does not answer.
pub const RETRY_EVERY: Duration = Duration::from_millis(500);

/// Runs the link to `peer` until the peer leaves the peer list or the sync stops.
pub async fn run(sync: Weak<FlowSync>, peer: Arc<PeerState>) {
    loop {
        if !peer.wanted.load(Ordering::Relaxed) {
            return;
        }
        let Some(s) = sync.upgrade() else { return };
        let result = session(&s, &peer).await;
        peer.connected.store(false, Ordering::Relaxed);
        peer.clear();
        if let Err(e) = result {
            let text = format!("{e:#}");
            let first =
                peer.last_error.lock().unwrap_or_else(|e| e.into_inner()).as_deref() != Some(text.as_str());
            if first {
                tracing::warn!(peer = %peer.addr, error = %text, "flow sync: link to peer lost; retrying");
            }
            peer.set_error(Some(text));
        }
        drop(s);
        tokio::time::sleep(RETRY_EVERY).await;
    }
}

async fn session(sync: &FlowSync, peer: &PeerState) -> anyhow::Result<()> {
    let timeout = sync.config().peer_timeout;
    let stream = match tokio::time::timeout(timeout, TcpStream::connect(peer.addr)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            peer.unreachable.store(true, Ordering::Relaxed);
            return Err(e).context("connecting");
        }
        Err(_) => {
            peer.unreachable.store(true, Ordering::Relaxed);
            anyhow::bail!("connecting: no answer within {timeout:?}");
        }
    };
    stream.set_nodelay(true)?;
    let (mut rd, mut wr) = stream.into_split();
    let key = sync.key();
    let hello = Hello::new(&sync.config().listen.to_string())?;
    wr.write_all(&key.client_hello(&hello)).await?;
    let answer = tokio::time::timeout(timeout, wire::read_frame(&mut rd))
        .await
        .context("no hello from the peer in time")?
        .context("reading the peer's hello")?;
    let theirs = match key.check_server_hello(&hello, &answer) {
        Ok(h) => h,
        Err(e) => {
            sync.counters().auth_failures.fetch_add(1, Ordering::Relaxed);
            return Err(e).context("the peer's hello");
        }
    };
    let mut session = key.session(&hello, &theirs, true);
    peer.unreachable.store(false, Ordering::Relaxed);
    peer.set_error(None);
    peer.acked();
    // Records from now on are queued; the bulk transfer covers everything before.
    peer.clear();
    peer.connected.store(true, Ordering::Relaxed);
    peer.connects.fetch_add(1, Ordering::Relaxed);
    tracing::info!(peer = %peer.addr, name = %theirs.name, "flow sync: link to peer up; sending the bulk transfer");

    // ACKs are read beside the writer, with their own copy of the session's inbound state.
    let mut inbound = key.session(&hello, &theirs, true);
    let acks = async {
        loop {
            let f = match wire::read_frame(&mut rd).await {
                Ok(f) => f,
                Err(e) => return format!("reading from the peer: {e}"),
            };
            if let Err(e) = inbound.open(&f) {
                sync.counters().auth_failures.fetch_add(1, Ordering::Relaxed);
                return format!("the peer's frame: {e}");
            }
            if f.kind != Kind::Ack {
                return format!("unexpected {:?} frame from the peer", f.kind);
            }
            peer.acked();
        }
    };
    let bulk = bulk_flows(sync);
    let write_timeout = timeout;
    let sent_bulk = bulk.len() as u64;
    let io = async {
        for chunk in bulk.chunks(MAX_RECORDS_PER_FRAME) {
            send(sync, &mut wr, &mut session, Kind::Flows, &wire::encode_flows(chunk), write_timeout).await?;
        }
        send(sync, &mut wr, &mut session, Kind::BulkDone, &sent_bulk.to_be_bytes(), write_timeout).await?;
        peer.bulk_sent.fetch_add(sent_bulk, Ordering::Relaxed);
        tracing::info!(peer = %peer.addr, flows = sent_bulk, "flow sync: bulk transfer sent");
        let mut tick = tokio::time::interval(sync.config().interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if !peer.wanted.load(Ordering::Relaxed) {
                return Ok(());
            }
            if peer.since_ack_ms() > timeout.as_millis() as u64 {
                peer.timeouts.fetch_add(1, Ordering::Relaxed);
                anyhow::bail!("no acknowledgement for {timeout:?}: peer dropped");
            }
            let mut any = false;
            loop {
                let batch = peer.take(MAX_RECORDS_PER_FRAME);
                if batch.is_empty() {
                    break;
                }
                any = true;
                send(sync, &mut wr, &mut session, Kind::Flows, &wire::encode_flows(&batch), write_timeout)
                    .await?;
                peer.sent.fetch_add(batch.len() as u64, Ordering::Relaxed);
            }
            if !any {
                send(sync, &mut wr, &mut session, Kind::Ping, &[], write_timeout).await?;
            }
        }
    };
    tokio::pin!(io);
    tokio::pin!(acks);
    tokio::select! {
        r = &mut io => r,
        e = &mut acks => {
            peer.timeouts.fetch_add(1, Ordering::Relaxed);
            anyhow::bail!(e)
        }
    }
}

async fn send(
    sync: &FlowSync,
    wr: &mut tokio::net::tcp::OwnedWriteHalf,
    session: &mut wire::Session,
    kind: Kind,
    payload: &[u8],
    timeout: Duration,
) -> anyhow::Result<()> {
    let frame = session.seal(kind, payload);
    tokio::time::timeout(timeout, wr.write_all(&frame))
        .await
        .context("the peer reads nothing (write timed out): peer dropped")?
        .context("writing to the peer")?;
    sync.counters().bytes_sent.fetch_add(frame.len() as u64, Ordering::Relaxed);
    Ok(())
}

/// This host's flows worth sending to a peer that (re)connects: established, not closed, at
/// most `bulk_limit` of them. Synced entries are included, so a joining host also learns the
/// flows of a peer that is gone.
fn bulk_flows(sync: &FlowSync) -> Vec<WireFlow> {
    let view = sync.local_view();
    let limit = sync.config().bulk_limit;
    let mut out = Vec::new();
    let r = sync.flow_reader().for_each(|k: &FlowKey, v: &FlowValue| {
        if out.len() < limit && v.flags & FLOW_ESTABLISHED != 0 && !v.is_closed() {
            if let Some(f) = view.to_wire(k, v) {
                out.push(f);
            }
        }
    });
    if let Err(e) = r {
        tracing::error!(error = %e, "flow sync: reading the flow table for a bulk transfer failed");
    }
    out
}
