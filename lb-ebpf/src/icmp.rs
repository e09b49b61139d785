//! Path MTU discovery through a VIP: ICMP "fragmentation needed" (IPv4, type 3 code 4) and
//! ICMPv6 "packet too big" (type 2) about a packet of a VIP flow, sent on to that flow's backend.
//!
//! Directions: a backend's reply (NAT: backend → client, rewritten to VIP → client by the reply
//! path; DSR: VIP → client, sent by the backend itself) meets a link with a smaller MTU on its
//! way to the client. The router there answers the VIP (the packet's source) with an ICMP error
//! that quotes the packet's IP header and at least 8 bytes of its TCP header: quoted source =
//! VIP, quoted destination = client. Reversing the quoted 5-tuple gives the flow's key (client →
//! VIP), as `FLOWS` records it. Without this, the error reaches the balancer's kernel, which
//! drops it (the VIP is not its address), and a client behind a smaller-MTU link never receives
//! a response larger than the MTU.
//!
//! The error goes to the backend the flow is pinned to (a flow this host has not seen goes where
//! its next packet would: the active table). In DSR mode it goes as it is (the backend holds
//! the VIP). In NAT mode it is rewritten to what the backend would have received had it sent
//! the packet itself: outer destination VIP → backend, quoted source VIP:port → backend:port,
//! with the outer IPv4 header checksum, the quoted IPv4 header checksum, the quoted TCP checksum
//! (when quoted) and the ICMP checksum (over the quoted data, and for ICMPv6 the pseudo-header)
//! all updated incrementally.
//!
//! Anything else (another ICMP type, a quote that is not TCP or names no VIP) is passed to the
//! kernel untouched.

use aya_ebpf::{bindings::xdp_action, programs::XdpContext};
use core::mem::size_of;
use lb_common::{
    csum,
    maps::{EndpointKey, FAMILY_V4, FAMILY_V6, FlowKey, PROTO_TCP, SERVICE_DSR, SERVICE_ENABLED},
    packet::{
        ETH_P_IP_BE, ETH_P_IPV6_BE, EthHdr, ICMP_DEST_UNREACH, ICMP_FRAG_NEEDED, ICMPV6_PACKET_TOO_BIG,
        IcmpHdr, Ipv4Hdr, Ipv6Hdr, PROTO_ICMP, PROTO_ICMPV6, TcpHdr, TcpPorts,
    },
    stats::{Reason, reason_counter},
};

use crate::{
    forward::egress_action,
    l2::addressed_to_us,
    maps::{BACKENDS, FLOWS, NEXTHOPS, SERVICES, VIP_FILTER, VIPS},
    nexthop,
    parse::ptr_at,
};

/// IPv4 `frag_off` fragment offset bits (a quoted later fragment carries no ports), network order.
const IPV4_OFFSET_MASK_BE: u16 = 0x1FFFu16.to_be();

/// Where the parts of an ICMP "too big" sit in the frame.
struct TooBig {
    eth: *mut EthHdr,
    /// Outer IP header (`Ipv4Hdr` or `Ipv6Hdr` by `key.family`).
    ip: *mut u8,
    icmp: *mut IcmpHdr,
    /// Quoted IP header.
    inner_ip: *mut u8,
    /// Quoted TCP header: its ports are always there, the rest (the checksum) only in a quote
    /// long enough (`quoted_tcp`).
    inner_ports: *mut TcpPorts,
    /// The flow the quoted packet belongs to, client → VIP (the quote reversed).
    key: FlowKey,
    /// Source of the ICMP error (the router), for the next-hop lookup.
    src: [u32; 4],
    /// End of the frame, for re-checking bounds where the verifier cannot relate the family to
    /// how much of `ip` and `inner_ip` was checked, and for the quoted TCP header.
    data_end: usize,
}

