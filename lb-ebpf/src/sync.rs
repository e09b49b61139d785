//! Flow sync: the data plane reports a flow to the daemon when its handshake completes and when
//! it closes, through the `FLOW_EVENTS` ring buffer; the daemon sends the records to the other
//! balancer hosts of the fleet, which keep them in their own `FLOWS`. Only these two transitions
//! are reported (never an ordinary packet of an established flow), so the per-packet cost of
//! established traffic does not change and a SYN flood reports nothing.

use aya_ebpf::bindings::BPF_RB_NO_WAKEUP;
use lb_common::{
    maps::{FlowEvent, FlowKey, FlowValue},
    stats::{Reason, reason_counter},
};

use crate::maps::FLOW_EVENTS;

/// 1 when the daemon syncs flows (`[sync]`); set by the loader (`EbpfLoader::override_global`).
/// Read-only data: the verifier knows its value and removes the reporting when it is 0, so a
/// host without a fleet pays nothing for it.
#[unsafe(no_mangle)]
static FLOW_REPORTS: u32 = 0;

/// Reports `key` with its entry `value`. No wakeup: the daemon drains the ring on its own
/// schedule (a few ms), so no record costs the kernel a wakeup of the reader. A full ring (a
/// daemon not reading) drops the record, counted (`Reason::SyncEventDropped`): forwarding never
/// waits for the sync. Not inlined: three transitions report (new established flow, first ACK,
/// first FIN/RST), and each inlined copy built the record on the stack.
#[inline(never)]
pub fn report(key: &FlowKey, value: &FlowValue) {
    if unsafe { core::ptr::read_volatile(&FLOW_REPORTS) } == 0 {
        return;
    }
    let event = FlowEvent { key: *key, value: *value };
    if FLOW_EVENTS.output(&event, BPF_RB_NO_WAKEUP as u64).is_err() {
        crate::count(reason_counter(Reason::SyncEventDropped), 0);
    }
}
