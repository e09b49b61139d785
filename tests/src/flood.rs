//! A bounded spoofed SYN flood from a raw socket, for end-to-end tests: SYNs from random
//! addresses of a subnet the test owns and random ports, at a fixed rate.

use crate::{netns::NetNs, packets::Frame};
use anyhow::{Context, Result, bail};
use std::{
    net::{Ipv4Addr, SocketAddr, SocketAddrV4},
    time::{Duration, Instant},
};

/// What to send.
#[derive(Clone, Debug)]
pub struct FloodOptions {
    /// Where the SYNs go (a VIP).
    pub target: SocketAddrV4,
    /// Source addresses are `base` with the last octet drawn from this range.
    pub source_base: Ipv4Addr,
    /// Last octets the sources are drawn from.
    pub source_hosts: std::ops::RangeInclusive<u8>,
    /// How many SYNs.
    pub count: u32,
    /// SYNs per second.
    pub rate_per_s: u32,
    /// Seed of the address and port draws.
    pub seed: u64,
}

/// xorshift64*: reproducible draws without a dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

/// Sends the flood from inside `ns` (blocking) and returns how many SYNs went out. Bounded by
/// `count` and by twice the time the rate asks for, plus a second.
pub fn syn_flood(ns: &NetNs, opts: &FloodOptions) -> Result<u32> {
    ns.run_in(|| send(opts))?
}

fn send(opts: &FloodOptions) -> Result<u32> {
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_RAW) };
    if fd < 0 {
        bail!("raw socket: {}", std::io::Error::last_os_error());
    }
    let _close = Close(fd);
    let dst = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: 0,
        sin_addr: libc::in_addr { s_addr: u32::from_ne_bytes(opts.target.ip().octets()) },
        sin_zero: [0; 8],
    };
    let mut rng = Rng(opts.seed | 1);
    let hosts = (*opts.source_hosts.start() as u64, *opts.source_hosts.end() as u64);
    let started = Instant::now();
    let budget =
        Duration::from_secs_f64(2.0 * f64::from(opts.count) / f64::from(opts.rate_per_s.max(1)) + 1.0);
    let mut sent = 0u32;
    while sent < opts.count && started.elapsed() < budget {
        // Stay on schedule: send what the rate allows by now.
        let due = ((started.elapsed().as_secs_f64() * f64::from(opts.rate_per_s)) as u32 + 1).min(opts.count);
        if sent >= due {
            std::thread::sleep(Duration::from_micros(500));
            continue;
        }
        while sent < due {
            let [a, b, c, _] = opts.source_base.octets();
            let host = (hosts.0 + rng.next() % (hosts.1 - hosts.0 + 1)) as u8;
            let port = 1024 + (rng.next() % 64_000) as u16;
            let src = SocketAddr::from((Ipv4Addr::new(a, b, c, host), port));
            let mut frame = Frame::syn(src, SocketAddr::V4(opts.target));
            frame.seq = rng.next() as u32;
            let packet = frame.build();
            let ip = &packet[14..];
            let n = unsafe {
                libc::sendto(
                    fd,
                    ip.as_ptr().cast(),
                    ip.len(),
                    0,
                    (&dst as *const libc::sockaddr_in).cast(),
                    size_of::<libc::sockaddr_in>() as libc::socklen_t,
                )
            };
            if n < 0 {
                let e = std::io::Error::last_os_error();
                // A full queue: try again on the next round.
                if e.raw_os_error() == Some(libc::ENOBUFS) {
                    break;
                }
                return Err(e).context("sending a spoofed SYN");
            }
            sent += 1;
        }
    }
    Ok(sent)
}

struct Close(i32);

impl Drop for Close {
    fn drop(&mut self) {
        unsafe { libc::close(self.0) };
    }
}
