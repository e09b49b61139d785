//! Path MTU discovery through a VIP, through BPF_PROG_TEST_RUN: ICMP "fragmentation needed" and
//! ICMPv6 "packet too big" about a VIP flow go to the flow's backend (NAT: translated as the
//! backend would have received them for its own packet; DSR: as they are), anything else is
//! passed untouched. A table of fixtures: frame in, verdict and exact frame out, and why. Expected
//! frames are built from scratch by the test's own frame builder (every checksum computed in
//! full), never derived from the input by the data plane's arithmetic.

use lb_common::stats::{Reason, reason_counter};
use lb_tests::{
    packets::{ACK, Frame, PSH, TooBig, verify_icmp_checksums},
    testbed::*,
    xdp_run::{XDP_PASS, XDP_TX, run, verdict_name},
};
use std::net::{IpAddr, SocketAddr};

fn sa(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// A router on the path to the client (not on the balancer's subnet).
const ROUTER_V4: &str = "192.0.2.1";
/// The same for IPv6.
const ROUTER_V6: &str = "2001:db8::1";

/// A large segment of the VIP's answer to `client`, as it left the balancer (NAT) or the
/// backend (DSR): VIP → client.
fn answer(vip: SocketAddr, client: SocketAddr) -> Frame {
    let mut f = Frame::syn(vip, client).with(ACK | PSH, &[0x5a; 1200]);
    f.seq = 900_000;
    f
}

/// What a fixture expects.
enum Expect {
    /// Sent on to `backend` (translated when `nat`), leaving by `XDP_TX`.
    Backend { backend: u32, nat: bool },
    /// Passed to the kernel untouched, counted under this reason.
    Untouched(Reason),
}

struct Fixture {
    name: &'static str,
    why: &'static str,
    input: TooBig,
    expect: Expect,
}

/// The error `input` as `backend` must receive it: NAT rewrites the outer destination and the
/// quoted source to the backend; both address the backend's MAC from `LB_MAC`.
fn expected_frame(bed: &PacketBed, input: &TooBig, backend: u32, nat: bool) -> Vec<u8> {
    let mut out = input.clone();
    let addr = bed.backends[&backend];
    if nat {
        out.to = addr.ip();
        out.offending.src = addr;
    }
    out.dst_mac = backend_mac(addr.ip());
    out.src_mac = LB_MAC;
    out.build()
}

/// A client port of `client` whose flow to `vip` Maglev puts on different backends in tables
/// `a` and `b`, so that following the flow (not the active table) is observable.
fn port_that_moves(bed: &PacketBed, vip: SocketAddr, client: &str, a: u32, b: u32, skip: u16) -> SocketAddr {
    let wrap = |p: u16| {
        if client.contains(':') { sa(&format!("[{client}]:{p}")) } else { sa(&format!("{client}:{p}")) }
    };
    (40000 + skip..42000)
        .map(wrap)
        .find(|c| bed.expected_backend(a, *c, vip) != bed.expected_backend(b, *c, vip))
        .expect("some flow maps differently")
}

#[test]
fn too_big_errors_match_their_fixtures() {
    let mut bed = PacketBed::new().expect("test bed");
    let nat = sa("10.0.0.200:80");
    let dsr = sa("10.0.0.201:80");
    let nat6 = sa("[fd00::200]:80");
    let dsr6 = sa("[fd00::201]:80");
    let c_nat = port_that_moves(&bed, nat, CLIENT_V4, 0, 1, 0);
    let c_nat6 = port_that_moves(&bed, nat6, CLIENT_V6, 3, 4, 0);
    let c_dsr = sa("10.0.0.100:40100");
    let c_dsr6 = sa("[fd00::100]:40100");
    // A flow that never went through this balancer (recorded on another host, say).
    let c_unseen = port_that_moves(&bed, nat, CLIENT_V4, 0, 1, c_nat.port() - 40000 + 1);

    // The flows exist (their SYNs went through), then new traffic moves to pool-b (drain).
    for (client, vip) in [(c_nat, nat), (c_nat6, nat6), (c_dsr, dsr), (c_dsr6, dsr6)] {
        let out = run(bed.dp.program(), &Frame::syn(client, vip).build(), Some(bed.v0)).unwrap();
        assert_eq!(out.verdict, XDP_TX, "SYN {client} → {vip}");
    }
    let on_a = |bed: &PacketBed, table, client, vip| bed.expected_backend(table, client, vip);
    let (b_nat, b_nat6, b_dsr, b_dsr6) = (
        on_a(&bed, 0, c_nat, nat),
        on_a(&bed, 3, c_nat6, nat6),
        on_a(&bed, 2, c_dsr, dsr),
        on_a(&bed, 5, c_dsr6, dsr6),
    );
    bed.switch(SVC_NAT, 1, false).unwrap();
    bed.switch(SVC_NAT6, 4, false).unwrap();
    let b_unseen = bed.expected_backend(1, c_unseen, nat);

    let v4 = ip(ROUTER_V4);
    let v6 = ip(ROUTER_V6);
    let mut short_quote = TooBig::about(v4, answer(nat, c_nat), 1400);
    short_quote.quote = 20 + 8;
    let mut to_other_mac = TooBig::about(v4, answer(nat, c_nat), 1400);
    to_other_mac.dst_mac = [0x02, 0, 0, 0, 0, 0x99];
    let fixtures = vec![
        Fixture {
            name: "v4_nat",
            why: "fragmentation needed for a NAT flow: to its pool-a backend (not the active pool-b), \
                  outer destination and quoted source translated, every checksum right",
            input: TooBig::about(v4, answer(nat, c_nat), 1400),
            expect: Expect::Backend { backend: b_nat, nat: true },
        },
        Fixture {
            name: "v4_nat_8_byte_quote",
            why: "a quote of the IP header and 8 bytes (RFC 792): ports translated, no TCP checksum to fix",
            input: short_quote,
            expect: Expect::Backend { backend: b_nat, nat: true },
        },
        Fixture {
            name: "v4_nat_unseen_flow",
            why: "a flow this host never saw goes where its next packet would: the active table",
            input: TooBig::about(v4, answer(nat, c_unseen), 1400),
            expect: Expect::Backend { backend: b_unseen, nat: true },
        },
        Fixture {
            name: "v4_dsr",
            why: "DSR: the backend holds the VIP, only the MACs change",
            input: TooBig::about(v4, answer(dsr, c_dsr), 1400),
            expect: Expect::Backend { backend: b_dsr, nat: false },
        },
        Fixture {
            name: "v6_nat",
            why: "packet too big for a NAT flow: translated, ICMPv6 checksum (pseudo-header) right",
            input: TooBig::about(v6, answer(nat6, c_nat6), 1280),
            expect: Expect::Backend { backend: b_nat6, nat: true },
        },
        Fixture {
            name: "v6_dsr",
            why: "IPv6 DSR: only the MACs change",
            input: TooBig::about(v6, answer(dsr6, c_dsr6), 1280),
            expect: Expect::Backend { backend: b_dsr6, nat: false },
        },
        Fixture {
            name: "v4_not_a_vip",
            why: "an error about the host's own traffic (source not a VIP) is the kernel's",
            input: TooBig::about(v4, answer(sa("10.0.0.1:22"), c_nat), 1400),
            expect: Expect::Untouched(Reason::PassNotVip),
        },
        Fixture {
            name: "v6_not_a_vip",
            why: "the same for IPv6",
            input: TooBig::about(v6, answer(sa("[fd00::1]:22"), c_nat6), 1280),
            expect: Expect::Untouched(Reason::PassNotVip),
        },
        Fixture {
            name: "v4_vip_address_other_port",
            why: "the VIP's address on a port that is no VIP",
            input: TooBig::about(v4, answer(sa("10.0.0.200:81"), c_nat), 1400),
            expect: Expect::Untouched(Reason::PassNotVip),
        },
        Fixture {
            name: "v4_to_another_mac",
            why: "a flooded frame for another MAC is never forwarded",
            input: to_other_mac,
            expect: Expect::Untouched(Reason::PassOtherMac),
        },
    ];
    let mut failures = Vec::new();
    for fx in &fixtures {
        let input = fx.input.build();
        let (verdict, want, reason) = match fx.expect {
            Expect::Backend { backend, nat } => {
                (XDP_TX, expected_frame(&bed, &fx.input, backend, nat), Reason::FwdIcmpTooBig)
            }
            Expect::Untouched(r) => (XDP_PASS, input.clone(), r),
        };
        let before = bed.packets(reason_counter(reason));
        let out = run(bed.dp.program(), &input, Some(bed.v0)).expect("test_run");
        if out.verdict != verdict || out.packet != want {
            failures.push(format!(
                "{} ({}): verdict {} (want {}), frame\n  got  {:02x?}\n  want {:02x?}",
                fx.name,
                fx.why,
                verdict_name(out.verdict),
                verdict_name(verdict),
                out.packet,
                want
            ));
        }
        if let Err(e) = verify_icmp_checksums(&out.packet) {
            failures.push(format!("{}: bad {e}", fx.name));
        }
        if bed.packets(reason_counter(reason)) != before + 1 {
            failures.push(format!("{}: not counted as {}", fx.name, reason.name()));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Other ICMP messages to a VIP are not "too big" errors: passed untouched, as before.
#[test]
fn other_icmp_messages_pass_untouched() {
    let bed = PacketBed::new().expect("test bed");
    let nat = sa("10.0.0.200:80");
    let client = sa("10.0.0.100:40001");
    let base = TooBig::about(ip(ROUTER_V4), answer(nat, client), 1400).build();
    let base6 =
        TooBig::about(ip(ROUTER_V6), answer(sa("[fd00::200]:80"), sa("[fd00::100]:40001")), 1280).build();
    let mut port_unreachable = base.clone();
    port_unreachable[14 + 20 + 1] = 3; // code 3 instead of 4 (checksum no longer matters: passed)
    let mut echo = base.clone();
    echo[14 + 20] = 8;
    let mut v6_unreachable = base6.clone();
    v6_unreachable[14 + 40] = 1;
    let mut quoted_udp = base.clone();
    quoted_udp[14 + 20 + 8 + 9] = 17;
    for (name, frame) in [
        ("port_unreachable", port_unreachable),
        ("echo_request", echo),
        ("v6_destination_unreachable", v6_unreachable),
        ("quoted_udp", quoted_udp),
    ] {
        let before = bed.packets(reason_counter(Reason::PassNotTcp));
        let out = run(bed.dp.program(), &frame, Some(bed.v0)).unwrap();
        assert_eq!((verdict_name(out.verdict), &out.packet), ("PASS", &frame), "{name}");
        assert_eq!(bed.packets(reason_counter(Reason::PassNotTcp)), before + 1, "{name} counted");
    }
}
