//! First packets of flows through BPF_PROG_TEST_RUN, as a table of fixtures: frame in, verdict
//! and exact frame out, and why. Checksums of expected frames are computed by the test's own
//! frame builder, never by the data plane's code.

use lb_common::stats::{Reason, reason_counter};
use lb_tests::{
    packets::{ACK, Frame, PSH, verify_checksums},
    testbed::*,
    xdp_run::{XDP_PASS, XDP_REDIRECT, XDP_TX, run, verdict_name},
};
use std::net::SocketAddr;

fn sa(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

/// What a fixture expects.
enum Expect {
    /// Forwarded to the backend Maglev picks from this table slot.
    Backend { svc: u32, table: u32, verdict: u32 },
    /// Passed to the kernel untouched, counted under this reason.
    Untouched(Reason),
}

struct Fixture {
    name: &'static str,
    why: &'static str,
    frame: Frame,
    ingress_v0: bool,
    expect: Expect,
}

fn fixtures() -> Vec<Fixture> {
    let client = sa("10.0.0.100:40001");
    let client6 = sa("[fd00::100]:40001");
    let nat_vip = sa("10.0.0.200:80");
    let mut vlan = Frame::syn(client, nat_vip);
    vlan.vlan = Some(100);
    let mut options = Frame::syn(client, nat_vip);
    // Record-route style options: NOPs and an end-of-list, 12 bytes (IHL 8).
    options.ipv4_options = vec![1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0];
    let mut mf = Frame::syn(client, nat_vip);
    mf.ipv4_frag = 0x2000;
    let mut later_fragment = Frame::syn(client, nat_vip);
    later_fragment.ipv4_frag = 0x0010;
    vec![
        Fixture {
            name: "syn_v4_nat",
            why: "SYN to the NAT VIP goes to pool-a with the destination rewritten",
            frame: Frame::syn(client, nat_vip),
            ingress_v0: false,
            expect: Expect::Backend { svc: SVC_NAT, table: 0, verdict: XDP_REDIRECT },
        },
        Fixture {
            name: "syn_v4_nat_tx",
            why: "next hop on the ingress interface leaves by XDP_TX",
            frame: Frame::syn(client, nat_vip),
            ingress_v0: true,
            expect: Expect::Backend { svc: SVC_NAT, table: 0, verdict: XDP_TX },
        },
        Fixture {
            name: "data_v4_nat",
            why: "a mid-flow segment with payload is forwarded like a SYN",
            frame: Frame::syn(sa("10.0.0.100:40002"), nat_vip).with(ACK | PSH, b"GET / HTTP/1.1\r\n\r\n"),
            ingress_v0: true,
            expect: Expect::Backend { svc: SVC_NAT, table: 0, verdict: XDP_TX },
        },
        Fixture {
            name: "syn_v6_nat",
            why: "IPv6 SYN to the v6 VIP: destination rewritten, TCP checksum updated",
            frame: Frame::syn(client6, sa("[fd00::200]:80")),
            ingress_v0: false,
            expect: Expect::Backend { svc: SVC_NAT6, table: 3, verdict: XDP_REDIRECT },
        },
        Fixture {
            name: "syn_v4_dsr",
            why: "DSR only changes the MAC addresses",
            frame: Frame::syn(client, sa("10.0.0.201:80")),
            ingress_v0: true,
            expect: Expect::Backend { svc: SVC_DSR, table: 2, verdict: XDP_TX },
        },
        Fixture {
            name: "vlan_tagged",
            why: "an 802.1Q tag is parsed and kept",
            frame: vlan,
            ingress_v0: true,
            expect: Expect::Backend { svc: SVC_NAT, table: 0, verdict: XDP_TX },
        },
        Fixture {
            name: "ipv4_options",
            why: "IHL 8: TCP found after the options, options kept",
            frame: options,
            ingress_v0: true,
            expect: Expect::Backend { svc: SVC_NAT, table: 0, verdict: XDP_TX },
        },
        Fixture {
            name: "non_vip_address",
            why: "traffic for the host itself is not touched",
            frame: Frame::syn(client, sa("10.0.0.1:22")),
            ingress_v0: true,
            expect: Expect::Untouched(Reason::PassNotVip),
        },
        Fixture {
            name: "non_vip_port",
            why: "a VIP address on another port is not a VIP",
            frame: Frame::syn(client, sa("10.0.0.200:81")),
            ingress_v0: true,
            expect: Expect::Untouched(Reason::PassNotVip),
        },
        Fixture {
            name: "v6_non_vip",
            why: "IPv6 traffic for the host is not touched",
            frame: Frame::syn(client6, sa("[fd00::1]:22")),
            ingress_v0: true,
            expect: Expect::Untouched(Reason::PassNotVip),
        },
        Fixture {
            name: "first_fragment",
            why: "IPv4 fragments (MF set) go to the kernel",
            frame: mf,
            ingress_v0: true,
            expect: Expect::Untouched(Reason::PassFragment),
        },
        Fixture {
            name: "later_fragment",
            why: "IPv4 fragments (offset set) go to the kernel",
            frame: later_fragment,
            ingress_v0: true,
            expect: Expect::Untouched(Reason::PassFragment),
        },
    ]
}

#[test]
fn first_packets_match_their_fixtures() {
    let bed = PacketBed::new().expect("test bed");
    let mut failures = Vec::new();
    for fx in fixtures() {
        let input = fx.frame.build();
        let ingress = fx.ingress_v0.then_some(bed.v0);
        let reason_before = match fx.expect {
            Expect::Untouched(r) => bed.packets(reason_counter(r)),
            _ => 0,
        };
        let out = run(bed.dp.program(), &input, ingress).expect("test_run");
        let (verdict, expected) = match fx.expect {
            Expect::Backend { svc, table, verdict } => {
                let backend = bed.expected_backend(table, fx.frame.src, fx.frame.dst);
                (verdict, bed.to_backend(&fx.frame, svc, backend).build())
            }
            Expect::Untouched(r) => {
                if bed.packets(reason_counter(r)) != reason_before + 1 {
                    failures.push(format!("{}: reason {} not counted", fx.name, r.name()));
                }
                (XDP_PASS, input.clone())
            }
        };
        if out.verdict != verdict || out.packet != expected {
            failures.push(format!(
                "{} ({}): verdict {} (want {}), frame\n  got  {:02x?}\n  want {:02x?}",
                fx.name,
                fx.why,
                verdict_name(out.verdict),
                verdict_name(verdict),
                out.packet,
                expected
            ));
        }
        if let Err(e) = verify_checksums(&out.packet) {
            failures.push(format!("{}: bad {e}", fx.name));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn non_tcp_and_non_ip_frames_pass_untouched() {
    let bed = PacketBed::new().expect("test bed");
    let mut udp = Frame::syn(sa("10.0.0.100:5353"), sa("10.0.0.200:80")).build();
    udp[23] = 17; // IPv4 protocol: UDP (the checksum no longer matters: it is passed as is)
    let mut v6_udp = Frame::syn(sa("[fd00::100]:5353"), sa("[fd00::200]:80")).build();
    v6_udp[20] = 17;
    let mut v6_frag = Frame::syn(sa("[fd00::100]:5353"), sa("[fd00::200]:80")).build();
    v6_frag[20] = 44; // fragment header
    let mut v6_hop = Frame::syn(sa("[fd00::100]:5353"), sa("[fd00::200]:80")).build();
    v6_hop[20] = 0; // hop-by-hop options
    let mut arp = vec![0xff; 6];
    arp.extend_from_slice(&PEER_MAC);
    arp.extend_from_slice(&[0x08, 0x06]);
    arp.extend_from_slice(&[0u8; 28]);
    for (name, frame, reason) in [
        ("udp", udp, Reason::PassNotTcp),
        ("v6_udp", v6_udp, Reason::PassNotTcp),
        ("v6_fragment", v6_frag, Reason::PassFragment),
        ("v6_hop_by_hop", v6_hop, Reason::PassIpv6ExtHeader),
        ("arp", arp, Reason::PassNotIp),
    ] {
        let before = bed.packets(reason_counter(reason));
        let out = run(bed.dp.program(), &frame, Some(bed.v0)).unwrap();
        assert_eq!((out.verdict, &out.packet), (XDP_PASS, &frame), "{name}");
        assert_eq!(bed.packets(reason_counter(reason)), before + 1, "{name} counted as {}", reason.name());
    }
}
