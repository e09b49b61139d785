//! Rewriting a packet for its next hop: NAT address/port rewrite with incremental checksum
//! update, MAC rewrite, and the choice between `XDP_TX` and a DEVMAP redirect.

use aya_ebpf::{bindings::xdp_action, programs::XdpContext};
use core::mem::size_of;
use lb_common::{
    csum,
    maps::FAMILY_V4,
    packet::{Ipv4Hdr, Ipv6Hdr},
};

use crate::{maps::EGRESS, parse::Packet};

/// Which way a packet for interface `ifindex` leaves: `XDP_TX` back out of the interface it came in on, `XDP_REDIRECT`
/// to another attached interface, or `XDP_PASS` when that interface is not one the
/// program may redirect to (the kernel forwards it instead).
#[inline(always)]
pub fn egress_action(ctx: &XdpContext, ifindex: u32) -> u32 {
    if ifindex == ctx.ingress_ifindex() as u32 {
        return xdp_action::XDP_TX;
    }
    match EGRESS.redirect(ifindex, xdp_action::XDP_PASS as u64) {
        Ok(action) | Err(action) => action,
    }
}

/// Writes the MAC addresses into the Ethernet header.
#[inline(always)]
pub fn set_macs(pkt: &Packet, dst: [u8; 6], src: [u8; 6]) {
    unsafe {
        (*pkt.eth).dst = dst;
        (*pkt.eth).src = src;
    }
}

/// Which end of the packet a rewrite changes.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// Destination address and port (client → VIP becomes client → backend).
    Dst,
    /// Source address and port (backend → client becomes VIP → client).
    Src,
}

/// Replaces one end's address and port, updating the IPv4 header checksum and the TCP
/// checksum incrementally. Not inlined: a client packet (destination) and a NAT reply (source)
/// both rewrite, and the IPv6 checksum update is long.
#[inline(never)]
pub fn rewrite(pkt: &Packet, end: End, addr: &[u32; 4], port: u16) {
    unsafe {
        let tcp = pkt.tcp;
        let mut check = (*tcp).check;
        if pkt.key.family == FAMILY_V4 {
            let ip = pkt.ip as *mut Ipv4Hdr;
            let field = if end == End::Dst { &raw mut (*ip).daddr } else { &raw mut (*ip).saddr };
            let old = *field;
            *field = addr[0];
            (*ip).check = csum::replace_u32((*ip).check, old, addr[0]);
            check = csum::replace_u32(check, old, addr[0]);
        } else {
            let ip = pkt.ip as *mut Ipv6Hdr;
            if pkt.ip as usize + size_of::<Ipv6Hdr>() > pkt.data_end {
                return;
            }
            let field = if end == End::Dst { &raw mut (*ip).daddr } else { &raw mut (*ip).saddr };
            let old = *field;
            *field = *addr;
            check = csum::replace_addr(check, &old, addr);
        }
        let port_field = if end == End::Dst { &raw mut (*tcp).dport } else { &raw mut (*tcp).sport };
        (*tcp).check = csum::replace_u16(check, *port_field, port);
        *port_field = port;
    }
}
