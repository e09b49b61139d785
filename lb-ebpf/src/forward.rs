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

/// Replaces the destination address and port (client → VIP becomes client → backend).
#[inline(always)]
pub fn rewrite_dst(pkt: &Packet, addr: &[u32; 4], port: u16) {
    unsafe {
        let tcp = pkt.tcp;
        let mut check = (*tcp).check;
        if pkt.key.family == FAMILY_V4 {
            let ip = pkt.ip as *mut Ipv4Hdr;
            let old = (*ip).daddr;
            (*ip).daddr = addr[0];
            (*ip).check = csum::replace_u32((*ip).check, old, addr[0]);
            check = csum::replace_u32(check, old, addr[0]);
        } else {
            let ip = pkt.ip as *mut Ipv6Hdr;
            if pkt.ip as usize + size_of::<Ipv6Hdr>() > pkt.data_end {
                return;
            }
            let old = (*ip).daddr;
            (*ip).daddr = *addr;
            check = csum::replace_addr(check, &old, addr);
        }
        (*tcp).check = csum::replace_u16(check, (*tcp).dport, port);
        (*tcp).dport = port;
    }
}

/// Replaces the source address and port (backend → client becomes VIP → client).
#[inline(always)]
pub fn rewrite_src(pkt: &Packet, addr: &[u32; 4], port: u16) {
    unsafe {
        let tcp = pkt.tcp;
        let mut check = (*tcp).check;
        if pkt.key.family == FAMILY_V4 {
            let ip = pkt.ip as *mut Ipv4Hdr;
            let old = (*ip).saddr;
            (*ip).saddr = addr[0];
            (*ip).check = csum::replace_u32((*ip).check, old, addr[0]);
            check = csum::replace_u32(check, old, addr[0]);
        } else {
            let ip = pkt.ip as *mut Ipv6Hdr;
            if pkt.ip as usize + size_of::<Ipv6Hdr>() > pkt.data_end {
                return;
            }
            let old = (*ip).saddr;
            (*ip).saddr = *addr;
            check = csum::replace_addr(check, &old, addr);
        }
        (*tcp).check = csum::replace_u16(check, (*tcp).sport, port);
        (*tcp).sport = port;
    }
}
