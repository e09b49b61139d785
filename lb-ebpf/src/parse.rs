//! Header parsing with the bounds checks the verifier wants. Anything unexpected comes back as
//! the `Reason` to pass the packet to the kernel for.

use aya_ebpf::programs::XdpContext;
use core::mem::size_of;
use lb_common::{
    maps::{FAMILY_V4, FAMILY_V6, FlowKey, PROTO_TCP},
    packet::{
        ETH_P_8021Q_BE, ETH_P_IP_BE, ETH_P_IPV6_BE, EthHdr, IPV4_FRAG_MASK_BE, IPV6_NEXTHDR_FRAGMENT,
        Ipv4Hdr, Ipv6Hdr, TcpHdr, VlanHdr,
    },
    stats::Reason,
};

/// A parsed TCP packet: pointers into the frame and its 5-tuple.
pub struct Packet {
    /// The Ethernet header (MACs are rewritten on forward).
    pub eth: *mut EthHdr,
    /// The IPv4 or IPv6 header, by `key.family`.
    pub ip: *mut u8,
    /// The TCP header.
    pub tcp: *mut TcpHdr,
    /// 5-tuple as in the packet.
    pub key: FlowKey,
    /// TCP flags.
    pub tcp_flags: u8,
    /// End of the frame, for re-checking bounds where the verifier cannot relate the family to
    /// how much of `ip` was checked.
    pub data_end: usize,
}

/// Pointer to a `T` at `offset` in the frame, if the whole `T` is inside it.
#[inline(always)]
pub fn ptr_at<T>(ctx: &XdpContext, offset: usize) -> Option<*mut T> {
    let start = ctx.data();
    if start + offset + size_of::<T>() > ctx.data_end() {
        return None;
    }
    Some((start + offset) as *mut T)
}

/// Walks Ethernet and one optional 802.1Q tag: the Ethernet header, the offset of the L3
/// header and its EtherType (big-endian). Shared by the TCP path and the ICMP path.
#[inline(always)]
pub fn ethernet(ctx: &XdpContext) -> Result<(*mut EthHdr, usize, u16), Reason> {
    let eth: *mut EthHdr = ptr_at(ctx, 0).ok_or(Reason::PassMalformed)?;
    let mut l3 = size_of::<EthHdr>();
    let mut proto = unsafe { (*eth).proto };
    if proto == ETH_P_8021Q_BE {
        let vlan: *mut VlanHdr = ptr_at(ctx, l3).ok_or(Reason::PassMalformed)?;
        proto = unsafe { (*vlan).proto };
        l3 += size_of::<VlanHdr>();
    }
    Ok((eth, l3, proto))
}

/// Parses Ethernet (one optional 802.1Q tag), IPv4 (any IHL) or IPv6, and TCP.
#[inline(always)]
pub fn parse(ctx: &XdpContext) -> Result<Packet, Reason> {
    let (eth, l3, proto) = ethernet(ctx)?;
    if proto == ETH_P_IP_BE {
        parse_v4(ctx, eth, l3)
    } else if proto == ETH_P_IPV6_BE {
        parse_v6(ctx, eth, l3)
    } else {
        Err(Reason::PassNotIp)
    }
}

#[inline(always)]
fn parse_v4(ctx: &XdpContext, eth: *mut EthHdr, l3: usize) -> Result<Packet, Reason> {
    let ip: *mut Ipv4Hdr = ptr_at(ctx, l3).ok_or(Reason::PassMalformed)?;
    let (version_ihl, frag_off, protocol, tot_len) =
        unsafe { ((*ip).version_ihl, (*ip).frag_off, (*ip).protocol, u16::from_be((*ip).tot_len)) };
    let ihl = (version_ihl & 0x0f) as usize * 4;
    if version_ihl >> 4 != 4 || ihl < size_of::<Ipv4Hdr>() {
        return Err(Reason::PassMalformed);
    }
    if frag_off & IPV4_FRAG_MASK_BE != 0 {
        return Err(Reason::PassFragment);
    }
    if protocol != PROTO_TCP {
        return Err(Reason::PassNotTcp);
    }
    // The frame may carry Ethernet padding after the datagram, never less than the datagram.
    let available = ctx.data_end() - ctx.data() - l3;
    if (tot_len as usize) < ihl + size_of::<TcpHdr>() || tot_len as usize > available {
        return Err(Reason::PassMalformed);
    }
    let tcp: *mut TcpHdr = ptr_at(ctx, l3 + ihl).ok_or(Reason::PassMalformed)?;
    let (saddr, daddr) = unsafe { ((*ip).saddr, (*ip).daddr) };
    tcp_packet(ctx, eth, ip.cast(), tcp, l3 + ihl, [saddr, 0, 0, 0], [daddr, 0, 0, 0], FAMILY_V4)
}

#[inline(always)]
fn parse_v6(ctx: &XdpContext, eth: *mut EthHdr, l3: usize) -> Result<Packet, Reason> {
    let ip: *mut Ipv6Hdr = ptr_at(ctx, l3).ok_or(Reason::PassMalformed)?;
    let (first, nexthdr, payload_len) =
        unsafe { ((*ip).version_tc_flow, (*ip).nexthdr, u16::from_be((*ip).payload_len)) };
    if u32::from_be(first) >> 28 != 6 {
        return Err(Reason::PassMalformed);
    }
    if nexthdr == IPV6_NEXTHDR_FRAGMENT {
        return Err(Reason::PassFragment);
    }
    if nexthdr != PROTO_TCP {
        // Hop-by-hop, routing, destination options... or simply not TCP.
        return Err(match nexthdr {
            0 | 43 | 50 | 51 | 60 | 135 | 139 | 140 => Reason::PassIpv6ExtHeader,
            _ => Reason::PassNotTcp,
        });
    }
    let available = ctx.data_end() - ctx.data() - l3 - size_of::<Ipv6Hdr>();
    if (payload_len as usize) < size_of::<TcpHdr>() || payload_len as usize > available {
        return Err(Reason::PassMalformed);
    }
    let l4 = l3 + size_of::<Ipv6Hdr>();
    let tcp: *mut TcpHdr = ptr_at(ctx, l4).ok_or(Reason::PassMalformed)?;
    let (saddr, daddr) = unsafe { ((*ip).saddr, (*ip).daddr) };
    tcp_packet(ctx, eth, ip.cast(), tcp, l4, saddr, daddr, FAMILY_V6)
}

#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn tcp_packet(
    ctx: &XdpContext,
    eth: *mut EthHdr,
    ip: *mut u8,
    tcp: *mut TcpHdr,
    l4: usize,
    src: [u32; 4],
    dst: [u32; 4],
    family: u8,
) -> Result<Packet, Reason> {
    let (doff_res, flags, sport, dport) =
        unsafe { ((*tcp).doff_res, (*tcp).flags, (*tcp).sport, (*tcp).dport) };
    let doff = (doff_res >> 4) as usize * 4;
    if doff < size_of::<TcpHdr>() || ctx.data() + l4 + doff > ctx.data_end() {
        return Err(Reason::PassMalformed);
    }
    Ok(Packet {
        eth,
        ip,
        tcp,
        key: FlowKey { src, dst, sport, dport, proto: PROTO_TCP, family, _pad: [0; 2] },
        tcp_flags: flags,
        data_end: ctx.data_end(),
    })
}
