//! Flow sync in the data plane, through BPF_PROG_TEST_RUN: which packets report their flow to
//! the daemon (`FLOW_EVENTS`: a completed handshake and a close, never an ordinary packet), and
//! how an entry received from a peer (`FLOW_SYNCED`, written by the sync's receiver) forwards:
//! like a local one, across a drain switch too, and never across a hard switch.

use lb_common::maglev::{MaglevBackend, build_table};
use lb_common::maps::{FLOW_ESTABLISHED, FLOW_FIN, FLOW_RST, FLOW_SYNCED, FlowEvent};
use lb_daemon::fleet::sync::local::{LocalView, VipEntry};
use lb_daemon::fleet::sync::receiver::insert_into;
use lb_daemon::fleet::sync::ring::parse_event;
use lb_daemon::fleet::sync::{Counters, wire::WireFlow};
use lb_tests::{
    packets::{ACK, FIN, Frame, PSH, RST, SYN},
    testbed::*,
    xdp_run::{XDP_TX, run},
};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;

fn sa(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

const VIP: &str = "10.0.0.201:80";

/// Every record waiting in the ring.
fn drain(ring: &mut aya::maps::RingBuf<aya::maps::MapData>) -> Vec<FlowEvent> {
    let mut out = Vec::new();
    while let Some(item) = ring.next() {
        out.push(parse_event(&item).expect("a FlowEvent-sized record"));
    }
    out
}

struct Case {
    name: &'static str,
    /// TCP flags of each client packet, in order.
    packets: &'static [u8],
    /// `flags` of each record the packets must report, in order.
    reports: &'static [u8],
}

const CASES: &[Case] = &[
    Case { name: "a SYN alone reports nothing (a flood costs no sync)", packets: &[SYN], reports: &[] },
    Case {
        name: "a new flow: one record at its first ACK",
        packets: &[SYN, ACK],
        reports: &[FLOW_ESTABLISHED],
    },
    Case {
        name: "established packets report nothing more",
        packets: &[SYN, ACK, ACK | PSH, ACK | PSH, ACK],
        reports: &[FLOW_ESTABLISHED],
    },
    Case {
        name: "a close is reported once",
        packets: &[SYN, ACK, ACK | PSH, ACK | FIN, ACK, ACK | FIN],
        reports: &[FLOW_ESTABLISHED, FLOW_ESTABLISHED | FLOW_FIN],
    },
    Case {
        name: "a reset is reported",
        packets: &[SYN, ACK, RST],
        reports: &[FLOW_ESTABLISHED, FLOW_ESTABLISHED | FLOW_RST],
    },
    Case {
        name: "a first ACK without a recorded SYN (flood mode, eviction) is reported",
        packets: &[ACK, ACK | PSH],
        reports: &[FLOW_ESTABLISHED],
    },
];

#[test]
fn flows_are_reported_at_establishment_and_close_only() {
    let mut bed = {
        lb_daemon::dataplane::set_flow_reports(true);
        PacketBed::new().unwrap()
    };
    let mut ring = bed.dp.take_flow_events().expect("FLOW_EVENTS ring");
    let vip = sa(VIP);
    for (i, case) in CASES.iter().enumerate() {
        let client = sa(&format!("{CLIENT_V4}:{}", 42000 + i));
        let backend = bed.expected_backend(2, client, vip);
        for flags in case.packets {
            let frame = Frame::syn(client, vip).with(*flags, b"");
            let out = run(bed.dp.program(), &frame.build(), Some(bed.v0)).unwrap();
            assert_eq!(out.verdict, XDP_TX, "{}: verdict", case.name);
        }
        let events = drain(&mut ring);
        let flags: Vec<u8> = events.iter().map(|e| e.value.flags).collect();
        assert_eq!(flags, case.reports, "{}", case.name);
        for e in &events {
            assert_eq!(e.key, flow_key(client, vip), "{}: the flow's key", case.name);
            assert_eq!((u32::from(e.value.backend), e.value.epoch), (backend, 1), "{}", case.name);
        }
    }
    assert!(bed.dp.take_flow_events().is_none(), "one reader only");
}

/// A ring the daemon does not drain fills up: further reports are dropped, never waited for (the
/// packets are still forwarded), and each one dropped is counted (`sync_event_dropped` in
/// `/metrics`); once drained, reports are written again.
#[test]
fn reports_a_full_ring_cannot_take_are_counted_as_dropped() {
    // One page: room for some 40 records of 96 bytes (record and header).
    let mut bed = {
        lb_daemon::dataplane::set_flow_reports(true);
        lb_daemon::dataplane::set_flow_events_bytes(4096);
        let bed = PacketBed::new().unwrap();
        lb_daemon::dataplane::set_flow_events_bytes(lb_common::maps::FLOW_EVENTS_BYTES);
        bed
    };
    let mut ring = bed.dp.take_flow_events().expect("FLOW_EVENTS ring");
    let dropped = lb_common::stats::reason_counter(lb_common::stats::Reason::SyncEventDropped);
    let vip = sa(VIP);
    let first_ack = |bed: &PacketBed, port: u16| {
        // A first ACK without a SYN records an established flow, and reports it.
        let frame = Frame::syn(sa(&format!("{CLIENT_V4}:{port}")), vip).with(ACK, b"");
        let out = run(bed.dp.program(), &frame.build(), Some(bed.v0)).unwrap();
        assert_eq!(out.verdict, XDP_TX, "forwarded whether or not its report fits");
    };
    let sent = 100u64;
    for port in 0..sent as u16 {
        first_ack(&bed, 30000 + port);
    }
    let written = drain(&mut ring).len() as u64;
    assert!(written > 10 && written < sent, "one page holds some but not all: {written} of {sent}");
    assert_eq!(bed.packets(dropped), sent - written, "every report the ring could not take is counted");
    first_ack(&bed, 31000);
    assert_eq!(drain(&mut ring).len(), 1, "a drained ring takes reports again");
    assert_eq!(bed.packets(dropped), sent - written, "and drops nothing");
}

/// The bed's DSR service as the sync's receiver sees it.
fn view(bed: &PacketBed) -> LocalView {
    let epoch = bed.dp.service(SVC_DSR).unwrap().epoch;
    let backends: HashMap<SocketAddr, u32> =
        bed.backends.iter().filter(|(i, _)| [4, 5, 6, 7].contains(*i)).map(|(i, a)| (*a, *i)).collect();
    LocalView {
        vips: HashMap::from([(
            sa(VIP),
            VipEntry { service: SVC_DSR, vip_index: SVC_DSR, epoch, dsr: true, backends: backends.clone() },
        )]),
        backend_addrs: backends.into_iter().map(|(a, i)| (i, a)).collect(),
    }
}

/// Adds a second pool (backends 6 and 7 in table 6) to the DSR service, for drain switches.
fn add_pool_b(bed: &mut PacketBed) {
    bed.set_backend(6, sa("10.0.0.21:80"), true).unwrap();
    bed.set_backend(7, sa("10.0.0.22:80"), true).unwrap();
    let keys = ["10.0.0.21:80", "10.0.0.22:80"];
    let mb: Vec<MaglevBackend> = keys
        .iter()
        .zip([6, 7])
        .map(|(k, index)| MaglevBackend { key: k.as_bytes(), index, weight: 1 })
        .collect();
    let entries = build_table(&mb, bed.dp.options().ring_size).unwrap();
    bed.dp.write_table(6, &entries).unwrap();
    bed.tables.insert(6, entries);
}

/// A client port whose flow the pool-a table gives to `want`.
fn client_on(bed: &PacketBed, want: u32) -> SocketAddr {
    (43000..44000)
        .map(|p| sa(&format!("{CLIENT_V4}:{p}")))
        .find(|c| bed.expected_backend(2, *c, sa(VIP)) == want)
        .unwrap()
}

fn record(client: SocketAddr, backend: &str, epoch: u32) -> WireFlow {
    WireFlow { key: flow_key(client, sa(VIP)), backend: sa(backend), epoch, flags: FLOW_ESTABLISHED }
}

fn assert_to(bed: &PacketBed, client: SocketAddr, backend: u32, what: &str) {
    let frame = Frame::syn(client, sa(VIP)).with(ACK | PSH, b"moved here");
    let out = run(bed.dp.program(), &frame.build(), Some(bed.v0)).unwrap();
    assert_eq!(out.verdict, XDP_TX, "{what}");
    assert_eq!(out.packet, bed.to_backend(&frame, SVC_DSR, backend).build(), "{what}: to backend {backend}");
}

#[test]
fn a_synced_entry_forwards_like_a_local_one_also_after_a_drain_switch() {
    let mut bed = {
        lb_daemon::dataplane::set_flow_reports(true);
        PacketBed::new().unwrap()
    };
    add_pool_b(&mut bed);
    let mut ring = bed.dp.take_flow_events().unwrap();
    let writer = bed.dp.flow_writer().unwrap();
    let counters = Counters::default();
    // The peer pinned this connection to 10.0.0.12 (index 5) although the hash here says 4:
    // the entry decides.
    let client = client_on(&bed, 4);
    assert_eq!(insert_into(&writer, &view(&bed), &counters, &[record(client, "10.0.0.12:80", 1)]), 1);
    let entry = bed.dp.flow(&flow_key(client, sa(VIP))).unwrap().unwrap();
    assert_eq!((entry.backend, entry.flags), (5, FLOW_ESTABLISHED | FLOW_SYNCED));
    assert_to(&bed, client, 5, "synced entry");
    assert!(drain(&mut ring).is_empty(), "a synced entry's packets are not reported back");
    // Its first packet here makes it this host's own connection (ECMP moved it): drain-status
    // counts it as established here, and the peer's records no longer overwrite it.
    let entry = bed.dp.flow(&flow_key(client, sa(VIP))).unwrap().unwrap();
    assert_eq!((entry.backend, entry.flags), (5, FLOW_ESTABLISHED), "the synced mark is cleared");
    assert_eq!(insert_into(&writer, &view(&bed), &counters, &[record(client, "10.0.0.11:80", 1)]), 0);
    assert_to(&bed, client, 5, "kept after a later peer record");

    // After a drain switch to pool-b a moved connection keeps its pool-a backend...
    bed.switch(SVC_DSR, 6, false).unwrap();
    let late = client_on(&bed, 5);
    assert_ne!(late, client);
    assert_eq!(insert_into(&writer, &view(&bed), &counters, &[record(late, "10.0.0.12:80", 1)]), 1);
    assert_to(&bed, late, 5, "synced after the drain switch");
    // ...while one the peer never reported is re-hashed into pool-b (what sync prevents).
    let unknown = sa(&format!("{CLIENT_V4}:45001"));
    assert_to(&bed, unknown, bed.expected_backend(6, unknown, sa(VIP)), "not synced");

    // A close record updates a synced copy that got no packet here (it then expires like a
    // local closed entry).
    let quiet = sa(&format!("{CLIENT_V4}:46001"));
    assert_eq!(insert_into(&writer, &view(&bed), &counters, &[record(quiet, "10.0.0.12:80", 1)]), 1);
    let closed = WireFlow { flags: FLOW_ESTABLISHED | FLOW_FIN, ..record(quiet, "10.0.0.12:80", 1) };
    insert_into(&writer, &view(&bed), &counters, &[closed]);
    let entry = bed.dp.flow(&flow_key(quiet, sa(VIP))).unwrap().unwrap();
    assert_eq!(entry.flags, FLOW_ESTABLISHED | FLOW_FIN | FLOW_SYNCED);
    assert_eq!(counters.inserted.load(Ordering::Relaxed), 4);
}

#[test]
fn this_hosts_own_entry_wins_and_unknown_records_are_refused() {
    let bed = {
        lb_daemon::dataplane::set_flow_reports(true);
        PacketBed::new().unwrap()
    };
    let writer = bed.dp.flow_writer().unwrap();
    let counters = Counters::default();
    let client = client_on(&bed, 4);
    for flags in [SYN, ACK] {
        run(bed.dp.program(), &Frame::syn(client, sa(VIP)).with(flags, b"").build(), Some(bed.v0)).unwrap();
    }
    let records = [
        record(client, "10.0.0.12:80", 1),            // local entry exists: kept
        record(client_on(&bed, 5), "10.9.9.9:80", 1), // backend not in the service
        WireFlow { key: flow_key(client, sa("10.0.0.250:80")), ..record(client, "10.0.0.12:80", 1) },
        record(client_on(&bed, 5), "10.0.0.12:80", 7), // another epoch
    ];
    assert_eq!(insert_into(&writer, &view(&bed), &counters, &records), 0);
    let c = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
    assert_eq!(
        (
            c(&counters.kept_local),
            c(&counters.refused_unknown_backend),
            c(&counters.refused_unknown_service),
            c(&counters.refused_stale_epoch)
        ),
        (1, 1, 1, 1)
    );
    assert_to(&bed, client, 4, "own entry kept");
}

#[test]
fn a_synced_entry_from_before_a_hard_switch_is_not_trusted() {
    let mut bed = {
        lb_daemon::dataplane::set_flow_reports(true);
        PacketBed::new().unwrap()
    };
    add_pool_b(&mut bed);
    let writer = bed.dp.flow_writer().unwrap();
    let counters = Counters::default();
    let client = client_on(&bed, 5);
    insert_into(&writer, &view(&bed), &counters, &[record(client, "10.0.0.12:80", 1)]);
    // Hard switch here after the record arrived: the entry's epoch is stale, the flow moves.
    bed.switch(SVC_DSR, 6, true).unwrap();
    assert_to(&bed, client, bed.expected_backend(6, client, sa(VIP)), "hard switch since");
    let entry = bed.dp.flow(&flow_key(client, sa(VIP))).unwrap().unwrap();
    assert_eq!(entry.epoch, 2);
    // A record from a peer that has not applied the hard switch (epoch 1) is refused, so it can
    // never bring another flow back onto pool-a.
    let other = client_on(&bed, 4);
    assert_eq!(insert_into(&writer, &view(&bed), &counters, &[record(other, "10.0.0.11:80", 1)]), 0);
    assert_eq!(counters.refused_stale_epoch.load(Ordering::Relaxed), 1);
    assert_to(&bed, other, bed.expected_backend(6, other, sa(VIP)), "refused record");
}