/// Handles a frame that `parse` found to be IP but not TCP. `Ok(action)` when it was an ICMP
/// "too big" for a VIP flow and went to the backend (or was dropped as a DSR packet would be);
/// `Err(reason)` to pass it to the kernel, counted under `reason`.
#[inline(always)]
pub fn handle(ctx: &XdpContext, bytes: u64) -> Result<u32, Reason> {
    let tb = parse(ctx)?;
    let key = &tb.key;
    if !crate::filter_hit(&VIP_FILTER, &key.dst, key.dport) {
        return Err(Reason::PassNotVip);
    }
    if !addressed_to_us(ctx, tb.eth) {
        return Err(Reason::PassOtherMac);
    }
    let vip_key = EndpointKey { addr: key.dst, port: key.dport, proto: PROTO_TCP, family: key.family };
    let vip = unsafe { VIPS.get(&vip_key) }.ok_or(Reason::PassNotVip)?;
    let svc = SERVICES.get(vip.service).ok_or(Reason::PassNotVip)?;
    if svc.flags & SERVICE_ENABLED == 0 {
        return Err(Reason::PassNotVip);
    }
    let backend = match unsafe { FLOWS.get(key) } {
        Some(flow) => u32::from(flow.backend),
        None => crate::pick(svc.table, key).ok_or(Reason::PassNotVip)?,
    };
    let b = BACKENDS.get(backend).ok_or(Reason::PassNotVip)?;
    if b.family != key.family {
        return Err(Reason::PassNotVip);
    }
    let nat = svc.flags & SERVICE_DSR == 0;
    if nat {
        translate(&tb, &b.addr, b.port);
    }
    let Some(nh) = NEXTHOPS.get_ptr_mut(backend) else {
        return Ok(crate::drop(Reason::DropBadState, bytes));
    };
    let nh = unsafe { &mut *nh };
    let now = crate::now_ns();
    if !nexthop::is_fresh(nh, now) && !nexthop::resolve_call(ctx, b.family, &tb.src, &b.addr, nh) {
        // As for a TCP packet: NAT hands the (already rewritten) error to the kernel to forward;
        // DSR cannot (the kernel would route the VIP back here).
        if nat {
            return Err(Reason::PassNoNextHop);
        }
        return Ok(crate::drop(Reason::DropNoNextHop, bytes));
    }
    let action = egress_action(ctx, nh.ifindex);
    if action == xdp_action::XDP_PASS {
        return Err(Reason::PassEgressUnknown);
    }
    unsafe {
        (*tb.eth).dst = nh.dmac;
        (*tb.eth).src = nh.smac;
    }
    crate::count(reason_counter(Reason::FwdIcmpTooBig), bytes);
    Ok(action)
}

/// Finds an ICMP "too big" quoting a TCP packet, and the flow it belongs to.
#[inline(always)]
fn parse(ctx: &XdpContext) -> Result<TooBig, Reason> {
    let (eth, l3, proto) = crate::parse::ethernet(ctx)?;
    if proto == ETH_P_IP_BE {
        parse_v4(ctx, eth, l3)
    } else if proto == ETH_P_IPV6_BE {
        parse_v6(ctx, eth, l3)
    } else {
        Err(Reason::PassNotIp)
    }
}

#[inline(always)]
fn parse_v4(ctx: &XdpContext, eth: *mut EthHdr, l3: usize) -> Result<TooBig, Reason> {
    let ip: *mut Ipv4Hdr = ptr_at(ctx, l3).ok_or(Reason::PassMalformed)?;
    let (version_ihl, protocol, saddr) = unsafe { ((*ip).version_ihl, (*ip).protocol, (*ip).saddr) };
    if protocol != PROTO_ICMP {
        return Err(Reason::PassNotTcp);
    }
    let l4 = l3 + (version_ihl & 0x0f) as usize * 4;
    let icmp: *mut IcmpHdr = ptr_at(ctx, l4).ok_or(Reason::PassMalformed)?;
    if unsafe { (*icmp).kind != ICMP_DEST_UNREACH || (*icmp).code != ICMP_FRAG_NEEDED } {
        return Err(Reason::PassNotTcp);
    }
    let inner_l3 = l4 + size_of::<IcmpHdr>();
    let inner: *mut Ipv4Hdr = ptr_at(ctx, inner_l3).ok_or(Reason::PassMalformed)?;
    let (inner_vihl, inner_frag, inner_proto, inner_src, inner_dst) = unsafe {
        ((*inner).version_ihl, (*inner).frag_off, (*inner).protocol, (*inner).saddr, (*inner).daddr)
    };
    let inner_ihl = (inner_vihl & 0x0f) as usize * 4;
    if inner_vihl >> 4 != 4 || inner_ihl < size_of::<Ipv4Hdr>() {
        return Err(Reason::PassMalformed);
    }
    if inner_proto != PROTO_TCP || inner_frag & IPV4_OFFSET_MASK_BE != 0 {
        return Err(Reason::PassNotTcp);
    }
    let inner_l4 = inner_l3 + inner_ihl;
    let ports: *mut TcpPorts = ptr_at(ctx, inner_l4).ok_or(Reason::PassMalformed)?;
    let (sport, dport) = unsafe { ((*ports).sport, (*ports).dport) };
    Ok(TooBig {
        eth,
        ip: ip.cast(),
        icmp,
        inner_ip: inner.cast(),
        inner_ports: ports,
        key: FlowKey {
            src: [inner_dst, 0, 0, 0],
            dst: [inner_src, 0, 0, 0],
            sport: dport,
            dport: sport,
            proto: PROTO_TCP,
            family: FAMILY_V4,
            _pad: [0; 2],
        },
        src: [saddr, 0, 0, 0],
        data_end: ctx.data_end(),
    })
}

