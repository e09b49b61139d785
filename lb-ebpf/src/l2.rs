//! Is a frame for us at all? Only frames sent to the receiving interface's own MAC address are
//! ever forwarded. A bridge or switch floods unknown unicast (e.g. for another balancer's MAC
//! while its port is down) to every port, and delivers broadcast and multicast everywhere: none
//! of that is VIP traffic to forward, and forwarding it would make two balancers on one segment
//! both send the same packet.

use aya_ebpf::programs::XdpContext;
use lb_common::packet::EthHdr;

use crate::maps::IFACE_MACS;

/// Whether the frame at `eth` is addressed to the interface it arrived on. A group address
/// (broadcast, multicast: lowest bit of the first byte) never is. An interface whose MAC the
/// daemon did not record (`IFACE_MACS` all zero, or an index beyond it) is not checked further:
/// its frames are taken as ours, as before this check existed.
#[inline(always)]
pub fn addressed_to_us(ctx: &XdpContext, eth: *const EthHdr) -> bool {
    let dst = unsafe { (*eth).dst };
    if dst[0] & 1 != 0 {
        return false;
    }
    let ifindex = ctx.ingress_ifindex() as u32;
    match IFACE_MACS.get(ifindex) {
        Some(own) if *own != [0; 6] => *own == dst,
        _ => true,
    }
}
