//! Flow state through BPF_PROG_TEST_RUN: established flows keep their backend, drain and hard
//! switches, the NAT reply direction, backends going down, and the counters.

use lb_common::{
    maps::{FLOW_FIN, FLOW_RST, NO_BACKEND},
    stats::{Reason, backend_counter, backend_new_flow_counter, reason_counter, vip_counter},
};
use lb_tests::{
    packets::{ACK, FIN, Frame, PSH, RST, verify_checksums},
    testbed::*,
    xdp_run::{XDP_DROP, XDP_PASS, XDP_REDIRECT, XDP_TX, run},
};
use std::net::SocketAddr;

fn sa(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

/// Sends `frame` in on v0 and asserts it went to `backend`, rewritten exactly.
fn assert_to_backend(bed: &PacketBed, frame: &Frame, svc: u32, backend: u32) {
    let out = run(bed.dp.program(), &frame.build(), Some(bed.v0)).unwrap();
    let want = bed.to_backend(frame, svc, backend).build();
    assert_eq!(out.verdict, XDP_TX, "verdict for {frame:?}");
    assert_eq!(out.packet, want, "frame to backend {backend}");
    verify_checksums(&out.packet).unwrap();
}

/// A client port whose flow Maglev sends to different backends on tables `a` and `b`, so that
/// a switch is observable.
fn port_that_moves(bed: &PacketBed, vip: SocketAddr, client: &str, a: u32, b: u32) -> SocketAddr {
    (40000..41000)
        .map(|p| sa(&format!("{client}:{p}")))
        .find(|c| bed.expected_backend(a, *c, vip) != bed.expected_backend(b, *c, vip))
        .expect("some flow maps differently")
}

#[test]
fn established_flow_keeps_its_backend_across_a_drain_switch() {
    let mut bed = PacketBed::new().unwrap();
    let vip = sa("10.0.0.200:80");
    let client = port_that_moves(&bed, vip, CLIENT_V4, 0, 1);
    let on_a = bed.expected_backend(0, client, vip);
    let syn = Frame::syn(client, vip);
    assert_to_backend(&bed, &syn, SVC_NAT, on_a);
    let flow = bed.dp.flow(&flow_key(client, vip)).unwrap().expect("flow recorded");
    assert_eq!((u32::from(flow.backend), u32::from(flow.service), flow.epoch), (on_a, SVC_NAT, 1));

    bed.switch(SVC_NAT, 1, false).unwrap();
    // The established flow stays on pool-a...
    assert_to_backend(&bed, &syn.clone().with(ACK | PSH, b"still here"), SVC_NAT, on_a);
    // ...while a new flow lands on pool-b.
    let newcomer = sa("10.0.0.100:50000");
    assert_to_backend(&bed, &Frame::syn(newcomer, vip), SVC_NAT, bed.expected_backend(1, newcomer, vip));
    assert!([2, 3].contains(&bed.expected_backend(1, newcomer, vip)));

    // Rollback (a drain switch back): the newcomer keeps its pool-b backend, new flows use pool-a.
    bed.switch(SVC_NAT, 0, false).unwrap();
    assert_to_backend(
        &bed,
        &Frame::syn(newcomer, vip).with(ACK, b""),
        SVC_NAT,
        bed.expected_backend(1, newcomer, vip),
    );
    let third = sa("10.0.0.100:50001");
    assert_to_backend(&bed, &Frame::syn(third, vip), SVC_NAT, bed.expected_backend(0, third, vip));
}

#[test]
fn retransmitted_syn_keeps_its_backend_across_a_switch() {
    let mut bed = PacketBed::new().unwrap();
    let vip = sa("10.0.0.200:80");
    let client = port_that_moves(&bed, vip, CLIENT_V4, 0, 1);
    let on_a = bed.expected_backend(0, client, vip);
    assert_to_backend(&bed, &Frame::syn(client, vip), SVC_NAT, on_a);
    bed.switch(SVC_NAT, 1, false).unwrap();
    let new_flows = bed.packets(reason_counter(Reason::NewFlow));
    assert_to_backend(&bed, &Frame::syn(client, vip), SVC_NAT, on_a);
    assert_eq!(bed.packets(reason_counter(Reason::NewFlow)), new_flows, "not counted as a new flow");
}

#[test]
fn hard_switch_moves_established_flows() {
    let mut bed = PacketBed::new().unwrap();
    let vip = sa("10.0.0.200:80");
    let client = port_that_moves(&bed, vip, CLIENT_V4, 0, 1);
    let syn = Frame::syn(client, vip);
    assert_to_backend(&bed, &syn, SVC_NAT, bed.expected_backend(0, client, vip));
    let moved_before = bed.packets(reason_counter(Reason::FlowRebalanced));

    bed.switch(SVC_NAT, 1, true).unwrap();
    let on_b = bed.expected_backend(1, client, vip);
    assert_to_backend(&bed, &syn.clone().with(ACK, b"after the cut"), SVC_NAT, on_b);
    assert_eq!(bed.packets(reason_counter(Reason::FlowRebalanced)), moved_before + 1);
    let flow = bed.dp.flow(&flow_key(client, vip)).unwrap().unwrap();
    assert_eq!((u32::from(flow.backend), flow.epoch), (on_b, 2), "flow re-recorded under the new epoch");
    // The next packet is a plain established hit again.
    assert_to_backend(&bed, &syn.with(ACK, b"again"), SVC_NAT, on_b);
    assert_eq!(bed.packets(reason_counter(Reason::FlowRebalanced)), moved_before + 1);
}

#[test]
fn ipv6_flow_follows_drain_and_hard_switches() {
    let mut bed = PacketBed::new().unwrap();
    let vip = sa("[fd00::200]:80");
    let client = (40000..41000)
        .map(|p| sa(&format!("[{CLIENT_V6}]:{p}")))
        .find(|c| bed.expected_backend(3, *c, vip) != bed.expected_backend(4, *c, vip))
        .unwrap();
    let syn = Frame::syn(client, vip);
    let on_a = bed.expected_backend(3, client, vip);
    assert_to_backend(&bed, &syn, SVC_NAT6, on_a);
    bed.switch(SVC_NAT6, 4, false).unwrap();
    assert_to_backend(&bed, &syn.clone().with(ACK, b"x"), SVC_NAT6, on_a);
    bed.switch(SVC_NAT6, 4, true).unwrap();
    assert_to_backend(&bed, &syn.with(ACK, b"y"), SVC_NAT6, bed.expected_backend(4, client, vip));
}

#[test]
fn nat_reply_is_rewritten_back_to_the_vip() {
    let bed = PacketBed::new().unwrap();
    for (svc, vip, client) in [
        (SVC_NAT, sa("10.0.0.200:80"), sa("10.0.0.100:40123")),
        (SVC_NAT6, sa("[fd00::200]:80"), sa("[fd00::100]:40123")),
    ] {
        let table = bed.services[&svc].pool_tables[0];
        let backend = bed.expected_backend(table, client, vip);
        assert_to_backend(&bed, &Frame::syn(client, vip), svc, backend);
        let backend_addr = bed.backends[&backend];
        let reply = Frame {
            src_mac: backend_mac(backend_addr.ip()),
            dst_mac: LB_MAC,
            ..Frame::syn(backend_addr, client)
        }
        .with(0x12, b""); // SYN+ACK
        let before = bed.packets(reason_counter(Reason::FwdReply));
        let out = run(bed.dp.program(), &reply.build(), Some(bed.v0)).unwrap();
        assert_eq!(out.verdict, XDP_TX, "the client's frames came in on v0, so the reply leaves there");
        assert_eq!(out.packet, bed.reply_to_client(&reply, svc).build(), "reply from {backend_addr}");
        verify_checksums(&out.packet).unwrap();
        assert_eq!(bed.packets(reason_counter(Reason::FwdReply)), before + 1);
        // Arriving on another interface (loopback here), it is redirected to the client's one.
        let out = run(bed.dp.program(), &reply.build(), None).unwrap();
        assert_eq!(out.verdict, XDP_REDIRECT);
        assert_eq!(out.packet, bed.reply_to_client(&reply, svc).build());
    }
}

#[test]
fn backend_traffic_without_a_flow_passes() {
    let bed = PacketBed::new().unwrap();
    // From a NAT backend's address and port, but to a client that never connected through a VIP.
    let stray = Frame::syn(sa("10.0.0.11:8080"), sa("10.0.0.100:39999")).with(ACK, b"");
    let out = run(bed.dp.program(), &stray.build(), Some(bed.v0)).unwrap();
    assert_eq!((out.verdict, out.packet), (XDP_PASS, stray.build()));
}

#[test]
fn reply_from_another_backend_than_the_flows_is_not_rewritten() {
    let bed = PacketBed::new().unwrap();
    let vip = sa("10.0.0.200:80");
    let client = sa("10.0.0.100:40777");
    let backend = bed.expected_backend(0, client, vip);
    assert_to_backend(&bed, &Frame::syn(client, vip), SVC_NAT, backend);
    let impostor = bed.backends[&(if backend == 0 { 1 } else { 0 })];
    let reply = Frame::syn(impostor, client).with(0x12, b"");
    let out = run(bed.dp.program(), &reply.build(), Some(bed.v0)).unwrap();
    assert_eq!((out.verdict, out.packet), (XDP_PASS, reply.build()));
}

#[test]
fn direct_connection_reusing_a_closed_vip_flows_port_is_not_rewritten() {
    let bed = PacketBed::new().unwrap();
    let vip = sa("10.0.0.200:80");
    let client = sa("10.0.0.100:40888");
    let backend = bed.expected_backend(0, client, vip);
    let backend_addr = bed.backends[&backend];
    // A VIP connection that ends with the client's FIN.
    assert_to_backend(&bed, &Frame::syn(client, vip), SVC_NAT, backend);
    assert_to_backend(&bed, &Frame::syn(client, vip).with(FIN | ACK, b""), SVC_NAT, backend);
    // The client now connects to the backend directly from the same port; the backend's
    // SYN-ACK and everything after it must reach the client untouched.
    let synack = Frame::syn(backend_addr, client).with(0x12, b"");
    let out = run(bed.dp.program(), &synack.build(), Some(bed.v0)).unwrap();
    assert_eq!((out.verdict, out.packet), (XDP_PASS, synack.build()));
    let data = Frame::syn(backend_addr, client).with(ACK | PSH, b"direct");
    let out = run(bed.dp.program(), &data.build(), Some(bed.v0)).unwrap();
    assert_eq!((out.verdict, out.packet), (XDP_PASS, data.build()));
    assert!(bed.dp.flow(&flow_key(client, vip)).unwrap().is_none(), "the closed flow was forgotten");
}

#[test]
fn a_port_reused_after_the_backend_reset_the_flow_is_balanced_anew() {
    let mut bed = PacketBed::new().unwrap();
    let vip = sa("10.0.0.200:80");
    let client = port_that_moves(&bed, vip, CLIENT_V4, 0, 1);
    let on_a = bed.expected_backend(0, client, vip);
    assert_to_backend(&bed, &Frame::syn(client, vip), SVC_NAT, on_a);
    // The backend resets the connection (its RST goes back through the balancer)...
    let rst = Frame::syn(bed.backends[&on_a], client).with(RST | ACK, b"");
    let out = run(bed.dp.program(), &rst.build(), Some(bed.v0)).unwrap();
    assert_eq!(out.verdict, XDP_TX);
    assert_ne!(bed.dp.flow(&flow_key(client, vip)).unwrap().unwrap().flags & FLOW_RST, 0);
    // ...after a switch, a new connection from the same port follows the switch.
    bed.switch(SVC_NAT, 1, false).unwrap();
    assert_to_backend(&bed, &Frame::syn(client, vip), SVC_NAT, bed.expected_backend(1, client, vip));
}

#[test]
fn dsr_backend_replies_are_left_alone() {
    let bed = PacketBed::new().unwrap();
    let vip = sa("10.0.0.201:80");
    let client = sa("10.0.0.100:40500");
    let backend = bed.expected_backend(2, client, vip);
    assert_to_backend(&bed, &Frame::syn(client, vip), SVC_DSR, backend);
    // A DSR backend answers from the VIP itself; from its own address it is just host traffic.
    let direct = Frame::syn(bed.backends[&backend], client).with(0x12, b"");
    let out = run(bed.dp.program(), &direct.build(), Some(bed.v0)).unwrap();
    assert_eq!((out.verdict, out.packet), (XDP_PASS, direct.build()));
}

#[test]
fn flow_on_a_down_backend_is_moved() {
    let mut bed = PacketBed::new().unwrap();
    let vip = sa("10.0.0.200:80");
    let client = sa("10.0.0.100:41000");
    let first = bed.expected_backend(0, client, vip);
    let syn = Frame::syn(client, vip);
    assert_to_backend(&bed, &syn, SVC_NAT, first);
    // The daemon marks the backend down and writes a table without it.
    let other = if first == 0 { 1 } else { 0 };
    bed.set_backend(first, bed.backends[&first], false).unwrap();
    bed.dp.write_table(0, &vec![other; RING as usize]).unwrap();
    bed.tables.insert(0, vec![other; RING as usize]);
    let before = bed.packets(reason_counter(Reason::FlowBackendDown));
    assert_to_backend(&bed, &syn.with(ACK, b""), SVC_NAT, other);
    assert_eq!(bed.packets(reason_counter(Reason::FlowBackendDown)), before + 1);
}

#[test]
fn empty_table_drops_and_unresolved_next_hop_passes() {
    let mut bed = PacketBed::new().unwrap();
    let vip = sa("10.0.0.200:80");
    bed.dp.write_table(5, &vec![NO_BACKEND; RING as usize]).unwrap();
    bed.switch(SVC_NAT, 5, false).unwrap();
    let syn = Frame::syn(sa("10.0.0.100:42000"), vip).build();
    let before = bed.packets(reason_counter(Reason::DropNoBackend));
    let out = run(bed.dp.program(), &syn, Some(bed.v0)).unwrap();
    assert_eq!(out.verdict, XDP_DROP);
    assert_eq!(bed.packets(reason_counter(Reason::DropNoBackend)), before + 1);

    // A backend whose neighbour is unknown: the kernel gets the (already rewritten) packet.
    let lonely = sa("10.0.0.99:8080");
    bed.set_backend(6, lonely, true).unwrap();
    bed.dp.write_table(6, &vec![6; RING as usize]).unwrap();
    bed.switch(SVC_NAT, 6, false).unwrap();
    let frame = Frame::syn(sa("10.0.0.100:42001"), vip);
    let out = run(bed.dp.program(), &frame.build(), Some(bed.v0)).unwrap();
    assert_eq!(out.verdict, XDP_PASS);
    let mut want = frame.clone();
    want.dst = lonely;
    assert_eq!(out.packet, want.build(), "NAT rewrite applied, MACs untouched");
    assert_eq!(bed.packets(reason_counter(Reason::PassNoNextHop)), 1);
}

#[test]
fn counters_and_flow_flags_follow_the_traffic() {
    let bed = PacketBed::new().unwrap();
    let vip = sa("10.0.0.200:80");
    let client = sa("10.0.0.100:43000");
    let backend = bed.expected_backend(0, client, vip);
    let syn = Frame::syn(client, vip);
    let len = syn.build().len() as u64;
    assert_to_backend(&bed, &syn, SVC_NAT, backend);
    assert_to_backend(&bed, &syn.clone().with(FIN | ACK, b""), SVC_NAT, backend);
    assert_eq!(bed.packets(reason_counter(Reason::NewFlow)), 1);
    assert_eq!(bed.packets(backend_new_flow_counter(backend)), 1);
    assert_eq!(bed.packets(backend_counter(backend)), 2);
    assert_eq!(bed.packets(vip_counter(SVC_NAT)), 2);
    assert_eq!(bed.dp.counter(vip_counter(SVC_NAT)).unwrap().bytes, 2 * len);
    assert_eq!(bed.packets(reason_counter(Reason::FwdTx)), 2);
    let flow = bed.dp.flow(&flow_key(client, vip)).unwrap().unwrap();
    assert_ne!(flow.flags & FLOW_FIN, 0, "FIN seen");
    assert_eq!((flow.client_mac, flow.lb_mac, flow.client_ifindex), (PEER_MAC, LB_MAC, bed.v0));
    assert!(flow.last_seen > 0);
}
