//! Flood mode, segments that cannot start a connection, and stale entries, through
//! BPF_PROG_TEST_RUN: frame in, verdict and exact frame out, what was recorded, and why.

use lb_common::{
    maps::{FLOW_ESTABLISHED, FLOW_TICK_SHIFT, Settings},
    stats::{Reason, reason_counter},
};
use lb_tests::{
    packets::{ACK, FIN, Frame, PSH, RST, SYN, verify_checksums},
    testbed::*,
    xdp_run::{XDP_DROP, XDP_PASS, XDP_TX, run, verdict_name},
};
use std::net::SocketAddr;

fn sa(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

const NAT_VIP: &str = "10.0.0.200:80";
const DSR_VIP: &str = "10.0.0.201:80";

/// Settings with another flood-mode limit (1: every SYN after the first of the window is in
/// flood mode; 0: the guard is off).
fn with_limit(bed: &mut PacketBed, limit: u32) {
    bed.dp.set_settings(&Settings { new_flow_limit: limit, ..Settings::default() }).unwrap();
}

/// The clock the data plane stamps flows with.
fn coarse_now_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC_COARSE, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Moves a flow's last packet `secs` seconds into the past.
fn age(bed: &mut PacketBed, client: SocketAddr, vip: SocketAddr, secs: u64) {
    let key = flow_key(client, vip);
    let mut flow = bed.dp.flow(&key).unwrap().expect("flow to age");
    flow.last_seen = flow.last_seen.wrapping_sub(((secs * 1_000_000_000) >> FLOW_TICK_SHIFT) as u32);
    bed.dp.set_flow(&key, &flow).unwrap();
}

/// Sends `frame` in on v0 and asserts it went to `backend`, rewritten exactly.
fn assert_to_backend(bed: &PacketBed, frame: &Frame, svc: u32, backend: u32) {
    let out = run(bed.dp.program(), &frame.build(), Some(bed.v0)).unwrap();
    assert_eq!(out.verdict, XDP_TX, "verdict for {frame:?}");
    assert_eq!(out.packet, bed.to_backend(frame, svc, backend).build(), "frame to backend {backend}");
    verify_checksums(&out.packet).unwrap();
}

/// A client port whose flow Maglev sends to different backends on tables `a` and `b`.
fn port_that_moves(bed: &PacketBed, vip: SocketAddr, from: u16, a: u32, b: u32) -> SocketAddr {
    (from..from + 1000)
        .map(|p| sa(&format!("{CLIENT_V4}:{p}")))
        .find(|c| bed.expected_backend(a, *c, vip) != bed.expected_backend(b, *c, vip))
        .expect("some flow maps differently")
}

fn recorded(bed: &PacketBed, client: SocketAddr, vip: SocketAddr) -> bool {
    bed.dp.flow(&flow_key(client, vip)).unwrap().is_some()
}

/// What a fixture expects.
enum Expect {
    /// Dropped, counted under this reason, nothing recorded.
    Dropped(Reason),
    /// Forwarded by the hash to pool-a of the NAT service, counted under this reason, nothing
    /// recorded.
    Stateless(Reason),
    /// Passed to the kernel untouched, counted under this reason.
    Untouched(Reason),
}

#[test]
fn segments_that_cannot_start_or_continue_a_connection_create_no_flow() {
    let bed = PacketBed::new().unwrap();
    let vip = sa(NAT_VIP);
    let fixtures: [(&str, u8, &str, Expect, &str); 9] = [
        (
            "null",
            0,
            NAT_VIP,
            Expect::Dropped(Reason::DropInvalidFlags),
            "no SYN, ACK or RST: no stack sends it",
        ),
        ("fin_only", FIN, NAT_VIP, Expect::Dropped(Reason::DropInvalidFlags), "FIN without ACK: a scan"),
        ("xmas", FIN | PSH | 0x20, NAT_VIP, Expect::Dropped(Reason::DropInvalidFlags), "FIN+PSH+URG: a scan"),
        (
            "syn_fin",
            SYN | FIN,
            NAT_VIP,
            Expect::Dropped(Reason::DropInvalidFlags),
            "opens and closes at once",
        ),
        (
            "syn_rst",
            SYN | RST,
            NAT_VIP,
            Expect::Dropped(Reason::DropInvalidFlags),
            "opens and resets at once",
        ),
        (
            "syn_ack_to_vip",
            SYN | ACK,
            NAT_VIP,
            Expect::Dropped(Reason::DropInvalidFlags),
            "a VIP never opens connections: backscatter or reflection",
        ),
        (
            "rst_without_flow",
            RST,
            NAT_VIP,
            Expect::Stateless(Reason::StatelessRst),
            "may close a connection the hash still finds; cannot start one",
        ),
        (
            "rst_ack_without_flow",
            RST | ACK,
            NAT_VIP,
            Expect::Stateless(Reason::StatelessRst),
            "as a bare RST",
        ),
        (
            "null_to_host",
            0,
            "10.0.0.1:22",
            Expect::Untouched(Reason::PassNotVip),
            "not a VIP: not ours to judge",
        ),
    ];
    let mut failures = Vec::new();
    for (i, (name, flags, dst, expect, why)) in fixtures.into_iter().enumerate() {
        let client = sa(&format!("{CLIENT_V4}:{}", 45000 + i));
        let frame = Frame::syn(client, sa(dst)).with(flags, b"");
        let reason = match expect {
            Expect::Dropped(r) | Expect::Stateless(r) | Expect::Untouched(r) => r,
        };
        let before = bed.packets(reason_counter(reason));
        let out = run(bed.dp.program(), &frame.build(), Some(bed.v0)).unwrap();
        let (verdict, want) = match expect {
            Expect::Dropped(_) => (XDP_DROP, frame.build()),
            Expect::Stateless(_) => {
                (XDP_TX, bed.to_backend(&frame, SVC_NAT, bed.expected_backend(0, client, vip)).build())
            }
            Expect::Untouched(_) => (XDP_PASS, frame.build()),
        };
        if out.verdict != verdict || out.packet != want {
            failures.push(format!(
                "{name} ({why}): verdict {} frame {:02x?}",
                verdict_name(out.verdict),
                out.packet
            ));
        }
        if bed.packets(reason_counter(reason)) != before + 1 {
            failures.push(format!("{name}: not counted as {}", reason.name()));
        }
        if recorded(&bed, client, sa(dst)) {
            failures.push(format!("{name}: a flow was recorded"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn flood_mode_forwards_syns_by_the_hash_without_recording_them() {
    let mut bed = PacketBed::new().unwrap();
    with_limit(&mut bed, 1);
    for (svc, vip, table, base) in [(SVC_NAT, sa(NAT_VIP), 0, 46000), (SVC_DSR, sa(DSR_VIP), 2, 46100)] {
        let first = sa(&format!("{CLIENT_V4}:{base}"));
        assert_to_backend(&bed, &Frame::syn(first, vip), svc, bed.expected_backend(table, first, vip));
        let before = bed.packets(reason_counter(Reason::FloodNotRecorded));
        for p in 1..=20 {
            let client = sa(&format!("{CLIENT_V4}:{}", base + p));
            assert_to_backend(&bed, &Frame::syn(client, vip), svc, bed.expected_backend(table, client, vip));
            assert!(!recorded(&bed, client, vip), "flood mode: SYN {p} not in FLOWS");
        }
        assert_eq!(bed.packets(reason_counter(Reason::FloodNotRecorded)), before + 20);
    }
    assert!(bed.dp.cpus_in_flood(coarse_now_ns()).unwrap() >= 1, "lb_flood_mode reads the guard");

    // NAT: the backend's SYN-ACK of an unrecorded SYN still goes back to the client from the VIP.
    let client = sa(&format!("{CLIENT_V4}:46001"));
    let backend = bed.backends[&bed.expected_backend(0, client, sa(NAT_VIP))];
    let synack = Frame { src_mac: backend_mac(backend.ip()), dst_mac: LB_MAC, ..Frame::syn(backend, client) }
        .with(SYN | ACK, b"");
    let out = run(bed.dp.program(), &synack.build(), Some(bed.v0)).unwrap();
    assert_eq!((out.verdict, out.packet), (XDP_TX, bed.reply_to_client(&synack, SVC_NAT).build()));
}

#[test]
fn flood_mode_off_records_every_syn() {
    let mut bed = PacketBed::new().unwrap();
    with_limit(&mut bed, 0);
    let vip = sa(NAT_VIP);
    for p in 0..20 {
        let client = sa(&format!("{CLIENT_V4}:{}", 47000 + p));
        assert_to_backend(&bed, &Frame::syn(client, vip), SVC_NAT, bed.expected_backend(0, client, vip));
        assert!(recorded(&bed, client, vip), "SYN {p} recorded");
    }
    assert_eq!(bed.packets(reason_counter(Reason::FloodNotRecorded)), 0);
    assert_eq!(bed.dp.cpus_in_flood(coarse_now_ns()).unwrap(), 0);
}

#[test]
fn syn_retransmit_in_flood_mode_follows_the_hash_without_a_lookup() {
    let mut bed = PacketBed::new().unwrap();
    let vip = sa(NAT_VIP);
    // Recorded before flood mode engages.
    let client = port_that_moves(&bed, vip, 48000, 0, 1);
    let on_a = bed.expected_backend(0, client, vip);
    with_limit(&mut bed, 1);
    assert_to_backend(&bed, &Frame::syn(client, vip), SVC_NAT, on_a);
    assert!(recorded(&bed, client, vip));
    // In flood mode a SYN is not looked up (a lookup of a new 5-tuple is most of the cost):
    // its retransmit goes by the hash, which is where its entry points while no switch happens.
    let flood_before = bed.packets(reason_counter(Reason::FloodNotRecorded));
    assert_to_backend(&bed, &Frame::syn(client, vip), SVC_NAT, on_a);
    assert_eq!(bed.packets(reason_counter(Reason::FloodNotRecorded)), flood_before + 1);
    // Retransmitted again (the SYN-ACK is lost twice): the half-open entry is found, not rewritten,
    // and the SYN-ACK still finds its way back.
    assert_to_backend(&bed, &Frame::syn(client, vip), SVC_NAT, on_a);
    let backend = bed.backends[&on_a];
    let synack = Frame { src_mac: backend_mac(backend.ip()), dst_mac: LB_MAC, ..Frame::syn(backend, client) }
        .with(SYN | ACK, b"");
    let out = run(bed.dp.program(), &synack.build(), Some(bed.v0)).unwrap();
    assert_eq!((out.verdict, out.packet), (XDP_TX, bed.reply_to_client(&synack, SVC_NAT).build()));
    // NAT: a retransmit that crosses a drain switch keeps the backend of its half-open entry,
    // as its ACK keeps the one of its flow entry.
    bed.switch(SVC_NAT, 1, false).unwrap();
    assert_to_backend(&bed, &Frame::syn(client, vip), SVC_NAT, on_a);
    assert_to_backend(&bed, &Frame::syn(client, vip).with(ACK, b""), SVC_NAT, on_a);

    // DSR keeps nothing in flood mode. The window: a retransmit that crosses a drain switch
    // follows the new table, while the entry recorded before flood mode (and so the ACK) still
    // names the old backend.
    let vip = sa(DSR_VIP);
    with_limit(&mut bed, 0);
    let client = sa(&format!("{CLIENT_V4}:48500"));
    let first = bed.expected_backend(2, client, vip);
    let other = if first == 4 { 5 } else { 4 };
    bed.dp.write_table(6, &vec![other; RING as usize]).unwrap();
    bed.tables.insert(6, vec![other; RING as usize]);
    assert_to_backend(&bed, &Frame::syn(client, vip), SVC_DSR, first);
    with_limit(&mut bed, 1);
    let engage = sa(&format!("{CLIENT_V4}:48501"));
    run(bed.dp.program(), &Frame::syn(engage, vip).build(), Some(bed.v0)).unwrap();
    bed.switch(SVC_DSR, 6, false).unwrap();
    assert_to_backend(&bed, &Frame::syn(client, vip), SVC_DSR, other);
    assert_to_backend(&bed, &Frame::syn(client, vip).with(ACK, b""), SVC_DSR, first);
}

#[test]
fn first_ack_without_a_recorded_syn_is_recorded_where_its_syn_went() {
    let mut bed = PacketBed::new().unwrap();
    with_limit(&mut bed, 1);
    let vip = sa(NAT_VIP);
    let engage = sa(&format!("{CLIENT_V4}:49999"));
    assert_to_backend(&bed, &Frame::syn(engage, vip), SVC_NAT, bed.expected_backend(0, engage, vip));
    let client = port_that_moves(&bed, vip, 49000, 0, 1);
    let on_a = bed.expected_backend(0, client, vip);
    assert_to_backend(&bed, &Frame::syn(client, vip), SVC_NAT, on_a);
    assert!(!recorded(&bed, client, vip));
    // NAT keeps the half-open flow beside the flow table: a switch between the SYN and the first
    // ACK does not move the connection.
    bed.switch(SVC_NAT, 1, false).unwrap();
    // An ACK before the backend's SYN-ACK went through (a spoofer's SYN + ACK pair) goes where the
    // SYN went but is not recorded: in flood mode only an ACK of the SYN-ACK records the flow.
    assert_to_backend(&bed, &Frame::syn(client, vip).with(ACK, b""), SVC_NAT, on_a);
    assert!(!recorded(&bed, client, vip), "an ACK acknowledging no SYN-ACK records nothing");
    // The SYN-ACK (seq 7776: the test frames' ACKs acknowledge 7777) goes back to the client.
    let backend = bed.backends[&on_a];
    let synack = Frame {
        src_mac: backend_mac(backend.ip()),
        dst_mac: LB_MAC,
        seq: 7776,
        ..Frame::syn(backend, client)
    }
    .with(SYN | ACK, b"");
    let out = run(bed.dp.program(), &synack.build(), Some(bed.v0)).unwrap();
    assert_eq!((out.verdict, out.packet), (XDP_TX, bed.reply_to_client(&synack, SVC_NAT).build()));
    assert_to_backend(&bed, &Frame::syn(client, vip).with(ACK, b""), SVC_NAT, on_a);
    let flow = bed.dp.flow(&flow_key(client, vip)).unwrap().expect("recorded on the first ACK");
    assert_eq!((u32::from(flow.backend), flow.flags & FLOW_ESTABLISHED), (on_a, FLOW_ESTABLISHED));
    assert_to_backend(&bed, &Frame::syn(client, vip).with(ACK | PSH, b"data"), SVC_NAT, on_a);

    // A bare ACK with no entry anywhere (evicted, or another host's connection) goes by the hash
    // of the active table; in flood mode it is not recorded (a spoofed ACK flood must not evict
    // established flows), out of it it is.
    let stranger = sa(&format!("{CLIENT_V4}:49998"));
    let ack = Frame::syn(stranger, vip).with(ACK, b"");
    let flood_before = bed.packets(reason_counter(Reason::FloodNotRecorded));
    assert_to_backend(&bed, &ack, SVC_NAT, bed.expected_backend(1, stranger, vip));
    assert!(!recorded(&bed, stranger, vip), "flood mode: an ACK without a handshake records nothing");
    assert_eq!(bed.packets(reason_counter(Reason::FloodNotRecorded)), flood_before + 1);
    with_limit(&mut bed, 0);
    assert_to_backend(&bed, &ack, SVC_NAT, bed.expected_backend(1, stranger, vip));
    assert!(recorded(&bed, stranger, vip), "out of flood mode the ACK is recorded");
}

#[test]
fn a_spoofed_ack_flood_engages_flood_mode_and_evicts_nothing() {
    let mut bed = PacketBed::new().unwrap();
    let vip = sa(NAT_VIP);
    with_limit(&mut bed, 5);
    // ACKs without a flow count in the rate guard like SYNs: the first 5 of the window are
    // recorded (connections whose entry was evicted), then flood mode engages.
    let flood_before = bed.packets(reason_counter(Reason::FloodNotRecorded));
    let mut recorded_acks = 0;
    for p in 0..40 {
        let client = sa(&format!("{CLIENT_V4}:{}", 51000 + p));
        assert_to_backend(
            &bed,
            &Frame::syn(client, vip).with(ACK, b""),
            SVC_NAT,
            bed.expected_backend(0, client, vip),
        );
        recorded_acks += recorded(&bed, client, vip) as u32;
    }
    // The guard is per CPU and test_run runs on whichever CPU the test thread is on.
    let cpus = std::thread::available_parallelism().map(|n| n.get() as u32).unwrap_or(1);
    assert!(recorded_acks <= 5 * cpus, "{recorded_acks} spoofed ACKs recorded ({cpus} CPUs)");
    assert_eq!(
        bed.packets(reason_counter(Reason::FloodNotRecorded)),
        flood_before + u64::from(40 - recorded_acks),
        "every ACK not recorded is counted"
    );
    assert!(bed.dp.cpus_in_flood(coarse_now_ns()).unwrap() >= 1, "the ACK flood engaged flood mode");

    // DSR: the SYN-ACK does not pass the balancer, so a handshake of `HALF_OPEN` is completed by
    // any ACK of its 5-tuple (a spoofer must send SYN and ACK to record one flow).
    let vip = sa(DSR_VIP);
    let client = sa(&format!("{CLIENT_V4}:51500"));
    assert_to_backend(&bed, &Frame::syn(client, vip), SVC_DSR, bed.expected_backend(2, client, vip));
    assert!(!recorded(&bed, client, vip));
    assert_to_backend(
        &bed,
        &Frame::syn(client, vip).with(ACK, b""),
        SVC_DSR,
        bed.expected_backend(2, client, vip),
    );
    assert!(recorded(&bed, client, vip), "DSR: the first ACK of a half-open handshake is recorded");
}

#[test]
fn switch_between_syn_and_ack() {
    // Outside flood mode the SYN is recorded: the ACK after a switch keeps the SYN's backend.
    let mut bed = PacketBed::new().unwrap();
    let vip = sa(DSR_VIP);
    let (x, y) = (4u32, 5u32);
    // Table 6 sends everything to the backend table 2 does not pick for this client.
    let client = sa(&format!("{CLIENT_V4}:50001"));
    let first = bed.expected_backend(2, client, vip);
    let other = if first == x { y } else { x };
    bed.dp.write_table(6, &vec![other; RING as usize]).unwrap();
    bed.tables.insert(6, vec![other; RING as usize]);
    assert_to_backend(&bed, &Frame::syn(client, vip), SVC_DSR, first);
    bed.switch(SVC_DSR, 6, false).unwrap();
    assert_to_backend(&bed, &Frame::syn(client, vip).with(ACK, b""), SVC_DSR, first);

    // Flood mode, DSR: the SYN is not recorded in `FLOWS` but kept in `HALF_OPEN`, so an ACK that
    // crosses a switch keeps the SYN's backend too (unless a flood overwrote its slot within
    // that round trip: the window README describes; an ACK without a half-open entry follows the
    // active table, see `first_ack_without_a_recorded_syn_is_recorded_where_its_syn_went`).
    bed.switch(SVC_DSR, 2, false).unwrap();
    with_limit(&mut bed, 1);
    let engage = sa(&format!("{CLIENT_V4}:50999"));
    run(bed.dp.program(), &Frame::syn(engage, vip).build(), Some(bed.v0)).unwrap();
    let client = sa(&format!("{CLIENT_V4}:50002"));
    let first = bed.expected_backend(2, client, vip);
    let other = if first == x { y } else { x };
    bed.dp.write_table(7, &vec![other; RING as usize]).unwrap();
    bed.tables.insert(7, vec![other; RING as usize]);
    assert_to_backend(&bed, &Frame::syn(client, vip), SVC_DSR, first);
    assert!(!recorded(&bed, client, vip));
    bed.switch(SVC_DSR, 7, false).unwrap();
    assert_to_backend(&bed, &Frame::syn(client, vip).with(ACK, b""), SVC_DSR, first);
    assert!(recorded(&bed, client, vip));
}

#[test]
fn closed_entries_expire_after_the_closed_timeout() {
    let mut bed = PacketBed::new().unwrap();
    let vip = sa(NAT_VIP);
    let client = port_that_moves(&bed, vip, 51000, 0, 1);
    let on_a = bed.expected_backend(0, client, vip);
    assert_to_backend(&bed, &Frame::syn(client, vip), SVC_NAT, on_a);
    assert_to_backend(&bed, &Frame::syn(client, vip).with(ACK, b""), SVC_NAT, on_a);
    assert_to_backend(&bed, &Frame::syn(client, vip).with(FIN | ACK, b""), SVC_NAT, on_a);
    bed.switch(SVC_NAT, 1, false).unwrap();
    // The closing handshake and its retransmissions still reach the backend that has it...
    age(&mut bed, client, vip, 3);
    assert_to_backend(&bed, &Frame::syn(client, vip).with(ACK, b""), SVC_NAT, on_a);
    assert_eq!(bed.packets(reason_counter(Reason::FlowExpired)), 0);
    // ...but past the timeout (5 s) the entry no longer decides: a later connection on the same
    // 5-tuple, here one that arrives mid-stream from another balancer host, follows the table.
    age(&mut bed, client, vip, 6);
    let on_b = bed.expected_backend(1, client, vip);
    assert_to_backend(&bed, &Frame::syn(client, vip).with(ACK | PSH, b"moved host"), SVC_NAT, on_b);
    assert_eq!(bed.packets(reason_counter(Reason::FlowExpired)), 1);
    let flow = bed.dp.flow(&flow_key(client, vip)).unwrap().unwrap();
    assert_eq!((u32::from(flow.backend), flow.flags), (on_b, FLOW_ESTABLISHED), "re-recorded, open");
}

#[test]
fn never_established_entries_expire_after_the_handshake_timeout() {
    let mut bed = PacketBed::new().unwrap();
    let vip = sa(NAT_VIP);
    let client = port_that_moves(&bed, vip, 52000, 0, 1);
    let on_a = bed.expected_backend(0, client, vip);
    // A SYN whose handshake never completes (the SYN-ACK was lost, the client gave up).
    assert_to_backend(&bed, &Frame::syn(client, vip), SVC_NAT, on_a);
    bed.switch(SVC_NAT, 1, false).unwrap();
    age(&mut bed, client, vip, 3);
    assert_to_backend(&bed, &Frame::syn(client, vip), SVC_NAT, on_a); // a retransmit, in time
    age(&mut bed, client, vip, 6);
    // The client reconnects from the same port after the switch: pool-b answers.
    assert_to_backend(&bed, &Frame::syn(client, vip), SVC_NAT, bed.expected_backend(1, client, vip));
    assert_eq!(bed.packets(reason_counter(Reason::FlowExpired)), 1);
}

#[test]
fn idle_established_entries_do_not_expire() {
    let mut bed = PacketBed::new().unwrap();
    let vip = sa(NAT_VIP);
    let client = port_that_moves(&bed, vip, 53000, 0, 1);
    let on_a = bed.expected_backend(0, client, vip);
    assert_to_backend(&bed, &Frame::syn(client, vip), SVC_NAT, on_a);
    assert_to_backend(&bed, &Frame::syn(client, vip).with(ACK, b""), SVC_NAT, on_a);
    bed.switch(SVC_NAT, 1, false).unwrap();
    age(&mut bed, client, vip, 3600);
    assert_to_backend(&bed, &Frame::syn(client, vip).with(ACK | PSH, b"an hour later"), SVC_NAT, on_a);
    assert_eq!(bed.packets(reason_counter(Reason::FlowExpired)), 0);
}
