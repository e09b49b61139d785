//! On-the-wire header layouts the data plane parses. Multi-byte fields hold network byte order
//! exactly as in the packet; the constants below are already in network order, so comparisons
//! need no byte swap.

/// EtherType IPv4, network order.
pub const ETH_P_IP_BE: u16 = 0x0800u16.to_be();
/// EtherType IPv6, network order.
pub const ETH_P_IPV6_BE: u16 = 0x86DDu16.to_be();
/// EtherType 802.1Q VLAN tag, network order.
pub const ETH_P_8021Q_BE: u16 = 0x8100u16.to_be();
/// IPv6 next-header value of the fragment header.
pub const IPV6_NEXTHDR_FRAGMENT: u8 = 44;
/// IPv4 `frag_off` bits that mark a fragment (MF flag and offset), network order.
pub const IPV4_FRAG_MASK_BE: u16 = 0x3FFFu16.to_be();
/// IP protocol number of ICMP.
pub const PROTO_ICMP: u8 = 1;
/// IP protocol (IPv6 next header) number of ICMPv6.
pub const PROTO_ICMPV6: u8 = 58;
/// ICMP type "destination unreachable".
pub const ICMP_DEST_UNREACH: u8 = 3;
/// ICMP "destination unreachable" code "fragmentation needed and DF set" (RFC 1191).
pub const ICMP_FRAG_NEEDED: u8 = 4;
/// ICMPv6 type "packet too big" (RFC 8201).
pub const ICMPV6_PACKET_TOO_BIG: u8 = 2;
/// TCP flag FIN (in `TcpHdr::flags`).
pub const TCP_FIN: u8 = 0x01;
/// TCP flag SYN.
pub const TCP_SYN: u8 = 0x02;
/// TCP flag RST.
pub const TCP_RST: u8 = 0x04;
/// TCP flag ACK.
pub const TCP_ACK: u8 = 0x10;

/// Ethernet II header.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct EthHdr {
    /// Destination MAC.
    pub dst: [u8; 6],
    /// Source MAC.
    pub src: [u8; 6],
    /// EtherType, network order.
    pub proto: u16,
}

/// 802.1Q tag that follows the MAC addresses when `EthHdr::proto` is `ETH_P_8021Q_BE`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct VlanHdr {
    /// Priority, DEI and VLAN id, network order.
    pub tci: u16,
    /// EtherType of the payload, network order.
    pub proto: u16,
}

/// IPv4 header without options.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct Ipv4Hdr {
    /// Version (high nibble) and header length in 32-bit words (low nibble).
    pub version_ihl: u8,
    /// DSCP and ECN.
    pub tos: u8,
    /// Total length, network order.
    pub tot_len: u16,
    /// Identification.
    pub id: u16,
    /// Flags and fragment offset, network order.
    pub frag_off: u16,
    /// Time to live.
    pub ttl: u8,
    /// Payload protocol.
    pub protocol: u8,
    /// Header checksum.
    pub check: u16,
    /// Source address.
    pub saddr: u32,
    /// Destination address.
    pub daddr: u32,
}

/// IPv6 fixed header.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct Ipv6Hdr {
    /// Version, traffic class and flow label.
    pub version_tc_flow: u32,
    /// Payload length, network order.
    pub payload_len: u16,
    /// Next header.
    pub nexthdr: u8,
    /// Hop limit.
    pub hop_limit: u8,
    /// Source address words.
    pub saddr: [u32; 4],
    /// Destination address words.
    pub daddr: [u32; 4],
}

/// TCP header without options.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct TcpHdr {
    /// Source port, network order.
    pub sport: u16,
    /// Destination port, network order.
    pub dport: u16,
    /// Sequence number.
    pub seq: u32,
    /// Acknowledgement number.
    pub ack: u32,
    /// Data offset in 32-bit words (high nibble) and reserved bits.
    pub doff_res: u8,
    /// Flags (`TCP_*`).
    pub flags: u8,
    /// Window.
    pub window: u16,
    /// Checksum.
    pub check: u16,
    /// Urgent pointer.
    pub urg: u16,
}

/// ICMP and ICMPv6 header: type, code, checksum and the 4 bytes that follow (for "too big":
/// unused + next-hop MTU in ICMP, the MTU in ICMPv6). The quoted packet follows it.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct IcmpHdr {
    /// Message type.
    pub kind: u8,
    /// Message code.
    pub code: u8,
    /// Checksum (ICMPv6: over a pseudo-header too).
    pub check: u16,
    /// Rest of the header (the MTU for "too big"), network order.
    pub rest: u32,
}

/// The first 8 bytes of a quoted TCP header: all an ICMP error is sure to carry (RFC 792).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct TcpPorts {
    /// Source port, network order.
    pub sport: u16,
    /// Destination port, network order.
    pub dport: u16,
    /// Sequence number.
    pub seq: u32,
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::size_of;

    #[test]
    fn header_sizes_match_the_wire() {
        assert_eq!(size_of::<EthHdr>(), 14);
        assert_eq!(size_of::<VlanHdr>(), 4);
        assert_eq!(size_of::<Ipv4Hdr>(), 20);
        assert_eq!(size_of::<Ipv6Hdr>(), 40);
        assert_eq!(size_of::<TcpHdr>(), 20);
        assert_eq!(size_of::<IcmpHdr>(), 8);
        assert_eq!(size_of::<TcpPorts>(), 8);
    }
}
