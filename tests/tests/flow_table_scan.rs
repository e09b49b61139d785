//! Reading the flow table in batches (`Dataplane::for_each_flow`, which `drain-status`,
//! `--wait-drained` and `/metrics` count with) sees exactly the flows a one-by-one walk sees,
//! across several batches.

use lb_daemon::dataplane::{BATCH, DataplaneOptions};
use lb_tests::{packets::Frame, testbed::*, xdp_run::run};
use std::net::SocketAddr;

#[test]
fn batched_scan_matches_one_by_one_walk() {
    let bed =
        PacketBed::with_options(DataplaneOptions { ring_size: RING, table_slots: 8, flow_entries: 65_536 })
            .unwrap();
    let count = |bed: &PacketBed| {
        let mut seen = Vec::new();
        let n = bed.dp.for_each_flow(|k, v| seen.push((*k, *v))).unwrap();
        assert_eq!(n, seen.len());
        seen
    };
    assert!(count(&bed).is_empty(), "a fresh table is empty");

    // More flows than one batch holds: SYNs from distinct client addresses and ports.
    let vip: SocketAddr = "10.0.0.200:80".parse().unwrap();
    let flows = BATCH as usize * 2 + 123;
    for i in 0..flows {
        let client =
            SocketAddr::from(([10, 1, (i / 250) as u8, (i % 250) as u8 + 1], 40000 + (i % 7) as u16));
        run(bed.dp.program(), &Frame::syn(client, vip).build(), Some(bed.v0)).unwrap();
    }
    let mut batched: Vec<_> = count(&bed).into_iter().map(|(k, v)| (bytes(&k), bytes(&v))).collect();
    let mut walked: Vec<_> =
        bed.dp.flows_one_by_one().into_iter().map(|(k, v)| (bytes(&k), bytes(&v))).collect();
    batched.sort();
    walked.sort();
    assert_eq!(batched.len(), flows);
    assert!(batched == walked, "batched and one-by-one reads differ");
    let mut keys: Vec<_> = batched.iter().map(|(k, _)| k.clone()).collect();
    keys.dedup();
    assert_eq!(keys.len(), flows, "no flow seen twice");
}

/// The bytes of a map key or value (they have no `Ord`).
fn bytes<T: Copy>(t: &T) -> Vec<u8> {
    unsafe { std::slice::from_raw_parts((t as *const T).cast::<u8>(), size_of::<T>()) }.to_vec()
}