#[inline(always)]
fn parse_v6(ctx: &XdpContext, eth: *mut EthHdr, l3: usize) -> Result<TooBig, Reason> {
    let ip: *mut Ipv6Hdr = ptr_at(ctx, l3).ok_or(Reason::PassMalformed)?;
    let (nexthdr, saddr) = unsafe { ((*ip).nexthdr, (*ip).saddr) };
    if nexthdr != PROTO_ICMPV6 {
        return Err(Reason::PassNotTcp);
    }
    let l4 = l3 + size_of::<Ipv6Hdr>();
    let icmp: *mut IcmpHdr = ptr_at(ctx, l4).ok_or(Reason::PassMalformed)?;
    if unsafe { (*icmp).kind != ICMPV6_PACKET_TOO_BIG } {
        return Err(Reason::PassNotTcp);
    }
    let inner_l3 = l4 + size_of::<IcmpHdr>();
    let inner: *mut Ipv6Hdr = ptr_at(ctx, inner_l3).ok_or(Reason::PassMalformed)?;
    let (first, inner_next, inner_src, inner_dst) =
        unsafe { ((*inner).version_tc_flow, (*inner).nexthdr, (*inner).saddr, (*inner).daddr) };
    if u32::from_be(first) >> 28 != 6 {
        return Err(Reason::PassMalformed);
    }
    if inner_next != PROTO_TCP {
        return Err(Reason::PassNotTcp);
    }
    let inner_l4 = inner_l3 + size_of::<Ipv6Hdr>();
    let ports: *mut TcpPorts = ptr_at(ctx, inner_l4).ok_or(Reason::PassMalformed)?;
    let (sport, dport) = unsafe { ((*ports).sport, (*ports).dport) };
    Ok(TooBig {
        eth,
        ip: ip.cast(),
        icmp,
        inner_ip: inner.cast(),
        inner_ports: ports,
        key: FlowKey {
            src: inner_dst,
            dst: inner_src,
            sport: dport,
            dport: sport,
            proto: PROTO_TCP,
            family: FAMILY_V6,
            _pad: [0; 2],
        },
        src: saddr,
        data_end: ctx.data_end(),
    })
}

/// The whole quoted TCP header, when the quote holds it (a quote of 8 bytes does not).
#[inline(always)]
fn quoted_tcp(tb: &TooBig) -> Option<*mut TcpHdr> {
    if tb.inner_ports as usize + size_of::<TcpHdr>() > tb.data_end {
        return None;
    }
    Some(tb.inner_ports.cast())
}

/// NAT: rewrites the error as the backend would have received it for its own packet: outer
/// destination VIP → `addr`, quoted source VIP:port → `addr`:`port`, every checksum updated.
#[inline(always)]
fn translate(tb: &TooBig, addr: &[u32; 4], port: u16) {
    unsafe {
        let mut icmp_check = (*tb.icmp).check;
        let old_port = (*tb.inner_ports).sport;
        if tb.key.family == FAMILY_V4 {
            let ip = tb.ip as *mut Ipv4Hdr;
            let old = (*ip).daddr;
            (*ip).daddr = addr[0];
            (*ip).check = csum::replace_u32((*ip).check, old, addr[0]);
            let inner = tb.inner_ip as *mut Ipv4Hdr;
            let old_src = (*inner).saddr;
            let old_inner_check = (*inner).check;
            let new_inner_check = csum::replace_u32(old_inner_check, old_src, addr[0]);
            (*inner).saddr = addr[0];
            (*inner).check = new_inner_check;
            icmp_check = csum::replace_u32(icmp_check, old_src, addr[0]);
            icmp_check = csum::replace_u16(icmp_check, old_inner_check, new_inner_check);
            if let Some(tcp) = quoted_tcp(tb) {
                let old_tcp_check = (*tcp).check;
                let new_tcp_check =
                    csum::replace_u16(csum::replace_u32(old_tcp_check, old_src, addr[0]), old_port, port);
                (*tcp).check = new_tcp_check;
                icmp_check = csum::replace_u16(icmp_check, old_tcp_check, new_tcp_check);
            }
        } else {
            let ip = tb.ip as *mut Ipv6Hdr;
            let inner = tb.inner_ip as *mut Ipv6Hdr;
            if tb.ip as usize + size_of::<Ipv6Hdr>() > tb.data_end
                || tb.inner_ip as usize + size_of::<Ipv6Hdr>() > tb.data_end
            {
                return;
            }
            let old = (*ip).daddr;
            (*ip).daddr = *addr;
            // ICMPv6 covers a pseudo-header with the outer addresses.
            icmp_check = csum::replace_addr(icmp_check, &old, addr);
            let old_src = (*inner).saddr;
            (*inner).saddr = *addr;
            icmp_check = csum::replace_addr(icmp_check, &old_src, addr);
            if let Some(tcp) = quoted_tcp(tb) {
                let old_tcp_check = (*tcp).check;
                let new_tcp_check =
                    csum::replace_u16(csum::replace_addr(old_tcp_check, &old_src, addr), old_port, port);
                (*tcp).check = new_tcp_check;
                icmp_check = csum::replace_u16(icmp_check, old_tcp_check, new_tcp_check);
            }
        }
        (*tb.inner_ports).sport = port;
        (*tb.icmp).check = csum::replace_u16(icmp_check, old_port, port);
    }
}
