//! Only frames addressed to the receiving interface's own MAC are forwarded (issue 9, item 7):
//! unknown unicast that a switch floods to every port (e.g. for another balancer's MAC),
//! broadcast and multicast are passed to the kernel untouched and counted, so two balancers on
//! one segment never both forward one packet. Through BPF_PROG_TEST_RUN on `v0`, whose MAC the
//! bed records as the daemon does at attach.

use lb_common::stats::{Reason, reason_counter};
use lb_tests::{
    packets::{ACK, Frame, Mac, PSH},
    testbed::*,
    xdp_run::{XDP_PASS, XDP_TX, run, verdict_name},
};
use std::net::SocketAddr;

fn sa(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

/// Another balancer's MAC on the same segment.
const OTHER_MAC: Mac = [0x02, 0, 0, 0, 0, 0x99];

fn to_mac(frame: &Frame, mac: Mac) -> Frame {
    let mut f = frame.clone();
    f.dst_mac = mac;
    f
}

#[test]
fn frames_to_another_mac_are_passed_and_counted_and_ours_are_forwarded() {
    let bed = PacketBed::new().expect("test bed");
    let mut failures = Vec::new();
    for (vip, svc) in [("10.0.0.200:80", SVC_NAT), ("10.0.0.201:80", SVC_DSR), ("[fd00::200]:80", SVC_NAT6)] {
        let vip = sa(vip);
        let client = if vip.is_ipv4() { sa("10.0.0.100:41000") } else { sa("[fd00::100]:41000") };
        let syn = Frame::syn(client, vip);
        for (what, mac) in [
            ("another balancer's MAC", OTHER_MAC),
            ("broadcast", [0xff; 6]),
            ("IPv4 multicast", [0x01, 0, 0x5e, 0, 0, 1]),
            ("IPv6 multicast", [0x33, 0x33, 0, 0, 0, 1]),
        ] {
            let input = to_mac(&syn, mac).build();
            let before = bed.packets(reason_counter(Reason::PassOtherMac));
            let out = run(bed.dp.program(), &input, Some(bed.v0)).unwrap();
            if out.verdict != XDP_PASS || out.packet != input {
                failures
                    .push(format!("{vip} to {what}: {} (want PASS, untouched)", verdict_name(out.verdict)));
            }
            if bed.packets(reason_counter(Reason::PassOtherMac)) != before + 1 {
                failures.push(format!("{vip} to {what}: not counted as pass_other_mac"));
            }
            if bed.dp.flow(&flow_key(client, vip)).unwrap().is_some() {
                failures.push(format!("{vip} to {what}: a flow was recorded"));
            }
        }
        // The same SYN to our own MAC is forwarded.
        let table = bed.services[&svc].pool_tables[0];
        let backend = bed.expected_backend(table, client, vip);
        let out = run(bed.dp.program(), &syn.build(), Some(bed.v0)).unwrap();
        let want = bed.to_backend(&syn, svc, backend).build();
        if out.verdict != XDP_TX || out.packet != want {
            failures.push(format!(
                "{vip} to LB_MAC: {} (want TX to backend {backend})",
                verdict_name(out.verdict)
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn nat_replies_to_another_mac_are_passed() {
    let bed = PacketBed::new().expect("test bed");
    let vip = sa("10.0.0.200:80");
    let client = sa("10.0.0.100:41001");
    let out = run(bed.dp.program(), &Frame::syn(client, vip).build(), Some(bed.v0)).unwrap();
    assert_eq!(out.verdict, XDP_TX);
    let backend = bed.backends[&bed.expected_backend(0, client, vip)];
    let reply = Frame::syn(backend, client).with(ACK | PSH, b"hello");
    let input = to_mac(&reply, OTHER_MAC).build();
    let before = bed.packets(reason_counter(Reason::PassOtherMac));
    let out = run(bed.dp.program(), &input, Some(bed.v0)).unwrap();
    assert_eq!((verdict_name(out.verdict), &out.packet), ("PASS", &input), "reply to another MAC");
    assert_eq!(bed.packets(reason_counter(Reason::PassOtherMac)), before + 1);
    // Addressed to us, the same reply is rewritten to the VIP.
    let out = run(bed.dp.program(), &reply.build(), Some(bed.v0)).unwrap();
    assert_eq!(out.verdict, XDP_TX);
    assert_eq!(out.packet, bed.reply_to_client(&reply, SVC_NAT).build());
}
