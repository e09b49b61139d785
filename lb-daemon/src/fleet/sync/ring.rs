//! Reads the data plane's `FLOW_EVENTS` ring buffer and queues each flow for every peer. The
//! XDP program writes records without waking anyone (no per-flow wakeup cost), so this thread
//! drains the ring every [`POLL_EVERY`]: the added delay is small beside the send interval.

use std::sync::Weak;
use std::sync::atomic::Ordering;
use std::time::Duration;

use aya::maps::{MapData, RingBuf};
use lb_common::maps::FlowEvent;

use super::FlowSync;

/// How often the ring is drained.
pub const POLL_EVERY: Duration = Duration::from_millis(5);

/// The record in a ring item, if it has the size of one.
pub fn parse_event(bytes: &[u8]) -> Option<FlowEvent> {
    if bytes.len() != size_of::<FlowEvent>() {
        return None;
    }
    // SAFETY: `FlowEvent` is plain data (`Pod`): any bytes of its size are a valid value, and
    // `read_unaligned` copies them whatever their alignment.
    Some(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<FlowEvent>()) })
}

/// Starts the reader thread; it ends when the sync is dropped.
pub fn spawn(sync: Weak<FlowSync>, mut ring: RingBuf<MapData>) {
    let spawned = std::thread::Builder::new().name("lb-sync-ring".into()).spawn(move || {
        loop {
            let Some(sync) = sync.upgrade() else { return };
            drain(&sync, &mut ring);
            drop(sync);
            std::thread::sleep(POLL_EVERY);
        }
    });
    if let Err(e) = spawned {
        tracing::error!(error = %e, "flow sync: cannot start the ring reader; no flow is reported");
    }
}

/// Queues every record in the ring; returns how many.
pub fn drain(sync: &FlowSync, ring: &mut RingBuf<MapData>) -> usize {
    let view = sync.local_view();
    let mut n = 0;
    while let Some(item) = ring.next() {
        n += 1;
        let Some(event) = parse_event(&item) else { continue };
        drop(item);
        match view.to_wire(&event.key, &event.value) {
            Some(flow) => sync.fan_out(flow),
            None => {
                sync.counters().unreported.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
    sync.counters().reported.fetch_add(n as u64, Ordering::Relaxed);
    n
}
