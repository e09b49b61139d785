//! Truncated frames and a mutation fuzz run through BPF_PROG_TEST_RUN.

use lb_common::stats::{Reason, reason_counter};
use lb_tests::{
    packets::{Frame, verify_checksums},
    testbed::*,
    xdp_run::{XDP_DROP, XDP_PASS, XDP_REDIRECT, XDP_TX, run},
};
use std::net::SocketAddr;

fn sa(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn seeds() -> Vec<(&'static str, Frame)> {
    let mut vlan = Frame::syn(sa("10.0.0.100:40001"), sa("10.0.0.200:80"));
    vlan.vlan = Some(7);
    let mut options = Frame::syn(sa("10.0.0.100:40002"), sa("10.0.0.200:80"));
    options.ipv4_options = vec![1; 40];
    vec![
        ("v4", Frame::syn(sa("10.0.0.100:40000"), sa("10.0.0.200:80"))),
        ("v6", Frame::syn(sa("[fd00::100]:40000"), sa("[fd00::200]:80"))),
        ("vlan", vlan),
        ("ipv4_options_40", options),
        ("dsr", Frame::syn(sa("10.0.0.100:40003"), sa("10.0.0.201:80"))),
    ]
}

#[test]
fn every_truncation_of_a_vip_frame_passes_untouched() {
    let bed = PacketBed::new().unwrap();
    for (name, frame) in seeds() {
        let full = frame.build();
        for len in 0..full.len() {
            let cut = &full[..len];
            match run(bed.dp.program(), cut, Some(bed.v0)) {
                // The kernel refuses frames shorter than an Ethernet header: XDP never sees them.
                Err(_) if len < 14 => continue,
                Err(e) => panic!("{name} cut to {len}: {e:#}"),
                Ok(out) => {
                    assert_eq!(out.verdict, XDP_PASS, "{name} cut to {len} bytes");
                    assert_eq!(out.packet, cut, "{name} cut to {len} bytes must be untouched");
                }
            }
            assert!(len >= 14, "{name}: test_run accepted a {len}-byte frame");
        }
        // And the complete frame is forwarded.
        let out = run(bed.dp.program(), &full, Some(bed.v0)).unwrap();
        assert_eq!(out.verdict, XDP_TX, "{name} complete");
    }
    assert!(bed.packets(reason_counter(Reason::PassMalformed)) > 100);
}

/// xorshift64*: deterministic, so a failure reproduces.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// A well-formed frame with random fields: to a VIP or not, either family, random flags,
/// payload, VLAN and IPv4 options. Its checksums are valid.
fn structured(rng: &mut Rng, bed: &PacketBed) -> Frame {
    let v6 = rng.below(3) == 0;
    let dst = if v6 {
        [sa("[fd00::200]:80"), sa("[fd00::200]:81"), sa("[fd00::1]:80")][rng.below(3) as usize]
    } else {
        [sa("10.0.0.200:80"), sa("10.0.0.201:80"), sa("10.0.0.200:8080"), sa("10.0.0.1:80")]
            [rng.below(4) as usize]
    };
    let port = 1024 + rng.below(60000) as u16;
    let mut src = if v6 { sa(&format!("[fd00::100]:{port}")) } else { sa(&format!("10.0.0.100:{port}")) };
    let mut dst = dst;
    // Sometimes a backend's reply.
    if rng.below(4) == 0 {
        let b = bed.backends.values().filter(|b| b.is_ipv6() == v6).nth(rng.below(4) as usize).copied();
        if let Some(b) = b {
            dst = src;
            src = b;
        }
    }
    let mut f = Frame::syn(src, dst).with(rng.below(64) as u8, &vec![0xab; rng.below(40) as usize]);
    if rng.below(4) == 0 {
        f.vlan = Some(rng.below(4095) as u16);
    }
    if !v6 && rng.below(4) == 0 {
        f.ipv4_options = vec![1; 4 * rng.below(11) as usize];
    }
    f.seq = rng.next() as u32;
    f
}

#[test]
fn mutation_fuzz_gives_only_valid_verdicts_and_checksums() {
    let bed = PacketBed::new().unwrap();
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let seeds: Vec<Vec<u8>> = seeds().into_iter().map(|(_, f)| f.build()).collect();
    let (mut forwarded, mut checked, mut drops) = (0u32, 0u32, 0u64);
    for i in 0..100_000u32 {
        let frame = if i % 2 == 0 {
            structured(&mut rng, &bed).build()
        } else {
            let mut f = seeds[rng.below(seeds.len() as u64) as usize].clone();
            for _ in 0..1 + rng.below(4) {
                match rng.below(4) {
                    0 => {
                        let at = rng.below(f.len() as u64) as usize;
                        f[at] ^= 1 << rng.below(8);
                    }
                    1 => {
                        let at = rng.below(f.len() as u64) as usize;
                        f[at] = rng.next() as u8;
                    }
                    2 => f.truncate(14 + rng.below(f.len() as u64 - 13) as usize),
                    _ => f.extend((0..rng.below(16)).map(|_| rng.next() as u8)),
                }
            }
            f
        };
        let ingress = (rng.below(2) == 0).then_some(bed.v0);
        let out = run(bed.dp.program(), &frame, ingress).unwrap_or_else(|e| panic!("case {i}: {e:#}"));
        assert!(
            [XDP_PASS, XDP_DROP, XDP_TX, XDP_REDIRECT].contains(&out.verdict),
            "case {i}: verdict {} for {frame:02x?}",
            out.verdict
        );
        if out.verdict == XDP_TX || out.verdict == XDP_REDIRECT {
            forwarded += 1;
            if verify_checksums(&frame).is_ok() {
                checked += 1;
                if let Err(e) = verify_checksums(&out.packet) {
                    panic!("case {i}: {e} after rewrite\n in  {frame:02x?}\n out {:02x?}", out.packet);
                }
            }
        }
        if out.verdict == XDP_DROP {
            // Only TCP segments to a VIP that can neither start nor continue a connection.
            drops += 1;
            assert_eq!(
                bed.packets(reason_counter(Reason::DropInvalidFlags)),
                drops,
                "case {i}: dropped for another reason: {frame:02x?}"
            );
        }
    }
    // The fuzz must actually reach the forwarding paths (random flags that can neither start nor
    // continue a connection are dropped, about a third of the structured frames).
    assert!(forwarded > 20_000 && checked > 10_000, "forwarded {forwarded}, checked {checked}");
}
